//! Postgres changes as supabase-js asks for them (`channel.on('postgres_changes', {event,
//! schema, table, filter}, cb)`): the subscriptions a join carries, their filters, and the
//! `postgres_changes` event a change becomes (contract §5). Pure: where changes come from is
//! the channel's business.

use serde_json::{json, Map, Value};

/// Which changes a subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Insert,
    Update,
    Delete,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Insert => "INSERT",
            Kind::Update => "UPDATE",
            Kind::Delete => "DELETE",
        }
    }
}

/// One `config.postgres_changes` entry, with the id its join reply gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: u32,
    /// `None`: every kind (`*`).
    pub kind: Option<Kind>,
    pub schema: String,
    /// `None`: every table of the schema.
    pub table: Option<String>,
    pub filter: Option<Filter>,
}

/// A subscription's id: a hash of what it asks, as Supabase's are (any JSON scalar would do,
/// the client compares with `===`), under 2^27 as `:erlang.phash2`'s are.
pub fn id_of(params: &Value) -> u32 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(params.to_string().as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> 5
}

impl Subscription {
    /// Reads one entry; the error names what is wrong, for the `system` message.
    /// A `match`/`imatch` pattern may compile to `max_pattern_bytes`.
    pub fn parse(params: &Value, max_pattern_bytes: usize) -> Result<Subscription, String> {
        let Value::Object(p) = params else {
            return Err("a postgres_changes subscription must be an object".into());
        };
        let text = |k: &str| p.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let kind = match text("event").map(str::to_ascii_uppercase).as_deref() {
            Some("*") => None,
            Some("INSERT") => Some(Kind::Insert),
            Some("UPDATE") => Some(Kind::Update),
            Some("DELETE") => Some(Kind::Delete),
            Some(other) => {
                return Err(format!(
                    "unknown event {other:?}: INSERT, UPDATE, DELETE or *"
                ))
            }
            None => return Err("event is required: INSERT, UPDATE, DELETE or *".into()),
        };
        let schema = text("schema").ok_or("schema is required")?.to_owned();
        let table = text("table").filter(|t| *t != "*").map(str::to_owned);
        let filter = text("filter")
            .map(|f| Filter::parse(f, max_pattern_bytes))
            .transpose()?;
        Ok(Subscription {
            id: id_of(params),
            kind,
            schema,
            table,
            filter,
        })
    }

    /// Whether `change` is one this subscription wants.
    pub fn wants(&self, change: &Change) -> bool {
        self.kind.is_none_or(|k| k == change.kind)
            && self.schema == change.schema
            && self.table.as_ref().is_none_or(|t| *t == change.table)
            && self.filter.as_ref().is_none_or(|f| {
                // A delete is matched on what it removed.
                let row = match change.kind {
                    Kind::Delete => change.old_record.as_ref(),
                    _ => change.record.as_ref(),
                };
                row.is_some_and(|r| f.matches(r))
            })
    }
}

impl Subscription {
    /// [`Subscription::wants`] on a change's `data` object as capture broadcasts it, without
    /// building the change: it runs for every follower of a table on every change.
    pub fn wants_data(&self, data: &Value) -> bool {
        let text = |k: &str| data.get(k).and_then(Value::as_str);
        let kind = match text("type") {
            Some("INSERT") => Kind::Insert,
            Some("UPDATE") => Kind::Update,
            Some("DELETE") => Kind::Delete,
            _ => return false,
        };
        self.kind.is_none_or(|k| k == kind)
            && text("schema") == Some(self.schema.as_str())
            && self
                .table
                .as_deref()
                .is_none_or(|t| text("table") == Some(t))
            && self.filter.as_ref().is_none_or(|f| {
                let row = if kind == Kind::Delete {
                    "old_record"
                } else {
                    "record"
                };
                data.get(row)
                    .and_then(Value::as_object)
                    .is_some_and(|r| f.matches(r))
            })
    }
}

/// A filter's operator (PostgREST's names, as Supabase Realtime accepts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Is,
    Like,
    Ilike,
    IsDistinct,
    /// A regular expression (PostgreSQL's `~`; `imatch` is `~*`).
    Match,
    Imatch,
}

/// A compiled `match`/`imatch` pattern; equal when written the same.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// `column=op.value` (`in.(a,b)`), optionally `column=not.op.value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub column: String,
    pub op: Op,
    pub negated: bool,
    pub value: String,
    /// For `match` and `imatch`.
    pub pattern: Option<Pattern>,
}

impl Filter {
    /// A `match`/`imatch` pattern may compile to `max_pattern_bytes` (it runs on every change
    /// of the table): `--realtime-max-filter-pattern-bytes`.
    pub fn parse(text: &str, max_pattern_bytes: usize) -> Result<Filter, String> {
        let (column, rest) = text
            .split_once('=')
            .filter(|(c, _)| !c.is_empty())
            .ok_or_else(|| format!("filter {text:?} is not column=operator.value"))?;
        let (negated, rest) = match rest.strip_prefix("not.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let (op, value) = rest
            .split_once('.')
            .ok_or_else(|| format!("filter {text:?} is not column=operator.value"))?;
        let op = match op {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "is" => Op::Is,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "isdistinct" => Op::IsDistinct,
            "match" => Op::Match,
            "imatch" => Op::Imatch,
            other => {
                return Err(format!(
                    "unknown filter operator {other:?}: eq, neq, lt, lte, gt, gte, in, is, like, ilike, match, imatch, isdistinct (optionally after not.)"
                ))
            }
        };
        if op == Op::In && !(value.starts_with('(') && value.ends_with(')')) {
            return Err(format!("in takes a list: {column}=in.(a,b), not {value:?}"));
        }
        if op == Op::Is && !matches!(value, "null" | "true" | "false" | "unknown") {
            return Err(format!(
                "is takes null, true, false or unknown, not {value:?}"
            ));
        }
        let pattern = match op {
            Op::Match | Op::Imatch => Some(Pattern(
                regex::RegexBuilder::new(value)
                    .case_insensitive(op == Op::Imatch)
                    .size_limit(max_pattern_bytes)
                    .dfa_size_limit(max_pattern_bytes)
                    .build()
                    .map_err(|e| format!("{column}={op}: {value:?} is not a regular expression this server runs: {e}", op = if op == Op::Match { "match" } else { "imatch" }))?,
            )),
            _ => None,
        };
        Ok(Filter {
            column: column.to_owned(),
            op,
            negated,
            value: value.to_owned(),
            pattern,
        })
    }

    /// Whether the row passes, comparing as PostgreSQL would for the value's type: numbers as
    /// numbers, booleans as booleans, anything else as text. A missing column is null, which
    /// passes nothing but `is.null`, `isdistinct` and their negations.
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        let cell = row.get(&self.column).unwrap_or(&Value::Null);
        let passes = match self.op {
            Op::Is => match self.value.as_str() {
                "null" | "unknown" => cell.is_null(),
                "true" => *cell == Value::Bool(true),
                _ => *cell == Value::Bool(false),
            },
            Op::IsDistinct => compare(cell, &self.value) != Some(std::cmp::Ordering::Equal),
            _ if cell.is_null() => return false,
            Op::Eq => compare(cell, &self.value) == Some(std::cmp::Ordering::Equal),
            Op::Neq => compare(cell, &self.value).is_some_and(|o| o.is_ne()),
            Op::Lt => compare(cell, &self.value).is_some_and(|o| o.is_lt()),
            Op::Lte => compare(cell, &self.value).is_some_and(|o| o.is_le()),
            Op::Gt => compare(cell, &self.value).is_some_and(|o| o.is_gt()),
            Op::Gte => compare(cell, &self.value).is_some_and(|o| o.is_ge()),
            Op::In => self.value[1..self.value.len() - 1].split(',').any(|v| {
                compare(cell, v.trim().trim_matches('"')) == Some(std::cmp::Ordering::Equal)
            }),
            Op::Like => like(&text_of(cell), &self.value, false),
            Op::Match | Op::Imatch => self
                .pattern
                .as_ref()
                .is_some_and(|p| p.0.is_match(&text_of(cell))),
            Op::Ilike => like(&text_of(cell), &self.value, true),
        };
        passes != self.negated
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `cell` against a filter's text, in the cell's type; `None` when they do not compare (a
/// number against text that is no number).
fn compare(cell: &Value, value: &str) -> Option<std::cmp::Ordering> {
    match cell {
        Value::Null => None,
        Value::Number(n) => n.as_f64()?.partial_cmp(&value.parse::<f64>().ok()?),
        Value::Bool(b) => match value {
            "true" | "t" => Some(b.cmp(&true)),
            "false" | "f" => Some(b.cmp(&false)),
            _ => None,
        },
        Value::String(s) => Some(s.as_str().cmp(value)),
        other => Some(other.to_string().as_str().cmp(value)),
    }
}

/// SQL `LIKE`: `%` any run, `_` one character (`ilike`: case folded).
fn like(text: &str, pattern: &str, fold: bool) -> bool {
    let fold = |s: &str| if fold { s.to_lowercase() } else { s.to_owned() };
    let (t, p): (Vec<char>, Vec<char>) = (
        fold(text).chars().collect(),
        fold(pattern).chars().collect(),
    );
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(&t[i..], rest)),
            Some(('_', rest)) => !t.is_empty() && go(&t[1..], rest),
            Some((c, rest)) => t.first() == Some(c) && go(&t[1..], rest),
        }
    }
    go(&t, &p)
}

/// One committed change of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub schema: String,
    pub table: String,
    pub kind: Kind,
    /// ISO 8601 UTC with milliseconds, as `2026-01-01T00:00:00.000Z`.
    pub commit_timestamp: String,
    /// `{name, type}` with PostgreSQL's type names (`pg_type.typname`).
    pub columns: Vec<(String, String)>,
    /// The row after an insert or update.
    pub record: Option<Map<String, Value>>,
    /// Before an update or delete: its key, or the whole row with `REPLICA IDENTITY FULL`.
    pub old_record: Option<Map<String, Value>>,
}

impl Change {
    /// A change from its `data` object (as change capture broadcasts it); `None` if it is not one.
    pub fn from_data(data: &Value) -> Option<Change> {
        let text = |k: &str| data.get(k)?.as_str().map(str::to_owned);
        let kind = match data.get("type")?.as_str()? {
            "INSERT" => Kind::Insert,
            "UPDATE" => Kind::Update,
            "DELETE" => Kind::Delete,
            _ => return None,
        };
        let row = |k: &str| data.get(k).and_then(Value::as_object).cloned();
        Some(Change {
            schema: text("schema")?,
            table: text("table")?,
            kind,
            commit_timestamp: text("commit_timestamp")?,
            columns: data
                .get("columns")?
                .as_array()?
                .iter()
                .filter_map(|c| {
                    Some((
                        c.get("name")?.as_str()?.into(),
                        c.get("type")?.as_str()?.into(),
                    ))
                })
                .collect(),
            record: row("record"),
            old_record: row("old_record"),
        })
    }

    /// The `postgres_changes` payload for the subscriptions `ids` of one channel.
    pub fn payload(&self, ids: &[u32]) -> Value {
        let columns: Vec<Value> = self
            .columns
            .iter()
            .map(|(name, ty)| json!({"name": name, "type": ty}))
            .collect();
        let mut data = json!({
            "schema": self.schema,
            "table": self.table,
            "commit_timestamp": self.commit_timestamp,
            "type": self.kind.name(),
            "columns": columns,
            "errors": null,
        });
        if let Some(r) = &self.record {
            data["record"] = Value::Object(r.clone());
        }
        if let Some(r) = &self.old_record {
            data["old_record"] = Value::Object(r.clone());
        }
        json!({"ids": ids, "data": data})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 256 * 1024;

    #[test]
    fn a_pattern_past_the_bound_is_refused_naming_it() {
        assert!(Filter::parse(r"title=match.^[a-z]{300}$", MAX).is_ok());
        let e = Filter::parse(r"title=match.^[a-z]{300}$", 4096).unwrap_err();
        assert!(
            e.starts_with(
                r#"title=match: "^[a-z]{300}$" is not a regular expression this server runs"#
            ),
            "{e}"
        );
        assert!(Filter::parse("title=imatch.^tea$", 4096).is_ok());
    }

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn filters_compare_in_the_cells_type() {
        let r = row(json!({"id": 7, "name": "tea", "done": true, "note": null, "price": 2.5}));
        let yes = |f: &str| Filter::parse(f, MAX).unwrap().matches(&r);
        for f in [
            // Numbers compare as numbers, not as text ("10" < "7" as text).
            "id=eq.7",
            "id=neq.8",
            "id=lt.10",
            "id=lte.7",
            "id=gt.6",
            "id=gte.7",
            "id=in.(1,7,9)",
            "name=eq.tea",
            "name=in.(coffee,tea)",
            "name=like.t%",
            "name=ilike.T_A",
            "done=is.true",
            "done=eq.true",
            "note=is.null",
            "missing=is.null",
            "price=gt.2",
            "id=not.eq.8",
            "name=isdistinct.coffee",
            "note=isdistinct.x",
        ] {
            assert!(yes(f), "{f}");
        }
        for f in [
            "id=eq.8",
            "id=gt.7",
            "id=in.(1,2)",
            "name=eq.Tea",
            "name=like.T%",
            "done=is.false",
            "note=eq.x",
            "missing=eq.1",
            "id=not.eq.7",
            "name=isdistinct.tea",
            "id=eq.seven",
        ] {
            assert!(!yes(f), "{f}");
        }
    }

    #[test]
    fn bad_filters_and_subscriptions_say_why() {
        for (f, why) in [
            ("id=between.1", "unknown filter operator \"between\""),
            ("id", "is not column=operator.value"),
            ("=eq.1", "is not column=operator.value"),
            ("id=in.1,2", "in takes a list"),
            ("id=is.maybe", "is takes null"),
            (
                "name=match.(a",
                "is not a regular expression this server runs",
            ),
            (
                "name=match.(a)\\1",
                "is not a regular expression this server runs",
            ),
            (
                "name=match.a{1000}{1000}",
                "is not a regular expression this server runs",
            ),
        ] {
            let e = Filter::parse(f, MAX).unwrap_err();
            assert!(e.contains(why), "{f}: {e}");
        }
        let e =
            Subscription::parse(&json!({"event": "UPSERT", "schema": "public"}), MAX).unwrap_err();
        assert!(e.contains("unknown event \"UPSERT\""), "{e}");
        assert!(Subscription::parse(&json!({"event": "*"}), MAX)
            .unwrap_err()
            .contains("schema"));
        let s = Subscription::parse(
            &json!({"event": "insert", "schema": "public", "table": "todos", "filter": "id=eq.1"}),
            MAX,
        )
        .unwrap();
        assert_eq!(
            (s.kind, s.table.as_deref()),
            (Some(Kind::Insert), Some("todos"))
        );
        assert!(s.id < 1 << 27);
    }

    #[test]
    fn the_event_payload_has_the_contracts_shape() {
        let change = Change {
            schema: "public".into(),
            table: "todos".into(),
            kind: Kind::Update,
            commit_timestamp: "2026-01-01T00:00:00.000Z".into(),
            columns: vec![("id".into(), "int8".into()), ("done".into(), "bool".into())],
            record: Some(row(json!({"id": 7, "done": true}))),
            old_record: Some(row(json!({"id": 7}))),
        };
        assert_eq!(
            change.payload(&[1000, 2]),
            json!({"ids": [1000, 2], "data": {
                "schema": "public", "table": "todos", "commit_timestamp": "2026-01-01T00:00:00.000Z",
                "type": "UPDATE", "columns": [{"name": "id", "type": "int8"}, {"name": "done", "type": "bool"}],
                "record": {"id": 7, "done": true}, "old_record": {"id": 7}, "errors": null
            }})
        );
        let sub = |v: Value| Subscription::parse(&v, MAX).unwrap();
        assert_eq!(
            Change::from_data(&change.payload(&[])["data"]),
            Some(change.clone())
        );
        assert!(sub(json!({"event": "*", "schema": "public"})).wants(&change));
        assert!(sub(json!({"event": "UPDATE", "schema": "public", "table": "todos", "filter": "done=is.true"})).wants(&change));
        assert!(
            !sub(json!({"event": "INSERT", "schema": "public", "table": "todos"})).wants(&change)
        );
        assert!(!sub(json!({"event": "*", "schema": "private"})).wants(&change));
        assert!(!sub(json!({"event": "*", "schema": "public", "table": "other"})).wants(&change));
    }
}
