//! Recorded topics: a per-topic stream of events numbered 1, 2, 3, ... and kept in the database,
//! so that a client coming back with `{"since": S}` gets exactly the events it missed, or is
//! told to start over (`"reset": true`) when the stream no longer reaches back that far.
//!
//! A write records its events inside its transaction ([`Recorder::record`]) and they are
//! broadcast, with their `"seq"`, once it commits; [`History::write`] keeps this process's
//! recorded broadcasts in sequence order. A join reads the topic's position
//! ([`position`]) and tells its channel to skip what the reply covers
//! ([`crate::ChannelContext::skip_recorded_through`]): the reply and the broadcasts after it
//! never overlap nor leave a gap.

use crate::cluster::order::Event;
use crate::endpoint::Endpoint;
use crate::pubsub::After;
use crate::store::schema::{cluster_keys, topic_events, topic_seqs};
use crate::store::{now_ms, DbConnection, Store, StoreError};
use diesel::prelude::*;
use diesel::sql_types::Text;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How much of a topic's stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_events: i64,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_events: 1000,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// Retention per topic prefix (the longest matching prefix wins), and for the rest.
#[derive(Debug, Clone, Default)]
pub struct HistoryConfig {
    pub default: Retention,
    pub by_prefix: Vec<(String, Retention)>,
}

impl HistoryConfig {
    pub fn retention(&self, topic: &str) -> Retention {
        self.by_prefix
            .iter()
            .filter(|(p, _)| topic.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.default, |(_, r)| *r)
    }

    /// `PREFIX=EVENTS/SECONDS`, e.g. `user:=200/3600`.
    pub fn parse_rule(s: &str) -> Result<(String, Retention), String> {
        let bad = || format!("{s:?}: expected PREFIX=EVENTS/SECONDS, e.g. user:=200/3600");
        let (prefix, rest) = s.split_once('=').ok_or_else(bad)?;
        let (events, secs) = rest.split_once('/').ok_or_else(bad)?;
        let max_events = events
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(bad)?;
        let secs = secs
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(bad)?;
        Ok((
            prefix.to_owned(),
            Retention {
                max_events,
                max_age: Duration::from_secs(secs),
            },
        ))
    }
}

/// An event recorded in a transaction, broadcast once the transaction commits.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub topic: String,
    pub event: String,
    /// The payload, with its `"seq"` when recorded.
    pub payload: Value,
    /// `None` for a broadcast that is only ordered with the recorded ones, not recorded.
    pub seq: Option<i64>,
    /// What it is delivered after on every node (see [`Recorder::deliver_after`]).
    pub after: Option<After>,
}

/// Records events inside one transaction.
pub struct Recorder<'a> {
    config: &'a HistoryConfig,
    recorded: Vec<Recorded>,
    /// (topic, on): see [`Recorder::deliver_after`].
    ties: Vec<(String, String)>,
}

impl<'a> Recorder<'a> {
    /// A recorder for a transaction of one's own (what [`History::write`] hands its closure).
    pub fn new(config: &'a HistoryConfig) -> Recorder<'a> {
        Recorder {
            config,
            recorded: Vec::new(),
            ties: Vec::new(),
        }
    }

    /// Every event this write records on `topic` from now on is delivered, on each node of a
    /// cluster, only after `on`'s recorded broadcasts committed before this write (see
    /// [`After`]): `on`'s sequence row is taken along with `topic`'s, so a write on `on` that
    /// commits first is numbered below the seq the event names, and one that commits later
    /// above it. How a thread's reply stays behind a removal recorded on its room's stream,
    /// whichever node each reaches first. Kept in the change log with the event.
    pub fn deliver_after(&mut self, topic: &str, on: &str) {
        if topic != on && !self.ties.iter().any(|(t, _)| t == topic) {
            self.ties.push((topic.to_owned(), on.to_owned()));
        }
    }

    /// The topic `topic`'s events are delivered after, if any.
    fn tie(&self, topic: &str) -> Option<&str> {
        self.ties
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, on)| on.as_str())
    }

    /// What was recorded, in order, to broadcast once the transaction commits.
    pub fn into_recorded(self) -> Vec<Recorded> {
        self.recorded
    }

    /// Takes `topic`'s next sequence number, adds it to `payload` (a JSON object) as `"seq"`,
    /// stores the event and trims the stream to its retention. Returns the payload with its seq.
    pub fn record(
        &mut self,
        c: &mut DbConnection,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<Value, StoreError> {
        let keep = self.config.retention(topic);
        self.record_kept(c, topic, event, payload, keep)
    }

    /// [`Recorder::record`] with a retention of the caller's own (a collection's change log).
    pub fn record_kept(
        &mut self,
        c: &mut DbConnection,
        topic: &str,
        event: &str,
        mut payload: Value,
        keep: Retention,
    ) -> Result<Value, StoreError> {
        let after = match self.tie(topic) {
            Some(on) => {
                let on = on.to_owned();
                let seq = lock_seqs(c, std::slice::from_ref(&on))?
                    .into_iter()
                    .map(|(_, s)| s)
                    .next()
                    .unwrap_or(0);
                Some(After { topic: on, seq })
            }
            None => None,
        };
        let seq = next_seq(c, topic)?;
        if let Value::Object(m) = &mut payload {
            m.insert("seq".into(), json!(seq));
        }
        let now = now_ms();
        let max_age = i64::try_from(keep.max_age.as_millis()).unwrap_or(i64::MAX);
        diesel::insert_into(topic_events::table)
            .values((
                topic_events::topic.eq(topic),
                topic_events::seq.eq(seq),
                topic_events::event.eq(event),
                topic_events::payload.eq(payload.to_string()),
                topic_events::inserted_at.eq(now),
                topic_events::expires_at.eq(now.saturating_add(max_age)),
                topic_events::after_topic.eq(after.as_ref().map(|a| a.topic.as_str())),
                topic_events::after_seq.eq(after.as_ref().map(|a| a.seq)),
            ))
            .execute(c)?;
        diesel::delete(
            topic_events::table
                .filter(topic_events::topic.eq(topic))
                .filter(
                    topic_events::seq
                        .le(seq - keep.max_events)
                        .or(topic_events::expires_at.le(now)),
                ),
        )
        .execute(c)?;
        self.recorded.push(Recorded {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: payload.clone(),
            seq: Some(seq),
            after,
        });
        Ok(payload)
    }

    /// [`Recorder::record`] for many events at once, on any topics (a message to a room records
    /// an `unread_updated` for each of its members): five statements whatever their number.
    /// The topics' sequence rows are taken in topic order, so two writes recording on the same
    /// topics never deadlock. Returns the payloads with their seq, in the order given.
    pub fn record_all(
        &mut self,
        c: &mut DbConnection,
        events: Vec<(String, String, Value)>,
    ) -> Result<Vec<Value>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let topics: BTreeSet<&str> = events.iter().map(|(t, _, _)| t.as_str()).collect();
        // The topics some of them are delivered after are taken too, in the same order.
        let ons: Vec<&str> = topics.iter().filter_map(|t| self.tie(t)).collect();
        let locked: BTreeSet<&str> = topics.iter().copied().chain(ons).collect();
        let locked: Vec<String> = locked.into_iter().map(str::to_owned).collect();
        let mut last: HashMap<String, i64> = lock_seqs(c, &locked)?.into_iter().collect();
        // Where this write found them, before its own events.
        let afters: HashMap<String, After> = topics
            .iter()
            .filter_map(|t| {
                let on = self.tie(t)?;
                let seq = last.get(on).copied().unwrap_or(0);
                Some((
                    t.to_string(),
                    After {
                        topic: on.to_owned(),
                        seq,
                    },
                ))
            })
            .collect();
        let topics: Vec<String> = topics.into_iter().map(str::to_owned).collect();
        let now = now_ms();
        let mut rows = Vec::with_capacity(events.len());
        let mut out = Vec::with_capacity(events.len());
        for (topic, event, mut payload) in events {
            let seq = last.entry(topic.clone()).or_insert(0);
            *seq += 1;
            if let Value::Object(m) = &mut payload {
                m.insert("seq".into(), json!(*seq));
            }
            let keep = self.config.retention(&topic);
            let max_age = i64::try_from(keep.max_age.as_millis()).unwrap_or(i64::MAX);
            let after = afters.get(&topic).cloned();
            rows.push(EventRow {
                topic: topic.clone(),
                seq: *seq,
                event: event.clone(),
                payload: payload.to_string(),
                expires_at: now.saturating_add(max_age),
                after_topic: after.as_ref().map(|a| a.topic.clone()),
                after_seq: after.as_ref().map(|a| a.seq),
            });
            self.recorded.push(Recorded {
                topic,
                event,
                payload: payload.clone(),
                seq: Some(*seq),
                after,
            });
            out.push(payload);
        }
        // Each topic keeps its last `max_events`: what is at or below this goes.
        let trims: Vec<(String, i64, i64)> = topics
            .iter()
            .map(|t| {
                let seq = last.get(t).copied().unwrap_or(0);
                (t.clone(), seq, seq - self.config.retention(t).max_events)
            })
            .collect();
        store_events(c, &rows, &trims, now)?;
        Ok(out)
    }

    /// Broadcasts an event once the transaction commits, in order with the recorded ones,
    /// without recording it (a control message such as a membership's end).
    pub fn broadcast_after_commit(&mut self, topic: &str, event: &str, payload: Value) {
        self.recorded.push(Recorded {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
            seq: None,
            after: None,
        });
    }
}

/// An event row as [`Recorder::record_all`] writes it.
#[derive(serde::Serialize)]
struct EventRow {
    topic: String,
    seq: i64,
    event: String,
    payload: String,
    expires_at: i64,
    after_topic: Option<String>,
    after_seq: Option<i64>,
}

/// Creates the sequence rows of `topics` (sorted) that do not exist yet, takes them all in that
/// order (locked until the transaction ends on PostgreSQL; SQLite has one writer) and returns
/// their current seqs.
fn lock_seqs(c: &mut DbConnection, topics: &[String]) -> Result<Vec<(String, i64)>, StoreError> {
    use diesel::sql_types::{Array, BigInt};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        topic: String,
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }
    let rows: Vec<Row> = match c {
        DbConnection::Sqlite(c) => {
            let list = serde_json::to_string(topics).unwrap_or_default();
            diesel::sql_query(
                "INSERT INTO topic_seqs (topic, seq) SELECT value, 0 FROM json_each(?) WHERE true \
                 ON CONFLICT (topic) DO NOTHING",
            )
            .bind::<Text, _>(&list)
            .execute(c)?;
            diesel::sql_query(
                "SELECT topic, seq FROM topic_seqs WHERE topic IN (SELECT value FROM json_each(?))",
            )
            .bind::<Text, _>(&list)
            .load(c)?
        }
        DbConnection::Postgres(c) => {
            diesel::sql_query(
                "INSERT INTO topic_seqs (topic, seq) SELECT t, 0 FROM unnest($1) AS t ORDER BY t \
                 ON CONFLICT (topic) DO NOTHING",
            )
            .bind::<Array<Text>, _>(topics)
            .execute(c)?;
            diesel::sql_query(
                "SELECT topic, seq FROM topic_seqs WHERE topic = ANY($1) ORDER BY topic FOR UPDATE",
            )
            .bind::<Array<Text>, _>(topics)
            .load(c)?
        }
    };
    Ok(rows.into_iter().map(|r| (r.topic, r.seq)).collect())
}

/// Stores `rows`, moves each topic of `trims` (topic, last seq, trim at or below) to its last
/// seq and trims its stream to its count; three statements whatever the number of rows.
/// Expired events are left to the sweep ([`sweep_expired`]): replays skip them already, and
/// looking for them per topic costs more than the rest together.
fn store_events(
    c: &mut DbConnection,
    rows: &[EventRow],
    trims: &[(String, i64, i64)],
    now: i64,
) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, BigInt, Nullable};
    match c {
        DbConnection::Sqlite(c) => {
            let rows = serde_json::to_string(rows).unwrap_or_default();
            let trims = serde_json::to_string(trims).unwrap_or_default();
            diesel::sql_query(
                "INSERT INTO topic_events \
                 (topic, seq, event, payload, inserted_at, expires_at, after_topic, after_seq) \
                 SELECT value ->> 'topic', value ->> 'seq', value ->> 'event', value ->> 'payload', \
                 ?, value ->> 'expires_at', value ->> 'after_topic', value ->> 'after_seq' \
                 FROM json_each(?)",
            )
            .bind::<BigInt, _>(now)
            .bind::<Text, _>(&rows)
            .execute(c)?;
            diesel::sql_query(
                "UPDATE topic_seqs SET seq = t.value ->> '$[1]' FROM json_each(?) AS t \
                 WHERE topic_seqs.topic = t.value ->> '$[0]'",
            )
            .bind::<Text, _>(&trims)
            .execute(c)?;
            diesel::sql_query(
                "DELETE FROM topic_events WHERE rowid IN (SELECT e.rowid FROM json_each(?) AS t \
                 JOIN topic_events AS e \
                 ON e.topic = t.value ->> '$[0]' AND e.seq <= t.value ->> '$[2]')",
            )
            .bind::<Text, _>(&trims)
            .execute(c)?;
        }
        DbConnection::Postgres(c) => {
            let col = |f: fn(&EventRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
            let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            let expires: Vec<i64> = rows.iter().map(|r| r.expires_at).collect();
            let after_topics: Vec<Option<String>> =
                rows.iter().map(|r| r.after_topic.clone()).collect();
            let after_seqs: Vec<Option<i64>> = rows.iter().map(|r| r.after_seq).collect();
            diesel::sql_query(
                "INSERT INTO topic_events \
                 (topic, seq, event, payload, inserted_at, expires_at, after_topic, after_seq) \
                 SELECT topic, seq, event, payload, $5, expires_at, after_topic, after_seq \
                 FROM unnest($1, $2, $3, $4, $6, $7, $8) \
                 AS r(topic, seq, event, payload, expires_at, after_topic, after_seq)",
            )
            .bind::<Array<Text>, _>(col(|r| r.topic.clone()))
            .bind::<Array<BigInt>, _>(&seqs)
            .bind::<Array<Text>, _>(col(|r| r.event.clone()))
            .bind::<Array<Text>, _>(col(|r| r.payload.clone()))
            .bind::<BigInt, _>(now)
            .bind::<Array<BigInt>, _>(&expires)
            .bind::<Array<Nullable<Text>>, _>(&after_topics)
            .bind::<Array<Nullable<BigInt>>, _>(&after_seqs)
            .execute(c)?;
            let topics: Vec<&str> = trims.iter().map(|t| t.0.as_str()).collect();
            let lasts: Vec<i64> = trims.iter().map(|t| t.1).collect();
            let floors: Vec<i64> = trims.iter().map(|t| t.2).collect();
            diesel::sql_query(
                "UPDATE topic_seqs SET seq = t.seq FROM unnest($1, $2) AS t(topic, seq) \
                 WHERE topic_seqs.topic = t.topic",
            )
            .bind::<Array<Text>, _>(&topics)
            .bind::<Array<BigInt>, _>(&lasts)
            .execute(c)?;
            diesel::sql_query(
                "DELETE FROM topic_events AS e USING unnest($1, $2) AS t(topic, floor) \
                 WHERE e.topic = t.topic AND e.seq <= t.floor",
            )
            .bind::<Array<Text>, _>(&topics)
            .bind::<Array<BigInt>, _>(&floors)
            .execute(c)?;
        }
    }
    Ok(())
}

/// The topic's latest sequence number, 0 before any event.
pub fn latest_seq(c: &mut DbConnection, topic: &str) -> Result<i64, StoreError> {
    Ok(topic_seqs::table
        .find(topic)
        .select(topic_seqs::seq)
        .first::<i64>(c)
        .optional()?
        .unwrap_or(0))
}

/// A topic's stored events after `since`, in order: (seq, event, payload).
pub fn events_after(
    c: &mut DbConnection,
    topic: &str,
    since: i64,
) -> Result<Vec<(i64, String, Value)>, StoreError> {
    events_between(c, topic, since, i64::MAX)
}

/// A topic's stored events after `since` up to `upto` included, in order.
pub fn events_between(
    c: &mut DbConnection,
    topic: &str,
    since: i64,
    upto: i64,
) -> Result<Vec<(i64, String, Value)>, StoreError> {
    Ok(logged_between(c, topic, since, upto)?
        .into_iter()
        .map(|e| (e.seq, e.event, e.payload))
        .collect())
}

/// A topic's stored events after `since` up to `upto` included, in order, with what each is
/// delivered after: what a cluster node fills a gap with.
fn logged_between(
    c: &mut DbConnection,
    topic: &str,
    since: i64,
    upto: i64,
) -> Result<Vec<Event>, StoreError> {
    type Row = (i64, String, String, Option<String>, Option<i64>);
    Ok(topic_events::table
        .filter(topic_events::topic.eq(topic))
        .filter(topic_events::seq.gt(since))
        .filter(topic_events::seq.le(upto))
        .order(topic_events::seq)
        .select((
            topic_events::seq,
            topic_events::event,
            topic_events::payload,
            topic_events::after_topic,
            topic_events::after_seq,
        ))
        .load::<Row>(c)?
        .into_iter()
        .map(|(seq, event, payload, after_topic, after_seq)| Event {
            seq,
            event,
            payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
            after: after_topic
                .zip(after_seq)
                .map(|(topic, seq)| After { topic, seq }),
        })
        .collect())
}

/// The change log as a cluster node's [`crate::cluster::Backfill`]: a gap in a recorded topic's
/// broadcasts (one lost while Redis was away, say) is filled from it.
pub struct ChangeLog(pub Store);

impl crate::cluster::Backfill for ChangeLog {
    fn events(
        &self,
        topic: &str,
        after: i64,
        upto: Option<i64>,
    ) -> futures_util::future::LocalBoxFuture<'static, Result<crate::cluster::order::Filled, String>>
    {
        let (store, topic) = (self.0.clone(), topic.to_owned());
        Box::pin(async move {
            store
                .read(move |c| {
                    let latest = latest_seq(c, &topic)?;
                    let events = logged_between(c, &topic, after, upto.unwrap_or(latest))?;
                    Ok(crate::cluster::order::Filled { events, latest })
                })
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The key the nodes on this database sign their recorded broadcasts with
/// ([`crate::cluster::seal`]): made at random by the first node to ask, the same for all after.
pub fn cluster_key(c: &mut DbConnection) -> Result<Vec<u8>, StoreError> {
    let fresh: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let insert = "INSERT INTO cluster_keys (name, secret) VALUES ('recorded', ?) ON CONFLICT (name) DO NOTHING";
    match c {
        DbConnection::Sqlite(c) => diesel::sql_query(insert)
            .bind::<Text, _>(&fresh)
            .execute(c)?,
        DbConnection::Postgres(c) => diesel::sql_query(insert.replace('?', "$1"))
            .bind::<Text, _>(&fresh)
            .execute(c)?,
    };
    let hex = cluster_keys::table
        .find("recorded")
        .select(cluster_keys::secret)
        .first::<String>(c)?;
    Ok((0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect())
}

/// The topic's next sequence number; the row it takes stays locked (PostgreSQL) or the write
/// lock held (SQLite) until the transaction ends.
fn next_seq(c: &mut DbConnection, topic: &str) -> Result<i64, StoreError> {
    match c {
        DbConnection::Sqlite(c) => diesel::sql_query(
            "INSERT INTO topic_seqs (topic, seq) VALUES (?, 0) ON CONFLICT (topic) DO NOTHING",
        )
        .bind::<Text, _>(topic)
        .execute(c)?,
        DbConnection::Postgres(c) => diesel::sql_query(
            "INSERT INTO topic_seqs (topic, seq) VALUES ($1, 0) ON CONFLICT (topic) DO NOTHING",
        )
        .bind::<Text, _>(topic)
        .execute(c)?,
    };
    Ok(diesel::update(topic_seqs::table.find(topic))
        .set(topic_seqs::seq.eq(topic_seqs::seq + 1))
        .returning(topic_seqs::seq)
        .get_result::<i64>(c)?)
}

/// Where a topic's stream stands for a joining client.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// The latest seq (0 before any event).
    pub seq: i64,
    /// For a join with `since`: the events after it, or `None` when the stream no longer
    /// covers it (a reset).
    pub missed: Option<Option<Vec<Value>>>,
}

impl Position {
    /// The join reply: `reply`'s fields (a JSON object) and [`Position::reply_fields`]. The
    /// channel skips from now on the recorded broadcasts the reply covers.
    pub fn join_reply(&self, ctx: &crate::ChannelContext, reply: Value) -> crate::Payload {
        ctx.skip_recorded_through(self.seq);
        let mut fields = match reply {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        fields.extend(self.reply_fields());
        crate::Payload::Json(Value::Object(fields))
    }

    /// What a join reply adds: `"seq"`, and `"missed"` or `"reset": true` for a `since`.
    pub fn reply_fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("seq".into(), json!(self.seq));
        match &self.missed {
            None => {}
            Some(Some(events)) => {
                m.insert("missed".into(), Value::Array(events.clone()));
            }
            Some(None) => {
                m.insert("reset".into(), json!(true));
            }
        }
        m
    }
}

/// Reads `topic`'s latest seq and, with `since`, the events after it: `{"event", "payload",
/// "seq"}` in order. Run it in the transaction of the join's other reads, so that they all see
/// the same commit.
pub fn position(
    c: &mut DbConnection,
    topic: &str,
    since: Option<i64>,
) -> Result<Position, StoreError> {
    let seq = latest_seq(c, topic)?;
    let Some(since) = since else {
        return Ok(Position { seq, missed: None });
    };
    if since > seq {
        return Ok(Position {
            seq,
            missed: Some(None),
        });
    }
    let rows = topic_events::table
        .filter(topic_events::topic.eq(topic))
        .filter(topic_events::seq.gt(since))
        .filter(topic_events::expires_at.gt(now_ms()))
        .order(topic_events::seq)
        .select((
            topic_events::seq,
            topic_events::event,
            topic_events::payload,
        ))
        .load::<(i64, String, String)>(c)?;
    // Served only when the stream still holds every event after `since`.
    if rows.len() as i64 != seq - since {
        return Ok(Position {
            seq,
            missed: Some(None),
        });
    }
    let events = rows
        .into_iter()
        .map(|(s, event, payload)| {
            let payload: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
            json!({"event": event, "payload": payload, "seq": s})
        })
        .collect();
    Ok(Position {
        seq,
        missed: Some(Some(events)),
    })
}

/// Deletes every expired event, of every topic: a topic without new events is not trimmed
/// by its writes. Returns how many went.
pub fn sweep_expired(c: &mut DbConnection) -> Result<usize, StoreError> {
    Ok(
        diesel::delete(topic_events::table.filter(topic_events::expires_at.le(now_ms())))
            .execute(c)?,
    )
}

/// Reads the `since` of a join's params: absent or null is none; anything but a
/// non-negative integer is an error, with the reason to reply.
pub fn since_param(params: &crate::Payload) -> Result<Option<i64>, String> {
    match params.json().and_then(|p| p.get("since")) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|s| *s >= 0)
            .map(Some)
            .ok_or_else(|| "since must be a non-negative integer".to_owned()),
    }
}

/// Writes waiting or running at once, by default; see [`History::with_max_pending_writes`].
pub const DEFAULT_MAX_PENDING_WRITES: usize = 1024;
/// Longest a write's broadcasts wait for those of writes that committed before it. They are
/// already committed and only have their broadcasts to send, so this is never reached unless
/// one of them was lost; then the order gives way rather than stall every later write.
const TURN_WAIT: Duration = Duration::from_secs(5);

/// Recorded writes of one server: the store they go to, their retention, and the order their
/// broadcasts leave in.
///
/// Transactions run side by side (on PostgreSQL; SQLite has one writer). Those with something
/// to broadcast are numbered as they commit ([`crate::store::CommitOrder`]) and broadcast in
/// that order (`turn`): this process's recorded broadcasts leave in commit order, so each
/// topic's in seq order, and a write's broadcasts never overtake one committed before it.
pub struct History {
    store: Store,
    config: HistoryConfig,
    commits: Arc<crate::store::CommitOrder>,
    /// The number of the last write whose broadcasts are out.
    turn: Arc<tokio::sync::watch::Sender<u64>>,
    /// Writes waiting or running; past `max_pending` a write is refused at once.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    max_pending: usize,
}

impl History {
    pub fn new(store: Store, config: HistoryConfig) -> History {
        History {
            store,
            config,
            commits: Default::default(),
            turn: Arc::new(tokio::sync::watch::Sender::new(0)),
            pending: Default::default(),
            max_pending: DEFAULT_MAX_PENDING_WRITES,
        }
    }

    /// Bounds the writes waiting or running at once (for a pool slot, the database, or their
    /// turn to broadcast): one more is refused at once with [`StoreError::Busy`] (503 over
    /// REST) instead of queueing without bound while the database is slow or down.
    pub fn with_max_pending_writes(mut self, max: usize) -> History {
        self.max_pending = max.max(1);
        self
    }

    /// Sweeps expired events every `every`, for as long as the server runs.
    pub fn sweep_every(&self, every: Duration) {
        let store = self.store.clone();
        crate::task::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match store.write(sweep_expired).await {
                    Ok(0) => {}
                    Ok(n) => log::debug!("history: swept {n} expired events"),
                    Err(e) => log::warn!("history: sweeping expired events: {e}"),
                }
            }
        });
    }

    /// Runs a writing transaction that may record events, then broadcasts them in order. It
    /// runs as a task of its own: a caller that goes away (a client hanging up on a REST call)
    /// cannot leave a committed event unbroadcast. The calling connection still gets what it
    /// broadcasts ahead of its reply, as from any handler.
    pub async fn write<T, F>(&self, endpoint: &Endpoint, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection, &mut Recorder<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        use std::sync::atomic::Ordering::Relaxed;
        if self.pending.fetch_add(1, Relaxed) >= self.max_pending {
            self.pending.fetch_sub(1, Relaxed);
            crate::metrics::ENGINE.writes_refused.fetch_add(1, Relaxed);
            return Err(StoreError::Busy(format!(
                "{} writes already waiting",
                self.max_pending
            )));
        }
        let pending = Pending(self.pending.clone());
        let (commits, store, config) = (
            self.commits.clone(),
            self.store.clone(),
            self.config.clone(),
        );
        let (turn, endpoint) = (self.turn.clone(), endpoint.clone());
        let task = async move {
            let _pending = pending;
            let ((value, recorded), number) = store
                .write_numbered(commits, move |c| {
                    let mut rec = Recorder::new(&config);
                    let v = f(c, &mut rec)?;
                    let recorded = rec.into_recorded();
                    let numbered = !recorded.is_empty();
                    Ok(((v, recorded), numbered))
                })
                .await?;
            let Some(number) = number else {
                return Ok(value);
            };
            let mut watch = turn.subscribe();
            let mine = watch.wait_for(|last| *last + 1 >= number);
            if tokio::time::timeout(TURN_WAIT, mine).await.is_err() {
                log::error!(
                    "history: write {number} broadcasts out of turn: an earlier one was lost"
                );
            }
            // Whatever happens below, the next write gets its turn.
            let _next = Turn(turn, number);
            let pubsub = endpoint.pubsub();
            for r in recorded {
                match r.seq {
                    Some(seq) => pubsub.broadcast_recorded(
                        &r.topic,
                        &r.event,
                        r.payload.into(),
                        seq,
                        r.after,
                    ),
                    None => pubsub.broadcast(&r.topic, &r.event, r.payload.into()),
                }
            }
            Ok(value)
        };
        let conn = crate::pubsub::current_origin();
        crate::task::spawn(crate::pubsub::Origin { conn, fut: task })
            .await
            .map_err(|e| StoreError::Pool(format!("write task: {e}")))?
    }
}

/// Counts a write as pending until dropped.
struct Pending(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Hands the turn to the write after `.1` when dropped.
struct Turn(Arc<tokio::sync::watch::Sender<u64>>, u64);

impl Drop for Turn {
    fn drop(&mut self) {
        let n = self.1;
        self.0.send_modify(|last| *last = (*last).max(n));
    }
}

impl History {
    /// Records one event on `topic` in a transaction of its own and broadcasts it: the simple
    /// case of [`History::write`].
    pub async fn broadcast_recorded(
        &self,
        endpoint: &Endpoint,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<Value, StoreError> {
        let (topic, event) = (topic.to_owned(), event.to_owned());
        self.write(endpoint, move |c, rec| {
            rec.record(c, &topic, &event, payload)
        })
        .await
    }

    /// For a channel's `join`: reads the topic's position for the `since` in `params` and skips,
    /// for this channel, what the reply covers. Returns the reply (`"seq"`, and `"missed"` or
    /// `"reset"`), or the error reply for a bad `since`.
    pub async fn join(
        &self,
        ctx: &crate::ChannelContext,
        params: &crate::Payload,
    ) -> Result<crate::Payload, crate::Payload> {
        let reason = |r: String| crate::Payload::Json(json!({ "reason": r }));
        let since = since_param(params).map_err(reason)?;
        let topic = ctx.topic().to_owned();
        let pos = self
            .store
            .read(move |c| position(c, &topic, since))
            .await
            .map_err(|e| {
                log::error!("history of {}: {e}", ctx.topic());
                reason("could not read the topic's history".into())
            })?;
        Ok(pos.join_reply(ctx, Value::Object(Map::new())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_by_longest_prefix() {
        let mut c = HistoryConfig::default();
        c.by_prefix
            .push(HistoryConfig::parse_rule("user:=200/3600").unwrap());
        c.by_prefix
            .push(HistoryConfig::parse_rule("user:1=5/60").unwrap());
        assert_eq!(c.retention("community:feed"), Retention::default());
        assert_eq!(c.retention("user:7").max_events, 200);
        assert_eq!(c.retention("user:12").max_age, Duration::from_secs(60));
        for bad in ["user:", "user:=0/10", "user:=5/0", "user:=x/1", "=5"] {
            assert!(HistoryConfig::parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reply_fields_for_each_case() {
        let p = |missed| Position { seq: 7, missed };
        assert_eq!(Value::Object(p(None).reply_fields()), json!({"seq": 7}));
        assert_eq!(
            Value::Object(p(Some(None)).reply_fields()),
            json!({"seq": 7, "reset": true})
        );
        assert_eq!(
            Value::Object(p(Some(Some(vec![json!(1)]))).reply_fields()),
            json!({"seq": 7, "missed": [1]})
        );
    }

    /// A thread's events name where its room's stream stood when they were written, in the
    /// broadcasts and in the change log; clients' replays show none of it.
    #[test]
    fn events_tied_to_another_stream_name_where_it_stood() {
        let path = std::env::temp_dir().join(format!("fawkes-tie-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = Store::open(path.to_str().unwrap()).unwrap();
        let mut c = store.conn().unwrap();
        let config = HistoryConfig::default();
        let mut rec = Recorder::new(&config);
        rec.record(&mut c, "channel:1", "member_removed", json!({"user_id": 2}))
            .unwrap();
        rec.record(&mut c, "channel:1", "new_message", json!({}))
            .unwrap();
        assert!(rec.into_recorded().iter().all(|r| r.after.is_none()));

        let mut rec = Recorder::new(&config);
        rec.deliver_after("thread:9", "channel:1");
        let events = [
            ("thread:9", "new_message", json!({"id": 10})),
            ("channel:1", "thread_updated", json!({"message_id": 9})),
            ("user:3", "unread_updated", json!({})),
        ];
        rec.record_all(
            &mut c,
            events
                .iter()
                .map(|(t, e, p)| (t.to_string(), e.to_string(), p.clone()))
                .collect(),
        )
        .unwrap();
        // One at a time too: the room's stream is at 3 by now.
        rec.record(&mut c, "thread:9", "message_deleted", json!({"id": 10}))
            .unwrap();
        let at = |seq| {
            Some(After {
                topic: "channel:1".into(),
                seq,
            })
        };
        let got: Vec<_> = rec
            .into_recorded()
            .into_iter()
            .map(|r| (r.topic, r.seq, r.after))
            .collect();
        assert_eq!(
            got,
            vec![
                ("thread:9".to_owned(), Some(1), at(2)),
                ("channel:1".to_owned(), Some(3), None),
                ("user:3".to_owned(), Some(1), None),
                ("thread:9".to_owned(), Some(2), at(3)),
            ]
        );
        let logged = logged_between(&mut c, "thread:9", 0, 10).unwrap();
        assert_eq!(
            logged,
            vec![
                Event {
                    seq: 1,
                    event: "new_message".into(),
                    payload: json!({"id": 10, "seq": 1}),
                    after: at(2),
                },
                Event {
                    seq: 2,
                    event: "message_deleted".into(),
                    payload: json!({"id": 10, "seq": 2}),
                    after: at(3),
                },
            ]
        );
        assert_eq!(
            logged_between(&mut c, "channel:1", 0, 10).unwrap()[2].after,
            None
        );
        let replay = position(&mut c, "thread:9", Some(0)).unwrap();
        assert_eq!(
            Value::Object(replay.reply_fields()),
            json!({"seq": 2, "missed": [
                {"event": "new_message", "payload": {"id": 10, "seq": 1}, "seq": 1},
                {"event": "message_deleted", "payload": {"id": 10, "seq": 2}, "seq": 2},
            ]})
        );
        drop(c);
        let _ = std::fs::remove_file(&path);
    }
}
