//! `edgesync-bench`: load scenarios against a gateway (and, for comparison in
//! the same run, against a nats-server WebSocket listener).
//!
//! - [`fanout`]: 1 publisher → N subscribers, delivered messages/s per 1 s window.
//! - [`latency`]: publish at R msgs/s to N subscribers, publish → deliver percentiles.
//! - [`durable`]: acknowledged publishes/s with fsync from C pipelined publishers.
//! - [`idle`]: gateway RSS per idle connection.
//! - [`soak`]: a long steady run with connection churn; RSS and descriptors sampled.
//! - [`queue`]: queue groups (acked msgs/s, redelivery latency) and presence fan-out.
//! - [`replication`]: two gateways replicating over QUIC + mTLS: catch-up rate, lag,
//!   `replicated:1` ack latency, restart-to-serving after kill -9.
//! - [`bridge`]: the JetStream export's throughput and lag beside async-nats
//!   publishing straight to the same server (starts nats-server and a gateway).
//!
//! Every scenario runs over WebSocket, WebSocket over TLS or QUIC (`--transport
//! ws|wss|quic|both|all`; `both` runs ws then QUIC, `all` ws, wss then QUIC, and they
//! print the QUIC/WS, QUIC/WSS and WSS/WS ratios) through [`conn::Conn`],
//! with the same scanners: the frames are the same MessagePack bytes.
//!
//! Its own binary, not part of the gateway: the product's library holds the product.
//!
//! Without `--url` the bench starts `edgesync serve` as a child process
//! ([`gateway`]), pinned with `--server-cpus` through taskset; pin the bench
//! itself with `taskset -c N edgesync-bench …`. The load generator is one
//! single-threaded tokio runtime: on a pinned core more threads only add
//! contention. Every loop is bounded by the scenario's duration or a count,
//! and every connection is closed with a close frame at the end.

mod bridge;
mod conn;
mod durable;
mod fanout;
mod gateway;
mod idle;
mod latency;
mod plugin;
mod queue;
mod replication;
mod report;
mod soak;
mod wire;

use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use conn::{Conn, Dialer, Transport};
use gateway::{ChildGateway, Fsync};
use report::Report;
use wire::Proto;

/// `edgesync-bench` flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "edgesync-bench",
    version,
    about = "Load scenarios against an edgesync gateway (and nats-server, to compare)"
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Which server(s) to load; `both` runs edgesync then nats and prints the ratio.
    #[arg(long, global = true, value_enum, default_value = "edgesync")]
    pub target: TargetArg,
    /// Which edgesync transport(s) to load; `both` runs ws then QUIC, `all` ws, wss
    /// then QUIC (a fresh child gateway each), printing their ratios. nats is always ws.
    #[arg(long, global = true, value_enum, default_value = "ws")]
    pub transport: TransportArg,
    /// An already running edgesync (ws://host:port, or wss://host:port with `--ca`).
    /// Default: start `edgesync serve` as a child.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// An already running edgesync's QUIC listener (quic://host:port), for `--transport
    /// quic|both` with `--url`; needs `--ca`.
    #[arg(long, global = true)]
    pub quic_url: Option<String>,
    /// CA (PEM) that signed the certificate of the gateway behind `--quic-url` (e.g. its
    /// `<data_dir>/tls/ca.pem`). The bench's own gateway uses its development CA.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// A nats-server WebSocket listener (ws://127.0.0.1:PORT), for `--target nats|both`.
    #[arg(long, global = true)]
    pub nats_url: Option<String>,
    /// CPU list for the child gateway (`taskset -c`), e.g. `0`.
    #[arg(long, global = true)]
    pub server_cpus: Option<String>,
    /// Store fsync policy of the child gateway. Default: `always` for durable, `interval` otherwise.
    #[arg(long, global = true, value_enum)]
    pub fsync: Option<Fsync>,
    /// The edgesync binary for the child gateway. Default: `edgesync` next to this executable.
    #[arg(long, global = true)]
    pub server_bin: Option<PathBuf>,
    /// PID of the server behind `--url`/`--nats-url`, for `idle` (reads its /proc status).
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// QUIC: offer only `edgesync/1` (every push on the session stream) instead of
    /// `edgesync/2` (a stream per subscription), to compare the two.
    #[arg(long, global = true)]
    pub quic_v1: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    Edgesync,
    Nats,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    Ws,
    Wss,
    Quic,
    /// ws then quic.
    Both,
    /// ws, wss, then quic.
    All,
}

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// 1 publisher → N subscribers; delivered messages/s.
    Fanout(fanout::FanoutArgs),
    /// Publish at a fixed rate to N subscribers; publish → deliver latency.
    Latency(latency::LatencyArgs),
    /// Acknowledged (durable) publishes/s and ack latency, C pipelined publishers.
    Durable(durable::DurableArgs),
    /// Server RSS per idle connection.
    Idle(idle::IdleArgs),
    /// Acked publishes/s with no plugin vs one pass-through plugin (starts its own gateways).
    Plugin(plugin::PluginArgs),
    /// A long steady run with connection churn: server RSS and descriptors sampled.
    Soak(soak::SoakArgs),
    /// JetStream bridge export msgs/s and lag vs direct async-nats publishing (starts
    /// nats-server and its own gateway).
    Bridge(bridge::BridgeArgs),
    /// Queue groups (1 producer → N acking members, redelivery latency) and presence
    /// (a join reaching 10k members); starts its own gateway.
    Queue(queue::QueueArgs),
    /// Two replicating gateways: catch-up records/s, lag at a rate, `replicated:1` acks,
    /// restart after kill -9 (starts its own pair per round).
    Replication(replication::ReplicationArgs),
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout(_) => "fanout",
            Scenario::Latency(_) => "latency",
            Scenario::Durable(_) => "durable",
            Scenario::Idle(_) => "idle",
            Scenario::Plugin(_) => "plugin",
            Scenario::Soak(_) => "soak",
            Scenario::Bridge(_) => "bridge",
            Scenario::Queue(_) => "queue",
            Scenario::Replication(_) => "replication",
        }
    }
}

fn main() -> ExitCode {
    let args = <BenchArgs as clap::Parser>::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run_all(&args)) {
        Ok(reports) => {
            if args.json {
                match serde_json::to_string_pretty(&reports) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                report::print_table(&reports);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where one scenario run points.
#[derive(Debug, Clone)]
pub struct Target {
    pub proto: Proto,
    /// Opens the connections (for QUIC, through one shared endpoint).
    pub dialer: Dialer,
    /// The server process, when known (idle needs it).
    pub pid: Option<u32>,
}

impl Target {
    /// # Errors
    /// As [`Dialer::new`].
    pub fn new(
        proto: Proto,
        url: &str,
        ca: Option<&std::path::Path>,
        pid: Option<u32>,
        quic_v1: bool,
    ) -> Result<Self> {
        Ok(Target {
            proto,
            dialer: Dialer::new(proto, url, ca, quic_v1)?,
            pid,
        })
    }

    /// `edgesync` (WebSocket), `edgesync-quic` or `nats`: the report's target.
    pub fn label(&self) -> String {
        match (self.proto, self.dialer.transport) {
            (Proto::Edgesync, Transport::Ws) => "edgesync".into(),
            (Proto::Edgesync, Transport::Wss) => "edgesync-wss".into(),
            (Proto::Edgesync, Transport::Quic) => "edgesync-quic".into(),
            (Proto::Nats, _) => "nats".into(),
        }
    }

    pub fn url(&self) -> &str {
        self.dialer.url()
    }

    /// Open a connection and its protocol session.
    ///
    /// # Errors
    /// As [`Dialer::connect`] and [`wire::handshake`].
    pub async fn open(&self) -> Result<Conn> {
        let mut c = self.dialer.connect().await?;
        wire::handshake(&mut c, self.proto).await?;
        Ok(c)
    }
}

async fn run_all(args: &BenchArgs) -> Result<Vec<Report>> {
    let nofile = gateway::raise_nofile();
    tracing::debug!(?nofile, "file limit");
    if let Scenario::Plugin(a) = &args.scenario {
        // Starts its own pair of gateways per round, over WebSocket.
        return Ok(vec![plugin::run(args, a).await?]);
    }
    if let Scenario::Queue(a) = &args.scenario {
        return queue::run(args, a).await;
    }
    if let Scenario::Replication(a) = &args.scenario {
        return replication::run(args, a).await;
    }
    if let Scenario::Bridge(a) = &args.scenario {
        // Starts its own nats-server and gateway.
        return bridge::run(args, a).await;
    }
    let transports: &[Transport] = match args.transport {
        TransportArg::Ws => &[Transport::Ws],
        TransportArg::Wss => &[Transport::Wss],
        TransportArg::Quic => &[Transport::Quic],
        TransportArg::Both => &[Transport::Ws, Transport::Quic],
        TransportArg::All => &[Transport::Ws, Transport::Wss, Transport::Quic],
    };
    let mut runs: Vec<(Proto, Transport)> = Vec::new();
    if args.target != TargetArg::Nats {
        runs.extend(transports.iter().map(|t| (Proto::Edgesync, *t)));
    }
    if args.target != TargetArg::Edgesync {
        runs.push((Proto::Nats, Transport::Ws));
    }
    let default_fsync = if matches!(args.scenario, Scenario::Durable(_)) {
        Fsync::Always
    } else {
        Fsync::Interval
    };
    let fsync = args.fsync.unwrap_or(default_fsync);
    let mut reports = Vec::new();
    for (proto, transport) in runs {
        if proto == Proto::Nats && matches!(args.scenario, Scenario::Durable(_)) {
            bail!("durable runs against edgesync only (core NATS does not persist)");
        }
        let (target, child) = resolve(args, proto, transport, fsync)?;
        eprintln!(
            "bench: {} against {} at {}",
            args.scenario.name(),
            target.label(),
            target.url()
        );
        let result = match &args.scenario {
            Scenario::Fanout(a) => fanout::run(&target, a).await,
            Scenario::Latency(a) => latency::run(&target, a).await,
            Scenario::Durable(a) => durable::run(&target, a).await,
            Scenario::Idle(a) => idle::run(&target, a).await,
            Scenario::Soak(a) => soak::run(&target, a).await,
            Scenario::Plugin(_)
            | Scenario::Bridge(_)
            | Scenario::Queue(_)
            | Scenario::Replication(_) => {
                unreachable!("handled above")
            }
        };
        target.dialer.shutdown().await;
        if let Some(gw) = child {
            tokio::task::spawn_blocking(move || gw.stop()).await.ok();
        }
        let mut r = result?;
        r.param(
            "transport",
            serde_json::to_value(transport).unwrap_or_default(),
        );
        if proto == Proto::Edgesync && args.url.is_none() {
            r.param("fsync", serde_json::to_value(fsync).unwrap_or_default());
        }
        reports.push(r);
    }
    Ok(reports)
}

/// The target of one run: a server given on the command line, or a fresh child gateway
/// (returned so the caller stops it after the run).
fn resolve(
    args: &BenchArgs,
    proto: Proto,
    transport: Transport,
    fsync: Fsync,
) -> Result<(Target, Option<ChildGateway>)> {
    if proto == Proto::Nats {
        let url = args
            .nats_url
            .clone()
            .context("--target nats needs --nats-url ws://127.0.0.1:PORT (see bench/nats.conf)")?;
        return Ok((
            Target::new(proto, &url, None, args.server_pid, false)?,
            None,
        ));
    }
    let given = match transport {
        Transport::Ws => args.url.clone().filter(|u| u.starts_with("ws://")),
        Transport::Wss => args.url.clone().filter(|u| u.starts_with("wss://")),
        Transport::Quic => args
            .quic_url
            .clone()
            .or_else(|| args.url.clone().filter(|u| u.starts_with("quic://"))),
    };
    if let Some(url) = given {
        let t = Target::new(
            proto,
            &url,
            args.ca.as_deref(),
            args.server_pid,
            args.quic_v1,
        )?;
        return Ok((t, None));
    }
    if args.url.is_some() || args.quic_url.is_some() {
        bail!(
            "--transport {transport:?} needs its own url: --url ws://… and/or --quic-url quic://…"
        );
    }
    let exe = match &args.server_bin {
        Some(p) => p.clone(),
        None => gateway_binary()?,
    };
    let gw = ChildGateway::start(&exe, args.server_cpus.as_deref(), fsync)?;
    let url = match transport {
        Transport::Ws => gw.url.clone(),
        Transport::Wss => gw.wss_url.clone(),
        Transport::Quic => gw.quic_url.clone(),
    };
    eprintln!(
        "bench: started gateway pid {} at {url} (fsync {fsync:?}, cpus {:?})",
        gw.pid, args.server_cpus
    );
    let t = Target::new(proto, &url, Some(&gw.ca), Some(gw.pid), args.quic_v1)?;
    Ok((t, Some(gw)))
}

/// Per-run counters shared by the tasks of one scenario (one thread: plain cells).
#[derive(Debug, Default)]
pub struct Counters {
    pub delivered: Cell<u64>,
    pub gap_msgs: Cell<u64>,
    pub errors: Cell<u64>,
    /// Connections the server closed before the scenario ended.
    pub dropped: Cell<u64>,
}

impl Counters {
    fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }
}

/// Open `n` subscribed connections, at most `parallel` handshakes at a time.
///
/// # Errors
/// The first connection that fails.
pub async fn open_subscribers(
    target: &Target,
    subject: &str,
    n: usize,
    parallel: usize,
) -> Result<Vec<Conn>> {
    let started = Instant::now();
    let opened: Vec<Result<Conn>> = futures_util::stream::iter(0..n)
        .map(|_| async {
            let mut c = target.open().await?;
            wire::subscribe(&mut c, target.proto, subject).await?;
            Ok(c)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let subs = opened.into_iter().collect::<Result<Vec<_>>>()?;
    eprintln!(
        "bench: {} subscribers ready in {:.1}s",
        subs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(subs)
}

/// One [`subscriber`] task per connection, counting into `counters` and ignoring payloads.
pub fn spawn_counting_readers(
    subs: Vec<Conn>,
    proto: Proto,
    stop: &CancellationToken,
    counters: &Rc<Counters>,
) -> Vec<tokio::task::JoinHandle<()>> {
    subs.into_iter()
        .map(|ws| {
            tokio::task::spawn_local(subscriber(
                ws,
                proto,
                stop.clone(),
                counters.clone(),
                |_| {},
            ))
        })
        .collect()
}

/// Read one subscriber until `stop`, counting deliveries and calling `on_msg(payload)`;
/// answers NATS PINGs; closes the connection at the end.
pub async fn subscriber(
    mut ws: Conn,
    proto: Proto,
    stop: CancellationToken,
    counters: Rc<Counters>,
    mut on_msg: impl FnMut(&[u8]),
) {
    let mut scanner = wire::Scanner::new(proto);
    // Bounded by `stop` (the scenario's duration) or the server closing.
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        let frame = match next {
            Some(Ok(b)) => b,
            None => {
                Counters::add(&counters.dropped, 1);
                return;
            }
            Some(Err(_)) => {
                Counters::add(&counters.errors, 1);
                Counters::add(&counters.dropped, 1);
                return;
            }
        };
        let seen = scanner.scan(&frame, &mut on_msg, &mut |_| {});
        Counters::add(&counters.delivered, seen.msgs);
        Counters::add(&counters.gap_msgs, seen.gap_msgs);
        Counters::add(&counters.errors, seen.errors);
        if seen.ping && ws.send(b"PONG\r\n".to_vec()).await.is_err() {
            Counters::add(&counters.errors, 1);
        }
    }
    ws.close().await;
}

/// Nanoseconds since `epoch`, written into the first 8 bytes of a payload.
pub fn stamp(payload: &mut [u8], epoch: Instant) -> u64 {
    let ns = epoch.elapsed().as_nanos() as u64;
    if let Some(head) = payload.get_mut(..8) {
        head.copy_from_slice(&ns.to_le_bytes());
    }
    ns
}

/// Microseconds since the stamp in `payload`, if it carries one.
pub fn age_us(payload: &[u8], epoch: Instant) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let sent = u64::from_le_bytes(head);
    let now = epoch.elapsed().as_nanos() as u64;
    Some(now.saturating_sub(sent) / 1000)
}

/// Sample `counter` every second for `seconds` windows after `warmup`; per-window rates.
pub async fn sample_rates(counter: impl Fn() -> u64, warmup: Duration, seconds: u64) -> Vec<f64> {
    tokio::time::sleep(warmup).await;
    let mut rates = Vec::with_capacity(seconds as usize);
    let (mut last, mut at) = (counter(), Instant::now());
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (now_n, now_t) = (counter(), Instant::now());
        rates.push(now_n.saturating_sub(last) as f64 / now_t.duration_since(at).as_secs_f64());
        (last, at) = (now_n, now_t);
    }
    rates
}

/// The `edgesync` binary built next to this one (`target/<profile>/edgesync`).
fn gateway_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locate this executable")?;
    let exe = me.with_file_name(format!("edgesync{}", std::env::consts::EXE_SUFFIX));
    if !exe.exists() {
        bail!(
            "{} not found: build it (`cargo build --release --bin edgesync`) or pass --server-bin",
            exe.display()
        );
    }
    Ok(exe)
}
