//! `plugin`: gateway publish throughput with no plugin vs one pass-through
//! plugin on every publish (issue 3's target: ≥ 90 % of the no-plugin
//! throughput).
//!
//! Two child gateways per round, identical but for one `[[plugin]]` routed
//! on `>` (so its `on-message` runs on every publish): the component given
//! with `--plugin` (build `plugins/testing/pass` for the reference figure).
//! Each side is measured with the [`durable`](super::durable) load —
//! C pipelined publishers, acknowledged publishes/s in 1-second windows —
//! with `fsync = interval` unless `--fsync always` is given, so the store's
//! fdatasync does not hide the plugin's cost. Rounds alternate the two sides
//! (none, plugin, none, plugin, …) so drift on a shared machine hits both;
//! the report gives, per side, the median over rounds of each run's median
//! 1-second window, and of acks per server CPU-second, with both ratios.
//!
//! The children are started here, not by the shared [`ChildGateway`](super::gateway)
//! helper, because they need a plugin section in their config; the config is
//! otherwise the same (limits raised so the bench measures throughput, not
//! admission).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::durable::{self, DurableArgs};
use super::gateway::{ChildGateway, Fsync};
use super::report::{Report, quantile};
use super::wire::Proto;
use super::{BenchArgs, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct PluginArgs {
    /// The pass-through plugin component (e.g. `pass.wasm` from `plugins/testing/pass`).
    #[arg(long, value_name = "FILE")]
    pub plugin: PathBuf,
    /// Publisher connections.
    #[arg(long, short = 'c', default_value_t = 8)]
    pub publishers: usize,
    /// Publishes in flight per connection.
    #[arg(long, short = 'w', default_value_t = 64)]
    pub window: usize,
    /// Measured seconds per side and round (1-second windows), after a 1-second warm-up.
    #[arg(long, short = 'd', default_value_t = 5)]
    pub seconds: u64,
    /// Payload bytes (the host-level targets use 256).
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Rounds; each measures both sides once.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Most publishes per frame (default: all that fit the window, so plugins see
    /// `on-batch`); 1 makes every publish take `on-message`.
    #[arg(long, value_name = "N")]
    pub frame_publishes: Option<usize>,
}

/// Run the comparison; `args` supplies `--server-bin`, `--server-cpus` and `--fsync`.
///
/// # Errors
/// The plugin file is missing, a child gateway did not start, or a load run failed.
pub async fn run(args: &BenchArgs, a: &PluginArgs) -> Result<Report> {
    let plugin = a
        .plugin
        .canonicalize()
        .with_context(|| format!("--plugin {}", a.plugin.display()))?;
    let exe = match &args.server_bin {
        Some(p) => p.clone(),
        None => super::gateway_binary()?,
    };
    let fsync = args.fsync.unwrap_or(Fsync::Interval);
    let load = DurableArgs {
        publishers: a.publishers,
        window: a.window,
        seconds: a.seconds,
        payload: a.payload,
        frame_publishes: a.frame_publishes,
        // Without `mid`s, as when this bench's figures were taken: it measures the
        // plugin's cost, which dedupe would only dilute.
        no_mid: true,
    };
    let (mut none, mut with) = (Vec::new(), Vec::new());
    let mut errors = 0.0;
    for round in 0..a.rounds.max(1) {
        for (side, plugin) in [(0usize, None), (1, Some(plugin.as_path()))] {
            let gw = start_gateway(&exe, args.server_cpus.as_deref(), fsync, plugin)?;
            let target = Target::new(Proto::Edgesync, &gw.url, None, Some(gw.pid), false)?;
            eprintln!(
                "bench: plugin round {round} side {} at {}",
                side_name(side),
                gw.url
            );
            let r = durable::run(&target, &load).await;
            tokio::task::spawn_blocking(move || gw.stop()).await.ok();
            let r = r?;
            errors += r.value("errors").unwrap_or(0.0) + r.value("dropped_conns").unwrap_or(0.0);
            let sample = Sample {
                acks_per_sec: r.value("acks_per_sec_p50").unwrap_or(0.0),
                acks_per_server_cpu_sec: r.value("acks_per_server_cpu_sec").unwrap_or(0.0),
            };
            if side == 0 {
                none.push(sample)
            } else {
                with.push(sample)
            }
        }
    }
    let median =
        |v: &[Sample], f: fn(&Sample) -> f64| quantile(&v.iter().map(f).collect::<Vec<_>>(), 0.5);
    let (rate_none, rate_with) = (
        median(&none, |s| s.acks_per_sec),
        median(&with, |s| s.acks_per_sec),
    );
    let (cpu_none, cpu_with) = (
        median(&none, |s| s.acks_per_server_cpu_sec),
        median(&with, |s| s.acks_per_server_cpu_sec),
    );
    let pct = |with: f64, none: f64| if none > 0.0 { 100.0 * with / none } else { 0.0 };
    let mut r = Report::new("plugin", "edgesync");
    r.param("plugin", plugin.display().to_string())
        .param("publishers", a.publishers)
        .param("window", a.window)
        .param("seconds", a.seconds)
        .param("rounds", a.rounds)
        .param("payload_bytes", a.payload)
        .param("frame_publishes", a.frame_publishes)
        .param("fsync", serde_json::to_value(fsync).unwrap_or_default());
    r.metric("acks_per_sec_no_plugin", rate_none)
        .metric("acks_per_sec_plugin", rate_with)
        .metric("throughput_ratio_pct", pct(rate_with, rate_none))
        .metric("acks_per_server_cpu_sec_no_plugin", cpu_none)
        .metric("acks_per_server_cpu_sec_plugin", cpu_with)
        .metric("cpu_efficiency_ratio_pct", pct(cpu_with, cpu_none))
        .metric("errors", errors);
    Ok(r)
}

fn side_name(side: usize) -> &'static str {
    if side == 0 { "no-plugin" } else { "plugin" }
}

/// One side of one round: the median 1-second window, and acks per server CPU-second
/// (steadier than per wall-second on a machine shared with other work).
#[derive(Debug, Clone, Copy)]
struct Sample {
    acks_per_sec: f64,
    acks_per_server_cpu_sec: f64,
}

/// A child `edgesync serve` (the other scenarios' gateway), optionally with one plugin
/// on every topic.
fn start_gateway(
    exe: &Path,
    cpus: Option<&str>,
    fsync: Fsync,
    plugin: Option<&Path>,
) -> Result<ChildGateway> {
    let extra = plugin.map_or(String::new(), |p| {
        format!(
            r#"
[[plugin]]
name = "bench"
path = {path:?}

[[route]]
topics = ">"
plugins = ["bench"]
"#,
            path = p.display().to_string()
        )
    });
    ChildGateway::start_with(&exe.to_path_buf(), cpus, fsync, &extra)
}
