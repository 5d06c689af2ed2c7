//! `storm`: a reconnect storm. N connections join; the server is restarted (by `--restart-cmd`,
//! or by hand); every client, told to go (1001) or cut off, reconnects and rejoins at once,
//! retrying a failed connect on phoenix.js's schedule (10, 50, 100, 150, 200, 250, 500, 1000,
//! 2000 ms, then 5 s). Reports the time from the first close to the last rejoin, and every
//! refusal by the server (an upgrade answered with an error status, a refused join) apart from
//! connects that found nothing listening while the server was down.

use crate::conn::{open_all, Ws};
use crate::report::{FailureKind, Failures, Report};
use crate::Bench;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(clap::Args, Debug)]
pub struct StormArgs {
    /// Connections that join, then all reconnect at once.
    #[arg(long)]
    pub n: usize,
    /// A shell command that restarts the server once all have joined (else restart it by hand).
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Seconds to wait for the server to close the connections, and again for all to rejoin.
    #[arg(long, default_value_t = 120)]
    pub wait_secs: u64,
}

impl StormArgs {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(2 * self.wait_secs)
    }
}

/// phoenix.js's default reconnect schedule.
const BACKOFF_MS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];

#[derive(Default)]
struct Tally {
    /// Connects that found no server (it was restarting): expected, retried.
    unreachable: AtomicU64,
    /// Upgrades the server answered with an error, or joins it refused: what must be 0.
    refused: AtomicU64,
    first_close: Mutex<Option<Instant>>,
    last_rejoin: Mutex<Option<Instant>>,
    rejoined: AtomicU64,
}

pub async fn run(bench: &Bench, args: &StormArgs) -> Report {
    let mut report = Report::new("storm");
    bench.describe(&mut report);
    let failures = Failures::default();
    let mut joined = Vec::with_capacity(args.n);
    let opened = open_all(
        &bench.target,
        0..args.n,
        bench.batch,
        bench.join_budget,
        &failures,
        |i, ws| joined.push((i, ws)),
    )
    .await;
    report.num("n", "connections", args.n, "");
    report.num("joined", "joined before the restart", opened.joined, "");
    if let Some(why) = opened.stalled {
        report.fail(why);
        return report;
    }
    eprintln!("  all {} joined; restart the server now", opened.joined);
    if let Some(cmd) = &args.restart_cmd {
        match std::process::Command::new("sh").arg("-c").arg(cmd).spawn() {
            Ok(_) => eprintln!("  ran: {cmd}"),
            Err(e) => {
                report.fail(format!("--restart-cmd: {e}"));
                return report;
            }
        }
    }
    let tally = Arc::new(Tally::default());
    let wait = Duration::from_secs(args.wait_secs);
    let mut tasks = JoinSet::new();
    for (i, ws) in joined {
        let (target, tally) = (bench.target.clone(), tally.clone());
        tasks.spawn(async move { reconnect(i, ws, &target, &tally, wait).await });
    }
    let mut lost = 0;
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(why)) = done {
            lost += 1;
            failures.record(FailureKind::Join, 0, why);
        }
    }
    let first = *tally.first_close.lock().unwrap();
    let last = *tally.last_rejoin.lock().unwrap();
    let rejoined = tally.rejoined.load(Ordering::Relaxed);
    report.num("rejoined", "rejoined after the restart", rejoined, "");
    report.opt(
        "secs_to_all_rejoined",
        "first close to last rejoin",
        first
            .zip(last)
            .map(|(f, l)| l.duration_since(f).as_secs_f64()),
        "s",
    );
    report.num(
        "refused",
        "refused by the server (must be 0)",
        tally.refused.load(Ordering::Relaxed),
        "",
    );
    report.num(
        "unreachable",
        "connects with no server listening (retried)",
        tally.unreachable.load(Ordering::Relaxed),
        "",
    );
    if lost > 0 || tally.refused.load(Ordering::Relaxed) > 0 {
        report.fail(format!(
            "{lost} never rejoined; {} refusals",
            tally.refused.load(Ordering::Relaxed)
        ));
    }
    failures.add_to(&mut report);
    report
}

/// Waits for the server to drop `ws`, then reconnects and rejoins, retrying as phoenix.js does.
async fn reconnect(
    i: usize,
    mut ws: Ws,
    target: &crate::conn::Target,
    tally: &Tally,
    wait: Duration,
) -> Result<(), String> {
    let closed =
        tokio::time::timeout(wait, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    if closed.is_err() {
        return Err(format!("connection {i}: not closed within {wait:?}"));
    }
    drop(ws);
    let now = Instant::now();
    tally.first_close.lock().unwrap().get_or_insert(now);
    let deadline = now + wait;
    let mut tries = 0;
    loop {
        match target.open(i).await {
            Ok(_ws) => {
                tally.rejoined.fetch_add(1, Ordering::Relaxed);
                let mut last = tally.last_rejoin.lock().unwrap();
                *last = Some(last.map_or(Instant::now(), |l| l.max(Instant::now())));
                // Held until the process exits: the server keeps them all joined.
                std::mem::forget(_ws);
                return Ok(());
            }
            Err((kind, why)) => {
                let server_said_no =
                    kind == FailureKind::Join || why.contains("upgrade: HTTP error");
                if server_said_no {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.unreachable.fetch_add(1, Ordering::Relaxed);
                }
                if Instant::now() > deadline {
                    return Err(format!("connection {i}: not back within {wait:?}: {why}"));
                }
                let ms = BACKOFF_MS.get(tries).copied().unwrap_or(5000);
                tries += 1;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
}
