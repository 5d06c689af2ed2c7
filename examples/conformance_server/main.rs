//! The conformance fixture server: `cargo run --example conformance_server -- --port 4000`,
//! then point `protocol_tests` (or phoenix.js) at ws://127.0.0.1:4000/socket.

mod fixture;

use clap::Parser;
use fawkes::{Config, Endpoint, Server};

#[derive(Parser)]
#[command(about = "The Phoenix conformance fixture, served by Fawkes")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 4000)]
    port: u16,
    /// Worker threads (default: one per core); several nodes on one machine share its cores.
    #[arg(long)]
    workers: Option<usize>,
    /// Serve Prometheus metrics at `/metrics` on the same listener (for `bench soak`).
    #[arg(long)]
    metrics: bool,
    #[command(flatten)]
    cluster: fawkes::cluster::ClusterArgs,
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let endpoint = Endpoint::new(Config::default());
    let mut cluster = None;
    if let Some(c) = args.cluster.config().map_err(std::io::Error::other)? {
        cluster = Some(
            fawkes::cluster::Cluster::start(&endpoint, c, None)
                .await
                .map_err(std::io::Error::other)?,
        );
    }
    let metrics = fawkes::server::exposition::MetricsConfig {
        endpoint: endpoint.clone(),
        token: None,
    };
    let mut server = Server::new(endpoint).socket("/socket", fixture::socket());
    if args.metrics {
        server = server.routes(move |cfg| {
            fawkes::server::exposition::routes(cfg, metrics.clone());
        });
    }
    if let Some(n) = args.workers {
        server = server.workers(n);
    }
    let server = server.bind((args.host.as_str(), args.port))?;
    println!(
        "conformance fixture listening on ws://{}/socket",
        server.local_addr()
    );
    let stopped = server.run().await;
    if let Some(c) = &cluster {
        c.leave().await;
    }
    stopped
}
