//! Hot reload: swap under load, rollback on init failure, timers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use edgesync_plugin_host::{ErrorKind, MessageVerdict};
use serde_json::{Value, json};

fn enrich(v: i64) -> Value {
    json!({"enrich": {"v": v}})
}

fn version_of(verdict: &MessageVerdict) -> i64 {
    match verdict {
        MessageVerdict::Replace(m) => {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            v["v"].as_i64().expect("v")
        }
        other => panic!("expected replace, got {other:?}"),
    }
}

/// Wait (bounded) until `calls` reaches `n`.
async fn wait_for_calls(calls: &AtomicUsize, n: usize) {
    for _ in 0..10_000 {
        if calls.load(Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("only {} of {n} calls", calls.load(Ordering::Relaxed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_under_load_without_failed_calls() {
    let h = host();
    let mut c = config_json("t", "transform", enrich(1));
    c.limits.pool_size = 2;
    let p = h.load(c.clone()).await;
    let v1 = p.version();

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (p, stop, calls) = (p.clone(), stop.clone(), calls.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let v = p
                    .on_message(&conn("a"), &msg("t.x", b"{}"))
                    .await
                    .expect("no call may fail");
                seen.push(version_of(&v));
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            seen
        }));
    }
    // Calls are flowing (counted, not timed: a sleep proves nothing on a loaded machine).
    wait_for_calls(&calls, 20).await;
    let report = p
        .reload(config_json("t", "transform", enrich(2)))
        .await
        .expect("reload");
    assert!(report.drained);
    assert_eq!(report.from_version, v1);
    assert_eq!(p.version(), report.to_version);
    let after = calls.load(Ordering::Relaxed);
    wait_for_calls(&calls, after + 100).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let seen = w.await.expect("worker");
        // Each worker sees the old config, then the new one, never back.
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "went back: {seen:?}");
        assert_eq!(seen.last(), Some(&2));
    }
    assert!(calls.load(Ordering::Relaxed) > 10);
}

#[tokio::test]
async fn failed_init_rolls_back_to_the_old_version() {
    let h = host();
    let p = h.load(config_json("t", "transform", enrich(1))).await;
    let before = p.version();
    // `rename` values must be strings: the new version's init fails.
    let err = p
        .reload(config_json("t", "transform", json!({"rename": {"a": 5}})))
        .await
        .expect_err("reload must fail");
    assert_eq!(err.kind(), ErrorKind::Init);
    assert_eq!(p.version(), before);
    let v = p
        .on_message(&conn("a"), &msg("t.x", b"{}"))
        .await
        .expect("old version serves");
    assert_eq!(version_of(&v), 1);

    // A different component (path) with the same name works too.
    let mut other = config("t", "pass");
    other.limits.pool_size = 1;
    p.reload(other).await.expect("reload to pass");
    assert_eq!(
        p.on_message(&conn("a"), &msg("t.x", b"{}"))
            .await
            .expect("call"),
        MessageVerdict::Pass
    );
    // A reload cannot rename a plugin.
    let err = p.reload(config("u", "pass")).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Load));
}

#[tokio::test]
async fn reload_drops_timers_the_new_version_does_not_set() {
    let h = host();
    let mut c = config_json(
        "tick",
        "ticker",
        json!({"topic": "a.b", "interval_ms": 1000}),
    );
    c.grants.pubsub = true;
    let p = h.load(c).await;
    assert_eq!(p.timers(), vec!["tick".to_string()]);
    let mut replacement = config("tick", "pass");
    replacement.grants.pubsub = true;
    p.reload(replacement).await.expect("reload");
    assert!(p.timers().is_empty());
}
