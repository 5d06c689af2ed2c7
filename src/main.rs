//! The `fawkes` command.

use clap::{Args, Parser, Subcommand};
use fawkes::{CheckOrigin, Config, Endpoint, Limits, Router, Server, Socket};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "fawkes", version, about = "A Phoenix Channels server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sockets (mounted at /socket and /community).
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "FAWKES_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "FAWKES_PORT", default_value_t = 4000)]
    port: u16,
    /// Worker threads (default: one per core).
    #[arg(long, env = "FAWKES_WORKERS")]
    workers: Option<usize>,
    /// Largest client WebSocket message, in bytes (closed with 1009 above it).
    #[arg(long, env = "FAWKES_MAX_FRAME_SIZE", default_value_t = Limits::default().max_frame_size)]
    max_frame_size: usize,
    /// Channels one socket may join at once.
    #[arg(long, env = "FAWKES_MAX_CHANNELS", default_value_t = Limits::default().max_channels)]
    max_channels: usize,
    /// Frames queued for one client before it is closed as too slow (1013).
    #[arg(long, env = "FAWKES_MAX_QUEUE", default_value_t = Limits::default().max_queue)]
    max_queue: usize,
    /// Seconds without a frame from a client before its socket is closed.
    #[arg(long, env = "FAWKES_IDLE_TIMEOUT", default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Messages per second one socket may send (reads slow down beyond it); 0 for no limit.
    #[arg(long, env = "FAWKES_MAX_MESSAGES_PER_SECOND", default_value_t = Limits::default().max_messages_per_second)]
    max_messages_per_second: u32,
    /// Allowed origins, comma-separated (e.g. `https://example.com,//*.example.org`); unset: any.
    #[arg(long, env = "FAWKES_CHECK_ORIGIN", value_delimiter = ',')]
    check_origin: Vec<String>,
    /// Seconds shutdown waits for connections to close.
    #[arg(long, env = "FAWKES_SHUTDOWN_TIMEOUT", default_value_t = Config::default().shutdown_timeout.as_secs())]
    shutdown_timeout: u64,
}

impl ServeArgs {
    fn config(&self) -> Config {
        Config {
            limits: Limits {
                max_frame_size: self.max_frame_size,
                max_channels: self.max_channels,
                max_queue: self.max_queue.max(1),
                idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
                max_messages_per_second: self.max_messages_per_second,
                ..Limits::default()
            },
            check_origin: if self.check_origin.is_empty() {
                CheckOrigin::Off
            } else {
                CheckOrigin::Allow(self.check_origin.clone())
            },
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            ..Config::default()
        }
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Serve(args) => actix_web::rt::System::new().block_on(serve(args)),
    }
}

async fn serve(args: ServeArgs) -> std::io::Result<()> {
    let endpoint = Endpoint::new(args.config());
    let socket = Socket::new(Router::new());
    let mut server = Server::new(endpoint)
        .socket("/socket", socket.clone())
        .socket("/community", socket);
    if let Some(n) = args.workers {
        server = server.workers(n);
    }
    let running = server.bind((args.host.as_str(), args.port))?;
    println!(
        "fawkes listening on http://{addr} (sockets at ws://{addr}/socket and ws://{addr}/community)",
        addr = running.local_addr()
    );
    running.run().await
}
