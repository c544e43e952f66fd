//! edgesync: a WASM-extensible edge sync gateway.
//!
//! Layers, top to bottom: each module imports only modules listed below it (the
//! architecture test `tests/layers.rs` checks it). This is the import order, not the
//! data flow: a client's message goes transport → session → pipeline → store, and the
//! store's commits → broker → outbox → transport (ARCHITECTURE.md, "A message's
//! journey"); the admin API, plugin publishes and bridge imports enter at the pipeline
//! too.
//!
//! - [`cli`]: the `edgesync` command line (serve, pub, sub, work, cert, plugin, store, peers,
//!   check-config; the load generator is its own binary, `edgesync-bench`).
//! - [`server`]: wires the layers together and orders shutdown (`server::run(config, shutdown)`).
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, JSON API under `/v1/`).
//! - [`peers`]: replication between gateways — mTLS peer links on the QUIC endpoint, one
//!   task per link driving the I/O-free core (`edgesync-replication`) against the store.
//! - [`transport`]: listeners — admission, [`transport::tls`] (certificates),
//!   [`transport::ws`] (ws/wss), [`transport::quic`]. They only move frames.
//! - [`plugin`]: WebAssembly plugins — the session's auth hooks and the pipeline's message
//!   and storage hooks, timers, plugin services (runtime: the `edgesync-plugin-host` crate).
//! - [`session`]: the per-connection state machine (limits, auth state, subscriptions,
//!   rate limit) and its thin async driver.
//! - [`presence`]: who is on a topic — members by client, `join`/`leave` pushes, bounded
//!   listings.
//! - [`queues`]: queue groups — one member per message, acks, redelivery, dead letters
//!   (the I/O-free group state and its wiring to the store and outboxes).
//! - [`conns`]: the registry of live connections (ids, listing, reach one by id).
//! - [`bridge`]: links to NATS JetStream — export committed records, import through
//!   the pipeline (one task per direction of each `[[bridge]]`).
//! - [`pipeline`]: ingest — hooks, dead letters, store append, live-only delivery — for
//!   every entry point.
//! - [`metrics`]: the one Prometheus registry; observes the broker and the store.
//! - [`config`]: TOML file + flags + `EDGESYNC_*` env → typed runtime settings.
//! - [`broker`]: topics, the wildcard index, subscriptions, fan-out into per-connection
//!   [`outbox`]es of pre-encoded frames.
//! - [`outbox`]: a connection's bounded queue of frames with the slow-consumer policy.
//! - [`store`]: the durable log (group commit, version vectors, retention, dedupe).
//! - [`clock`]: wall-clock time, injected.
//! - [`model`]: the shared vocabulary (publish, sender, auth, ids, hook outcome).

// Top to bottom, one per group so rustfmt keeps the order (the layering test reads it).
pub mod cli;

pub mod server;

pub mod admin;

pub mod peers;

pub mod transport;

pub mod plugin;

pub mod session;

pub mod presence;

pub mod queues;

pub mod conns;

pub mod bridge;

pub mod pipeline;

pub mod metrics;

pub mod config;

pub mod broker;

pub mod outbox;

pub mod store;

pub mod clock;

pub mod model;
