//! The compile cache and component inspection.

mod common;

use common::*;
use edgesync_plugin_host::{CacheOutcome, Family, HostConfig, built};

#[tokio::test]
async fn second_load_hits_the_compile_cache() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    let cfg = HostConfig {
        cache_dir: Some(dir.clone()),
        ..HostConfig::default()
    };

    let first = host_with(cfg.clone());
    let p = first.load(config("pass", "pass")).await;
    assert_eq!(p.info().cache, CacheOutcome::Miss);
    let entries = std::fs::read_dir(&dir).expect("cache dir").count();
    assert_eq!(entries, 1, "one artefact, no temporary left behind");
    assert!(
        tmp.path().join("cache.key").is_file(),
        "the key lives beside the directory"
    );

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

/// Someone who can write the cache directory but not read the key file cannot make the
/// host load their native code: a changed artefact, one moved from another component's
/// name, and one written under another key are all refused and recompiled.
#[tokio::test]
async fn cache_entries_that_do_not_verify_are_never_loaded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    let cfg = HostConfig {
        cache_dir: Some(dir.clone()),
        ..HostConfig::default()
    };
    let first = host_with(cfg.clone());
    assert_eq!(
        first.load(config("pass", "pass")).await.info().cache,
        CacheOutcome::Miss
    );
    let entry = std::fs::read_dir(&dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("one artefact");
    let good = std::fs::read(&entry).expect("read");

    // One flipped byte in the code.
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x01;
    std::fs::write(&entry, &bad).expect("tamper");
    let h = host_with(cfg.clone());
    assert_eq!(
        h.load(config("pass", "pass")).await.info().cache,
        CacheOutcome::Miss,
        "a tampered artefact is recompiled, not loaded"
    );
    assert_eq!(std::fs::read(&entry).expect("read"), good, "and replaced");

    // A cache written by another gateway (another key) does not verify either.
    std::fs::write(tmp.path().join("cache.key"), [7u8; 32]).expect("other key");
    let h = host_with(cfg);
    assert_eq!(
        h.load(config("pass", "pass")).await.info().cache,
        CacheOutcome::Miss
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
