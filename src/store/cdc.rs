//! Change capture: the committed row changes of the app's own PostgreSQL tables, read from a
//! logical replication slot and broadcast on the endpoint, each once, in commit order.
//!
//! The slot decodes with `wal2json` (Debian's `postgresql-15-wal2json`), read over plain SQL
//! (`pg_logical_slot_peek_changes`, then `pg_replication_slot_advance` once a batch is
//! broadcast), as Supabase Realtime reads its slot: no replication-protocol connection, and
//! each change arrives as JSON with its columns' types. Fawkes creates the slot and keeps it
//! across restarts, so a restart resumes where the last batch ended.
//!
//! On several nodes, one reads: the holder of a PostgreSQL advisory lock named after the slot
//! (its session ends with its process, and another node takes the lock on its next try).
//!
//! Each change goes out as event `change` on topic `postgres_changes:<schema>.<table>`, its
//! payload the `data` object of Supabase's `postgres_changes` event (schema, table,
//! commit_timestamp, type, columns with `pg_type.typname`, record, old_record, errors).

use crate::hub::Endpoint;
use crate::protocol::Payload;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// What to capture and how.
#[derive(Debug, Clone)]
pub struct CdcConfig {
    /// The replication slot Fawkes owns.
    pub slot: String,
    /// `schema.table` patterns (`*` any run of characters), as wal2json's `add-tables` takes them.
    pub tables: Vec<String>,
    /// How long to wait between reads of an empty slot.
    pub poll: Duration,
    /// Changes read at most per batch (a transaction is never split: a larger one comes whole).
    pub batch: i64,
    /// WAL the slot may hold back (`pg_current_wal_lsn() - restart_lsn`, which a long open
    /// transaction also holds) before it is dropped and made again: the database's disk comes
    /// before the changes it would keep. 0: no bound.
    pub max_lag_bytes: i64,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            slot: "fawkes_cdc".into(),
            tables: Vec::new(),
            poll: Duration::from_millis(100),
            batch: 1000,
            max_lag_bytes: 1 << 30,
        }
    }
}

/// The topic a table's changes are broadcast on.
pub fn topic(schema: &str, table: &str) -> String {
    format!("postgres_changes:{schema}.{table}")
}

/// Where capture says that changes were lost (event `reset`, payload `{"reason"}`): its slot was
/// dropped. Followers of captured tables subscribe to it.
pub const RESETS: &str = "postgres_changes";

/// Whether `patterns` cover `schema.table`.
pub fn covers(patterns: &[String], schema: &str, table: &str) -> bool {
    let name = format!("{schema}.{table}");
    patterns.iter().any(|p| glob(p, &name))
}

fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len())
                    .filter(|i| name.is_char_boundary(head.len() + i))
                    .any(|i| glob(rest, &name[head.len() + i..]))
        }
    }
}

/// Checks a pattern list: each `schema.table`, letters, digits, `_`, `$` and `*` only (so that
/// it passes to wal2json as it is).
pub fn check_tables(tables: &[String]) -> Result<(), String> {
    for t in tables {
        let ok = t
            .split_once('.')
            .is_some_and(|(s, n)| !s.is_empty() && !n.is_empty())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_$*.".contains(c))
            && t.matches('.').count() == 1;
        if !ok {
            return Err(format!(
                "--cdc-tables: {t:?} is not schema.table (letters, digits, _ and * wildcards)"
            ));
        }
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    yes: bool,
}

#[derive(QueryableByName)]
struct Decoded {
    #[diesel(sql_type = Text)]
    lsn: String,
    #[diesel(sql_type = Text)]
    data: String,
}

#[derive(QueryableByName)]
struct TypeName {
    #[diesel(sql_type = Integer)]
    oid: i32,
    #[diesel(sql_type = Text)]
    typname: String,
}

/// Connects and checks what capture needs, with an error saying how to fix each: `wal_level`
/// logical, a role that may replicate, wal2json installed (when the slot is created).
pub fn prepare(url: &str, config: &CdcConfig) -> Result<PgConnection, String> {
    let mut c = PgConnection::establish(url).map_err(|e| format!("change capture: {e}"))?;
    let wal_level =
        diesel::sql_query("SELECT setting AS value FROM pg_settings WHERE name = 'wal_level'")
            .get_result::<Setting>(&mut c)
            .map_err(|e| format!("change capture: reading wal_level: {e}"))?
            .value;
    if wal_level != "logical" {
        return Err(format!(
            "change capture needs wal_level = logical, and this PostgreSQL has {wal_level}: \
             ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
        ));
    }
    let may = diesel::sql_query(
        "SELECT (rolreplication OR rolsuper) AS yes FROM pg_roles WHERE rolname = current_user",
    )
    .get_result::<Flag>(&mut c)
    .map_err(|e| format!("change capture: reading the role: {e}"))?;
    if !may.yes {
        return Err(
            "change capture needs a role that may replicate: ALTER ROLE <the role> REPLICATION"
                .into(),
        );
    }
    prepare_slot(&mut c, config)?;
    Ok(c)
}

/// Makes the slot unless it exists.
fn prepare_slot(c: &mut PgConnection, config: &CdcConfig) -> Result<(), String> {
    let exists = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1) AS yes",
    )
    .bind::<Text, _>(&config.slot)
    .get_result::<Flag>(c)
    .map_err(|e| format!("change capture: reading slots: {e}"))?;
    if !exists.yes {
        diesel::sql_query("SELECT pg_create_logical_replication_slot($1, 'wal2json')::text AS value")
            .bind::<Text, _>(&config.slot)
            .get_result::<Setting>(c)
            .map_err(|e| {
                let e = e.to_string();
                if e.contains("wal2json") {
                    format!("change capture: the wal2json output plugin is not installed (Debian: apt-get install postgresql-15-wal2json): {e}")
                } else {
                    format!("change capture: creating slot {}: {e}", config.slot)
                }
            })?;
        log::info!("change capture: created replication slot {}", config.slot);
    }
    Ok(())
}

/// Starts the reader on a thread of its own (it blocks on PostgreSQL), after [`prepare`]
/// succeeded. It runs for the life of the process, reconnecting after errors.
pub fn start(url: String, config: CdcConfig, endpoint: Endpoint) {
    std::thread::Builder::new()
        .name("fawkes-cdc".into())
        .spawn(move || {
            let mut reader = Reader {
                config,
                endpoint,
                types: HashMap::new(),
            };
            loop {
                match reader.run(&url) {
                    Ok(()) => return,
                    Err(e) => {
                        log::error!("change capture: {e}; trying again in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })
        .expect("a thread for change capture");
}

struct Reader {
    config: CdcConfig,
    endpoint: Endpoint,
    /// `pg_type.oid` to `typname`, read once and again when an oid is new.
    types: HashMap<i32, String>,
}

impl Reader {
    fn run(&mut self, url: &str) -> Result<(), String> {
        let mut c = prepare(url, &self.config)?;
        // One reader per slot across nodes: the lock is held by this session until it ends.
        let key = lock_key(&self.config.slot);
        loop {
            let held = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS yes")
                .bind::<BigInt, _>(key)
                .get_result::<Flag>(&mut c)
                .map_err(|e| e.to_string())?;
            if held.yes {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        log::info!("change capture: reading slot {}", self.config.slot);
        crate::metrics::CDC.reading.store(1, Relaxed);
        let result = self.read(&mut c);
        crate::metrics::CDC.reading.store(0, Relaxed);
        result
    }

    fn read(&mut self, c: &mut PgConnection) -> Result<(), String> {
        loop {
            let n = self.batch(c)?;
            self.bound_lag(c)?;
            if n == 0 {
                std::thread::sleep(self.config.poll);
            }
        }
    }

    /// Measures the WAL the slot holds back; past the bound, drops the slot and makes it again
    /// (what it held is lost, and followers are told), so the database's disk does not fill.
    fn bound_lag(&mut self, c: &mut PgConnection) -> Result<(), String> {
        #[derive(QueryableByName)]
        struct Lag {
            #[diesel(sql_type = BigInt)]
            bytes: i64,
        }
        let lag = diesel::sql_query(
            "SELECT COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 AS bytes \
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind::<Text, _>(&self.config.slot)
        .get_result::<Lag>(c)
        .map_err(|e| format!("reading slot {}'s lag: {e}", self.config.slot))?
        .bytes;
        crate::metrics::CDC.lag_bytes.store(lag, Relaxed);
        let max = self.config.max_lag_bytes;
        if max == 0 || lag <= max {
            return Ok(());
        }
        let why = format!(
            "slot {} held back {lag} bytes of WAL, over --cdc-max-lag-bytes {max}: dropped and made again; changes not yet read are lost",
            self.config.slot
        );
        log::error!("change capture: {why}");
        diesel::sql_query("SELECT pg_drop_replication_slot($1)::text AS value")
            .bind::<Text, _>(&self.config.slot)
            .get_result::<Setting>(c)
            .map_err(|e| format!("dropping slot {}: {e}", self.config.slot))?;
        crate::metrics::CDC.slot_drops.fetch_add(1, Relaxed);
        self.endpoint
            .broadcast(RESETS, "reset", json!({ "reason": why }));
        // `prepare` makes the slot again (from now on).
        prepare_slot(c, &self.config)
    }

    /// Reads, broadcasts and then confirms one batch of whole transactions; returns how many
    /// rows it read.
    fn batch(&mut self, c: &mut PgConnection) -> Result<usize, String> {
        let rows = diesel::sql_query(
            "SELECT lsn::text AS lsn, data FROM pg_logical_slot_peek_changes($1, NULL, $2, \
             'format-version', '2', 'include-timestamp', '1', 'include-type-oids', '1', \
             'include-transaction', '1', 'include-pk', '1', 'add-tables', $3)",
        )
        .bind::<Text, _>(&self.config.slot)
        .bind::<Integer, _>(self.config.batch.clamp(1, i32::MAX as i64) as i32)
        .bind::<Text, _>(self.config.tables.join(","))
        .load::<Decoded>(c)
        .map_err(|e| format!("reading slot {}: {e}", self.config.slot))?;
        let Some(last) = rows.last().map(|r| r.lsn.clone()) else {
            return Ok(0);
        };
        let mut pending: Vec<Value> = Vec::new();
        for row in &rows {
            let Ok(msg) = serde_json::from_str::<Value>(&row.data) else {
                log::error!("change capture: undecodable wal2json row at {}", row.lsn);
                continue;
            };
            match msg.get("action").and_then(Value::as_str) {
                Some("B") => pending.clear(),
                Some("I" | "U" | "D") => pending.push(msg),
                Some("C") => {
                    let at = msg
                        .get("timestamp")
                        .and_then(Value::as_str)
                        .map(iso)
                        .unwrap_or_default();
                    // Named by the commit's LSN, which grows in commit order (a change's own
                    // LSN does not, across interleaved transactions): see [`Seen`].
                    for (i, change) in pending.drain(..).enumerate() {
                        self.publish(c, &change, &at, &format!("{}#{i}", row.lsn))?;
                    }
                }
                // Truncates and logical messages are not row changes.
                _ => {}
            }
        }
        diesel::sql_query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)::text AS value")
            .bind::<Text, _>(&self.config.slot)
            .bind::<Text, _>(&last)
            .get_result::<Setting>(c)
            .map_err(|e| format!("advancing slot {}: {e}", self.config.slot))?;
        Ok(rows.len())
    }

    /// Broadcasts one change; `id` names it uniquely (its commit's LSN and place in the
    /// transaction).
    fn publish(
        &mut self,
        c: &mut PgConnection,
        msg: &Value,
        at: &str,
        id: &str,
    ) -> Result<(), String> {
        let text = |k: &str| msg.get(k).and_then(Value::as_str).unwrap_or_default();
        let (schema, table) = (text("schema"), text("table"));
        let kind = match text("action") {
            "I" => "INSERT",
            "U" => "UPDATE",
            _ => "DELETE",
        };
        let cols = |k: &str| {
            msg.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let (columns, identity) = (cols("columns"), cols("identity"));
        let described = if columns.is_empty() {
            &identity
        } else {
            &columns
        };
        let mut types = Vec::with_capacity(described.len());
        for col in described {
            let oid = col.get("typeoid").and_then(Value::as_i64).unwrap_or(0) as i32;
            types.push(json!({"name": col.get("name"), "type": self.type_name(c, oid)?}));
        }
        let row = |list: &[Value]| -> Map<String, Value> {
            list.iter()
                .filter_map(|col| {
                    let name = col.get("name")?.as_str()?.to_owned();
                    Some((name, col.get("value").cloned().unwrap_or(Value::Null)))
                })
                .collect()
        };
        let mut data = json!({
            "schema": schema,
            "table": table,
            "commit_timestamp": at,
            "type": kind,
            "columns": types,
            "errors": null,
        });
        if kind != "DELETE" {
            data["record"] = Value::Object(row(&columns));
        }
        if kind != "INSERT" {
            data["old_record"] = Value::Object(row(&identity));
        }
        // For row-level security checks (never sent to clients): the change's id, and its row's
        // primary key with each column's type.
        let after = if kind == "DELETE" {
            &identity
        } else {
            &columns
        };
        let mut key = Vec::new();
        for pk in cols("pk") {
            let name = pk.get("name").and_then(Value::as_str).unwrap_or_default();
            let oid = pk.get("typeoid").and_then(Value::as_i64).unwrap_or(0) as i32;
            let value = after
                .iter()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|c| c.get("value").cloned())
                .unwrap_or(Value::Null);
            key.push(json!({"name": name, "type": self.type_name(c, oid)?, "value": value}));
        }
        data["_id"] = json!(id);
        data["_key"] = Value::Array(key);
        self.endpoint
            .broadcast(&topic(schema, table), "change", Payload::Json(data));
        crate::metrics::CDC.changes.fetch_add(1, Relaxed);
        Ok(())
    }

    fn type_name(&mut self, c: &mut PgConnection, oid: i32) -> Result<String, String> {
        if !self.types.contains_key(&oid) {
            let all =
                diesel::sql_query("SELECT oid::int4 AS oid, typname::text AS typname FROM pg_type")
                    .load::<TypeName>(c)
                    .map_err(|e| format!("reading pg_type: {e}"))?;
            self.types = all.into_iter().map(|t| (t.oid, t.typname)).collect();
        }
        Ok(self
            .types
            .get(&oid)
            .cloned()
            .unwrap_or_else(|| "unknown".into()))
    }
}

/// Where a follower is in the stream of captured changes, to deliver each once. A reader that
/// dies between broadcasting a batch and confirming it to the slot leaves that batch to the
/// next reader, which broadcasts it again; every change carries its commit's LSN and place in
/// the transaction, which only grow (one reader at a time, in commit order; a slot made again
/// starts at the WAL's end), so a change at or before the last one delivered is a repeat.
#[derive(Debug, Default)]
pub struct Seen(Option<(u64, u32)>);

impl Seen {
    /// Whether the change `data` (a broadcast payload) comes for the first time; records it.
    /// A change without a position (the collections' own) always does.
    pub fn first_time(&mut self, data: &Value) -> bool {
        let Some(at) = data.get("_id").and_then(Value::as_str).and_then(position) else {
            return true;
        };
        if self.0.is_some_and(|last| at <= last) {
            return false;
        }
        self.0 = Some(at);
        true
    }
}

/// A change id's position: `<commit LSN>#<index>`, the LSN as PostgreSQL prints it (`16/B374D848`).
fn position(id: &str) -> Option<(u64, u32)> {
    let (lsn, index) = id.split_once('#')?;
    let (hi, lo) = lsn.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64)
        .then_some(((hi << 32) | lo, index.parse().ok()?))
}

/// The advisory lock's key: a hash of the slot's name.
fn lock_key(slot: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("fawkes cdc {slot}").as_bytes());
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// wal2json's `2026-12-07 13:46:15.042566+00` as `2026-12-07T13:46:15.042Z`.
fn iso(pg: &str) -> String {
    chrono::DateTime::parse_from_str(&format!("{pg}00"), "%Y-%m-%d %H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_str(pg, "%Y-%m-%d %H:%M:%S%.f%:z"))
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .unwrap_or_else(|_| pg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_timestamps() {
        let p = vec!["public.todos".to_owned(), "app.*".to_owned()];
        assert!(covers(&p, "public", "todos"));
        assert!(covers(&p, "app", "anything"));
        assert!(!covers(&p, "public", "todo"));
        assert!(!covers(&p, "other", "todos"));
        assert!(check_tables(&p).is_ok());
        for bad in ["todos", "public.todos;drop", "a.b.c", ".x", "x."] {
            assert!(check_tables(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert_eq!(
            iso("2026-12-07 13:46:15.042566+00"),
            "2026-12-07T13:46:15.042Z"
        );
        assert_eq!(iso("2026-12-07 15:46:15.5+02"), "2026-12-07T13:46:15.500Z");
    }

    #[test]
    fn a_change_at_or_before_the_last_one_seen_is_a_repeat() {
        let at = |id: &str| json!({ "_id": id });
        let mut seen = Seen::default();
        assert!(seen.first_time(&at("0/16B3748#0")));
        assert!(seen.first_time(&at("0/16B3748#1")));
        assert!(!seen.first_time(&at("0/16B3748#1")));
        assert!(!seen.first_time(&at("0/16B3748#0")));
        // The LSN's parts are compared as numbers, not text.
        assert!(seen.first_time(&at("0/16B3750#0")));
        assert!(seen.first_time(&at("1/0#0")));
        assert!(!seen.first_time(&at("0/FFFFFFFF#7")));
        assert!(seen.first_time(&at("A/0#0")));
        // No position, or one that does not parse: delivered (never dropped by a guess).
        assert!(seen.first_time(&json!({ "title": "x" })));
        for bad in ["", "0/1", "x/1#0", "1/100000000#0", "0/1#-1", "0/1#a"] {
            assert!(seen.first_time(&at(bad)), "{bad}");
        }
        assert!(!seen.first_time(&at("A/0#0")));
    }
}
