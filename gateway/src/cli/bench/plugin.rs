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

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::durable::{self, DurableArgs};
use super::gateway::Fsync;
use super::report::{Report, quantile};
use super::wire::Proto;
use super::{BenchArgs, Target};

/// How long a child may take to start listening (includes compiling the component).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERM'd child may take to drain before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

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
        None => std::env::current_exe().context("locate the edgesync binary")?,
    };
    let fsync = args.fsync.unwrap_or(Fsync::Interval);
    let load = DurableArgs {
        publishers: a.publishers,
        window: a.window,
        seconds: a.seconds,
        payload: a.payload,
    };
    let (mut none, mut with) = (Vec::new(), Vec::new());
    let mut errors = 0.0;
    for round in 0..a.rounds.max(1) {
        for (side, plugin) in [(0usize, None), (1, Some(plugin.as_path()))] {
            let gw = PluginGateway::start(&exe, args.server_cpus.as_deref(), fsync, plugin)?;
            let target = Target {
                proto: Proto::Edgesync,
                url: gw.url.clone(),
                pid: Some(gw.pid),
            };
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

/// A child `edgesync serve`, optionally with one plugin on every topic; stopped on drop.
struct PluginGateway {
    child: Child,
    dir: PathBuf,
    url: String,
    pid: u32,
}

impl PluginGateway {
    fn start(exe: &Path, cpus: Option<&str>, fsync: Fsync, plugin: Option<&Path>) -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "edgesync-bench-plugin-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let config = dir.join("bench.toml");
        std::fs::write(&config, config_toml(&dir.join("data"), port, fsync, plugin))
            .context("write bench config")?;
        let log = std::fs::File::create(dir.join("gateway.log")).context("create gateway log")?;
        let mut cmd = match cpus {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", c]).arg(exe);
                t
            }
            None => Command::new(exe),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for var in [
            "EDGESYNC_WS",
            "EDGESYNC_WSS",
            "EDGESYNC_QUIC",
            "EDGESYNC_ADMIN",
            "EDGESYNC_DATA_DIR",
            "EDGESYNC_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {} serve", exe.display()))?;
        let pid = child.id();
        let mut gw = PluginGateway {
            child,
            dir,
            url: format!("ws://127.0.0.1:{port}"),
            pid,
        };
        gw.wait_ready(port)?;
        Ok(gw)
    }

    fn wait_ready(&mut self, port: u16) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        // Bounded by READY_TIMEOUT.
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
                bail!("gateway exited during startup ({status}):\n{log}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("gateway did not listen on {addr} within {READY_TIMEOUT:?}")
    }

    fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let started = Instant::now();
        // Bounded by STOP_TIMEOUT.
        while started.elapsed() < STOP_TIMEOUT {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PluginGateway {
    fn drop(&mut self) {
        self.stop_inner();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The same config as the other scenarios' child, plus the plugin on `>`.
fn config_toml(data: &Path, port: u16, fsync: Fsync, plugin: Option<&Path>) -> String {
    let fsync = match fsync {
        Fsync::Always => "always",
        Fsync::Interval => "interval",
    };
    let plugin = plugin.map_or(String::new(), |p| {
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
    format!(
        r#"# Written by `edgesync bench plugin`.
data_dir = {data:?}

[listen]
ws = "127.0.0.1:{port}"
wss = "off"
quic = "off"
admin = "off"

[store]
fsync = "{fsync}"

[limits]
max_connections = 18000
max_connections_per_ip = 18000
publish_rate_per_sec = 100000000
idle_timeout_ms = 3600000
ping_interval_ms = 600000

[log]
level = "warn"
{plugin}"#,
        data = data.display().to_string(),
    )
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}
