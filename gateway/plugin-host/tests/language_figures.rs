//! The figures of the plugin-language comparison (docs/plugins.md,
//! "Languages compared"): for each language's build of the reference plugin
//! "redact", the component's size, its compile time (a cache miss),
//! instantiate + `init`, the `on-message` latency p50/p99 on a payload it
//! masks, and the memory a warm instance adds.
//!
//! Measurement, not a check: it is `#[ignore]`d, asserts only that every
//! call verdicts as "redact" must, and prints the figures. Run it in release
//! after `tests/tests/plugin_languages.rs` built the components (it reads
//! them from the same target directory):
//!
//! ```sh
//! cargo test --release -p edgesync-tests --test plugin_languages
//! cargo test --release -p edgesync-plugin-host --test language_figures -- --ignored --nocapture
//! ```
//!
//! Memory per instance is the growth of this process's resident set per
//! warm instance: the difference between loading the component with 33
//! warm instances and with 1, divided by 32, so the compiled code (mapped
//! once per load) cancels out.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use edgesync_plugin_host::{Header, HostConfig, Message, MessageVerdict, PluginConfig};

/// (language, component relative to `<target>/tmp/plugin-langs`).
const COMPONENTS: &[(&str, &str)] = &[
    ("rust", "rust/target/wasm32-wasip2/release/redact.wasm"),
    ("c", "c/dist/plugin.wasm"),
    ("zig", "zig/dist/plugin.wasm"),
    ("assemblyscript", "assemblyscript/dist/plugin.wasm"),
    ("go", "go/dist/plugin.wasm"),
    ("js", "js/dist/plugin.wasm"),
    ("ts", "ts/dist/plugin.wasm"),
    ("python", "python/dist/plugin.wasm"),
];

/// Timed calls per language, after as many untimed ones.
const CALLS: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run in release, see the module docs"]
async fn figures_of_every_language() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-langs");
    let mut found = 0;
    println!(
        "| language | component | compile | instantiate + init | on-message p50 | p99 | memory per instance |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (lang, rel) in COMPONENTS {
        let path = root.join(rel);
        if !path.is_file() {
            eprintln!("{lang}: {} is not built; skipped", path.display());
            continue;
        }
        found += 1;
        figures(lang, &path).await;
    }
    assert!(
        found > 0,
        "no component under {}: run the plugin_languages test first",
        root.display()
    );
}

async fn figures(lang: &str, path: &Path) {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let cache = tempfile::tempdir().expect("cache dir");
    let h = host_with(HostConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        compile_timeout_ms: 600_000,
        ..HostConfig::default()
    });
    let started = Instant::now();
    h.host.inspect(path).await.expect("compiles");
    let compile = started.elapsed();

    let config = |name: &str, pool: usize| {
        let mut c = PluginConfig::new(name, path);
        c.config
            .insert("fields".into(), serde_json::json!("password,ssn"));
        c.limits.pool_size = pool;
        c.limits.max_instances = pool.max(32);
        c.limits.memory_mib = 64;
        c.limits.init_deadline_ms = 5_000;
        c.limits.deadline_ms = 1_000;
        c.limits.timeout_ms = 5_000;
        c.limits.retire_after_calls = 0;
        c
    };
    let started = Instant::now();
    let p = h.load(config("redact", 1)).await;
    let instantiate = started.elapsed();

    let msg = Message {
        topic: "users.t".into(),
        headers: vec![],
        payload:
            br#"{"user":"ann","password":"hunter2","profile":{"ssn":"123-45-6789","tags":["a"]}}"#
                .to_vec(),
    };
    let sender = conn("alice");
    let mut times = Vec::with_capacity(CALLS);
    for i in 0..2 * CALLS {
        let started = Instant::now();
        let v = match p.on_message(&sender, &msg).await {
            Ok(v) => v,
            Err(e) => {
                // Reported, not hidden: the table says which call failed.
                println!("| {lang} | failed at call {i}: {e} |");
                return;
            }
        };
        let took = started.elapsed();
        if i == 0 {
            let MessageVerdict::Replace(out) = v else {
                panic!("{lang}: redact must replace, got {v:?}");
            };
            assert_eq!(
                out.payload,
                br#"{"user":"ann","password":"***","profile":{"ssn":"***","tags":["a"]}}"#
            );
            assert_eq!(
                out.headers,
                vec![Header {
                    name: "x-redacted".into(),
                    value: "2".into()
                }]
            );
        }
        if i >= CALLS {
            times.push(took);
        }
    }
    times.sort_unstable();
    let q = |f: f64| times[((times.len() as f64 * f) as usize).min(times.len() - 1)];
    let (p50, p99) = (q(0.5), q(0.99));

    let one = rss_bytes();
    let _single = h.load(config("redact-one", 1)).await;
    let two = rss_bytes();
    let _many = h.load(config("redact-many", 33)).await;
    let three = rss_bytes();
    let per_instance = ((three - two) - (two - one)).max(0) / 32;
    println!(
        "| {lang} | {} | {} | {} | {} | {} | {} |",
        human(size as i64),
        secs(compile),
        secs(instantiate),
        micros(p50),
        micros(p99),
        human(per_instance)
    );
}

/// This process's resident set, bytes (Linux).
fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn human(bytes: i64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.0} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn secs(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
