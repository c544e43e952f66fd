//! Plugin host benchmarks (criterion):
//! - `on_message/pass_256B`: one hook call, 256-byte payload, pass verdict
//!   (target p50 ≤ 0.5 µs, p99 ≤ 2 µs);
//! - `on_batch/pass_256x256B`: per-message cost of `on-batch` (target ≤ 100 ns);
//! - `instantiate/from_pool_pre`: a fresh instance from the `InstancePre`
//!   plus `init` (target ≤ 15 µs p50); the instances are dropped outside
//!   the timed part, in batches;
//! - `instantiate/with_drop`: the same plus dropping the instance (its pool
//!   slot reset), one after the other — the steady state of retirement;
//! - `load/compile_cache_hit`: component from the disk cache (target ≤ 5 ms).
//!
//! Also prints on-message p50/p99 from an HDR histogram, since criterion
//! reports means and medians only.
//!
//! `CARGO_TARGET_DIR=/work/target-plugin cargo bench -p edgesync-plugin-host`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgesync_plugin_host::testing::MemoryServices;
use edgesync_plugin_host::{
    BatchBuilder, ConnRef, HostConfig, Message, Plugin, PluginConfig, PluginHost, built,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn host(cache: Option<&Path>) -> PluginHost {
    let cfg = HostConfig {
        cache_dir: cache.map(Path::to_path_buf),
        ..HostConfig::default()
    };
    PluginHost::new(
        cfg,
        Arc::new(MemoryServices::new()),
        prometheus::Registry::new(),
    )
    .expect("host")
}

fn load(rt: &tokio::runtime::Runtime, host: &PluginHost) -> Plugin {
    let mut c = PluginConfig::new("pass", built::PASS);
    c.limits.retire_after_calls = 0;
    // Measuring overhead, not the limit: a worker preempted by the other
    // builds on this box must not be charged as a runaway guest.
    c.limits.deadline_ms = 1000;
    c.limits.timeout_ms = 2000;
    rt.block_on(host.load(c)).expect("load pass")
}

fn sender() -> ConnRef {
    ConnRef {
        conn_id: 1,
        client_id: "bench-client".into(),
        principal: "bench".into(),
    }
}

fn message() -> Message {
    Message {
        topic: "bench.topic.a".into(),
        headers: Vec::new(),
        payload: vec![b'x'; 256],
    }
}

fn on_message(c: &mut Criterion) {
    let rt = runtime();
    let host = host(None);
    let plugin = load(&rt, &host);
    let (s, m) = (sender(), message());
    c.bench_function("on_message/pass_256B", |b| {
        b.to_async(&rt)
            .iter(|| async { plugin.on_message(&s, &m).await.expect("call") })
    });
    percentiles(&rt, &plugin, &s, &m);
}

fn percentiles(rt: &tokio::runtime::Runtime, plugin: &Plugin, s: &ConnRef, m: &Message) {
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    rt.block_on(async {
        for _ in 0..10_000 {
            plugin.on_message(s, m).await.expect("warm");
        }
        for _ in 0..200_000 {
            let t = Instant::now();
            plugin.on_message(s, m).await.expect("call");
            hist.record(t.elapsed().as_nanos() as u64).ok();
        }
    });
    println!(
        "on_message/pass_256B percentiles: p50 {} ns, p99 {} ns, p99.9 {} ns",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999)
    );
}

fn on_batch(c: &mut Criterion) {
    let rt = runtime();
    let host = host(None);
    let plugin = load(&rt, &host);
    let s = sender();
    let mut b = BatchBuilder::with_capacity(256, 256 * 270);
    for _ in 0..256 {
        b.push("bench.topic.a", &[], &[b'x'; 256]).expect("push");
    }
    let batch = b.finish();
    let mut g = c.benchmark_group("on_batch");
    g.throughput(Throughput::Elements(256));
    g.bench_function("pass_256x256B", |b| {
        b.to_async(&rt)
            .iter(|| async { plugin.on_batch(&s, &batch).await.expect("call") })
    });
    g.finish();
}

fn instantiate(c: &mut Criterion) {
    let rt = runtime();
    let host = host(None);
    println!("allocator: {:?}", host.allocator());
    let mut cfg = PluginConfig::new("pass", built::PASS);
    cfg.limits.pool_size = INSTANTIATE_BATCH;
    cfg.limits.max_instances = INSTANTIATE_BATCH;
    cfg.limits.deadline_ms = 1000;
    cfg.limits.timeout_ms = 2000;
    let plugin = rt.block_on(host.load(cfg)).expect("load pass");
    plugin.trim_idle(0);
    let mut g = c.benchmark_group("instantiate");
    // Each `init` instantiates from the InstancePre, runs the guest's init
    // and parks the instance in the idle pool; the pool is emptied (slots
    // reset) after every INSTANTIATE_BATCH, outside the timed part.
    g.bench_function("from_pool_pre", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let plugin = plugin.clone();
            async move {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(INSTANTIATE_BATCH as u64);
                    let start = Instant::now();
                    for _ in 0..n {
                        plugin.init().await.expect("init");
                    }
                    timed += start.elapsed();
                    plugin.trim_idle(0);
                    left -= n;
                }
                timed
            }
        })
    });
    // With the pool full, each `init` instance is dropped right away.
    rt.block_on(async {
        for _ in 0..INSTANTIATE_BATCH {
            plugin.init().await.expect("fill");
        }
    });
    g.bench_function("with_drop", |b| {
        b.to_async(&rt)
            .iter(|| async { plugin.init().await.expect("init") })
    });
    g.finish();
}

/// Instances created per timed batch in `instantiate/from_pool_pre`.
const INSTANTIATE_BATCH: usize = 32;

fn cache_load(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(Some(dir.path()));
    rt.block_on(host.inspect(Path::new(built::PASS)))
        .expect("fill cache");
    let mut g = c.benchmark_group("load");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("compile_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { host.inspect(Path::new(built::PASS)).await.expect("hit") })
    });
    g.finish();
}

criterion_group!(benches, on_message, on_batch, instantiate, cache_load);
criterion_main!(benches);
