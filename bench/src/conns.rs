//! `conns`: how many idle joined connections a server holds, how fast they join, and what
//! each one costs the server in resident memory.

use crate::conn::{heartbeat, heartbeat_timer, open_all, Incoming, Ws};
use crate::proc::Proc;
use crate::report::{FailureKind, Failures, Report};
use crate::{mib, Bench};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(clap::Args, Debug)]
pub struct ConnsArgs {
    /// Connections to open and join.
    #[arg(long)]
    pub n: usize,
    /// Seconds to hold them all joined (heartbeating) after the last join.
    #[arg(long, default_value_t = 60)]
    pub hold_secs: u64,
}

impl ConnsArgs {
    /// The time this run is configured to take, joins aside.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.hold_secs)
    }
}

pub async fn run(bench: &Bench, args: &ConnsArgs) -> Report {
    let mut report = Report::new("conns");
    bench.describe(&mut report);
    let failures = Arc::new(Failures::default());
    let (stop, stopped) = watch::channel(false);

    let rss_before = bench.server_rss();
    let opened = open_all(
        &bench.target,
        0..args.n,
        bench.batch,
        bench.join_budget,
        &failures,
        |i, ws| {
            tokio::spawn(hold(i, ws, stopped.clone(), failures.clone()));
        },
    )
    .await;
    let rss_joined = bench.server_rss();
    let bench_rss_joined = Proc::current().rss_bytes();

    report.num("n", "connections asked", args.n, "");
    report.num("joined", "joined", opened.joined, "");
    report.opt(
        "join_secs",
        "join time",
        Some(opened.elapsed.as_secs_f64()),
        "s",
    );
    report.opt(
        "joins_per_sec",
        "join rate",
        Some(opened.joins_per_sec()),
        "joins/s",
    );

    let mut rss_end = None;
    match opened.stalled {
        Some(why) => report.fail(why),
        None => {
            hold_for(args.hold_secs, opened.joined, &failures).await;
            rss_end = bench.server_rss();
        }
    }
    // Tasks stop on this; their sockets close when the process exits.
    let _ = stop.send(true);

    failures.add_to(&mut report);
    report.opt(
        "server_rss_before_mib",
        "server RSS before",
        mib(rss_before),
        "MiB",
    );
    report.opt(
        "server_rss_joined_mib",
        "server RSS all joined",
        mib(rss_joined),
        "MiB",
    );
    report.opt(
        "server_rss_end_mib",
        "server RSS end of hold",
        mib(rss_end),
        "MiB",
    );
    let per_conn = match (rss_before, rss_joined) {
        (Some(before), Some(after)) if opened.joined > 0 => {
            Some((after as f64 - before as f64) / opened.joined as f64 / 1024.0)
        }
        _ => None,
    };
    report.opt(
        "server_kib_per_conn",
        "server memory per joined conn",
        per_conn,
        "KiB",
    );
    if per_conn.is_some() {
        // Memory freed by earlier connections is reused by the allocator and hides the cost.
        report
            .note("memory per conn: most telling against a fresh server, with N in the thousands");
    }
    report.opt(
        "bench_rss_mib",
        "bench RSS all joined",
        mib(bench_rss_joined),
        "MiB",
    );
    report
}

/// Waits out the hold, saying every 10 s how many connections are still open.
async fn hold_for(secs: u64, joined: usize, failures: &Failures) {
    let end = Instant::now() + Duration::from_secs(secs);
    eprintln!("  all joined; holding {secs} s");
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(10))).await;
        let alive = joined as u64 - failures.closed();
        let left = end.saturating_duration_since(Instant::now());
        eprintln!("  {alive} open, {} s left", left.as_secs_f64().round());
    }
}

/// One idle connection: heartbeats, reads what comes, and reports if the server closes it.
async fn hold(i: usize, mut ws: Ws, mut stop: watch::Receiver<bool>, failures: Arc<Failures>) {
    let mut beat = heartbeat_timer(i);
    let mut beats = 0;
    loop {
        tokio::select! {
            next = ws.next() => {
                if let Incoming::Closed(why) = Incoming::from(next) {
                    failures.record(FailureKind::Closed, i, why);
                    return;
                }
            }
            _ = beat.tick() => {
                beats += 1;
                if let Err(e) = ws.send(heartbeat(beats)).await {
                    failures.record(FailureKind::Closed, i, format!("send heartbeat: {e}"));
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}
