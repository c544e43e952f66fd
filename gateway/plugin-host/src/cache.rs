//! Compiling components, with an on-disk cache of precompiled artefacts.
//!
//! Key: `<sha256 of the component>-<hash of the engine's compatibility
//! settings>.cwasm` in the cache directory, so a changed component or a
//! changed engine (wasmtime version, Cranelift flags, tunables) misses.
//! Compilation is the caller's job to keep off the message path (`host` runs
//! it on a blocking thread with a timeout).
//!
//! A cached artefact is native code that runs outside the sandbox, so it is
//! authenticated before it is loaded (security review, "suspicions"): each file is
//! `artefact ‖ tag`, where `tag` is HMAC-SHA256 under a per-gateway key (32 random
//! bytes in the key file, `<cache_dir>.key` by default, created 0600 outside the
//! cache directory) over a domain label, the component's SHA-256, the engine key
//! and the artefact. The whole file is read into memory, the tag checked in
//! constant time, and only those verified bytes are deserialized — someone who can
//! write the cache directory but not read the key file can no longer make the
//! gateway run their code; a file that fails is removed and recompiled. Files are
//! written to a random temporary name (created exclusively, 0600) and renamed, so a
//! reader never sees a partial file and a planted symlink is never followed.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
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

/// Bytes of the authentication tag at the end of each cache file.
const TAG_BYTES: usize = 32;
/// Domain label of the tag: a tag made for anything else never verifies here.
const TAG_LABEL: &[u8] = b"edgesync plugin cache v1\0";

/// The secret that authenticates cache files. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(<redacted>)")
    }
}

impl CacheKey {
    /// A fresh random key (valid for this process only).
    pub fn random() -> Self {
        CacheKey(rand::random())
    }

    /// Read the key in `path`, or create it (32 random bytes, mode 0600, created
    /// exclusively so two gateways starting at once agree on one key).
    ///
    /// # Errors
    /// The I/O error, or `InvalidData` for a key file that is not 32 bytes.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        match std::fs::read(path) {
            Ok(bytes) => return Self::from_file_bytes(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(parent) = path.parent() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let key = Self::random();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(&key.0)?;
                f.sync_all()?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::from_file_bytes(path, &std::fs::read(path)?)
            }
            Err(e) => Err(e),
        }
    }

    fn from_file_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<Self> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: a cache key file holds 32 bytes", path.display()),
            )
        })?;
        Ok(CacheKey(key))
    }

    fn mac(&self, sha256: &str, engine_key: &str, artefact: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(TAG_LABEL);
        mac.update(sha256.as_bytes());
        mac.update(b"\0");
        mac.update(engine_key.as_bytes());
        mac.update(b"\0");
        mac.update(artefact);
        mac
    }
}

/// The key file used with `cache_dir` when none is configured: `<cache_dir>.key`, a
/// sibling of the directory (never inside it: whoever can write the directory must
/// not be able to replace the key).
pub fn default_key_file(cache_dir: &Path) -> PathBuf {
    let mut name = cache_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "plugin-cache".into());
    name.push(".key");
    cache_dir.with_file_name(name)
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
    cache: Option<(&Path, &CacheKey)>,
) -> wasmtime::Result<Compiled> {
    let sha256 = hex::encode(Sha256::digest(bytes));
    let Some((dir, key)) = cache else {
        let component = Component::new(engine, bytes)?;
        return Ok(Compiled {
            component,
            sha256,
            outcome: CacheOutcome::Uncached,
        });
    };
    let path = dir.join(format!("{sha256}-{engine_key}.cwasm"));
    if path.is_file() {
        match load_cached(engine, &path, key, &sha256, engine_key) {
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
    let tag = key
        .mac(&sha256, engine_key, &artefact)
        .finalize()
        .into_bytes();
    let outcome = match store(dir, &path, &artefact, &tag) {
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

/// Loads a cached artefact once its tag verifies.
#[allow(unsafe_code)]
fn load_cached(
    engine: &Engine,
    path: &Path,
    key: &CacheKey,
    sha256: &str,
    engine_key: &str,
) -> wasmtime::Result<Component> {
    let file = std::fs::read(path)?;
    let Some(split) = file.len().checked_sub(TAG_BYTES) else {
        wasmtime::bail!("shorter than its authentication tag");
    };
    let (artefact, tag) = file.split_at(split);
    if key
        .mac(sha256, engine_key, artefact)
        .verify_slice(tag)
        .is_err()
    {
        wasmtime::bail!("authentication tag does not verify (not written by this gateway)");
    }
    // SAFETY: `deserialize` trusts the bytes to be an artefact produced by
    // `Engine::precompile_component` of a compatible engine. These bytes are in
    // memory (no file can change under us), and their HMAC under this gateway's
    // secret key — bound to the component's SHA-256 and this engine's
    // compatibility hash — verified just above, so they are exactly what `store`
    // wrote after this gateway compiled that component. wasmtime additionally
    // checks the header and engine compatibility and returns an error otherwise.
    unsafe { Component::deserialize(engine, artefact) }
}

/// Turns an artefact just produced in memory into a component.
#[allow(unsafe_code)]
fn deserialize_fresh(engine: &Engine, artefact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artefact` was returned by `engine.precompile_component` a
    // moment ago in this process and never left memory.
    unsafe { Component::deserialize(engine, artefact) }
}

fn store(dir: &Path, path: &Path, artefact: &[u8], tag: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // A random name, created exclusively with mode 0600: nothing planted in the
    // directory (a symlink, a file of a guessable name) is written through.
    let mut tmp = tempfile::Builder::new()
        .prefix(".cwasm-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(artefact)?;
    tmp.write_all(tag)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("plugin-cache");
        let path = default_key_file(&cache);
        assert_eq!(path, dir.path().join("plugin-cache.key"));
        let a = CacheKey::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(CacheKey::load_or_create(&path).expect("reuse"), a);
        std::fs::write(&path, b"short").expect("write");
        assert!(CacheKey::load_or_create(&path).is_err());
        assert!(
            !format!("{a:?}").contains(&format!("{:?}", a.0[0]))
                || format!("{a:?}").contains("redacted")
        );
    }

    #[test]
    fn tags_bind_the_key_component_engine_and_bytes() {
        let k = CacheKey::random();
        let tag = k.mac("c1", "e1", b"code").finalize().into_bytes();
        assert!(k.mac("c1", "e1", b"code").verify_slice(&tag).is_ok());
        assert!(k.mac("c1", "e1", b"c0de").verify_slice(&tag).is_err());
        assert!(k.mac("c2", "e1", b"code").verify_slice(&tag).is_err());
        assert!(k.mac("c1", "e2", b"code").verify_slice(&tag).is_err());
        assert!(
            CacheKey::random()
                .mac("c1", "e1", b"code")
                .verify_slice(&tag)
                .is_err()
        );
    }
}
