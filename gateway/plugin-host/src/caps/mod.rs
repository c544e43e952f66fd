//! Host capabilities, one module each, in three steps (as in Spin's
//! "factors"):
//!
//! 1. **link** — add the capability's functions to the shared `Linker`,
//!    once per engine ([`link_all`]);
//! 2. **configure** — check the plugin's grants against the component's
//!    imports, once per load ([`check_grants`]): importing an ungranted
//!    capability fails the load, so no call ever needs a permission check;
//! 3. **per-instance state** — each module's part of `HostState` /
//!    `PluginCtx`.
//!
//! Guest arguments are validated here (sizes, names, topics) before any
//! `HostServices` call; nothing a guest passes can panic the host.

pub(crate) mod config;
pub(crate) mod crypto;
pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod pubsub;
pub(crate) mod timers;
pub(crate) mod verdict;
pub(crate) mod wasi;

use wasmtime::component::{Component, Linker};

use crate::config::Grants;
use crate::state::HostState;

/// Links every capability (and WASI) into `linker`.
///
/// # Errors
/// Only on a wasmtime linking bug (duplicate definitions).
pub(crate) fn link_all(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::link(linker)?;
    metrics::link(linker)?;
    timers::link(linker)?;
    kv::link(linker)?;
    pubsub::link(linker)?;
    config::link(linker)?;
    crypto::link(linker)?;
    verdict::link(linker)?;
    wasi::link(linker)
}

/// Capability interface name → whether `grants` allows it.
fn granted(interface: &str, grants: &Grants) -> Option<(bool, &'static str)> {
    Some(match interface {
        "log" => (grants.log, "log"),
        "metrics" => (grants.metrics, "metrics"),
        "timers" => (grants.timers, "timers"),
        "kv" => (grants.kv, "kv"),
        "pubsub" => (grants.pubsub, "pubsub"),
        "config" => (grants.config, "config"),
        "crypto" => (grants.crypto, "crypto"),
        _ => return None,
    })
}

/// Checks the component's imports against `grants`.
///
/// # Errors
/// The first ungranted capability, phrased for the operator.
pub(crate) fn check_grants(component: &Component, grants: &Grants) -> Result<Vec<String>, String> {
    let engine = component.engine();
    let mut imports = Vec::new();
    for (name, _) in component.component_type().imports(engine) {
        imports.push(name.to_string());
        let Some(rest) = name.strip_prefix("edgesync:plugin/") else {
            continue;
        };
        let iface = rest.split('@').next().unwrap_or(rest);
        if let Some((false, grant)) = granted(iface, grants) {
            return Err(format!(
                "the component imports `{name}` but grant `{grant}` is not given \
                 (set `grants.{grant} = true`)"
            ));
        }
    }
    Ok(imports)
}

/// Time spent in a host function is not guest CPU time: the capability
/// modules wrap service calls in this.
pub(crate) fn host_time<R>(state: &mut HostState, f: impl FnOnce(&HostState) -> R) -> R {
    let start = std::time::Instant::now();
    let r = f(state);
    state.cpu.add_host_time(start);
    r
}
