//! `bench`: load for any Phoenix Channels server running the conformance fixture.
//!
//! ```sh
//! cargo run --release -p fawkes-bench --bin bench -- conns --n 10000 --batch 500 --hold-secs 30 --server-pid $PID
//! cargo run --release -p fawkes-bench --bin bench -- fanout --subscribers 1000 --messages 1000 --rate 0
//! cargo run --release -p fawkes-bench --bin bench -- echo --conns 50 --secs 10
//! # echo through a proxied channel: each push a round trip to echo-backend (see README)
//! cargo run --release -p fawkes-bench --bin bench -- echo --conns 50 --secs 10 --no-token \
//!     --topic bench:echo --server-pid $FAWKES --backend-pid $BACKEND
//! ```

use clap::{Parser, Subcommand};
use fawkes_bench::changes::{self, ChangesArgs};
use fawkes_bench::conn::{Dialect, Target};
use fawkes_bench::conns::{self, ConnsArgs};
use fawkes_bench::echo::{self, EchoArgs};
use fawkes_bench::fanout::{self, FanoutArgs};
use fawkes_bench::proc::{raise_nofile_limit, Proc};
use fawkes_bench::report::Report;
use fawkes_bench::soak::{self, SoakArgs};
use fawkes_bench::storm::{self, StormArgs};
use fawkes_bench::Bench;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Load for a Phoenix Channels server running the conformance fixture"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// The socket URL, as given to phoenix.js (`/websocket?token=bench<N>&vsn=2.0.0` is appended).
    /// Repeat it for the nodes of a cluster: connections are spread over them in turn.
    #[arg(long, global = true, action = clap::ArgAction::Append, default_value = "ws://127.0.0.1:4000/socket")]
    url: Vec<String>,
    /// The topic every connection joins.
    #[arg(long, global = true, default_value = "community:feed")]
    topic: String,
    /// The server's pid, to read its memory and CPU time from /proc. Repeat it for every
    /// process of a cluster (its nodes and Redis): their sums are reported.
    #[arg(long, global = true, action = clap::ArgAction::Append)]
    server_pid: Vec<u32>,
    /// Connections opened concurrently.
    #[arg(long, global = true, default_value_t = 500)]
    batch: usize,
    /// Seconds all joins may take; past it the run aborts, as it does when a whole batch fails.
    #[arg(long, global = true, default_value_t = 120)]
    join_secs: u64,
    /// Connect anonymously, without `token=bench<N>` (for `fawkes serve`, which checks tokens:
    /// e.g. `echo` through a proxied channel).
    #[arg(long, global = true)]
    no_token: bool,
    /// Also print the results as one JSON line on stdout (the summary then goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Speak Supabase's realtime-js instead of phoenix.js: connect with this apikey (from
    /// `fawkes supabase keys`), join a `realtime:*` --topic, and (fanout) broadcast as binary
    /// kind 3 frames that subscribers get as kind 4.
    #[arg(long, global = true)]
    supabase_apikey: Option<String>,
}

#[derive(Subcommand)]
enum Mode {
    /// Open and hold N idle joined connections: join rate, server memory per connection.
    Conns(ConnsArgs),
    /// N subscribers, one publisher of `new_post`: delivery latency, rate, losses, server CPU.
    Fanout(FanoutArgs),
    /// C connections in a closed `ping` loop: replies/s, latency, server CPU.
    Echo(EchoArgs),
    /// N joined connections all reconnect and rejoin at once after a server restart.
    Storm(StormArgs),
    /// N supabase-js-like followers of a captured table's inserts, a writer command inserting.
    Changes(ChangesArgs),
    /// Hours of churn (V1 and V2 clients leaving abruptly, cleanly or silently, new ones
    /// joining and tracking presence) under steady broadcasts: gauges sampled, deliveries
    /// accounted, a verdict last.
    Soak(SoakArgs),
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Conns(_) => "conns",
            Mode::Fanout(_) => "fanout",
            Mode::Echo(_) => "echo",
            Mode::Storm(_) => "storm",
            Mode::Changes(_) => "changes",
            Mode::Soak(_) => "soak",
        }
    }

    /// The time the run is configured to take, joins aside.
    fn duration(&self) -> Duration {
        match self {
            Mode::Conns(a) => a.duration(),
            Mode::Fanout(a) => a.duration(),
            Mode::Echo(a) => a.duration(),
            Mode::Storm(a) => a.duration(),
            Mode::Changes(a) => a.duration(),
            Mode::Soak(a) => a.duration(),
        }
    }
}

/// Slack past the configured time (joins + run) before the watchdog aborts the process.
const SLACK: Duration = Duration::from_secs(60);

fn main() {
    let cli = Cli::parse();
    let nofile_limit = match raise_nofile_limit() {
        Ok((old, new)) => {
            eprintln!("open-files limit raised from {old} to {new} (the hard limit)");
            Some(new)
        }
        Err(e) => {
            eprintln!("could not raise the open-files limit: {e}");
            None
        }
    };
    let limit = Duration::from_secs(cli.join_secs) + cli.mode.duration() + SLACK;
    watchdog(limit, cli.mode.name(), cli.json);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(run(&cli, nofile_limit));
    print(&report, cli.json);
    // The soak's verdict is its last line (on stderr with --json, whose stdout is one line).
    if let Some(v) = report.extra_value("verdict").and_then(|v| v.as_str()) {
        match cli.json {
            true => eprintln!("verdict: {v}"),
            false => println!("verdict: {v}"),
        }
    }
    // Exit without dropping the runtime: thousands of sockets close with the process at once.
    std::process::exit(if report.failed() { 1 } else { 0 });
}

async fn run(cli: &Cli, nofile_limit: Option<u64>) -> Report {
    let mut report = Report::new(cli.mode.name());
    let dialect = match &cli.supabase_apikey {
        Some(apikey) => Dialect::Supabase {
            apikey: apikey.clone(),
        },
        None => Dialect::Phoenix,
    };
    let target = match Target::resolve(&cli.url, &cli.topic).await {
        Ok(mut t) => {
            t.anonymous = cli.no_token;
            Arc::new(t.with_dialect(dialect))
        }
        Err(e) => {
            report.fail(e);
            return report;
        }
    };
    let server = match cli.server_pid.iter().map(|p| Proc::pid(*p)).collect() {
        Ok(s) => s,
        Err(e) => {
            report.fail(e);
            return report;
        }
    };
    let bench = Bench {
        target,
        server,
        batch: cli.batch,
        join_budget: Duration::from_secs(cli.join_secs),
        nofile_limit,
    };
    match &cli.mode {
        Mode::Conns(args) => conns::run(&bench, args).await,
        Mode::Fanout(args) => fanout::run(&bench, args).await,
        Mode::Echo(args) => echo::run(&bench, args).await,
        Mode::Storm(args) => storm::run(&bench, args).await,
        Mode::Changes(args) => changes::run(&bench, args).await,
        Mode::Soak(args) => soak::run(&bench, args).await,
    }
}

fn print(report: &Report, json: bool) {
    if json {
        eprint!("{}", report.human());
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
}

/// Aborts the run, with an error report, if it is still going `limit` after the start: no
/// server behaviour can keep the bench running forever. A thread, not a task, so that it fires
/// even if the runtime is wedged.
fn watchdog(limit: Duration, mode: &'static str, json: bool) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let mut report = Report::new(mode);
        report.fail(format!(
            "aborted: still running after {} s (joins + configured time + 60 s)",
            limit.as_secs()
        ));
        print(&report, json);
        std::process::exit(2);
    });
}
