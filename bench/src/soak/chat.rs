//! The soak's chat on `fawkes serve --demo`: its rooms, made over REST with every demo user a
//! member, and the messages `soak <run> <n>` (numbered per room) pushed as `new_message` by the
//! first users in turn, each over a WebSocket of its own joined to every room. A writer whose
//! connection fails moves to the next node; a message whose reply was lost may have been
//! written, and is sent again, its second copy then not a repeat.

use super::{Published, Rest};
use crate::conn::{Incoming, Target};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// Users that write: at the soak's default 5 messages a second each writes one every 2 s,
/// within the chat's limit of 10 messages per 10 s per user.
const WRITERS: usize = 10;

/// Rounds over the nodes before a message counts as not sent (and its deliveries as lost).
const ROUNDS: usize = 30;

/// A soak room: its id and the messages published in it.
pub struct Room {
    pub id: i64,
    pub published: Published,
}

impl Room {
    pub fn topic(&self) -> String {
        format!("channel:{}", self.id)
    }
}

/// One writing user's connection: frames out, and the replies its reader hands back.
struct Writer {
    sink: SplitSink<crate::conn::Ws, Message>,
    replies: mpsc::UnboundedReceiver<(String, Value)>,
    reader: tokio::task::JoinHandle<()>,
    beat: Instant,
    pushes: u64,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Writer {
    /// Connects to `node` as the user of `token` and joins every room (join ref = room index).
    async fn open(
        target: &Target,
        node: usize,
        token: &str,
        rooms: &[Room],
    ) -> Result<Writer, String> {
        let query = format!("token={token}&vsn=2.0.0");
        let ws = timeout(
            crate::conn::STEP_TIMEOUT,
            target.connect_query(node, &query),
        )
        .await
        .map_err(|_| "chat writer: connect timed out".to_string())??;
        let (sink, mut stream) = ws.split();
        let (tx, replies) = mpsc::unbounded_channel();
        // Reads everything (room broadcasts, presence) so the server never waits on it.
        let reader = tokio::spawn(async move {
            loop {
                let t = match Incoming::from(stream.next().await) {
                    Incoming::Text(t) => t,
                    // Over: stop (a closed stream answers at once, forever).
                    Incoming::Closed(_) => return,
                    _ => continue,
                };
                let Ok(Value::Array(a)) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if a.len() == 5 && a[3] == "phx_reply" {
                    let r = a[1].as_str().unwrap_or_default().to_owned();
                    if tx.send((r, a[4].clone())).is_err() {
                        return;
                    }
                }
            }
        });
        let mut w = Writer {
            sink,
            replies,
            reader,
            beat: Instant::now(),
            pushes: 0,
        };
        for (k, room) in rooms.iter().enumerate() {
            let frame = format!(r#"["{k}","j{k}","{}","phx_join",{{}}]"#, room.topic());
            w.call(frame, &format!("j{k}")).await?;
        }
        Ok(w)
    }

    /// Sends `frame` and waits for the reply to `ref_`: `Ok` on `ok`, else why.
    async fn call(&mut self, frame: String, ref_: &str) -> Result<(), String> {
        if self.beat.elapsed() > crate::conn::HEARTBEAT_EVERY {
            self.beat = Instant::now();
            self.pushes += 1;
            let _ = self.sink.send(crate::conn::heartbeat(self.pushes)).await;
        }
        self.sink
            .send(Message::Text(frame))
            .await
            .map_err(|e| format!("chat writer: send: {e}"))?;
        let wait = async {
            while let Some((r, payload)) = self.replies.recv().await {
                if r == ref_ {
                    return match payload["status"].as_str() {
                        Some("ok") => Ok(()),
                        _ => Err(format!("chat writer: {ref_} refused: {payload}")),
                    };
                }
            }
            Err("chat writer: connection lost".to_string())
        };
        timeout(crate::conn::STEP_TIMEOUT, wait)
            .await
            .map_err(|_| format!("chat writer: no reply to {ref_} in time"))?
    }
}

/// Makes `count` public rooms as the first user, every user a member of each (the visitor
/// comes and goes over REST as the soak runs).
pub async fn rooms(rest: &Rest, users: &[i64], count: usize) -> Result<Vec<Room>, String> {
    let mut rooms = Vec::with_capacity(count);
    for k in 0..count {
        let body = format!(r#"{{"name":"soak {} {k}"}}"#, rest.run);
        let (_, text) = rest
            .write(0, "POST", "/api/channels", &rest.tokens[0], &body, 201)
            .await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        let id = v["id"].as_i64().ok_or(format!("no room id in {text}"))?;
        for (u, user) in users.iter().enumerate().skip(1) {
            let path = format!("/api/channels/{id}/members");
            let body = format!(r#"{{"user_id":{user}}}"#);
            rest.write(0, "POST", &path, &rest.tokens[u], &body, 204)
                .await?;
        }
        rooms.push(Room {
            id,
            published: Published::default(),
        });
    }
    Ok(rooms)
}

/// Pushes `new_message`s at `rate` per second over the rooms in turn until stopped.
pub async fn publish(
    target: Arc<Target>,
    app: Arc<super::App>,
    rate: u32,
    tally: Arc<super::Tally>,
    stop: Arc<tokio::sync::Notify>,
) {
    let Some(rest) = &app.rest else { return };
    if rest.rooms.is_empty() {
        return;
    }
    let writers = WRITERS.min(rest.tokens.len());
    let mut open: Vec<Option<Writer>> = (0..writers).map(|_| None).collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let stopped = stop.notified();
    tokio::pin!(stopped);
    for j in 0u64.. {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let (w, k) = (j as usize % writers, j as usize % rest.rooms.len());
        let room = &rest.rooms[k];
        let n = room.published.0.fetch_add(1, Relaxed) + 1;
        let body = format!("soak {} {n}", rest.run);
        let frame = format!(
            r#"["{k}","m{j}","{}","new_message",{{"body":"{body}"}}]"#,
            room.topic()
        );
        // To the writer's node, else the next (a node restarting takes none); a round that
        // reaches none is tried again a second later, for as long as a restart may take.
        let nodes = target.node_count();
        let mut last = String::new();
        'rounds: for round in 0..ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for attempt in 0..nodes {
                if open[w].is_none() {
                    let node = (w + attempt) % nodes;
                    match Writer::open(&target, node, &rest.tokens[w], &rest.rooms).await {
                        Ok(x) => open[w] = Some(x),
                        Err(why) => {
                            last = why;
                            continue;
                        }
                    }
                }
                let writer = open[w].as_mut().expect("opened above");
                match writer.call(frame.clone(), &format!("m{j}")).await {
                    Ok(()) => break 'rounds,
                    Err(why) => {
                        // The push went out: the server may have written it before the loss.
                        room.published.1.lock().unwrap().insert(n);
                        open[w] = None;
                        last = why;
                    }
                }
            }
            if round == ROUNDS - 1 {
                tally.error(format!("chat message {n} in room {}: {last}", room.id));
            }
        }
    }
}
