//! Counters for Prometheus: the process-wide ones every layer bumps, and a cluster link's
//! ([`ClusterStats`]); `/metrics` serves them ([`crate::server::exposition`]).
//!
//! The engine updates plain atomics here on its hot paths (a relaxed `fetch_add` per frame, no
//! label lookup); labels with more than one value are fixed arrays indexed by an enum, so a
//! scrape, not a frame, pays for turning them into metric families. Counters are per process,
//! as Prometheus scrapes processes; gauges of one endpoint (topics, presence, connections by
//! id) and its cluster link's counters are read from it at scrape time. This module imports nothing of the crate, so every
//! layer may count here.

use prometheus::{Histogram, HistogramOpts, HistogramVec};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// How a connection reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket = 0,
    LongPoll = 1,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
        }
    }
}

/// The close codes counted apart; any other code counts as `other`.
pub const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1006, 1009, 1011, 1013, 0];

/// Most distinct topic prefixes joins are counted under; later ones count as `other`. A
/// wildcard route could otherwise let clients grow the label set without bound.
pub const MAX_JOIN_PREFIXES: usize = 64;

/// A frame count and its bytes, alone on a cache line.
#[repr(align(64))]
pub struct FrameCount {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
}

/// The engine's counters. See [`ENGINE`].
pub struct Engine {
    /// Open connections, by transport and serializer (V1, V2).
    connections: [[AtomicI64; 2]; 2],
    /// Connections ever opened, by transport and serializer.
    connections_opened: [[AtomicU64; 2]; 2],
    /// Frames and bytes from clients; on a cache line of their own, apart from `outbound`
    /// (readers and writers of many workers bump them).
    pub inbound: FrameCount,
    /// Frames and bytes handed to transports for clients.
    pub outbound: FrameCount,
    /// Closes by code, indexed as [`CLOSE_CODES`] (1006: the peer vanished without a close).
    closes: [AtomicU64; CLOSE_CODES.len()],
    /// A client's outbound queue (frames for it) was full: closed with 1013.
    pub queue_overflows: AtomicU64,
    /// A client's mailbox (work for its socket task) was full: closed with 1013.
    pub mailbox_overflows: AtomicU64,
    /// Writes refused because too many were already waiting (see `crate::history`).
    pub writes_refused: AtomicU64,
    /// Costly pushes refused by a socket's budget (see [`crate::budget`]).
    pub costly_pushes_refused: AtomicU64,
    /// LongPoll sessions alive.
    pub longpoll_sessions: AtomicI64,
    /// Tasks alive that the server spawned (see [`crate::task`]).
    pub tasks: AtomicI64,
    /// Bytes held for WebSocket messages being put together from fragments.
    pub assembling_bytes: AtomicI64,
    /// Joins by topic prefix: (prefix, accepted, refused).
    joins: Mutex<Vec<(String, u64, u64)>>,
}

/// The one set of engine counters of this process.
pub static ENGINE: Engine = Engine::new();

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO_I: AtomicI64 = AtomicI64::new(0);

impl Engine {
    const fn new() -> Engine {
        Engine {
            connections: [[ZERO_I, ZERO_I], [ZERO_I, ZERO_I]],
            connections_opened: [[ZERO, ZERO], [ZERO, ZERO]],
            inbound: FrameCount {
                frames: ZERO,
                bytes: ZERO,
            },
            outbound: FrameCount {
                frames: ZERO,
                bytes: ZERO,
            },
            closes: [ZERO; CLOSE_CODES.len()],
            queue_overflows: ZERO,
            mailbox_overflows: ZERO,
            costly_pushes_refused: ZERO,
            writes_refused: ZERO,
            longpoll_sessions: ZERO_I,
            tasks: ZERO_I,
            assembling_bytes: ZERO_I,
            joins: Mutex::new(Vec::new()),
        }
    }

    /// A connection opened; `v2` is its serializer.
    pub fn opened(&self, transport: Transport, v2: bool) {
        self.connections[transport as usize][v2 as usize].fetch_add(1, Relaxed);
        self.connections_opened[transport as usize][v2 as usize].fetch_add(1, Relaxed);
    }

    /// A connection closed (pairs with [`Engine::opened`]).
    pub fn closed(&self, transport: Transport, v2: bool) {
        self.connections[transport as usize][v2 as usize].fetch_sub(1, Relaxed);
    }

    /// Open connections of one transport and serializer.
    pub fn open_connections(&self, transport: Transport, v2: bool) -> i64 {
        self.connections[transport as usize][v2 as usize].load(Relaxed)
    }

    pub fn opened_total(&self, transport: Transport, v2: bool) -> u64 {
        self.connections_opened[transport as usize][v2 as usize].load(Relaxed)
    }

    /// One frame received from a client.
    #[inline]
    pub fn frame_in(&self, bytes: usize) {
        self.inbound.frames.fetch_add(1, Relaxed);
        self.inbound.bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// `frames` frames of `bytes` bytes handed to a transport for writing.
    #[inline]
    pub fn frames_out(&self, frames: usize, bytes: usize) {
        self.outbound.frames.fetch_add(frames as u64, Relaxed);
        self.outbound.bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// A message being put together from fragments took (or, negative, gave back) `bytes`.
    #[inline]
    pub fn assembling(&self, bytes: i64) {
        if bytes != 0 {
            self.assembling_bytes.fetch_add(bytes, Relaxed);
        }
    }

    /// A connection closed with `code` (1006: without a close frame).
    pub fn close(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len() - 1);
        self.closes[i].fetch_add(1, Relaxed);
    }

    /// Closes by code label (`"other"` for codes not counted apart).
    pub fn closes(&self) -> Vec<(String, u64)> {
        CLOSE_CODES
            .iter()
            .zip(&self.closes)
            .map(|(&c, n)| {
                let label = if c == 0 {
                    "other".into()
                } else {
                    c.to_string()
                };
                (label, n.load(Relaxed))
            })
            .collect()
    }

    /// A join of `topic`, accepted or refused. `routed`: whether a route matched it (an
    /// unmatched topic counts under `unmatched`, whatever the client made up).
    pub fn join(&self, topic: &str, routed: bool, accepted: bool) {
        let prefix = if routed {
            topic.split_once(':').map_or(topic, |(p, _)| p)
        } else {
            "unmatched"
        };
        let mut joins = self.joins.lock().unwrap_or_else(|e| e.into_inner());
        let i = match joins.iter().position(|(p, _, _)| p == prefix) {
            Some(i) => i,
            None if joins.len() < MAX_JOIN_PREFIXES => {
                joins.push((prefix.to_owned(), 0, 0));
                joins.len() - 1
            }
            None => match joins.iter().position(|(p, _, _)| p == "other") {
                Some(i) => i,
                None => {
                    // The last slot becomes `other`: the bound holds, nothing counted is lost.
                    let (_, a, r) = joins.pop().unwrap_or_default();
                    joins.push(("other".to_owned(), a, r));
                    joins.len() - 1
                }
            },
        };
        if accepted {
            joins[i].1 += 1;
        } else {
            joins[i].2 += 1;
        }
    }

    /// (prefix, accepted, refused) for every prefix seen.
    pub fn joins(&self) -> Vec<(String, u64, u64)> {
        self.joins.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a node's cluster link ([`crate::cluster`]) did, for logs, tests and metrics: held by the
/// endpoint it serves, read by `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Connected to Redis right now.
    pub up: AtomicBool,
    /// Times the link was lost.
    pub outages: AtomicU64,
    pub published: AtomicU64,
    /// Messages that could not be published (Redis down, or the queue full).
    pub unpublished: AtomicU64,
    /// Channel broadcasts from other nodes delivered here.
    pub received: AtomicU64,
    /// Messages that were not for this node or not channel broadcasts, or could not be read.
    pub ignored: AtomicU64,
    /// Messages over a bound (size, nesting, decoded memory), refused unread.
    pub refused: AtomicU64,
    /// Channel broadcasts whose payload JSON cannot carry (not delivered).
    pub not_json: AtomicU64,
    /// Recorded broadcasts dropped as already delivered.
    pub duplicates: AtomicU64,
    /// Recorded broadcasts fetched from the change log to fill a gap or catch up.
    pub backfilled: AtomicU64,
    /// Recorded broadcasts whose seq is past the change log's latest (dropped).
    pub unknown: AtomicU64,
    /// Broadcasts on recorded topics whose seq no node of this cluster signed (dropped).
    pub unsigned: AtomicU64,
    /// Presence replication messages sent and received.
    pub presence_sent: AtomicU64,
    pub presence_received: AtomicU64,
}

/// How a request to an app's backend ended (see `apps::proxy`), as counted in
/// `fawkes_backend_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendOutcome {
    Ok = 0,
    Timeout,
    Unreachable,
    Status,
    CircuitOpen,
    QueueFull,
    TooLarge,
    BadAnswer,
}

impl BackendOutcome {
    pub const ALL: [BackendOutcome; 8] = [
        BackendOutcome::Ok,
        BackendOutcome::Timeout,
        BackendOutcome::Unreachable,
        BackendOutcome::Status,
        BackendOutcome::CircuitOpen,
        BackendOutcome::QueueFull,
        BackendOutcome::TooLarge,
        BackendOutcome::BadAnswer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BackendOutcome::Ok => "ok",
            BackendOutcome::Timeout => "timeout",
            BackendOutcome::Unreachable => "unreachable",
            BackendOutcome::Status => "http_error",
            BackendOutcome::CircuitOpen => "circuit_open",
            BackendOutcome::QueueFull => "queue_full",
            BackendOutcome::TooLarge => "too_large",
            BackendOutcome::BadAnswer => "bad_answer",
        }
    }
}

/// What a `connect_url` decided of a socket connect (see `apps::proxy`), as counted in
/// `fawkes_backend_connects_total{verdict}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectVerdict {
    Allowed = 0,
    /// The backend said no (HTTP 403).
    Refused,
    /// The backend gave no usable answer (HTTP 500).
    Failed,
}

impl ConnectVerdict {
    pub const ALL: [ConnectVerdict; 3] = [
        ConnectVerdict::Allowed,
        ConnectVerdict::Refused,
        ConnectVerdict::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnectVerdict::Allowed => "allowed",
            ConnectVerdict::Refused => "refused",
            ConnectVerdict::Failed => "failed",
        }
    }
}

/// Why a Supabase Realtime event or join was refused, as counted in
/// `fawkes_realtime_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealtimeRefusal {
    /// Over `--realtime-events-per-second`.
    Rate = 0,
    /// Over `--realtime-max-payload-bytes`.
    Size,
    /// A private channel's rules refused it.
    Unauthorized,
    /// A user token or apikey did not verify (join, `access_token`, REST).
    Token,
}

impl RealtimeRefusal {
    pub const ALL: [RealtimeRefusal; 4] = [
        RealtimeRefusal::Rate,
        RealtimeRefusal::Size,
        RealtimeRefusal::Unauthorized,
        RealtimeRefusal::Token,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RealtimeRefusal::Rate => "rate",
            RealtimeRefusal::Size => "size",
            RealtimeRefusal::Unauthorized => "unauthorized",
            RealtimeRefusal::Token => "token",
        }
    }
}

/// Supabase Realtime's counters (`apps::realtime`). See [`REALTIME`].
pub struct RealtimeCounters {
    refused: [AtomicU64; RealtimeRefusal::ALL.len()],
    /// Broadcasts relayed (from sockets and REST).
    pub relayed: AtomicU64,
}

/// The one set of Supabase Realtime counters of this process.
pub static REALTIME: RealtimeCounters = RealtimeCounters {
    refused: [ZERO; RealtimeRefusal::ALL.len()],
    relayed: ZERO,
};

impl RealtimeCounters {
    pub fn refuse(&self, why: RealtimeRefusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    pub fn relayed(&self) {
        self.relayed.fetch_add(1, Relaxed);
    }

    /// Refusals by reason label.
    pub fn refusals(&self) -> Vec<(String, u64)> {
        RealtimeRefusal::ALL
            .iter()
            .map(|r| {
                (
                    r.label().to_owned(),
                    self.refused[*r as usize].load(Relaxed),
                )
            })
            .collect()
    }
}

/// Change capture's gauges and counters (`store::cdc`). See [`CDC`].
pub struct Cdc {
    /// WAL the slot holds back, in bytes (`pg_current_wal_lsn() - restart_lsn`), at the last read.
    pub lag_bytes: AtomicI64,
    /// Row changes broadcast.
    pub changes: AtomicU64,
    /// Times the slot was dropped for holding back more than `--cdc-max-lag-bytes`.
    pub slot_drops: AtomicU64,
    /// 1 while this node holds the slot and reads it.
    pub reading: AtomicI64,
}

/// The one set of change-capture counters of this process.
pub static CDC: Cdc = Cdc {
    lag_bytes: ZERO_I,
    changes: ZERO,
    slot_drops: ZERO,
    reading: ZERO_I,
};

/// Requests to apps' backends (channels proxied over HTTP). See [`BACKEND`].
pub struct Backends {
    requests: [AtomicU64; BackendOutcome::ALL.len()],
    connects: [AtomicU64; ConnectVerdict::ALL.len()],
    /// Requests being sent or awaiting their answer.
    pub in_flight: AtomicI64,
    /// Requests waiting for a backend's free slot.
    pub queued: AtomicI64,
    /// Backends whose circuit is open now.
    pub circuits_open: AtomicI64,
    /// Times a circuit opened (or, after a failed probe, opened again).
    pub circuit_opened: AtomicU64,
}

/// The one set of backend counters of this process.
pub static BACKEND: Backends = Backends {
    requests: [ZERO; BackendOutcome::ALL.len()],
    connects: [ZERO; ConnectVerdict::ALL.len()],
    in_flight: ZERO_I,
    queued: ZERO_I,
    circuits_open: ZERO_I,
    circuit_opened: ZERO,
};

impl Backends {
    /// A request ended with `outcome` after `took`.
    pub fn finished(&self, outcome: BackendOutcome, took: Duration) {
        self.requests[outcome as usize].fetch_add(1, Relaxed);
        if !matches!(
            outcome,
            BackendOutcome::CircuitOpen | BackendOutcome::QueueFull
        ) {
            BACKEND_REQUEST.observe(took.as_secs_f64());
        }
    }

    /// A socket connect decided by the backend.
    pub fn connected(&self, verdict: ConnectVerdict) {
        self.connects[verdict as usize].fetch_add(1, Relaxed);
    }

    /// Connects by verdict label.
    pub fn connects(&self) -> Vec<(String, u64)> {
        ConnectVerdict::ALL
            .iter()
            .map(|v| {
                (
                    v.label().to_owned(),
                    self.connects[*v as usize].load(Relaxed),
                )
            })
            .collect()
    }

    /// Requests by outcome label.
    pub fn requests(&self) -> Vec<(String, u64)> {
        BackendOutcome::ALL
            .iter()
            .map(|o| {
                (
                    o.label().to_owned(),
                    self.requests[*o as usize].load(Relaxed),
                )
            })
            .collect()
    }
}

/// How long backend requests took (those not failed at once), queue wait included.
pub static BACKEND_REQUEST: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(
        HistogramOpts::new(
            "fawkes_backend_request_duration_seconds",
            "Requests to apps' backends (proxied channels), queue wait included",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )
    .expect("valid histogram")
});

/// Latency buckets for requests and queries, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// HTTP requests by route pattern, method and status, with their latency.
pub static HTTP_REQUESTS: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new(
            "fawkes_http_request_duration_seconds",
            "HTTP requests by route pattern, method and status, and how long they took",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["route", "method", "status"],
    )
    .expect("valid histogram")
});

/// Database work, one transaction or unit of work at a time (pool wait excluded).
pub static DB_QUERY: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(
        HistogramOpts::new(
            "fawkes_db_query_duration_seconds",
            "Database work per transaction, after a pooled connection was obtained",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )
    .expect("valid histogram")
});

/// Time spent waiting for a pooled database connection.
pub static DB_POOL_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(
        HistogramOpts::new(
            "fawkes_db_pool_wait_seconds",
            "Time spent waiting for a pooled database connection",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )
    .expect("valid histogram")
});

/// Records a duration in a histogram.
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

/// Bytes the allocator has handed out and not had back: jemalloc's `stats.allocated` (feature
/// `jemalloc`), else glibc's `mallinfo2` (arena chunks in use plus mmapped ones); `None` where
/// the allocator does not say.
pub fn heap_bytes() -> Option<u64> {
    #[cfg(feature = "jemalloc")]
    {
        // The statistics are a snapshot taken at the last epoch: advance it first.
        tikv_jemalloc_ctl::epoch::advance().ok()?;
        tikv_jemalloc_ctl::stats::allocated::read()
            .ok()
            .map(|b| b as u64)
    }
    #[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's own statistics.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(all(
        not(feature = "jemalloc"),
        not(all(target_os = "linux", target_env = "gnu"))
    ))]
    {
        None
    }
}

/// What the process's allocators hold, by allocator and kind, in bytes, to tell a resident
/// size that grows over a flat heap apart. jemalloc (feature `jemalloc`, Rust's allocations):
/// `allocated` (in use), `active` (its pages holding them), `resident` (its pages in memory,
/// dirty ones included), `metadata`. glibc (every C library linked in: SQLite's page caches,
/// libpq): `allocated` (in use) and `free` (freed, still held in its arenas).
pub fn allocator_bytes() -> Vec<(&'static str, &'static str, u64)> {
    let mut out = Vec::new();
    #[cfg(feature = "jemalloc")]
    if tikv_jemalloc_ctl::epoch::advance().is_ok() {
        use tikv_jemalloc_ctl::stats;
        for (kind, read) in [
            ("allocated", stats::allocated::read as fn() -> _),
            ("active", stats::active::read),
            ("resident", stats::resident::read),
            ("metadata", stats::metadata::read),
        ] {
            if let Ok(b) = read() {
                out.push(("jemalloc", kind, b as u64));
            }
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's own statistics.
        let m = unsafe { libc::mallinfo2() };
        out.push(("glibc", "allocated", (m.uordblks + m.hblkhd) as u64));
        out.push(("glibc", "free", m.fordblks as u64));
    }
    out
}

/// Resident memory of this process, in bytes: `/proc/self/statm`'s resident pages times the page
/// size, what `process_resident_memory_bytes` reports; `None` off Linux or when unreadable.
pub fn resident_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf only reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages.checked_mul(u64::try_from(page).ok()?)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// File descriptors this process has open (sockets included); `None` off Linux or when
/// unreadable.
pub fn open_fds() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        // Since Linux 6.2 the directory's size is the count, with nothing to open or list.
        let size = std::fs::metadata("/proc/self/fd").ok()?.len();
        if size > 0 {
            return Some(size);
        }
        // Listing it holds one descriptor of its own, not counted.
        let listed = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(listed.saturating_sub(1))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_prefixes_stay_bounded() {
        let e = Engine::new();
        for i in 0..200 {
            e.join(&format!("p{i}:x"), true, i % 2 == 0);
        }
        e.join("nowhere:x", false, false);
        let joins = e.joins();
        assert_eq!(joins.len(), MAX_JOIN_PREFIXES);
        let total: u64 = joins.iter().map(|(_, a, r)| a + r).sum();
        assert_eq!(total, 201);
        assert!(joins.iter().any(|(p, _, _)| p == "other"));
    }

    #[test]
    fn closes_count_known_codes_apart() {
        let e = Engine::new();
        e.close(1001);
        e.close(1001);
        e.close(4000);
        let c = e.closes();
        assert!(c.contains(&("1001".into(), 2)));
        assert!(c.contains(&("other".into(), 1)));
    }

    /// This process's own memory and descriptors, as /proc says: page-sized resident memory, and
    /// at least stdin, stdout and stderr (other tests of this binary open and close their own
    /// meanwhile, so no exact count is asserted here).
    #[cfg(target_os = "linux")]
    #[test]
    fn resident_bytes_and_open_fds_of_this_process() {
        let rss = resident_bytes().expect("resident bytes on Linux");
        assert!(rss > 0 && rss.is_multiple_of(4096), "{rss}");
        let fds = open_fds().expect("open fds on Linux");
        assert!(fds >= 3, "{fds}");
    }
}
