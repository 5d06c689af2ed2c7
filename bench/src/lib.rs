//! Load generator for any Phoenix Channels server running the conformance fixture
//! (`community:feed`: `new_post` broadcasts to every joined socket, `ping` echoes).
//!
//! - [`conn`]: opening connections (rotating loopback source addresses), joining, heartbeats.
//! - [`conns`], [`fanout`], [`echo`], [`storm`], [`soak`]: the modes for any Phoenix server;
//!   [`changes`]: Postgres changes followed as supabase-js follows them (Fawkes with `--cdc-tables`).
//! - [`longpoll`]: a LongPoll client (sessions, polls, posts), for the soak.
//! - [`proc`]: readings from `/proc` (memory, CPU) and the open-files limit.
//! - [`report`]: failures, latency summaries, the human and JSON output.

pub mod changes;
pub mod conn;
pub mod conns;
pub mod echo;
pub mod fanout;
pub mod longpoll;
pub mod proc;
pub mod report;
pub mod soak;
pub mod storm;

use std::sync::Arc;
use std::time::Duration;

/// What every mode is given: the server, and how to open connections to it.
pub struct Bench {
    pub target: Arc<conn::Target>,
    /// The server's processes (its nodes, and Redis between them), from `--server-pid`.
    pub server: Vec<proc::Proc>,
    /// Connections opened concurrently.
    pub batch: usize,
    /// The time all joins may take before the run aborts.
    pub join_budget: Duration,
    /// The bench's open-files limit after raising it (a connection is a descriptor).
    pub nofile_limit: Option<u64>,
}

impl Bench {
    /// The server's CPU seconds so far, over all its processes, if their pids are known.
    pub fn server_cpu(&self) -> Option<f64> {
        (!self.server.is_empty())
            .then(|| self.server.iter().map(|p| p.cpu_secs()).sum())
            .flatten()
    }

    /// The server's resident memory in bytes, over all its processes, if their pids are known.
    pub fn server_rss(&self) -> Option<u64> {
        (!self.server.is_empty())
            .then(|| self.server.iter().map(|p| p.rss_bytes()).sum())
            .flatten()
    }

    /// Rows every report starts with.
    pub fn describe(&self, report: &mut report::Report) {
        report.note(format!("source addresses: {}", self.target.sources()));
        if self.target.node_count() > 1 {
            report.note(format!(
                "connections spread over {} server nodes; the publisher on the first",
                self.target.node_count()
            ));
        }
        let limit = serde_json::json!(self.nofile_limit);
        report.num("bench_nofile_limit", "bench open-files limit", limit, "");
    }
}

/// Bytes as MiB, for the report.
pub fn mib(bytes: Option<u64>) -> Option<f64> {
    bytes.map(|b| b as f64 / (1024.0 * 1024.0))
}
