//! `cargo run -p protocol_tests -- --url ws://127.0.0.1:4000/socket`

use clap::Parser;
use protocol_tests::{run_one, scenarios, Control, Outcome, Phoenix, Target};
use std::sync::Arc;
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
    /// Expect Phoenix 1.7's answers (`1.7`, as real Phoenix 1.7.24 gives) or 1.8's (`1.8`,
    /// Phoenix 1.8.12 and Fawkes) where the two differ.
    #[arg(long, default_value = "1.8", value_parser = parse_phoenix)]
    phoenix: Phoenix,
    /// A shell command that broadcasts `disconnect` to the socket id in `{id}`, so the
    /// disconnect scenario can run against an outside server, e.g. for the Phoenix fixture:
    /// `phoenix_fixture rpc 'PhoenixFixture.Endpoint.broadcast("{id}", "disconnect", %{})'`.
    #[arg(long)]
    disconnect_cmd: Option<String>,
}

/// Server access through a shell command (see `--disconnect-cmd`).
struct CommandControl(String);

impl Control for CommandControl {
    fn disconnect(&self, socket_id: &str) {
        let cmd = self.0.replace("{id}", socket_id);
        match std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .status()
        {
            Ok(s) if s.success() => {}
            other => eprintln!("--disconnect-cmd failed ({other:?}): {cmd}"),
        }
    }
}

fn parse_phoenix(s: &str) -> Result<Phoenix, String> {
    Phoenix::parse(s).ok_or_else(|| format!("{s:?}: expected 1.7 or 1.8"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut target = Target::new(&args.url);
    target.idle_timeout = args.idle_timeout_secs.map(Duration::from_secs);
    target.phoenix = args.phoenix;
    target.control = args
        .disconnect_cmd
        .map(|c| Arc::new(CommandControl(c)) as Arc<dyn Control>);
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
