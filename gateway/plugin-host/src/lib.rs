//! # edgesync-plugin-host — the WASM plugin runtime
//!
//! Runs user plugins (WebAssembly components implementing
//! `sdk/wit/plugin.wit`) sandboxed on the gateway's paths: auth at connect
//! and subscribe, message hooks before storage, storage hooks before
//! persist, timers. Split out of the gateway crate for compile time and a
//! clean boundary: the gateway implements [`HostServices`] (durable kv,
//! publish/send/close) and calls [`Plugin`]'s hook methods.
//!
//! ```ignore
//! let host = PluginHost::new(HostConfig::default(), services, registry)?;
//! let auth = host.load(PluginConfig::new("jwt-auth", "jwt_auth.wasm")).await?;
//! match auth.on_connect(&conn_info).await {
//!     Ok(ConnectVerdict::Allow(principal)) => { /* keep principal in the session */ }
//!     Ok(ConnectVerdict::Deny(reason)) => { /* refuse with reason */ }
//!     Err(e) if auth.policy(Hook::OnConnect) == FailurePolicy::Closed => { /* refuse */ }
//!     Err(_) => { /* fail open */ }
//! }
//! ```
//!
//! Modules, in the order a plugin goes through them:
//! - [`config`] — operator config: host, plugin, limits, grants, failure policy
//! - `host` — [`PluginHost`]: engine, linker, epoch ticker, loading
//! - `engine` — wasmtime engine (pooling with fallback, epochs, no CM concurrency)
//! - `cache` — compile cache on disk keyed by SHA-256
//! - `caps` — host capabilities, one module each (link / grants / state)
//! - `state` — per-instance store data: memory cap, CPU meter
//! - `pool` — a loaded version and its warm instance pool
//! - `message` — borrowed message views; packing `on-message`'s argument
//! - `plugin` — [`Plugin`]: hook calls, breaker, reload, timers
//! - `breaker` — crash-loop breaker state machine
//! - [`services`] — [`HostServices`], implemented by the gateway
//! - `telemetry` — the host's own metrics
//! - [`testing`] — in-memory [`HostServices`] for tests
//! - [`built`] — paths of the plugins compiled from `plugins/`
//!
//! Invariants: compilation never runs on a hook call; a call never runs
//! without a CPU deadline, a wall-clock timeout and a memory cap; an
//! instance that faulted is never reused; a family a component does not
//! export is never called.

#![deny(unsafe_code)]

mod batch;
mod bindings;
mod breaker;
pub mod built;
mod cache;
mod caps;
pub mod config;
mod engine;
mod error;
mod hooks;
mod host;
pub mod kv;
mod message;
mod plugin;
mod pool;
pub mod services;
mod state;
mod telemetry;
pub mod testing;

pub use batch::{BatchBuilder, BatchFull, BatchVerdicts};
pub use bindings::types;
pub use breaker::BreakerState;
pub use cache::CacheOutcome;
pub use config::{
    BreakerConfig, ConfigError, FailurePolicies, FailurePolicy, Grants, HostConfig, Limits,
    PluginConfig,
};
pub use engine::Allocator;
pub use error::{ErrorKind, PluginError};
pub use hooks::{Exports, Family, Hook};
pub use host::{ComponentInfo, HostError, PluginHost};
pub use message::{HeadersRef, MessageRef, SenderRef};
pub use plugin::{BATCH_MESSAGES_PER_DEADLINE, Plugin, ReloadReport};
pub use services::{HostServices, KvEntry, ServiceError};
pub use types::{
    Batch, BatchVerdict, ConnInfo, ConnRef, ConnectVerdict, Header, Message, MessageVerdict,
    PackedMessage, Permissions, Principal, RetentionHint, SubscribeVerdict, Transport,
    WriteChanges, WriteVerdict,
};

/// Limits on what guests pass to host capabilities.
pub mod bounds {
    pub use crate::caps::crypto::{MAX_CACHED_KEYS, MAX_KEYS, MAX_TOKEN_BYTES};
    pub use crate::caps::kv::{MAX_KEY_BYTES, MAX_SCAN, MAX_VALUE_BYTES};
    pub use crate::caps::pubsub::{MAX_HEADERS, MAX_PAYLOAD_BYTES, MAX_TOPIC_BYTES};
}
