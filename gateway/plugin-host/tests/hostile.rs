//! Hostile plugins: runaway CPU, memory bombs, traps, crash loops. The
//! host must stop each within its limits and keep serving.

mod common;

use std::time::{Duration, Instant};

use common::*;
use edgesync_plugin_host::{BreakerState, ErrorKind, MessageVerdict, PluginError};

/// A liveness bound, not a timing claim: a deadline that works stops the guest in
/// milliseconds; one that does not would spin until the test harness gives up. How
/// late after the deadline a guest is stopped is measured by the benchmarks, never
/// asserted here (a loaded machine can delay any thread by more than a deadline).
const STOPPED_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_at_the_deadline_and_the_host_keeps_serving() {
    let h = host();
    let mut c = config("looper", "infinite-loop");
    c.limits.deadline_ms = 10;
    let looper = h.load(c).await;
    let pass = h.load(config("pass", "pass")).await;

    // Another plugin keeps serving while the loop spins on another worker.
    let other = tokio::spawn({
        let pass = pass.clone();
        async move {
            let mut n = 0;
            let until = Instant::now() + Duration::from_millis(30);
            while Instant::now() < until {
                assert_eq!(
                    pass.on_message(&conn("b"), &msg("t.x", b"y"))
                        .await
                        .expect("pass"),
                    MessageVerdict::Pass
                );
                n += 1;
                tokio::task::yield_now().await;
            }
            n
        }
    });

    let start = Instant::now();
    let err = looper
        .on_message(&conn("a"), &msg("t.x", b"loop"))
        .await
        .expect_err("must be stopped");
    let took = start.elapsed();
    assert!(matches!(err, PluginError::Deadline { .. }), "{err:?}");
    assert!(took >= Duration::from_millis(10), "stopped early: {took:?}");
    assert!(took <= STOPPED_WITHIN, "never stopped: {took:?}");
    assert!(other.await.expect("other task") > 0);

    // The faulted instance was discarded; the next call works.
    let v = looper
        .on_message(&conn("a"), &msg("t.x", b"fine"))
        .await
        .expect("next call");
    assert_eq!(v, MessageVerdict::Pass);
    assert_eq!(
        h.metric(
            "edgesync_plugin_calls_total",
            &[("plugin", "looper"), ("outcome", "deadline")]
        ),
        Some(1.0)
    );
    assert_eq!(
        h.metric(
            "edgesync_plugin_instances_total",
            &[("plugin", "looper"), ("event", "discarded")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn memory_bomb_is_capped() {
    let h = host();
    let mut c = config("bomb", "memory-bomb");
    c.limits.memory_mib = 8;
    let bomb = h.load(c).await;
    let err = bomb
        .on_message(&conn("a"), &msg("t.x", b"bomb"))
        .await
        .expect_err("must fail");
    match &err {
        PluginError::MemoryLimit { limit_bytes, .. } => assert_eq!(*limit_bytes, 8 << 20),
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    let v = bomb
        .on_message(&conn("a"), &msg("t.x", b"ok"))
        .await
        .expect("next call");
    assert_eq!(v, MessageVerdict::Pass);
}

#[tokio::test]
async fn trap_fails_that_call_and_the_next_works() {
    let h = host();
    let trap = h.load(config("trap", "trap")).await;
    let err = trap
        .on_message(&conn("a"), &msg("t.x", b"TRAP"))
        .await
        .expect_err("must trap");
    assert_eq!(err.kind(), ErrorKind::Trap);
    assert!(err.is_guest_fault());
    assert!(err.to_string().contains("trap"), "{err}");
    let v = trap
        .on_message(&conn("a"), &msg("t.x", b"ok"))
        .await
        .expect("next call");
    assert_eq!(v, MessageVerdict::Replace(msg("t.x", b"OK")));
    assert_eq!(trap.breaker(), BreakerState::Closed);
}

#[tokio::test]
async fn crash_loop_opens_the_breaker_then_recovers() {
    let h = host();
    let mut c = config("crashy", "trap");
    c.breaker.failures = 3;
    c.breaker.window_ms = 10_000;
    c.breaker.backoff_ms = 150;
    let trap = h.load(c).await;
    // The breaker runs on tokio's clock: paused (after the load, whose compile waits on
    // a blocking thread), its backoff elapses exactly when the test says.
    tokio::time::pause();
    for _ in 0..3 {
        let e = trap
            .on_message(&conn("a"), &msg("t.x", b"TRAP"))
            .await
            .err()
            .map(|e| e.kind());
        assert_eq!(e, Some(ErrorKind::Trap));
    }
    assert!(matches!(trap.breaker(), BreakerState::Open { .. }));
    // Even a good message is refused while open, without running the guest.
    let err = trap
        .on_message(&conn("a"), &msg("t.x", b"ok"))
        .await
        .expect_err("disabled");
    assert!(
        matches!(err, PluginError::Disabled { retry_in, .. } if retry_in <= Duration::from_millis(150))
    );
    assert!(err.is_retryable() && !err.is_guest_fault());
    assert_eq!(
        h.metric(
            "edgesync_plugin_breaker_trips_total",
            &[("plugin", "crashy")]
        ),
        Some(1.0)
    );

    tokio::time::advance(Duration::from_millis(149)).await;
    assert!(
        matches!(
            trap.on_message(&conn("a"), &msg("t.x", b"ok")).await,
            Err(PluginError::Disabled { .. })
        ),
        "still open 1 ms before the backoff ends"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    let v = trap
        .on_message(&conn("a"), &msg("t.x", b"ok"))
        .await
        .expect("probe succeeds");
    assert_eq!(v, MessageVerdict::Replace(msg("t.x", b"OK")));
    assert_eq!(trap.breaker(), BreakerState::Closed);
}

/// A guest that waits in WASI (here: sleeping an hour) would run no guest
/// code, so neither epoch deadline could stop it, and it would hold the
/// worker thread. Waiting WASI calls are polled once instead: the sleep is
/// not due, so the call traps at once with a reason naming the cause,
/// rather than sitting out the 100 ms wall-clock timeout.
#[tokio::test]
async fn a_guest_sleeping_in_wasi_fails_at_once_and_the_next_call_works() {
    let h = host();
    let mut c = config("sleeper", "infinite-loop");
    c.limits.deadline_ms = 50;
    c.limits.timeout_ms = 100;
    let sleeper = h.load(c).await;
    // A trap, not a timeout: the wait was refused, not sat out.
    let err = sleeper
        .on_message(&conn("a"), &msg("t.x", b"sleep"))
        .await
        .expect_err("must be refused");
    match &err {
        PluginError::Trap { message, .. } => {
            assert!(message.contains("hooks may not wait"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(err.is_guest_fault());
    assert_eq!(
        h.metric(
            "edgesync_plugin_calls_total",
            &[("plugin", "sleeper"), ("outcome", "trap")]
        ),
        Some(1.0)
    );
    // The instance was discarded; the next call gets a fresh one.
    let v = sleeper
        .on_message(&conn("a"), &msg("t.x", b"fine"))
        .await
        .expect("next call");
    assert_eq!(v, MessageVerdict::Pass);
}

/// Writing to stdout/stderr is a "blocking" WASI call too, but never waits:
/// discarded without the grant, written synchronously with it.
#[tokio::test]
async fn a_guest_printing_is_not_waiting_with_or_without_the_stdio_grant() {
    let h = host();
    for stdio in [false, true] {
        let mut c = config(
            if stdio { "printer-stdio" } else { "printer" },
            "infinite-loop",
        );
        c.grants.stdio = stdio;
        let printer = h.load(c).await;
        for _ in 0..3 {
            let v = printer
                .on_message(&conn("a"), &msg("t.x", b"print"))
                .await
                .unwrap_or_else(|e| panic!("stdio = {stdio}: {e}"));
            assert_eq!(v, MessageVerdict::Pass);
        }
    }
}

/// Sockets are not granted. Creating a UDP socket (a waiting call in WASI's
/// bindings, linked non-blocking here) and connecting TCP both come back to
/// the guest as errors: no host panic, no trap, no wait.
#[tokio::test]
async fn sockets_are_refused_to_the_guest_as_errors() {
    let h = host();
    let p = h.load(config("sockets", "infinite-loop")).await;
    for kind in ["udp", "tcp"] {
        let v = p
            .on_message(&conn("a"), &msg("t.x", kind.as_bytes()))
            .await
            .unwrap_or_else(|e| panic!("{kind}: the call must not fail: {e}"));
        match v {
            // "Permission denied": WASI's access-denied, from the host.
            MessageVerdict::Reject(reason) => {
                assert!(reason.starts_with(kind), "{reason}");
                assert!(reason.contains("Permission denied"), "{reason}");
            }
            other => panic!("{kind}: expected the guest to see an error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn wall_clock_timeout_covers_waiting_for_an_instance() {
    let h = host();
    let mut c = config("looper", "infinite-loop");
    c.limits.deadline_ms = 50;
    c.limits.timeout_ms = 60;
    c.limits.max_instances = 1;
    let looper = h.load(c).await;
    // One call holds the only instance for ~50 ms of CPU; a second call
    // queued behind it must not wait past its own timeout.
    let first = tokio::spawn({
        let l = looper.clone();
        async move { l.on_message(&conn("a"), &msg("t.x", b"loop")).await }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let start = Instant::now();
    let second = looper.on_message(&conn("a"), &msg("t.x", b"ok")).await;
    // It never waited past its own timeout for good (liveness, see STOPPED_WITHIN).
    assert!(start.elapsed() <= STOPPED_WITHIN);
    let first = first.await.expect("join");
    assert!(first.is_err());
    // Either it got the instance after the first was stopped, or it gave
    // up waiting for one — a host condition, not the guest's fault.
    match second {
        Ok(v) => assert_eq!(v, MessageVerdict::Pass),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Host, "{e}");
            assert!(!e.is_guest_fault() && e.is_retryable());
        }
    }
}

#[tokio::test]
async fn an_exhausted_instance_pool_is_a_host_error_not_a_guest_fault() {
    let h = host_with(edgesync_plugin_host::HostConfig {
        pool_total_instances: 2,
        ..Default::default()
    });
    if h.host.allocator() != edgesync_plugin_host::Allocator::Pooling {
        return; // fell back to on-demand allocation: nothing to exhaust
    }
    let _a = h.load(config("a", "pass")).await;
    let _b = h.load(config("b", "pass")).await;
    let err = h
        .host
        .load(config("c", "pass"))
        .await
        .expect_err("no slot left");
    assert_eq!(err.kind(), ErrorKind::Host, "{err}");
    assert!(!err.is_guest_fault());
}
