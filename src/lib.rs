//! Fawkes: a Phoenix Channels server in Rust. Unmodified phoenix.js and SwiftPhoenixClient apps
//! connect to it as they would to Phoenix.
//!
//! # Layout
//! In layers, lowest first: a module imports only from its own layer and those before it, never
//! in a circle (`tests/layers.rs` checks it from the `use` lines).
//!
//! Wire, pure code with no IO:
//! - [`protocol`]: messages, the V1 / V2 / binary serializers, and whole server WebSocket frames
//!   (`frame`: built once, header included, shared by every subscriber).
//! - [`etf`]: Erlang's External Term Format, as Phoenix.Token payloads carry it.
//!
//! The engine, in the order its modules build on each other (the first three import nothing
//! of the crate, so every layer may use them):
//! - [`config`]: limits and their defaults.
//! - [`metrics`]: counters (atomics the engine bumps, the cluster link's, latency histograms).
//! - [`budget`]: a socket's budget for costly pushes (database queries, large replies).
//! - [`pubsub`]: sharded topic registry, fan-out that encodes once, the node-to-node adapter.
//! - [`presence`]: who is on a topic, as `presence_state` / `presence_diff`, on PubSub.
//! - [`connection`]: a client's bounded outbound queue and mailbox (with [`Info`], what a
//!   channel's `handle_info` gets), shared with publishers.
//! - [`hub`]: the [`Endpoint`] handle: config, PubSub, Presence and the live connections of one
//!   server, shared by everything above it and knowing none of it.
//! - [`cluster`]: several nodes over Redis, given the Endpoint: broadcasts in
//!   phoenix_pubsub_redis's format, presence replication, recorded broadcasts in seq order on
//!   every node (the change log they are read back from is a trait, `cluster::Backfill`,
//!   that [`history`] implements).
//! - [`channel`]: the app-facing [`Channel`] trait, its context and the topic [`Router`].
//! - [`endpoint`]: socket definitions mounted on an endpoint: the connect callback and its
//!   [`ConnectInfo`] / [`Connected`] / [`Refused`], and the router ([`Endpoint`] re-exported).
//! - `socket`: one client's joined channels and the protocol's join/leave/reply rules.
//! - [`transport`]: WebSocket and LongPoll, and the connect steps they share; `ws_read` parses
//!   client frames into messages within the limits; `ws_io` serves a WebSocket on the socket it
//!   owns after the upgrade (reads, vectored writes, the connection's loop).
//! - [`server`]: actix-http's HTTP/1 service (the actix-web app, WebSocket upgrades taken with
//!   their socket), TLS, descriptor limit, graceful shutdown; `/metrics` (`exposition`), which
//!   reads the endpoint's gauges.
//!
//! Store, recorded history and sign-in (they know the engine, nothing of the apps):
//! - [`store`]: Diesel over SQLite or PostgreSQL, pool, embedded migrations; a write refused
//!   on purpose says why with its own `store::Refusal`, which REST and channels each map;
//!   `store::cdc`, change capture: the app's own tables' committed changes from a logical
//!   replication slot, broadcast on the endpoint.
//! - [`auth`]: Phoenix.Token and JWT verification (whom a token minted elsewhere names); pure.
//! - [`history`]: recorded topics: per-topic event streams in the database, broadcast in
//!   commit order, replayed to a client that rejoins with `since`.
//! - [`accounts`]: users, API tokens and `accounts::sign_in`, the one sign-in every transport
//!   and REST route calls, whatever the token's kind.
//!
//! Apps (each with its channels, REST handlers and queries; what two apps share lives below):
//! - [`apps`], in three steps: what the apps share (`apps::state`: `AppState` and each app's
//!   settings; `apps::api`: REST errors, bearer sign-in, bodies; `apps::rules`: collection
//!   rules) and the channel kinds that stand alone (`apps::proxy`: declared channels whose
//!   joins, pushes and leaves are signed requests to the app's own HTTP backend;
//!   `apps::realtime`: Supabase Realtime's `realtime:*` channels and REST broadcasts); the apps
//!   (`apps::account`: `/api/me`, the community; `apps::feed`; `apps::chat`, with `access`, the
//!   one place that says who may read or write a room; `apps::collections`; `apps::server_api`:
//!   what the app's backend calls: broadcast, disconnect, presence, topics); and `apps` itself,
//!   which mounts them on the socket and the routes.
//!
//! The binary's faces (and `main.rs`):
//! - [`demo`]: the demo pages at `/` (feed, chat, café orders) on the built-in phoenix.js.
//! - [`inspector`]: `/admin`, live counts, charts of the gauges, topics and frames, and
//!   disconnects, for admins.
//! - [`config_file`]: `fawkes.toml`, whose keys are the flags' names.
//!
//! # Where the next capabilities go
//! Each adds rooms, not arrows:
//! - A **channel kind of its own** per capability, on the engine's [`Channel`] trait and mounted
//!   through the [`Router`]: Supabase Realtime's `realtime:*` channels (`apps::realtime`, with
//!   its REST broadcast routes beside it), channels proxied to an app's HTTP backend
//!   (`apps::proxy` and the server API the backend calls, `apps::server_api`), and live table
//!   changes (`apps::realtime`'s `postgres_changes` and `postgres:` topics, fed by
//!   `store::cdc`, which reads PostgreSQL's logical replication and publishes through the
//!   engine): all here now.
//! - **Sign-in kinds behind one interface**: a new token kind (Supabase's `apikey` and
//!   `access_token`, a backend's `connect_url` answer) is a verifier in [`auth`] or a step of
//!   `accounts::sign_in`; every transport and REST route keeps calling `sign_in` once
//!   (Supabase's project keys are `auth::supabase`, checked by `apps::realtime` itself: its
//!   tokens name no Fawkes user).
//! - What such an app shares with another moves below both (as `apps::chat::access` and
//!   `accounts` did), and `tests/layers.rs` gets its module in the right row.

pub mod accounts;
pub mod apps;
pub mod auth;
pub mod budget;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod demo;
pub mod endpoint;
pub mod etf;
pub mod history;
pub mod hub;
pub mod inspector;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod server;
pub(crate) mod socket;
pub mod store;
pub mod task;
pub mod transport;

pub use channel::{Assigns, Channel, ChannelContext, Flow, Info, Reply, Router, StopReason};
pub use config::{CheckOrigin, Config, Limits};
pub use endpoint::{ConnectInfo, Connected, Params, Refused, Socket};
pub use hub::Endpoint;
pub use protocol::Payload;
pub use server::Server;

/// Re-exported so apps implement [`Channel`] with the same macro.
pub use async_trait::async_trait;

/// jemalloc for every program built on this crate (feature `jemalloc`, on by default; turn it
/// off with `default-features = false` to keep the system allocator). glibc's malloc strands
/// freed memory in its per-thread arenas: under churn, `fawkes serve`'s RSS kept climbing over
/// a flat heap (README, "Soak"). On Linux it is the process's `malloc` too, so the C libraries
/// (SQLite, libpq) allocate from it.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: background threads return freed pages to the
/// system after a second (its default is ten, and only when the arena that freed them next
/// allocates), so what a burst freed does not stay resident. In a `fawkes serve` soak the
/// pages freed and kept went from 17 to 65 MiB over 15 minutes at ten seconds; at one they
/// read 0.1 to 22 MiB. Settings in `MALLOC_CONF` still apply on top.
#[cfg(feature = "jemalloc")]
#[export_name = "malloc_conf"]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 43] = b"background_thread:true,dirty_decay_ms:1000\0";

#[cfg(all(test, feature = "jemalloc"))]
mod allocator_tests {
    /// The options above are the ones jemalloc runs with (the symbol's name is right).
    #[test]
    fn jemalloc_takes_the_options() {
        // SAFETY: both options exist and have these types (jemalloc's mallctl documentation).
        let (decay, background) = unsafe {
            (
                tikv_jemalloc_ctl::raw::read::<isize>(b"opt.dirty_decay_ms\0").unwrap(),
                tikv_jemalloc_ctl::raw::read::<bool>(b"opt.background_thread\0").unwrap(),
            )
        };
        assert_eq!((decay, background), (1000, true));
    }

    /// C code's `malloc` (SQLite's) is jemalloc's: its bytes show in jemalloc's count.
    #[test]
    fn c_malloc_is_jemalloc() {
        let allocated = || {
            tikv_jemalloc_ctl::epoch::advance().unwrap();
            tikv_jemalloc_ctl::stats::allocated::read().unwrap()
        };
        let before = allocated();
        // SAFETY: a plain allocation, freed below.
        let p = unsafe { libc::malloc(64 << 20) };
        assert!(!p.is_null());
        let during = allocated();
        // SAFETY: `p` came from malloc and is freed once.
        unsafe { libc::free(p) };
        // Other tests allocate beside this one, but not 64 MiB at once.
        assert!(during >= before + (60 << 20), "{before} -> {during}");
    }
}
