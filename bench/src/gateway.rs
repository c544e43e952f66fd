//! A gateway the bench starts itself: `edgesync serve` as a child process.
//!
//! A child process, not an in-process server, so that the load generator and
//! the gateway can be pinned to different cores (`taskset -c CPUS`), so that
//! `idle` can read the gateway's own RSS, and so that each side has the whole
//! file limit for its sockets. The child gets a fresh data directory under
//! the system temp dir (removed afterwards), ws, wss and QUIC on free loopback
//! ports, wss and QUIC with the development certificate the gateway generates
//! (whose CA the bench then trusts), admin off, and limits raised for load (see
//! [`config_toml`]).

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long the child may take to start listening (includes compiling plugins).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERM'd child may take to drain before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Fsync policy for the child's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// fdatasync every group commit before acking.
    Always,
    /// Ack after write(2); fdatasync every 10 ms.
    Interval,
}

/// A running child gateway; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct ChildGateway {
    child: Child,
    exe: PathBuf,
    cpus: Option<String>,
    dir: PathBuf,
    /// (ws, QUIC) ports, kept across a restart.
    ports: (u16, u16),
    /// `ws://127.0.0.1:PORT`.
    pub url: String,
    /// `quic://127.0.0.1:PORT`.
    pub quic_url: String,
    /// `wss://127.0.0.1:PORT` (the development certificate names the address).
    pub wss_url: String,
    /// The development CA that signed the child's certificate (`<data_dir>/tls/ca.pem`).
    pub ca: PathBuf,
    pub pid: u32,
}

impl ChildGateway {
    /// Start `exe serve` pinned to `cpus` (a taskset list) when given.
    ///
    /// # Errors
    /// The binary or `taskset` could not start, or the gateway never listened.
    pub fn start(exe: &PathBuf, cpus: Option<&str>, fsync: Fsync) -> Result<Self> {
        Self::start_with(exe, cpus, fsync, "")
    }

    /// As [`ChildGateway::start`], with `extra_toml` appended to the child's config
    /// (e.g. `[[plugin]]` and `[[route]]` tables).
    ///
    /// # Errors
    /// As [`ChildGateway::start`].
    pub fn start_with(
        exe: &PathBuf,
        cpus: Option<&str>,
        fsync: Fsync,
        extra_toml: &str,
    ) -> Result<Self> {
        let port = free_port()?;
        let wss_port = free_port()?;
        let quic_port = free_udp_port()?;
        let dir =
            std::env::temp_dir().join(format!("edgesync-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let config = dir.join("bench.toml");
        std::fs::write(
            &config,
            config_toml(&dir.join("data"), port, wss_port, quic_port, fsync) + extra_toml,
        )
        .context("write bench config")?;
        let ca = dir.join("data").join("tls").join("ca.pem");
        let mut gw = ChildGateway {
            child: spawn(exe, cpus, &dir)?,
            exe: exe.clone(),
            cpus: cpus.map(str::to_string),
            dir,
            url: format!("ws://127.0.0.1:{port}"),
            quic_url: format!("quic://127.0.0.1:{quic_port}"),
            wss_url: format!("wss://127.0.0.1:{wss_port}"),
            ca,
            pid: 0,
            ports: (port, quic_port),
        };
        gw.pid = gw.child.id();
        gw.wait_ready(port, quic_port)?;
        Ok(gw)
    }

    /// SIGKILL the child and start it again on the same data directory and ports;
    /// returns how long the new process took from spawn until both listeners were
    /// bound (restart-to-serving after a crash).
    ///
    /// # Errors
    /// As [`ChildGateway::start`].
    pub fn kill9_and_restart(&mut self) -> Result<Duration> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = Instant::now();
        self.child = spawn(&self.exe, self.cpus.as_deref(), &self.dir)?;
        self.pid = self.child.id();
        self.wait_ready(self.ports.0, self.ports.1)?;
        Ok(started.elapsed())
    }

    /// Wait until both listeners are bound (QUIC is bound last, after the certificate).
    fn wait_ready(&mut self, port: u16, quic_port: u16) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        // Bounded by READY_TIMEOUT.
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
                bail!("gateway exited during startup ({status}):\n{log}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && udp_bound(quic_port)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("gateway did not listen on {addr} and UDP {quic_port} within {READY_TIMEOUT:?}")
    }

    /// Graceful stop: SIGTERM (via kill(1): the workspace forbids unsafe), wait, then SIGKILL.
    pub fn stop(mut self) {
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

impl Drop for ChildGateway {
    fn drop(&mut self) {
        self.stop_inner();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start `exe serve --config <dir>/bench.toml` (under taskset when `cpus` is given),
/// stderr appended to `<dir>/gateway.log`.
fn spawn(exe: &PathBuf, cpus: Option<&str>, dir: &std::path::Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .context("open gateway log")?;
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
        .arg(dir.join("bench.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // Keep the child's listeners exactly as configured.
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
    cmd.spawn()
        .with_context(|| format!("start {} serve", exe.display()))
}

/// The child's config: limits raised so the bench measures throughput, not admission.
fn config_toml(
    data: &std::path::Path,
    port: u16,
    wss_port: u16,
    quic_port: u16,
    fsync: Fsync,
) -> String {
    let fsync = match fsync {
        Fsync::Always => "always",
        Fsync::Interval => "interval",
    };
    format!(
        r#"# Written by `edgesync-bench`.
data_dir = {data:?}

[listen]
ws = "127.0.0.1:{port}"
wss = "127.0.0.1:{wss_port}"
quic = "127.0.0.1:{quic_port}"
admin = "off"

[store]
fsync = "{fsync}"

[limits]
# 15k idle connections plus the bench's own.
max_connections = 18000
max_connections_per_ip = 18000
# Every client is on 127.0.0.1: the per-IP handshake bound is the total one. (The
# gateway's open-file limit must hold 18000 + 1024 + 512.)
max_handshakes = 1024
max_handshakes_per_ip = 1024
# The bench publishes from one connection as fast as the gateway takes it.
publish_rate_per_sec = 100000000
# 15k QUIC handshakes on one shared core queue for longer than the default 10 s.
handshake_timeout_ms = 120000
# Idle connections send nothing for the whole idle scenario.
idle_timeout_ms = 3600000
ping_interval_ms = 600000

[log]
level = "warn"
"#,
        data = data.display().to_string(),
    )
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("find a free UDP port")?;
    Ok(s.local_addr()?.port())
}

/// Whether a UDP socket is bound to 127.0.0.1:`port` (from /proc/net/udp: a QUIC
/// listener cannot be probed without a handshake).
fn udp_bound(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X} ");
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| t.contains(&needle))
}

/// Resident set of `pid` in KiB (`VmRSS` from /proc).
///
/// # Errors
/// The process is gone or /proc is unreadable.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// Raise this process's soft file limit to its hard limit, with prlimit(1) (the workspace
/// forbids `unsafe`, and setrlimit(2) through libc is unsafe). Children inherit it.
pub fn raise_nofile() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    let (soft, hard) = (nums.next()?, nums.next()?);
    if soft < hard {
        let arg = format!("--nofile={hard}:{hard}");
        let ok = Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string(), &arg])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(soft);
        }
    }
    Some(hard)
}

/// CPU seconds (user + system) `pid` has used so far, from /proc/<pid>/stat. On a machine
/// shared with other work, work per CPU-second is steadier than work per wall-second.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime is 14.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// `sysconf(_SC_CLK_TCK)` without unsafe: getconf(1), else the Linux default of 100.
fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU used by a server (when its pid is known) and by this load generator over a span.
#[derive(Debug, Clone, Copy)]
pub struct CpuSpan {
    server_pid: Option<u32>,
    server0: Option<f64>,
    client0: Option<f64>,
}

impl CpuSpan {
    pub fn start(server_pid: Option<u32>) -> Self {
        CpuSpan {
            server_pid,
            server0: server_pid.and_then(cpu_secs),
            client0: cpu_secs(std::process::id()),
        }
    }

    /// (server CPU s, client CPU s) since `start`.
    pub fn end(&self) -> (Option<f64>, Option<f64>) {
        let server = match (self.server_pid.and_then(cpu_secs), self.server0) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        };
        let client = match (cpu_secs(std::process::id()), self.client0) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        };
        (server, client)
    }
}
