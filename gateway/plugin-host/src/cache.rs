//! Compiling components, with an on-disk cache of precompiled artefacts.
//!
//! Key: `<sha256 of the component>-<hash of the engine's compatibility
//! settings>.cwasm` in the cache directory, so a changed component or a
//! changed engine (wasmtime version, Cranelift flags, tunables) misses.
//! Files are written to a temporary name and renamed, so a reader never
//! sees a partial file. Compilation is the caller's job to keep off the
//! message path (`host` runs it on a blocking thread with a timeout).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache directory; nothing compiled.
    Hit,
    /// Compiled, and stored in the cache directory.
    Miss,
    /// Compiled; no cache directory configured (or it was unwritable).
    Uncached,
}

/// A compiled component and where it came from.
pub(crate) struct Compiled {
    pub component: Component,
    pub sha256: String,
    pub outcome: CacheOutcome,
}

/// Hex SHA-256 of the engine's precompile-compatibility hash: part of the
/// cache key.
pub(crate) fn engine_key(engine: &Engine) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

/// Compiles `bytes`, through the cache when `cache_dir` is set.
///
/// # Errors
/// When the bytes are not a valid component for this engine.
pub(crate) fn compile(
    engine: &Engine,
    engine_key: &str,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> wasmtime::Result<Compiled> {
    let sha256 = hex::encode(Sha256::digest(bytes));
    let Some(dir) = cache_dir else {
        let component = Component::new(engine, bytes)?;
        return Ok(Compiled {
            component,
            sha256,
            outcome: CacheOutcome::Uncached,
        });
    };
    let path = dir.join(format!("{sha256}-{engine_key}.cwasm"));
    if path.is_file() {
        match load_cached(engine, &path) {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    sha256,
                    outcome: CacheOutcome::Hit,
                });
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "plugin cache: unusable entry, recompiling");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let artefact = engine.precompile_component(bytes)?;
    let outcome = match store(dir, &path, &artefact) {
        Ok(()) => CacheOutcome::Miss,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "plugin cache: cannot write, continuing uncached");
            CacheOutcome::Uncached
        }
    };
    let component = deserialize_fresh(engine, &artefact)?;
    Ok(Compiled {
        component,
        sha256,
        outcome,
    })
}

/// Loads a cached artefact.
#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` trusts the file to be an artefact produced
    // by `Engine::precompile_component` of a compatible engine. The file
    // lives in the operator's cache directory (documented as trusted like
    // the binary), was written by `store` below under a name derived from
    // the component's SHA-256 and this engine's compatibility hash, and was
    // renamed into place only once complete; wasmtime additionally checks
    // its header and engine compatibility and returns an error otherwise.
    unsafe { Component::deserialize_file(engine, path) }
}

/// Turns an artefact just produced in memory into a component.
#[allow(unsafe_code)]
fn deserialize_fresh(engine: &Engine, artefact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artefact` was returned by `engine.precompile_component` a
    // moment ago in this process and never left memory.
    unsafe { Component::deserialize(engine, artefact) }
}

fn store(dir: &Path, path: &Path, artefact: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    std::fs::write(&tmp, artefact)?;
    std::fs::rename(&tmp, path)
}

/// Feeds `Hash` output into SHA-256 (stable across runs, unlike
/// `DefaultHasher`'s contract).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
