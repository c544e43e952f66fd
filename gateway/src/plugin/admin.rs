//! Plugin administration as the admin API sees it: list and reload.
//!
//! [`Plugins`](super::Plugins) implements [`PluginAdmin`]; the admin listener holds it
//! as a trait object, so HTTP code never touches the plugin runtime.

use serde::Serialize;

use crate::pipeline::BoxFuture;

/// Plugin administration (the one seam between the admin API and plugins).
pub trait PluginAdmin: Send + Sync {
    /// Loaded plugins, in load order.
    fn list(&self) -> Vec<PluginInfo>;

    /// Reload plugin `name` from its configured source.
    ///
    /// # Errors
    /// [`PluginAdminError::NotFound`] for an unknown name; `Failed` when the new
    /// version did not load (the old one keeps running).
    fn reload<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PluginInfo, PluginAdminError>>;
}

/// One plugin as listed by the admin API.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginInfo {
    pub name: String,
    /// Hooks the plugin implements.
    pub hooks: Vec<String>,
    /// `running`, `breaker_open`, `failed`, ...
    pub state: String,
    /// Anything else the plugin host wants to show (version, digest, instances, ...).
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// Why a plugin reload failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginAdminError {
    #[error("no such plugin: {0}")]
    NotFound(String),
    #[error("reload failed: {0}")]
    Failed(String),
}
