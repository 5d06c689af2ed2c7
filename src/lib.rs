//! Fawkes: a Phoenix Channels server in Rust. Unmodified phoenix.js and SwiftPhoenixClient apps
//! connect to it as they would to Phoenix.
//!
//! # Layout
//! - [`protocol`]: messages and the V1 / V2 / binary serializers. Pure, no IO.
//! - [`transport`]: WebSocket and LongPoll, and the connect steps shared by transports; `frame`
//!   builds whole WebSocket frames; `ws_read` parses client frames into messages within the
//!   limits; `ws_io` serves a WebSocket on the socket it owns after the upgrade (reads,
//!   vectored writes, the connection's loop).
//! - [`connection`]: a client's bounded outbound queue and mailbox, shared with publishers.
//! - [`socket`]: one client's joined channels and the protocol's join/leave/reply rules.
//! - [`channel`]: the app-facing [`Channel`] trait, its context and the topic [`Router`].
//! - [`budget`]: a socket's budget for costly pushes (database queries, large replies).
//! - [`pubsub`]: sharded topic registry, fan-out that encodes once, the node-to-node adapter.
//! - [`presence`]: who is on a topic, as `presence_state` / `presence_diff`.
//! - [`cluster`]: several nodes over Redis: broadcasts in phoenix_pubsub_redis's format,
//!   presence replication, recorded broadcasts in seq order on every node.
//! - [`endpoint`]: config, PubSub, Presence and live connections of one server; socket definitions.
//! - [`config`]: limits and their defaults.
//! - [`metrics`]: process-wide counters (atomics the engine bumps) and `/metrics` for Prometheus.
//! - [`server`]: actix-http's HTTP/1 service (the actix-web app, WebSocket upgrades taken with
//!   their socket), TLS, descriptor limit, graceful shutdown.
//! - [`store`]: Diesel over SQLite or PostgreSQL, pool, embedded migrations.
//! - [`auth`]: Phoenix.Token and JWT verification (whom a token minted elsewhere names).
//! - [`history`]: recorded topics: per-topic event streams in the database, replayed to a
//!   client that rejoins with `since`.
//! - [`etf`]: Erlang's External Term Format, as Phoenix.Token payloads carry it.
//! - [`apps`]: what `fawkes serve` serves: accounts and the community feed (REST + channels).
//! - [`demo`]: the demo pages at `/` (feed, chat, café orders) on the built-in phoenix.js.
//! - [`inspector`]: `/admin`, live counts, topics and frames, and disconnects, for admins.
//! - [`config_file`]: `fawkes.toml`, whose keys are the flags' names.

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
pub mod transport;

pub use channel::{Assigns, Channel, ChannelContext, Flow, Info, Reply, Router, StopReason};
pub use config::{CheckOrigin, Config, Limits};
pub use endpoint::{ConnectInfo, Connected, Params, Refused, Socket};
pub use hub::Endpoint;
pub use protocol::Payload;
pub use server::Server;

/// Re-exported so apps implement [`Channel`] with the same macro.
pub use async_trait::async_trait;
