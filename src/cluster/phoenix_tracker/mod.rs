//! Phoenix.Tracker between replicas, as Elixir nodes run it on a Presence shard's topic
//! `phx_presence:Elixir.<App>.Presence_shard<N>`: what crosses the wire ([`wire`]), a
//! replica's state, merged and compacted as `Phoenix.Tracker.State` does it ([`state`]), the
//! contexts compared to find what is missing ([`clock`]), and the replica's life among its
//! peers: heartbeats, transfers, downs ([`shard`]), run on the Redis link ([`node`]). What the messages mean and how Elixir
//! nodes act on them: `docs/phoenix-tracker.md`.

pub mod clock;
pub mod node;
pub mod shard;
pub mod state;
pub mod wire;

pub use wire::*;
