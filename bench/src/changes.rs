//! `changes`: Postgres changes as supabase-js follows them. N subscribers join
//! `realtime:bench-<i>` (with `--supabase-apikey`), each following `INSERT`s of `--table` with
//! the filter `bucket=eq.<i mod buckets>`, so that each row reaches N / buckets of them; a
//! writer command (pgbench, say) inserts rows `(bucket, sent_us)` meanwhile. Measures delivery
//! latency from `sent_us` (the row's insert, just before its commit), deliveries, and server
//! CPU per change.

use crate::conn::{heartbeat, heartbeat_timer, Incoming, Ws, STEP_TIMEOUT};
use crate::fanout::now_us;
use crate::proc::Proc;
use crate::report::{
    add_latency, merge, new_histogram, note_bench_cpu, per, FailureKind, Failures, Report,
};
use crate::Bench;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct ChangesArgs {
    /// Subscriber connections.
    #[arg(long)]
    pub subscribers: usize,
    /// Filter buckets: subscriber i follows `bucket=eq.<i mod buckets>` (100: each row reaches 1 %).
    #[arg(long, default_value_t = 100)]
    pub buckets: usize,
    /// The captured table, `schema.table`, with columns `id`, `bucket int`, `sent_us bigint`.
    #[arg(long, default_value = "public.bench_changes")]
    pub table: String,
    /// The writer, run with `sh -c` once every subscriber follows (e.g. `pgbench -R 1000 -T 30 …`).
    #[arg(long)]
    pub writer_cmd: String,
    /// Seconds to wait for the writer to end.
    #[arg(long, default_value_t = 60)]
    pub max_secs: u64,
    /// Seconds to wait, after the writer ends, for the last deliveries.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
}

impl ChangesArgs {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.max_secs + self.drain_secs)
    }
}

struct Seen {
    latency: Histogram<u32>,
    deliveries: u64,
}

pub async fn run(bench: &Bench, args: &ChangesArgs) -> Report {
    let mut report = Report::new("changes");
    bench.describe(&mut report);
    let Some((schema, table)) = args.table.split_once('.') else {
        report.fail("--table must be schema.table");
        return report;
    };
    let failures = Arc::new(Failures::default());
    let (stop, stopped) = watch::channel(false);
    let ids = Arc::new(Mutex::new(HashSet::<i64>::new()));
    let mut subs = Vec::with_capacity(args.subscribers);
    let started = Instant::now();
    for i in 0..args.subscribers {
        let mut ws = match timeout(STEP_TIMEOUT, bench.target.connect(i)).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                failures.record(FailureKind::Connect, i, e);
                continue;
            }
            Err(_) => {
                failures.record(FailureKind::Connect, i, "connect timed out");
                continue;
            }
        };
        let filter = format!("bucket=eq.{}", i % args.buckets.max(1));
        let change = json!({"event": "INSERT", "schema": schema, "table": table, "filter": filter});
        let join = json!(["1", "1", format!("realtime:bench-{i}"), "phx_join", {"config": {"postgres_changes": [change]}}]);
        if ws.send(Message::Text(join.to_string())).await.is_err() {
            failures.record(FailureKind::Join, i, "send join");
            continue;
        }
        match timeout(STEP_TIMEOUT, subscribed(&mut ws)).await {
            Ok(Ok(())) => subs.push(tokio::spawn(follow(
                i,
                ws,
                ids.clone(),
                stopped.clone(),
                failures.clone(),
            ))),
            Ok(Err(e)) => failures.record(FailureKind::Join, i, e),
            Err(_) => failures.record(
                FailureKind::Join,
                i,
                "no 'Subscribed to PostgreSQL' in time",
            ),
        }
    }
    report.num("subscribers", "subscribers following", subs.len(), "");
    report.opt(
        "join_secs",
        "joins took",
        Some(started.elapsed().as_secs_f64()),
        "s",
    );
    eprintln!(
        "  {} subscribers follow {}; running the writer",
        subs.len(),
        args.table
    );
    let (server_cpu0, bench_cpu0) = (bench.server_cpu(), Proc::current().cpu_secs());
    let t0 = Instant::now();
    let writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(&args.writer_cmd)
        .status();
    match writer {
        Ok(s) if s.success() => {}
        other => report.note(format!("the writer ended with {other:?}")),
    }
    tokio::time::sleep(Duration::from_secs(args.drain_secs)).await;
    let wall = t0.elapsed().as_secs_f64();
    let server_cpu = bench.server_cpu().zip(server_cpu0).map(|(b, a)| b - a);
    let bench_cpu = Proc::current()
        .cpu_secs()
        .zip(bench_cpu0)
        .map(|(b, a)| b - a);
    let _ = stop.send(true);
    let mut seen = Vec::new();
    for s in subs {
        if let Ok(Ok(s)) = timeout(Duration::from_secs(5), s).await {
            seen.push(s);
        }
    }
    let deliveries: u64 = seen.iter().map(|s| s.deliveries).sum();
    let changes = ids.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    let expected = changes * (args.subscribers / args.buckets.max(1)) as u64;
    report.num("changes", "distinct changes delivered", changes, "");
    report.num("deliveries", "deliveries", deliveries, "");
    report.num(
        "expected_deliveries",
        "deliveries expected (changes x subscribers per bucket)",
        expected,
        "",
    );
    add_latency(
        &mut report,
        "latency",
        &merge(seen.iter().map(|s| &s.latency)),
    );
    report.opt("server_cpu_secs", "server CPU", server_cpu, "s");
    report.opt(
        "server_cpu_us_per_change",
        "server CPU per change",
        per(1e6 * server_cpu.unwrap_or(0.0), Some(changes as f64)),
        "µs",
    );
    report.opt(
        "deliveries_per_server_cpu_sec",
        "deliveries per server CPU-second",
        per(deliveries as f64, server_cpu),
        "",
    );
    note_bench_cpu(&mut report, bench_cpu, wall);
    failures.add_to(&mut report);
    report
}

/// Waits for the join reply and the `system` message that says the subscription is in place.
async fn subscribed(ws: &mut Ws) -> Result<(), String> {
    loop {
        let text = match Incoming::from(ws.next().await) {
            Incoming::Text(t) => t,
            Incoming::Closed(why) => return Err(why),
            _ => continue,
        };
        let f: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        match (f[3].as_str(), f[4]["status"].as_str()) {
            (Some("phx_reply"), Some("ok")) => {}
            (Some("phx_reply"), _) => return Err(format!("join refused: {text}")),
            (Some("system"), Some("ok")) => return Ok(()),
            (Some("system"), _) => return Err(format!("not subscribed: {text}")),
            _ => {}
        }
    }
}

async fn follow(
    i: usize,
    mut ws: Ws,
    ids: Arc<Mutex<HashSet<i64>>>,
    mut stop: watch::Receiver<bool>,
    failures: Arc<Failures>,
) -> Seen {
    let mut seen = Seen {
        latency: new_histogram(),
        deliveries: 0,
    };
    let mut beat = heartbeat_timer(i);
    let mut beats = 0;
    loop {
        let text = tokio::select! {
            next = ws.next() => match Incoming::from(next) {
                Incoming::Text(t) => t,
                Incoming::Closed(why) => {
                    failures.record(FailureKind::Closed, i, why);
                    return seen;
                }
                _ => continue,
            },
            _ = beat.tick() => {
                beats += 1;
                let _ = ws.send(heartbeat(beats)).await;
                continue;
            }
            _ = stop.changed() => return seen,
        };
        let Ok(f) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if f[3] != "postgres_changes" {
            continue;
        }
        let record = &f[4]["data"]["record"];
        let (Some(sent), Some(id)) = (record["sent_us"].as_u64(), record["id"].as_i64()) else {
            continue;
        };
        seen.deliveries += 1;
        seen.latency
            .saturating_record(now_us().saturating_sub(sent).max(1));
        ids.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }
}
