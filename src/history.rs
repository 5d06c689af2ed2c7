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

use crate::endpoint::Endpoint;
use crate::store::schema::{cluster_keys, topic_events, topic_seqs};
use crate::store::{now_ms, DbConnection, Store, StoreError};
use diesel::prelude::*;
use diesel::sql_types::Text;
use serde_json::{json, Map, Value};
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
}

/// Records events inside one transaction.
pub struct Recorder<'a> {
    config: &'a HistoryConfig,
    recorded: Vec<Recorded>,
}

impl<'a> Recorder<'a> {
    /// A recorder for a transaction of one's own (what [`History::write`] hands its closure).
    pub fn new(config: &'a HistoryConfig) -> Recorder<'a> {
        Recorder {
            config,
            recorded: Vec::new(),
        }
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
        });
        Ok(payload)
    }

    /// Broadcasts an event once the transaction commits, in order with the recorded ones,
    /// without recording it (a control message such as a membership's end).
    pub fn broadcast_after_commit(&mut self, topic: &str, event: &str, payload: Value) {
        self.recorded.push(Recorded {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
            seq: None,
        });
    }
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
    Ok(topic_events::table
        .filter(topic_events::topic.eq(topic))
        .filter(topic_events::seq.gt(since))
        .filter(topic_events::seq.le(upto))
        .order(topic_events::seq)
        .select((
            topic_events::seq,
            topic_events::event,
            topic_events::payload,
        ))
        .load::<(i64, String, String)>(c)?
        .into_iter()
        .map(|(s, e, p)| (s, e, serde_json::from_str(&p).unwrap_or(Value::Null)))
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
                    let events = events_between(c, &topic, after, upto.unwrap_or(latest))?;
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

/// Recorded writes of one server: the store they go to, their retention, and the order their
/// broadcasts leave in.
pub struct History {
    store: Store,
    config: HistoryConfig,
    /// Held from a write's start until its broadcasts are out: this process's recorded
    /// broadcasts leave in commit order, so each topic's in seq order.
    order: Arc<tokio::sync::Mutex<()>>,
}

impl History {
    pub fn new(store: Store, config: HistoryConfig) -> History {
        History {
            store,
            config,
            order: Default::default(),
        }
    }

    /// Sweeps expired events every `every`, for as long as the server runs.
    pub fn sweep_every(&self, every: Duration) {
        let store = self.store.clone();
        actix_rt::spawn(async move {
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
        let (order, store, config) = (self.order.clone(), self.store.clone(), self.config.clone());
        let endpoint = endpoint.clone();
        let task = async move {
            let _order = order.lock().await;
            let (value, recorded) = store
                .write(move |c| {
                    let mut rec = Recorder::new(&config);
                    let v = f(c, &mut rec)?;
                    Ok((v, rec.into_recorded()))
                })
                .await?;
            let pubsub = endpoint.pubsub();
            for r in recorded {
                match r.seq {
                    Some(seq) => {
                        pubsub.broadcast_recorded(&r.topic, &r.event, r.payload.into(), seq)
                    }
                    None => pubsub.broadcast(&r.topic, &r.event, r.payload.into()),
                }
            }
            Ok(value)
        };
        let conn = crate::pubsub::current_origin();
        actix_rt::spawn(crate::pubsub::Origin { conn, fut: task })
            .await
            .map_err(|e| StoreError::Pool(format!("write task: {e}")))?
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
}
