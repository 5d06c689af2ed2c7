//! `cargo run -p protocol_tests -- --url ws://127.0.0.1:4000/socket`

use clap::Parser;
use protocol_tests::{run_one, scenarios, Outcome, Target};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Phoenix Channels conformance suite, against any server running the fixture")]
struct Args {
    /// The socket URL, e.g. ws://127.0.0.1:4000/socket
    #[arg(long)]
    url: String,
    /// Run only scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Also run the idle-timeout scenario, which waits this many seconds (the server's timeout).
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut target = Target::new(&args.url);
    target.idle_timeout = args.idle_timeout_secs.map(Duration::from_secs);
    let (mut passed, mut failed, mut not_run) = (0, 0, 0);
    for (name, _) in scenarios::ALL {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        match run_one(&target, name).await {
            Outcome::Passed => {
                passed += 1;
                println!("ok      {name}");
            }
            Outcome::Failed(e) => {
                failed += 1;
                println!("FAILED  {name}\n        {}", e.replace('\n', "\n        "));
            }
            Outcome::NotRun(why) => {
                not_run += 1;
                println!("not run {name}: {why}");
            }
        }
    }
    println!("\n{passed} passed, {failed} failed ({not_run} not run)");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
