//! `bridge`: the JetStream export (issue 17) against a local `nats-server -js` with
//! file storage, and the ceiling: async-nats publishing straight to a stream of
//! the same kind, in the same run, on the same server.
//!
//! 1. **ceiling** — `--messages` payloads published by async-nats to stream
//!    `CEILING` with `Nats-Msg-Id` headers (as the bridge sends them) and a sliding
//!    window of 3 × `--batch` unacknowledged publishes (the bridge's depth):
//!    acknowledged messages/s. It runs last, on the same server.
//! 2. **export drain** — a child gateway with a `[[bridge]]` to stream `EXPORT` is
//!    loaded with `--messages` records while JetStream is not reachable yet (the
//!    bridge retries every 100 ms); then nats-server starts and the time until the
//!    stream holds every record gives the export's messages/s.
//! 3. **lag** — records published at `--rate` msgs/s for `--lag-seconds`; a core
//!    NATS subscriber on the bridged subjects measures, per record, the time from
//!    the record's HLC (its commit in the gateway's store) to its arrival from
//!    JetStream: `lag_us_p50 … _max` (the HLC has millisecond resolution).
//!
//! Pin the processes on a shared machine: `--server-cpus` for the gateway,
//! `--nats-cpus` for nats-server, `taskset -c N edgesync-bench …` for the bench.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use futures_util::StreamExt as _;

use super::BenchArgs;
use super::gateway::{ChildGateway, Fsync};
use super::report::{Report, latency_histogram};

#[derive(Debug, Clone, clap::Args)]
pub struct BridgeArgs {
    /// Messages per throughput phase (ceiling and export drain).
    #[arg(long, short = 'n', default_value_t = 200_000)]
    pub messages: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// The bridge's `batch` (its publish window), also the ceiling's window.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Publish rate of the lag phase, msgs/s.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Seconds of the lag phase.
    #[arg(long, default_value_t = 5)]
    pub lag_seconds: u64,
    /// The nats-server binary.
    #[arg(long, default_value = "nats-server")]
    pub nats_bin: PathBuf,
    /// CPU list for nats-server (`taskset -c`).
    #[arg(long)]
    pub nats_cpus: Option<String>,
}

/// Run the three phases; `args` supplies `--server-bin`, `--server-cpus`, `--fsync`.
///
/// # Errors
/// nats-server or the gateway did not start, or a phase did not finish in time.
pub async fn run(args: &BenchArgs, a: &BridgeArgs) -> Result<Vec<Report>> {
    let exe = match &args.server_bin {
        Some(p) => p.clone(),
        None => super::gateway_binary()?,
    };
    let dir = std::env::temp_dir().join(format!("edgesync-bench-bridge-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let url = format!("nats://127.0.0.1:{port}");
    let bridge = format!(
        "\n[[bridge]]\nkind = \"jetstream\"\nurl = \"{url}\"\ndirection = \"export\"\ntopics = [\"bench.>\"]\nstream = \"EXPORT\"\nbatch = {}\nretry_max_ms = 100\n",
        a.batch
    );
    // The gateway first: its bridge finds no server and retries while it is loaded.
    let fsync = args.fsync.unwrap_or(Fsync::Interval);
    let gw = ChildGateway::start_with(&exe, args.server_cpus.as_deref(), fsync, &bridge)?;
    let client = edgesync_client::Client::connect(edgesync_client::ClientOptions::new(&gw.url))
        .await
        .context("connect to the gateway")?;
    let payload = vec![0x5a_u8; a.payload];
    let loaded = Instant::now();
    publish_all(&client, a.messages, &payload).await?;
    let load_secs = loaded.elapsed().as_secs_f64();

    let mut nats = Nats::start(a, &dir, port)?;
    let nats_client = wait_connect(&url).await?;
    // The same ack window the bridge gets (`Link::connect`): 4 × batch permits.
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(4 * a.batch.max(1))
        .backpressure_on_inflight(true)
        .build(nats_client.clone());
    let started = Instant::now();
    wait_len(&js, "EXPORT", a.messages, Duration::from_secs(300)).await?;
    let export_secs = started.elapsed().as_secs_f64();

    let lag = lag_phase(&client, &nats_client, a).await?;
    let ceiling_secs = ceiling(&js, a).await?;
    client.close().await;
    gw.stop();
    nats.stop();
    let _ = std::fs::remove_dir_all(&dir);

    let n = a.messages as f64;
    let mut r = Report::new("bridge", "edgesync-jetstream");
    r.param("messages", a.messages)
        .param("payload_bytes", a.payload)
        .param("batch", a.batch)
        .param("lag_rate", a.rate)
        .param("lag_seconds", a.lag_seconds)
        .param("fsync", format!("{fsync:?}").to_lowercase());
    r.metric("load_msgs_per_sec", n / load_secs)
        .metric("export_msgs_per_sec", n / export_secs)
        .metric("ceiling_msgs_per_sec", n / ceiling_secs)
        .metric("export_vs_ceiling", ceiling_secs / export_secs)
        .latency("lag_us", &lag);
    Ok(vec![r])
}

/// Publish `n` records (256 in flight) and wait for every ack.
async fn publish_all(client: &edgesync_client::Client, n: u64, payload: &[u8]) -> Result<()> {
    let results: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| {
            let topic = format!("bench.t{}", i % 8);
            let body = payload.to_vec();
            async move { client.publish(&topic, body).await }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(|r| r.err()) {
        bail!("publish to the gateway failed: {e}");
    }
    Ok(())
}

/// Publish at `rate` for `lag_seconds` while a core subscriber measures HLC → arrival.
async fn lag_phase(
    client: &edgesync_client::Client,
    nats: &async_nats::Client,
    a: &BridgeArgs,
) -> Result<hdrhistogram::Histogram<u64>> {
    let mut sub = nats.subscribe("bench.>").await?;
    nats.flush().await?;
    let total = a.rate * a.lag_seconds;
    let tick = Duration::from_millis(10);
    let per_tick = (a.rate / 100).max(1);
    let payload = vec![0x6b_u8; a.payload];
    let publish = async {
        let mut sent = 0;
        let mut every = tokio::time::interval(tick);
        while sent < total {
            every.tick().await;
            let k = per_tick.min(total - sent);
            publish_all(client, k, &payload).await?;
            sent += k;
        }
        anyhow::Ok(())
    };
    let mut hist = latency_histogram();
    let receive = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.lag_seconds + 60);
        while (hist.len()) < total {
            let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                break;
            };
            let hlc: Option<u64> = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Edgesync-Hlc"))
                .and_then(|v| v.as_str().parse().ok());
            if let Some(hlc) = hlc {
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                let _ = hist.record(now_us.saturating_sub((hlc >> 16) * 1000).max(1));
            }
        }
    };
    let (published, ()) = tokio::join!(publish, receive);
    published?;
    if hist.len() < total {
        bail!("the lag phase saw {} of {total} records", hist.len());
    }
    Ok(hist)
}

/// async-nats straight to a file-storage stream with a window of `batch` publishes.
async fn ceiling(js: &jetstream::Context, a: &BridgeArgs) -> Result<f64> {
    js.create_stream(jetstream::stream::Config {
        name: "CEILING".into(),
        subjects: vec!["ceiling.>".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![0x5a_u8; a.payload]);
    let started = Instant::now();
    // A sliding window as deep as the bridge's (3 windows of `batch`).
    let depth = 3 * a.batch.max(1);
    let mut window = std::collections::VecDeque::with_capacity(depth);
    for i in 0..a.messages {
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("ceiling:{i}"));
        window.push_back(js.send_publish(format!("ceiling.t{}", i % 8), msg).await?);
        if window.len() >= depth
            && let Some(ack) = window.pop_front()
        {
            ack.await?;
        }
    }
    for ack in window.drain(..) {
        ack.await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn wait_connect(url: &str) -> Result<async_nats::Client> {
    for _ in 0..200 {
        if let Ok(c) = async_nats::connect(url).await {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nats-server at {url} did not come up")
}

async fn wait_len(js: &jetstream::Context, stream: &str, want: u64, limit: Duration) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(mut s) = js.get_stream(stream).await
            && s.info().await.is_ok_and(|i| i.state.messages >= want)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("stream {stream} did not reach {want} messages within {limit:?}")
}

/// A nats-server child (JetStream, file storage under `dir`), stopped on drop.
struct Nats {
    child: Option<Child>,
}

impl Nats {
    fn start(a: &BridgeArgs, dir: &std::path::Path, port: u16) -> Result<Nats> {
        let mut cmd = match &a.nats_cpus {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", c]).arg(&a.nats_bin);
                t
            }
            None => Command::new(&a.nats_bin),
        };
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", a.nats_bin.display()))?;
        Ok(Nats { child: Some(child) })
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
