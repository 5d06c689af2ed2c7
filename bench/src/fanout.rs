//! `fanout`: N subscribers joined to one topic, one publisher pushing `new_post`; measures
//! delivery latency, throughput, losses and duplicates, and server CPU per delivery.

use crate::conn::{
    heartbeat, heartbeat_timer, open_all, parse, user_broadcast, user_push, Dialect, Incoming,
    Status, Ws,
};
use crate::proc::Proc;
use crate::report::{
    add_latency, merge, new_histogram, note_bench_cpu, per, FailureKind, Failures, Report,
};
use crate::{mib, Bench};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long)]
    pub subscribers: usize,
    /// `new_post` pushes to send.
    #[arg(long)]
    pub messages: u64,
    /// Pushes per second; 0 sends as fast as the window of unanswered pushes allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Unanswered pushes allowed at once with --rate 0.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Seconds to wait, after the last push, for the last deliveries and replies.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Cap on the publishing time [default: messages / rate + 30, or 120 with --rate 0].
    #[arg(long)]
    pub max_secs: Option<u64>,
}

impl FanoutArgs {
    fn publish_cap(&self) -> Duration {
        let secs = self.max_secs.unwrap_or(if self.rate > 0.0 {
            (self.messages as f64 / self.rate).ceil() as u64 + 30
        } else {
            120
        });
        Duration::from_secs(secs)
    }

    /// The time this run is configured to take, joins aside.
    pub fn duration(&self) -> Duration {
        self.publish_cap() + Duration::from_secs(self.drain_secs)
    }
}

/// Refuse runs whose seen-seq bitsets (one bit per message per subscriber) would not fit.
const MAX_BITSET_BYTES: u64 = 2 << 30;

pub async fn run(bench: &Bench, args: &FanoutArgs) -> Report {
    let mut report = Report::new("fanout");
    bench.describe(&mut report);
    let (n, m) = (args.subscribers, args.messages);
    if n as u64 * m.div_ceil(8) > MAX_BITSET_BYTES || args.rate < 0.0 {
        report.fail("subscribers x messages too large (over 2 GiB of seen-bits), or rate < 0");
        return report;
    }
    let failures = Arc::new(Failures::default());
    let (stop, stopped) = watch::channel(false);
    let complete = Arc::new(AtomicUsize::new(0));

    let mut subscribers: Vec<JoinHandle<Seen>> = Vec::with_capacity(n);
    let opened = open_all(
        &bench.target,
        0..n,
        bench.batch,
        bench.join_budget,
        &failures,
        |i, ws| {
            let sub = subscribe(
                i,
                ws,
                m,
                complete.clone(),
                stopped.clone(),
                failures.clone(),
            );
            subscribers.push(tokio::spawn(sub));
        },
    )
    .await;
    report.num("subscribers", "subscribers joined", opened.joined, "");
    report.opt(
        "joins_per_sec",
        "join rate",
        Some(opened.joins_per_sec()),
        "joins/s",
    );
    if let Some(why) = opened.stalled {
        failures.add_to(&mut report);
        report.fail(why);
        return report;
    }
    // The publisher is one more connection, with the next token and source address.
    let publisher = match bench.target.open_on(0, n).await {
        Ok(ws) => ws,
        Err((_, why)) => {
            failures.add_to(&mut report);
            report.fail(format!("publisher: {why}"));
            return report;
        }
    };

    eprintln!(
        "  {} subscribers joined; publishing {m} messages",
        opened.joined
    );
    let (server_cpu0, bench_cpu0) = (bench.server_cpu(), Proc::current().cpu_secs());
    let started = Instant::now();
    let published = publish(publisher, args, &bench.target, stopped.clone()).await;
    // Drain: until every subscriber still open has seen every message, or the drain time ends.
    let drain_end = Instant::now() + Duration::from_secs(args.drain_secs);
    let everyone = |c: usize| c as u64 + failures.closed() >= opened.joined as u64;
    while !everyone(complete.load(Ordering::Relaxed)) && Instant::now() < drain_end {
        sleep(Duration::from_millis(10)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let server_cpu = bench.server_cpu().zip(server_cpu0).map(|(b, a)| b - a);
    let bench_cpu = Proc::current()
        .cpu_secs()
        .zip(bench_cpu0)
        .map(|(b, a)| b - a);
    let _ = stop.send(true);

    let mut seen = Vec::with_capacity(subscribers.len());
    for sub in subscribers {
        if let Ok(Ok(s)) = timeout(Duration::from_secs(5), sub).await {
            seen.push(s);
        }
    }
    let deliveries: u64 = seen.iter().map(|s| s.deliveries).sum();
    let distinct: u64 = seen.iter().map(|s| s.distinct).sum();
    let duplicates: u64 = seen.iter().map(|s| s.duplicates).sum();
    let losses = (published.sent * opened.joined as u64).saturating_sub(distinct);
    let last_delivery = seen.iter().filter_map(|s| s.last_at).max();
    let delivering = last_delivery.map(|t| t.saturating_duration_since(started).as_secs_f64());
    let latency = merge(seen.iter().map(|s| &s.latency));

    report.num("messages_sent", "messages sent", published.sent, "");
    report.opt("publish_secs", "publish time", Some(published.secs), "s");
    report.opt(
        "send_rate",
        "send rate",
        Some(published.sent as f64 / published.secs.max(1e-9)),
        "msg/s",
    );
    report.num("replies_ok", "push replies ok", published.ok, "");
    report.num("replies_error", "push replies error", published.errors, "");
    report.num("deliveries", "deliveries", deliveries, "");
    report.opt(
        "deliveries_per_sec",
        "delivery rate",
        delivering.and_then(|d| per(deliveries as f64, Some(d))),
        "deliveries/s",
    );
    add_latency(&mut report, "latency", &latency);
    report.num("losses", "losses", losses, "");
    report.num("duplicates", "duplicates", duplicates, "");
    report.opt("wall_secs", "wall time (publish + drain)", Some(wall), "s");
    report.opt("server_cpu_secs", "server CPU", server_cpu, "s");
    report.opt(
        "deliveries_per_server_cpu_sec",
        "deliveries per server CPU-second",
        per(deliveries as f64, server_cpu),
        "",
    );
    report.opt("bench_cpu_secs", "bench CPU", bench_cpu, "s");
    if server_cpu.is_some_and(|c| c < 1.0) {
        report.note(crate::proc::TICK_NOTE);
    }
    report.opt(
        "bench_rss_mib",
        "bench RSS",
        mib(Proc::current().rss_bytes()),
        "MiB",
    );
    failures.add_to(&mut report);
    if published.cut_short {
        report.note(format!(
            "publishing stopped at the {} s cap (--max-secs)",
            args.publish_cap().as_secs()
        ));
    }
    note_bench_cpu(&mut report, bench_cpu, wall);
    report.note("the publisher's own copy of each broadcast is not counted in deliveries");
    report
}

/// Microseconds since the UNIX epoch: the clock `sent_us` is read with on both sides.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What one subscriber saw.
struct Seen {
    latency: Histogram<u32>,
    deliveries: u64,
    distinct: u64,
    duplicates: u64,
    last_at: Option<Instant>,
}

/// The only fields a subscriber reads from a broadcast's payload.
#[derive(Deserialize)]
struct Post {
    seq: Option<u64>,
    sent_us: Option<u64>,
}

/// A `new_post` broadcast's payload: a V2 text frame, or a Supabase user broadcast (kind 4).
fn new_post(frame: &Incoming) -> Option<Post> {
    match frame {
        Incoming::Text(text) => parse::<Post>(text)
            .filter(|f| f.event == "new_post")
            .map(|f| f.payload),
        Incoming::Binary(bytes) => match user_broadcast(bytes)? {
            ("new_post", payload) => serde_json::from_slice(payload).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// One subscriber: records the latency of each `new_post` and which seqs it has seen, until
/// told to stop (or its connection ends). Counts itself in `complete` once it has seen all `m`.
async fn subscribe(
    i: usize,
    mut ws: Ws,
    m: u64,
    complete: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
    failures: Arc<Failures>,
) -> Seen {
    let mut seen = Seen {
        latency: new_histogram(),
        deliveries: 0,
        distinct: 0,
        duplicates: 0,
        last_at: None,
    };
    let mut bits = vec![0u64; m.div_ceil(64) as usize];
    let mut beat = heartbeat_timer(i);
    let mut beats = 0;
    loop {
        let next = tokio::select! {
            next = ws.next() => match Incoming::from(next) {
                Incoming::Closed(why) => {
                    failures.record(FailureKind::Closed, i, why);
                    return seen;
                }
                other => other,
            },
            _ = beat.tick() => {
                beats += 1;
                if let Err(e) = ws.send(heartbeat(beats)).await {
                    failures.record(FailureKind::Closed, i, format!("send heartbeat: {e}"));
                    return seen;
                }
                continue;
            }
            _ = stop.changed() => return seen,
        };
        let Some(post) = new_post(&next) else {
            continue;
        };
        let (Some(seq), Some(sent_us)) = (post.seq, post.sent_us) else {
            continue;
        };
        if seq >= m {
            continue;
        }
        seen.deliveries += 1;
        seen.last_at = Some(Instant::now());
        seen.latency
            .saturating_record(now_us().saturating_sub(sent_us).max(1));
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if bits[word] & bit != 0 {
            seen.duplicates += 1;
        } else {
            bits[word] |= bit;
            seen.distinct += 1;
            if seen.distinct == m {
                complete.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How publishing went.
struct Published {
    sent: u64,
    secs: f64,
    /// Replies to the pushes, by status, when the last was in or the drain time ended.
    ok: u64,
    errors: u64,
    cut_short: bool,
}

/// Pushes `new_post` `{"seq": i, "sent_us": t}` at the configured rate, or as fast as the
/// window of unanswered pushes allows, then waits (up to the drain time) for the last replies.
/// The connection stays open until `stop`: closing it could drop pushes the server has not
/// handled yet.
async fn publish(
    ws: Ws,
    args: &FanoutArgs,
    target: &crate::conn::Target,
    stop: watch::Receiver<bool>,
) -> Published {
    let topic_json = &target.topic_json;
    let (mut tx, rx) = ws.split();
    let windowed = args.rate == 0.0;
    let window = Arc::new(Semaphore::new(if windowed {
        args.window.max(1)
    } else {
        0
    }));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let reader = Replies {
        window: windowed.then(|| window.clone()),
        ok: ok.clone(),
        errors: errors.clone(),
    };
    tokio::spawn(reader.run(rx, stop.clone()));

    let start = tokio::time::Instant::now();
    let cap = start + args.publish_cap();
    let mut sent = 0;
    while sent < args.messages {
        // Write what is buffered before waiting, and only then.
        if windowed {
            match window.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => {
                    let _ = tx.flush().await;
                    match timeout_at(cap, window.acquire()).await {
                        Ok(Ok(permit)) => permit.forget(),
                        _ => break,
                    }
                }
            }
        } else {
            let due = start + Duration::from_secs_f64(sent as f64 / args.rate);
            if due > tokio::time::Instant::now() {
                let _ = tx.flush().await;
                sleep_until(due.min(cap)).await;
            }
        }
        if tokio::time::Instant::now() >= cap {
            break;
        }
        // ref = seq + 2: ref 1 was the join.
        let payload = format!(r#"{{"seq":{sent},"sent_us":{}}}"#, now_us());
        let frame = match target.dialect {
            Dialect::Phoenix => Message::Text(format!(
                r#"["1","{}",{topic_json},"new_post",{payload}]"#,
                sent + 2
            )),
            // Supabase: a kind-3 broadcast, acked (the join asked `ack: true`).
            Dialect::Supabase { .. } => {
                user_push(&target.topic, &(sent + 2).to_string(), "new_post", &payload)
            }
        };
        if tx.feed(frame).await.is_err() {
            break;
        }
        sent += 1;
    }
    let _ = tx.flush().await;
    let cut_short = sent < args.messages;
    let secs = start.elapsed().as_secs_f64();

    let drain_end = Instant::now() + Duration::from_secs(args.drain_secs);
    let answered = || ok.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed);
    while answered() < sent && Instant::now() < drain_end {
        sleep(Duration::from_millis(10)).await;
    }
    // The writer half lives until stop, so the connection is not closed under the server.
    tokio::spawn(async move {
        let mut stop = stop;
        let _ = stop.changed().await;
        drop(tx);
    });
    Published {
        sent,
        secs,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        cut_short,
    }
}

/// The publisher's reader: counts push replies (each frees a window slot) and reads past its
/// own copy of every broadcast, so the server never has to queue them.
struct Replies {
    window: Option<Arc<Semaphore>>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Replies {
    async fn run(self, mut rx: SplitStream<Ws>, mut stop: watch::Receiver<bool>) {
        loop {
            let text = tokio::select! {
                next = rx.next() => match Incoming::from(next) {
                    Incoming::Text(text) => text,
                    Incoming::Binary(_) | Incoming::Other => continue,
                    Incoming::Closed(why) => {
                        eprintln!("  publisher: {why}");
                        return;
                    }
                },
                _ = stop.changed() => return,
            };
            let Some(frame) = parse::<Status>(&text) else {
                continue;
            };
            if frame.event != "phx_reply" {
                continue;
            }
            match frame.payload.status {
                Some("ok") => self.ok.fetch_add(1, Ordering::Relaxed),
                _ => self.errors.fetch_add(1, Ordering::Relaxed),
            };
            if let Some(window) = &self.window {
                window.add_permits(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_gives_seq_and_sent_us() {
        let text =
            r#"[null,null,"community:feed","new_post",{"seq":41,"sent_us":1700000000000000}]"#;
        let f = parse::<Post>(text).unwrap();
        assert_eq!(f.event, "new_post");
        assert_eq!(f.payload.seq, Some(41));
        assert_eq!(f.payload.sent_us, Some(1_700_000_000_000_000));
        // A reply to the publisher's push has neither.
        let reply = r#"["1","2","community:feed","phx_reply",{"response":{},"status":"ok"}]"#;
        assert_eq!(parse::<Post>(reply).unwrap().payload.seq, None);
    }

    /// The Supabase dialect's frames, as the contract's capture has them.
    #[test]
    fn supabase_kind_3_out_and_kind_4_in() {
        let Message::Binary(push) = user_push("realtime:room1", "11", "cursor", r#"{"x":1}"#)
        else {
            panic!("binary")
        };
        let mut want = vec![3, 1, 2, 14, 6, 0, 1];
        want.extend_from_slice(br#"111realtime:room1cursor{"x":1}"#);
        assert_eq!(push, want);
        let mut kind4 = vec![4, 14, 8, 0, 1];
        kind4.extend_from_slice(br#"realtime:room1new_post{"seq":3,"sent_us":9}"#);
        let post = new_post(&Incoming::Binary(kind4.clone())).unwrap();
        assert_eq!((post.seq, post.sent_us), (Some(3), Some(9)));
        kind4[2] = 6;
        assert!(
            new_post(&Incoming::Binary(kind4)).is_none(),
            "another event"
        );
        assert!(user_broadcast(&[4, 200, 1, 0, 1, b'x']).is_none());
    }
}
