//! [`PluginHost`]: the engine, the linker with every capability, the
//! epoch ticker and the compile cache — shared by all plugins of a
//! gateway. `load` turns a [`PluginConfig`] into a running [`Plugin`].
//!
//! Loading: read the file (size-limited) → compile on a blocking thread
//! with a timeout, through the disk cache → check grants against imports →
//! record exported families → `InstancePre` → export indices → prewarm the
//! pool (runs `init`). Nothing here runs on the message path.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::Registry;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::cache::{self, CacheOutcome};
use crate::caps;
use crate::config::{HostConfig, PluginConfig};
use crate::engine::{self, Allocator, EpochTicker, TickClock};
use crate::error::PluginError;
use crate::hooks::{Exports, Family};
use crate::plugin::Plugin;
use crate::pool::{HookIndices, Version};
use crate::services::HostServices;
use crate::state::{HostState, PluginCtx, VersionCtx};
use crate::telemetry::HostTelemetry;

/// The host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime refused the engine configuration or linking.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The host's metrics could not be registered (already registered?).
    #[error("plugin host metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The epoch ticker thread could not be started.
    #[error("epoch ticker thread: {0}")]
    Ticker(#[from] std::io::Error),
}

/// What a component is, as found at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// Hex SHA-256 of the component file.
    pub sha256: String,
    /// The hook families it exports.
    pub exports: Exports,
    /// Its imports (interface names with versions).
    pub imports: Vec<String>,
    /// Whether the compile cache was hit.
    pub cache: CacheOutcome,
}

/// The plugin runtime of one gateway process.
#[derive(Clone)]
pub struct PluginHost {
    shared: Arc<HostShared>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("allocator", &self.shared.allocator)
            .finish()
    }
}

pub(crate) struct HostShared {
    pub config: HostConfig,
    pub engine: Engine,
    pub allocator: Allocator,
    pub linker: Linker<HostState>,
    pub engine_key: String,
    /// The compile cache's directory and authentication key; `None`: no disk cache.
    pub cache: Option<(std::path::PathBuf, cache::CacheKey)>,
    pub services: Arc<dyn HostServices>,
    pub registry: Registry,
    pub telemetry: HostTelemetry,
    pub tick: Duration,
    pub clock: TickClock,
    next_version: AtomicU64,
    _ticker: EpochTicker,
}

impl PluginHost {
    /// Starts the runtime: engine (pooling, else on-demand), linker with
    /// every capability and WASI, epoch ticker thread, host metrics on
    /// `registry` (plugin metrics go there too).
    ///
    /// # Errors
    /// See [`HostError`].
    pub fn new(
        config: HostConfig,
        services: Arc<dyn HostServices>,
        registry: Registry,
    ) -> Result<Self, HostError> {
        let (engine, allocator) =
            engine::build(&config).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        caps::link_all(&mut linker).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let tick = Duration::from_millis(config.epoch_tick_ms.max(1));
        let clock = TickClock::default();
        let ticker = EpochTicker::start(&engine, clock.clone(), tick)?;
        let telemetry = HostTelemetry::register(&registry)?;
        let engine_key = cache::engine_key(&engine);
        let cache = config.cache_dir.as_ref().and_then(|dir| {
            let key_file = config
                .cache_key_file
                .clone()
                .unwrap_or_else(|| cache::default_key_file(dir));
            match cache::CacheKey::load_or_create(&key_file) {
                Ok(key) => Some((dir.clone(), key)),
                Err(e) => {
                    tracing::warn!(key_file = %key_file.display(), error = %e, "plugin cache key unusable: compiling without the disk cache");
                    None
                }
            }
        });
        Ok(PluginHost {
            shared: Arc::new(HostShared {
                config,
                engine,
                allocator,
                linker,
                engine_key,
                cache,
                services,
                registry,
                telemetry,
                tick,
                clock,
                next_version: AtomicU64::new(1),
                _ticker: ticker,
            }),
        })
    }

    /// Which instance allocator the engine uses.
    pub fn allocator(&self) -> Allocator {
        self.shared.allocator
    }

    /// Loads a plugin: compile (or cache hit), check grants, inspect
    /// exports, prewarm `limits.pool_size` instances (each runs `init`),
    /// start its timer task. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`PluginError::Load`] (file, compile, contract, grants, config) or
    /// [`PluginError::Init`] (the guest's `init` failed).
    pub async fn load(&self, config: PluginConfig) -> Result<Plugin, PluginError> {
        let ctx = Arc::new(PluginCtx {
            name: config.name.clone(),
            services: self.shared.services.clone(),
            metrics: caps::metrics::PluginMetrics::new(&config.name, self.shared.registry.clone()),
            timers: Default::default(),
            crypto: Default::default(),
            log: Default::default(),
            telemetry: self.shared.telemetry.for_plugin(&config.name),
        });
        let version = build_version(&self.shared, &ctx, config).await?;
        Ok(Plugin::start(self.shared.clone(), ctx, version))
    }

    /// Compiles (through the cache) and inspects a component without
    /// instantiating it: its exported families and imports. For `edgesync
    /// plugin check` and for warming the cache ahead of a deploy.
    ///
    /// # Errors
    /// [`PluginError::Load`] when the file is not a loadable component.
    pub async fn inspect(&self, path: &Path) -> Result<ComponentInfo, PluginError> {
        let label = path.display().to_string();
        let (component, info) = compile_file(&self.shared, &label, path).await?;
        self.shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| {
                PluginError::load(&label, format!("does not link against the contract: {e:#}"))
            })?;
        Ok(info)
    }
}

/// Builds one version of a plugin; shared by load and reload. The old
/// version (if any) keeps serving until the caller swaps this one in.
pub(crate) async fn build_version(
    shared: &Arc<HostShared>,
    ctx: &Arc<PluginCtx>,
    config: PluginConfig,
) -> Result<Arc<Version>, PluginError> {
    let name = config.name.clone();
    config
        .validate(&shared.config)
        .map_err(|e| PluginError::load(&name, e.to_string()))?;
    let (component, mut info) = compile_file(shared, &name, &config.path).await?;
    info.imports =
        caps::check_grants(&component, &config.grants).map_err(|e| PluginError::load(&name, e))?;
    let pre = shared.linker.instantiate_pre(&component).map_err(|e| {
        PluginError::load(&name, format!("does not link against the contract: {e:#}"))
    })?;
    let indices = HookIndices::new(&pre, info.exports).map_err(|e| {
        PluginError::load(&name, format!("exports do not match the contract: {e:#}"))
    })?;
    let config_value = serde_json::Value::Object(config.config.clone());
    let vctx = Arc::new(VersionCtx {
        id: shared.next_version.fetch_add(1, Ordering::Relaxed),
        config_json: config_value.to_string(),
        config: config_value,
        grants: config.grants.clone(),
    });
    let prewarm = config.limits.pool_size.max(1);
    let version = Arc::new(Version::new(vctx, config, info, pre, indices));
    for _ in 0..prewarm {
        version.warm(shared, ctx)?;
    }
    Ok(version)
}

/// Reads and compiles a component file off the async threads.
async fn compile_file(
    shared: &Arc<HostShared>,
    name: &str,
    path: &Path,
) -> Result<(Component, ComponentInfo), PluginError> {
    let max = u64::from(shared.config.max_component_mib) << 20;
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| PluginError::load(name, format!("{}: {e}", path.display())))?;
    if meta.len() > max {
        return Err(PluginError::load(
            name,
            format!(
                "{}: {} bytes exceeds plugin_host.max_component_mib",
                path.display(),
                meta.len()
            ),
        ));
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| PluginError::load(name, format!("{}: {e}", path.display())))?;
    let s = shared.clone();
    let job = tokio::task::spawn_blocking(move || {
        cache::compile(
            &s.engine,
            &s.engine_key,
            &bytes,
            s.cache.as_ref().map(|(dir, key)| (dir.as_path(), key)),
        )
    });
    let limit = Duration::from_millis(shared.config.compile_timeout_ms);
    let compiled = match tokio::time::timeout(limit, job).await {
        Err(_) => {
            return Err(PluginError::load(
                name,
                format!("compilation took longer than {limit:?}"),
            ));
        }
        Ok(Err(join)) => {
            return Err(PluginError::load(
                name,
                format!("compiler task failed: {join}"),
            ));
        }
        Ok(Ok(Err(e))) => {
            return Err(PluginError::load(
                name,
                format!("{}: not a valid component: {e:#}", path.display()),
            ));
        }
        Ok(Ok(Ok(c))) => c,
    };
    let exports = exported_families(&compiled.component);
    let info = ComponentInfo {
        sha256: compiled.sha256,
        exports,
        imports: compiled
            .component
            .component_type()
            .imports(&shared.engine)
            .map(|(n, _)| n.to_string())
            .collect(),
        cache: compiled.outcome,
    };
    Ok((compiled.component, info))
}

/// The hook families among a component's exports.
fn exported_families(component: &Component) -> Exports {
    component
        .component_type()
        .exports(component.engine())
        .filter_map(|(name, _)| Family::from_export_name(name))
        .collect()
}
