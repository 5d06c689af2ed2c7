//! `echo`: C connections each in a closed loop of `ping` push, wait for its reply, next;
//! measures request/reply throughput and latency, and server CPU per reply. When the server
//! hands each push to another process (a proxied channel's HTTP backend), `--backend-pid`
//! reads that process's CPU apart: the server's figure is then Fawkes's own cost.

use crate::conn::{next_text, open_all, parse, Status, Ws, STEP_TIMEOUT};
use crate::proc::Proc;
use crate::report::{
    add_latency, merge, new_histogram, note_bench_cpu, per, FailureKind, Failures, Report,
};
use crate::Bench;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Connections, each with one ping in flight at a time.
    #[arg(long)]
    pub conns: usize,
    /// Seconds to run the loops, once all connections have joined.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// The pid of a process each push goes through (a proxied channel's backend), to read its
    /// CPU time apart from the server's. Repeat for several.
    #[arg(long, action = clap::ArgAction::Append)]
    pub backend_pid: Vec<u32>,
}

impl EchoArgs {
    /// The time this run is configured to take, joins aside.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.secs)
    }
}

pub async fn run(bench: &Bench, args: &EchoArgs) -> Report {
    let mut report = Report::new("echo");
    bench.describe(&mut report);
    let failures = Arc::new(Failures::default());
    // Loops wait for this to say until when they run, so they all start together.
    let (go, until) = watch::channel(None);
    let mut loops: Vec<JoinHandle<Replies>> = Vec::with_capacity(args.conns);
    let topic: Arc<str> = bench.target.topic_json.as_str().into();
    let opened = open_all(
        &bench.target,
        0..args.conns,
        bench.batch,
        bench.join_budget,
        &failures,
        |i, ws| {
            let ping = ping_loop(i, ws, topic.clone(), until.clone(), failures.clone());
            loops.push(tokio::spawn(ping));
        },
    )
    .await;
    report.num("conns", "connections joined", opened.joined, "");
    if let Some(why) = opened.stalled {
        failures.add_to(&mut report);
        report.fail(why);
        return report;
    }

    let backends: Vec<Proc> = match args.backend_pid.iter().map(|p| Proc::pid(*p)).collect() {
        Ok(b) => b,
        Err(e) => {
            report.fail(e);
            return report;
        }
    };
    let backend_cpu = || -> Option<f64> {
        (!backends.is_empty())
            .then(|| backends.iter().map(|p| p.cpu_secs()).sum())
            .flatten()
    };
    eprintln!("  {} joined; pinging for {} s", opened.joined, args.secs);
    let (server_cpu0, bench_cpu0) = (bench.server_cpu(), Proc::current().cpu_secs());
    let backend_cpu0 = backend_cpu();
    let started = Instant::now();
    let _ = go.send(Some(started + args.duration()));
    let mut done = Vec::with_capacity(loops.len());
    for l in loops {
        // A loop ends at the deadline, or at most one reply timeout after it.
        if let Ok(Ok(r)) = timeout(args.duration() + STEP_TIMEOUT * 2, l).await {
            done.push(r);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let server_cpu = bench.server_cpu().zip(server_cpu0).map(|(b, a)| b - a);
    let backend_cpu = backend_cpu().zip(backend_cpu0).map(|(b, a)| b - a);
    let bench_cpu = Proc::current()
        .cpu_secs()
        .zip(bench_cpu0)
        .map(|(b, a)| b - a);

    let replies: u64 = done.iter().map(|r| r.ok).sum();
    let errors: u64 = done.iter().map(|r| r.errors).sum();
    let latency = merge(done.iter().map(|r| &r.latency));
    report.num("replies", "replies ok", replies, "");
    report.num("reply_errors", "replies error", errors, "");
    report.opt("wall_secs", "wall time", Some(wall), "s");
    report.opt(
        "replies_per_sec",
        "reply rate",
        Some(replies as f64 / wall),
        "replies/s",
    );
    add_latency(&mut report, "latency", &latency);
    report.opt("server_cpu_secs", "server CPU", server_cpu, "s");
    report.opt(
        "replies_per_server_cpu_sec",
        "replies per server CPU-second",
        per(replies as f64, server_cpu),
        "",
    );
    if !backends.is_empty() {
        report.opt("backend_cpu_secs", "backend CPU", backend_cpu, "s");
        report.opt(
            "replies_per_backend_cpu_sec",
            "replies per backend CPU-second",
            per(replies as f64, backend_cpu),
            "",
        );
        report.opt(
            "replies_per_total_cpu_sec",
            "replies per CPU-second of server and backend",
            per(
                replies as f64,
                server_cpu.zip(backend_cpu).map(|(s, b)| s + b),
            ),
            "",
        );
    }
    report.opt("bench_cpu_secs", "bench CPU", bench_cpu, "s");
    if server_cpu.is_some_and(|c| c < 1.0) {
        report.note(crate::proc::TICK_NOTE);
    }
    note_bench_cpu(&mut report, bench_cpu, wall);
    failures.add_to(&mut report);
    report
}

/// What one loop got back.
struct Replies {
    latency: Histogram<u32>,
    ok: u64,
    errors: u64,
}

/// Push `ping`, wait for the reply with the same ref, repeat until the deadline.
async fn ping_loop(
    i: usize,
    mut ws: Ws,
    topic_json: Arc<str>,
    mut until: watch::Receiver<Option<Instant>>,
    failures: Arc<Failures>,
) -> Replies {
    let mut replies = Replies {
        latency: new_histogram(),
        ok: 0,
        errors: 0,
    };
    let Ok(deadline) = until.wait_for(Option::is_some).await.map(|d| d.unwrap()) else {
        return replies;
    };
    // Refs from 2 on: ref 1 was the join.
    let mut r: u64 = 1;
    while Instant::now() < deadline {
        r += 1;
        let frame = format!(r#"["1","{r}",{topic_json},"ping",{{"n":{r}}}]"#);
        let sent = Instant::now();
        if let Err(e) = ws.send(Message::Text(frame)).await {
            failures.record(FailureKind::Closed, i, format!("send: {e}"));
            break;
        }
        match timeout(STEP_TIMEOUT, reply_to(&mut ws, &r.to_string())).await {
            Ok(Ok(true)) => {
                replies.ok += 1;
                let us = sent.elapsed().as_micros() as u64;
                replies.latency.saturating_record(us.max(1));
            }
            Ok(Ok(false)) => replies.errors += 1,
            Ok(Err(why)) => {
                failures.record(FailureKind::Closed, i, why);
                break;
            }
            Err(_) => {
                failures.record(
                    FailureKind::Closed,
                    i,
                    format!("no reply to ref {r} in time"),
                );
                break;
            }
        }
    }
    replies
}

/// Reads until the reply to `ref_`; says whether its status was ok.
async fn reply_to(ws: &mut Ws, ref_: &str) -> Result<bool, String> {
    loop {
        let text = next_text(ws).await?;
        if let Some(f) = parse::<Status>(&text) {
            if f.event == "phx_reply" && f.ref_ == Some(ref_) {
                return Ok(f.payload.status == Some("ok"));
            }
        }
    }
}
