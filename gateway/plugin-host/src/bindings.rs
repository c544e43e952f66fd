//! Host bindings generated from the contract (`sdk/wit/plugin.wit`, world
//! `plugin`) by wasmtime's `bindgen!`.
//!
//! Imports and exports are synchronous: the capabilities call the
//! synchronous `HostServices`, WASI is linked non-blocking
//! (`caps::wasi`), and hooks are called with a plain `call` on the calling
//! thread — no fiber per call. The CPU deadline and the wall-clock timeout
//! interrupt guest code through the epoch callback.
//!
//! The generated code uses `unsafe` internally (`TypedFunc::new_unchecked`
//! after its own type checks), hence the one `allow(unsafe_code)`.

#[allow(unsafe_code, missing_docs, clippy::all)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit",
        world: "plugin",
        additional_derives: [PartialEq],
    });
}

pub(crate) use generated::edgesync::plugin::{
    config, crypto, kv, log, metrics, pubsub, timers, verdict,
};
pub(crate) use generated::exports::edgesync::plugin::{
    auth_hooks, lifecycle, message_hooks, storage_hooks, timer_hooks,
};

/// The contract's data types (`edgesync:plugin/types`), used as is in the
/// host's public API so a hook call lowers the caller's values without a
/// conversion.
pub mod types {
    pub use super::generated::edgesync::plugin::types::*;
}
