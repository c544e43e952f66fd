//! edgesync: a WASM-extensible edge sync gateway.
//!
//! Modules in data-flow order (a message travels down this list):
//!
//! - [`config`]: TOML file + flags + `EDGESYNC_*` env → typed runtime settings.
//! - [`transport`]: listeners — [`transport::tls`] (certificates), [`transport::ws`]
//!   (ws/wss). They only move frames.
//! - (`edgesync-protocol` decodes frames; it does no I/O.)
//! - [`session`]: the per-connection state machine (limits, auth state,
//!   subscriptions, rate limit) and its thin async driver.
//! - [`plugin`]: WebAssembly plugins on the path — auth at connect/subscribe, message and
//!   storage hooks before the store, timers (runtime: the `edgesync-plugin-host` crate).
//! - [`broker`]: topics, the wildcard index, subscriptions, fan-out into
//!   per-connection [`outbox`]es of pre-encoded frames.
//! - [`store`]: the durable log (group commit, version vectors, retention, dedupe).
//! - [`metrics`]: the one Prometheus registry.
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, JSON API under `/v1/`).
//! - [`server`]: wires everything together (`server::run(config, shutdown)`).
//! - [`cli`]: the `edgesync` command line (serve, pub, sub, cert, check-config).

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod outbox;
pub mod plugin;
pub mod server;
pub mod session;
pub mod store;
pub mod transport;
