//! The Fawkes collections as Postgres changes: schema `public`, one table per collection, on
//! SQLite and PostgreSQL alike. A collection's `change` broadcasts (`{"action", "record"}` on
//! `collection:<name>`, in its change log's order) become the [`Change`]s supabase-js expects.

use super::changes::{Change, Kind};
use crate::apps::rules::{Rule, RuleBook};
use serde_json::{Map, Value};

/// The schema the collections appear in.
pub const SCHEMA: &str = "public";

/// The topic a collection's changes are broadcast on.
pub fn topic(table: &str) -> String {
    format!("collection:{table}")
}

/// Whether a token with `role` may follow `table`: its list rule must be public (a Supabase
/// token names no Fawkes user for the other rules to weigh), or the token the service_role key.
pub fn may_follow(rules: &RuleBook, table: &str, role: &str) -> Result<(), String> {
    if !crate::apps::rules::valid_name(table) {
        return Err(format!(
            "{table:?} is not a collection name (1-64 lowercase letters, digits or _)"
        ));
    }
    let list = rules.of(table).list;
    if list == Rule::Public || role == "service_role" {
        Ok(())
    } else {
        Err(format!(
            "the collection {table:?} is not public (its list rule is {}): only the service_role key may follow it",
            list.name()
        ))
    }
}

/// A collection's `change` broadcast as a [`Change`]; `None` for anything else.
pub fn change(table: &str, payload: &Value) -> Option<Change> {
    let action = payload.get("action")?.as_str()?;
    let record = payload.get("record")?.as_object()?;
    let kind = match action {
        "create" => Kind::Insert,
        "update" => Kind::Update,
        "delete" => Kind::Delete,
        _ => return None,
    };
    let key: Map<String, Value> = record
        .get("id")
        .map(|id| [("id".to_owned(), id.clone())].into_iter().collect())
        .unwrap_or_default();
    let commit_timestamp = match kind {
        Kind::Delete => crate::store::iso(crate::store::now_ms()),
        _ => record.get("updated")?.as_str()?.to_owned(),
    };
    Some(Change {
        schema: SCHEMA.into(),
        table: table.into(),
        kind,
        commit_timestamp,
        columns: record
            .iter()
            .map(|(k, v)| (k.clone(), type_of(k, v).into()))
            .collect(),
        // As PostgreSQL's default replica identity gives them: the key alone before an
        // update or delete.
        record: (kind != Kind::Delete).then(|| record.clone()),
        old_record: (kind != Kind::Insert).then_some(key),
    })
}

/// The PostgreSQL type a collection field would have (`pg_type.typname`), which the client
/// converts by.
fn type_of(name: &str, v: &Value) -> &'static str {
    match (name, v) {
        ("created" | "updated", _) => "timestamptz",
        (_, Value::Bool(_)) => "bool",
        (_, Value::Number(n)) if n.is_i64() || n.is_u64() => "int8",
        (_, Value::Number(_)) => "float8",
        (_, Value::Object(_) | Value::Array(_)) => "jsonb",
        _ => "text",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_of_a_collection() {
        let record = json!({"id": "abc", "created": "2026-01-01T00:00:00.000Z",
            "updated": "2026-01-01T00:00:01.000Z", "n": 3, "done": false, "tags": ["a"], "x": 1.5, "s": "t"});
        let c = change(
            "todos",
            &json!({"action": "update", "record": record, "seq": 4}),
        )
        .unwrap();
        assert_eq!(
            (c.schema.as_str(), c.table.as_str(), c.kind),
            ("public", "todos", Kind::Update)
        );
        assert_eq!(c.commit_timestamp, "2026-01-01T00:00:01.000Z");
        let types: Vec<(&str, &str)> = c
            .columns
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("created", "timestamptz"),
                ("done", "bool"),
                ("id", "text"),
                ("n", "int8"),
                ("s", "text"),
                ("tags", "jsonb"),
                ("updated", "timestamptz"),
                ("x", "float8")
            ]
        );
        assert_eq!(
            c.old_record,
            Some(json!({"id": "abc"}).as_object().unwrap().clone())
        );
        let d = change("todos", &json!({"action": "delete", "record": record})).unwrap();
        assert_eq!((d.kind, d.record.is_none()), (Kind::Delete, true));
        assert!(change("todos", &json!({"action": "rename", "record": record})).is_none());
        assert!(change("todos", &json!({"nope": 1})).is_none());
    }
}
