//! Host bindings generated from the contract (`sdk/wit/plugin.wit`, world
//! `plugin`) by wasmtime's `bindgen!`.
//!
//! Imports are synchronous host functions (the capabilities call the
//! synchronous `HostServices`); exports are `async` and called with
//! `call_async` so the CPU deadline can interrupt them and the wall-clock
//! timeout can drop them.
//!
//! The generated code uses `unsafe` internally (`TypedFunc::new_unchecked`
//! after its own type checks), hence the one `allow(unsafe_code)`.

#[allow(unsafe_code, missing_docs, clippy::all)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit",
        world: "plugin",
        exports: { default: async },
        additional_derives: [PartialEq],
    });
}

pub(crate) use generated::edgesync::plugin::{config, crypto, kv, log, metrics, pubsub, timers};
pub(crate) use generated::exports::edgesync::plugin::{
    auth_hooks, lifecycle, message_hooks, storage_hooks, timer_hooks,
};

/// The contract's data types (`edgesync:plugin/types`), used as is in the
/// host's public API so a hook call lowers the caller's values without a
/// conversion.
pub mod types {
    pub use super::generated::edgesync::plugin::types::*;
}
