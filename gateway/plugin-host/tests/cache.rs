//! The compile cache and component inspection.

mod common;

use common::*;
use edgesync_plugin_host::{CacheOutcome, Family, HostConfig, built};

#[tokio::test]
async fn second_load_hits_the_compile_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };

    let first = host_with(cfg.clone());
    let p = first.load(config("pass", "pass")).await;
    assert_eq!(p.info().cache, CacheOutcome::Miss);
    let entries = std::fs::read_dir(dir.path()).expect("cache dir").count();
    assert_eq!(entries, 1);

    // A new engine (a gateway restart) with the same settings reuses it.
    let second = host_with(cfg);
    // `Hit` is the proof that nothing was compiled (no wall-clock threshold: a loaded
    // machine would fail it for no fault of the cache).
    let info = second
        .host
        .inspect(std::path::Path::new(built::PASS))
        .await
        .expect("inspect");
    assert_eq!(info.cache, CacheOutcome::Hit);
    let p2 = second.load(config("pass", "pass")).await;
    assert_eq!(p2.info().cache, CacheOutcome::Hit);
    assert_eq!(p2.info().sha256, p.info().sha256);

    // No cache directory: compiled every time.
    let plain = host();
    assert_eq!(
        plain.load(config("pass", "pass")).await.info().cache,
        CacheOutcome::Uncached
    );
}

#[tokio::test]
async fn inspect_lists_exported_families_and_imports() {
    let h = host();
    let info = h
        .host
        .inspect(std::path::Path::new(built::JWT_AUTH))
        .await
        .expect("inspect");
    assert_eq!(
        info.exports.iter().collect::<Vec<_>>(),
        vec![Family::Lifecycle, Family::Auth]
    );
    assert!(
        info.imports
            .iter()
            .any(|i| i.starts_with("edgesync:plugin/crypto@")),
        "{:?}",
        info.imports
    );
    assert!(
        !info
            .imports
            .iter()
            .any(|i| i.starts_with("edgesync:plugin/kv@")),
        "{:?}",
        info.imports
    );

    let err = h
        .host
        .inspect(std::path::Path::new("/nonexistent.wasm"))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(edgesync_plugin_host::ErrorKind::Load));
}
