//! # edgesync-plugin — write edgesync plugins in Rust
//!
//! A plugin is a WebAssembly component the gateway runs in a sandbox on the
//! live message path. With this crate a plugin is one type, one
//! [`Plugin`] impl with the hooks you need, and one attribute,
//! [`export`]:
//!
//! ```no_run
//! use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};
//!
//! /// Rejects messages larger than `max_bytes`, and upper-cases `shout.>` topics.
//! struct Guard {
//!     max_bytes: usize,
//! }
//!
//! #[edgesync_plugin::export]
//! impl Plugin for Guard {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         // The config table from the gateway config, as JSON. `config::get`
//!         // reads one key without a JSON parser.
//!         let max_bytes = edgesync_plugin::config::get("max_bytes")
//!             .map(|v| v.parse::<usize>().map_err(|e| format!("max_bytes: {e}")))
//!             .transpose()?
//!             .unwrap_or(1024);
//!         Ok(Guard { max_bytes })
//!     }
//!
//!     fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
//!         if msg.payload.len() > self.max_bytes {
//!             return MessageVerdict::Reject(format!("payload over {} bytes", self.max_bytes));
//!         }
//!         if edgesync_plugin::topic_matches("shout.>", msg.topic) {
//!             let mut out = msg.to_message();
//!             out.payload.make_ascii_uppercase();
//!             return MessageVerdict::Replace(out);
//!         }
//!         MessageVerdict::Pass
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`); the `.wasm` in `target/wasm32-wasip2/release/` is the component.
//!
//! ## What gets exported
//!
//! The component always exports `lifecycle` (your [`Plugin::init`]) and, in
//! addition, only the hook families whose methods your impl block defines:
//!
//! | you define                                   | family exported  |
//! |----------------------------------------------|------------------|
//! | `on_connect`, `on_subscribe`, `on_disconnect`| `auth-hooks`     |
//! | `on_message`, `on_batch`                     | `message-hooks`  |
//! | `on_write`                                   | `storage-hooks`  |
//! | `on_timer`                                   | `timer-hooks`    |
//!
//! The gateway inspects the component and never calls a family it does not
//! export, so an auth plugin costs nothing on the message path. Within an
//! exported family, hooks you did not define use the trait defaults.
//! `on_batch` defaults to calling `on_message` once per message.
//!
//! ## State
//!
//! `init` runs on every fresh instance; the host pools instances, retires
//! them after a number of calls and discards any that trapped. Keep derived
//! configuration in `Self`; keep anything that must survive in the host:
//! [`kv`], [`timers`], [`metrics`].
//!
//! ## Host capabilities
//!
//! [`log`], [`metrics`], [`timers`], [`kv`], [`pubsub`], [`config`],
//! [`crypto`] are the generated bindings of the contract (`sdk/wit/plugin.wit`),
//! re-exported. What a plugin may call is granted in the gateway config.

#![deny(unsafe_code)]

/// Generated bindings of the contract's `imports` world (the host
/// capabilities and all shared types). `#[export]` remaps its types here.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit",
        world: "imports",
        generate_unused_types: true,
        additional_derives: [PartialEq],
    });
}

pub use edgesync_plugin_macros::export;

/// All contract types (`edgesync:plugin/types`).
pub mod types {
    pub use crate::wit::edgesync::plugin::types::*;
}
pub use types::{
    Batch, BatchVerdict, ConnInfo, ConnRef, ConnectVerdict, Header, Message, MessageVerdict,
    PackedMessage, Permissions, Principal, RetentionHint, SubscribeVerdict, Transport,
    WriteChanges, WriteVerdict,
};

pub use wit::edgesync::plugin::{config, crypto, kv, metrics, pubsub, timers};

mod batch;
mod message;
mod packed;
mod topic;

pub use batch::{BatchError, BatchItem, BatchVerdicts};
pub use message::{HeaderIter, HeadersRef, MessageRef, SenderRef};
pub use packed::PackedError;
pub use topic::{pattern_is_valid, topic_matches};

/// Logging into the gateway's log, tagged with the plugin name.
pub mod log {
    pub use crate::wit::edgesync::plugin::log::{Level, log};

    /// Log at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }
    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// A plugin: one value per instance, built by [`Plugin::init`], whose hooks
/// the host calls.
///
/// Every hook has a default, so implement only what you need — and only
/// what you implement is exported (see the crate docs). Hooks are phases of
/// the gateway's pipeline, in this order for a message:
/// `on_connect` (once per connection) → `on_subscribe` (per subscription) →
/// `on_message` / `on_batch` (per publish, before storage) → `on_write`
/// (just before persist) → `on_disconnect`. `on_timer` runs whenever a timer
/// set with [`timers`] fires.
///
/// Hooks run under a CPU deadline (10 ms by default) and a memory cap;
/// a panic traps the call, which the gateway handles by its failure policy.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its config table (JSON text of the
    /// `[plugin.config]` table; `"{}"` when empty). Runs once per instance
    /// before any hook. An error fails the load, or rolls back a reload.
    fn init(config: &str) -> Result<Self, String>;

    /// A client connects. Return `Allow` with the principal (its identity
    /// and publish/subscribe permissions) or `Deny` with a reason for the
    /// client.
    ///
    /// Default (only used when the plugin defines another auth hook): allow
    /// as principal = client id with every permission.
    fn on_connect(&self, conn: &ConnInfo) -> ConnectVerdict {
        ConnectVerdict::Allow(Principal {
            id: conn.client_id.clone(),
            permissions: Permissions {
                publish: vec![">".to_string()],
                subscribe: vec![">".to_string()],
            },
            attributes: Vec::new(),
        })
    }

    /// A client subscribes to `pattern`, after the gateway checked the
    /// principal's permissions. Default: allow.
    fn on_subscribe(&self, conn: &ConnRef, pattern: &str) -> SubscribeVerdict {
        let _ = (conn, pattern);
        SubscribeVerdict::Allow
    }

    /// A connection ended. Default: nothing.
    fn on_disconnect(&self, conn: &ConnRef) {
        let _ = conn;
    }

    /// A message was published: `Pass`, `Replace` it, `Drop` it (the
    /// publisher still gets an ack) or `Reject` it with a reason.
    /// Default: pass.
    fn on_message(&self, sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        let _ = (sender, msg);
        MessageVerdict::Pass
    }

    /// Many messages of one sender: the verdicts on those that do not pass
    /// ([`BatchVerdicts`]; collect it from one verdict per message).
    /// Default: `on_message` for each; a malformed entry is rejected.
    fn on_batch(&self, sender: SenderRef<'_>, batch: &Batch) -> BatchVerdicts {
        batch
            .items()
            .map(|item| match item {
                Ok(item) => self.on_message(sender, item.as_message_ref()),
                Err(e) => MessageVerdict::Reject(e.to_string()),
            })
            .collect()
    }

    /// A record is about to be persisted: `Accept`, `AcceptWith` changes
    /// (payload, headers, retention hint), `Skip` persistence (deliver only)
    /// or `Reject`. Default: accept.
    fn on_write(&self, sender: SenderRef<'_>, msg: MessageRef<'_>) -> WriteVerdict {
        let _ = (sender, msg);
        WriteVerdict::Accept
    }

    /// The timer `name` fired. Default: nothing.
    fn on_timer(&self, name: &str) {
        let _ = name;
    }
}

/// Runtime support for the code `#[export]` generates. Not public API.
#[doc(hidden)]
pub mod __rt {
    use std::any::Any;
    use std::cell::RefCell;

    pub use wit_bindgen;

    thread_local! {
        /// The plugin value of this instance (a component instance is
        /// single-threaded; `init` fills it before any hook runs).
        static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// `lifecycle.init`: build and store the plugin value.
    pub fn init<P: super::Plugin>(config: &str) -> Result<(), String> {
        let plugin = P::init(config)?;
        PLUGIN.with(|cell| *cell.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    /// `on-message`'s result: a verdict's data goes to the host through
    /// the `verdict` import, the action is returned (see `message-action`
    /// in the WIT).
    pub fn message_action(v: super::MessageVerdict) -> super::types::MessageAction {
        use super::types::MessageAction;
        use super::wit::edgesync::plugin::verdict;
        match v {
            super::MessageVerdict::Pass => MessageAction::Pass,
            super::MessageVerdict::Drop => MessageAction::Drop,
            super::MessageVerdict::Replace(m) => {
                verdict::set_replacement(&m);
                MessageAction::Replace
            }
            super::MessageVerdict::Reject(reason) => {
                verdict::set_reason(&reason);
                MessageAction::Reject
            }
        }
    }

    /// Run a hook against the stored plugin value.
    ///
    /// # Panics
    /// If the host calls a hook before `init` succeeded, which the host
    /// never does; the panic traps the call.
    pub fn with<P: super::Plugin, R>(f: impl FnOnce(&P) -> R) -> R {
        PLUGIN.with(|cell| {
            let guard = cell.borrow();
            let Some(plugin) = guard.as_ref().and_then(|b| b.downcast_ref::<P>()) else {
                panic!("edgesync plugin hook called before a successful init");
            };
            f(plugin)
        })
    }
}
