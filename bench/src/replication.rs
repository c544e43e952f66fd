//! `replication`: two gateways replicating over QUIC with mutual TLS, measured through
//! the Rust client over WebSocket. The bench makes a cluster CA and two node
//! certificates with `edgesync cert`, then per round starts a fresh pair of child
//! gateways (`hub` accepts, `edge` dials it; fsync `always` on both):
//!
//! 1. **Catch-up**: the hub stores `messages` records on 8 topics before the edge
//!    exists; then the edge starts and a subscriber on it reads them all from
//!    `earliest`. Records/s from the edge's start (its start-up included) until the last
//!    one is delivered — what a peer back from a partition or a new peer does.
//! 2. **Lag**: a publisher on the hub at `rate` msgs/s for `seconds`; a subscriber on the
//!    edge. Publish → delivered on the edge (the payload carries the send time): origin
//!    durable, shipped, applied and fsynced by the peer, fanned out there.
//! 3. **`replicated:1` acks**: `acks` sequential publishes on a `replicated:1` topic, each
//!    followed by one on a `local` topic (the baseline of the same run): publish → ack.
//! 4. **Restart**: the hub, holding everything above, is killed -9 and started again:
//!    spawn → listening, and spawn → first publish acked (restart-to-serving).
//!
//! `rounds` rounds (default 3); the report gives each figure's median over the rounds
//! and its spread (min, max).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgesync_client::{Client, ClientOptions, Event, Start};
use futures_util::StreamExt;

use super::BenchArgs;
use super::gateway::{ChildGateway, Fsync};
use super::report::{Report, latency_histogram, quantile};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplicationArgs {
    /// Records the edge catches up on.
    #[arg(long, short = 'n', default_value_t = 200_000)]
    pub messages: u64,
    /// Publishes per second during the lag phase.
    #[arg(long, short = 'r', default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of the lag phase.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub seconds: u64,
    /// Sequential `replicated:1` publishes (each with a `local` one beside it).
    #[arg(long, default_value_t = 2_000)]
    pub acks: u64,
    /// Payload bytes (at least 8: the send time).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Rounds, each on a fresh pair of gateways; figures are medians over them.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// CPU list for the edge gateway (`--server-cpus` pins the hub).
    #[arg(long)]
    pub edge_cpus: Option<String>,
}

/// One round's figures, by name.
type Figures = Vec<(String, f64)>;

/// # Errors
/// Certificates could not be made, a gateway did not start, or a phase did not finish.
pub async fn run(args: &BenchArgs, a: &ReplicationArgs) -> Result<Vec<Report>> {
    if a.payload < 8 {
        bail!("--payload must be at least 8 bytes (the send time)");
    }
    let exe = match &args.server_bin {
        Some(p) => p.clone(),
        None => super::gateway_binary()?,
    };
    let certs = std::env::temp_dir().join(format!("edgesync-bench-certs-{}", std::process::id()));
    make_certs(&exe, &certs)?;
    let mut rounds: Vec<Figures> = Vec::new();
    for round in 0..a.rounds {
        eprintln!("bench: replication round {} of {}", round + 1, a.rounds);
        let figures = one_round(args, a, &exe, &certs).await;
        rounds.push(figures?);
    }
    let _ = std::fs::remove_dir_all(&certs);
    let mut r = Report::new("replication", "edgesync");
    r.param("messages", a.messages)
        .param("rate", a.rate)
        .param("seconds", a.seconds)
        .param("acks", a.acks)
        .param("payload_bytes", a.payload)
        .param("rounds", a.rounds as u64)
        .param("fsync", "always");
    for (i, (name, _)) in rounds[0].iter().enumerate() {
        let values: Vec<f64> = rounds.iter().map(|f| f[i].1).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        r.metric(name.clone(), quantile(&values, 0.5))
            .metric(format!("{name}_min"), min)
            .metric(format!("{name}_max"), max);
    }
    Ok(vec![r])
}

/// `edgesync cert ca` and a node certificate each for `hub` and `edge` in `dir`.
fn make_certs(exe: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let d = dir.to_string_lossy().to_string();
    let runs: [Vec<&str>; 3] = [
        vec!["cert", "ca", "--out", &d],
        vec!["cert", "node", "hub", "--ca-dir", &d, "--out", &d],
        vec!["cert", "node", "edge", "--ca-dir", &d, "--out", &d],
    ];
    for args in runs {
        let out = Command::new(exe)
            .args(&args)
            .output()
            .with_context(|| format!("run {} {}", exe.display(), args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "edgesync {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// The cluster part of a node's config; `dial` is the hub's QUIC URL for the edge.
fn cluster_toml(certs: &Path, node: &str, dial: Option<&str>) -> String {
    let mut t = format!(
        "\n[tls]\ncert = {cert:?}\nkey = {key:?}\n\n[cluster]\nid = \"bench\"\nca = {ca:?}\n\n\
         [[topic]]\npattern = \"bench.rep1.>\"\nack = \"replicated:1\"\n",
        cert = certs.join(format!("{node}.pem")).display().to_string(),
        key = certs.join(format!("{node}.key")).display().to_string(),
        ca = certs.join("ca.pem").display().to_string(),
    );
    if let Some(url) = dial {
        t.push_str(&format!("\n[[peer]]\nurl = {url:?}\n"));
    }
    t
}

async fn connect(url: &str) -> Result<Client> {
    let mut o = ClientOptions::new(url);
    o.reconnect = false;
    o.request_timeout = Duration::from_secs(120);
    Client::connect(o).await.context("connect to a gateway")
}

async fn one_round(
    args: &BenchArgs,
    a: &ReplicationArgs,
    exe: &PathBuf,
    certs: &Path,
) -> Result<Figures> {
    let mut figures = Figures::new();
    let hub_cpus = args.server_cpus.as_deref();
    let mut hub = ChildGateway::start_with(
        exe,
        hub_cpus,
        Fsync::Always,
        &cluster_toml(certs, "hub", None),
    )?;

    // 1. Catch-up: the hub stores `messages` records before the edge exists.
    let producer = connect(&hub.url).await?;
    let payload = vec![0x5a_u8; a.payload];
    let results: Vec<_> = futures_util::stream::iter(0..a.messages)
        .map(|i| {
            let (p, body) = (&producer, payload.clone());
            async move { p.publish(&format!("bench.cu.t{}", i % 8), body).await }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(|r| r.err()) {
        bail!("publish on the hub failed: {e}");
    }
    let started = Instant::now();
    let edge = ChildGateway::start_with(
        exe,
        a.edge_cpus.as_deref(),
        Fsync::Always,
        &cluster_toml(certs, "edge", Some(&hub.quic_url)),
    )?;
    let edge_ready = started.elapsed().as_secs_f64();
    let reader = connect(&edge.url).await?;
    let mut sub = reader.subscribe("bench.cu.>", Start::Earliest).await?;
    let mut got = 0u64;
    while got < a.messages {
        match sub.next_timeout(Duration::from_secs(60)).await {
            Some(Event::Msg(_)) => got += 1,
            Some(Event::Gap { .. }) => bail!("catch-up: a gap on the edge"),
            Some(_) => {}
            None => bail!("catch-up: {got} of {} within the time", a.messages),
        }
    }
    let catch_up = started.elapsed().as_secs_f64();
    figures.push((
        "catch_up_records_per_sec".into(),
        a.messages as f64 / catch_up,
    ));
    figures.push(("catch_up_secs".into(), catch_up));
    figures.push(("edge_start_secs".into(), edge_ready));
    reader.close().await;

    // 2. Lag at `rate` msgs/s: hub publish → delivered on the edge.
    figures.extend(lag(a, &producer, &edge.url).await?);

    // 3. `replicated:1` acks beside `local` ones.
    let mut rep = latency_histogram();
    let mut local = latency_histogram();
    for i in 0..a.acks {
        let t = Instant::now();
        producer
            .publish(&format!("bench.rep1.t{}", i % 8), payload.clone())
            .await
            .context("replicated:1 publish")?;
        let _ = rep.record((t.elapsed().as_micros() as u64).max(1));
        let t = Instant::now();
        producer
            .publish(&format!("bench.local.t{}", i % 8), payload.clone())
            .await
            .context("local publish")?;
        let _ = local.record((t.elapsed().as_micros() as u64).max(1));
    }
    for (name, h) in [("replicated1_ack", &rep), ("local_ack", &local)] {
        figures.push((format!("{name}_p50_us"), h.value_at_quantile(0.5) as f64));
        figures.push((format!("{name}_p99_us"), h.value_at_quantile(0.99) as f64));
    }
    producer.close().await;
    edge.stop();

    // 4. Restart-to-serving after kill -9, with everything above in the hub's log.
    // (The kill itself, a few ms, is inside `serving`.)
    let killed = Instant::now();
    let listening = hub.kill9_and_restart()?;
    let c = connect(&hub.url).await?;
    c.publish("bench.restart", "x")
        .await
        .context("publish after restart")?;
    let serving = killed.elapsed().as_secs_f64();
    c.close().await;
    figures.push(("restart_listening_secs".into(), listening.as_secs_f64()));
    figures.push(("restart_serving_secs".into(), serving));
    let stored = a.messages + a.rate * a.seconds + 2 * a.acks;
    figures.push(("restart_log_records".into(), stored as f64));
    hub.stop();
    Ok(figures)
}

/// Phase 2: `rate` msgs/s on the hub for `seconds`; each delivery on the edge is timed
/// against the send time in its payload.
async fn lag(a: &ReplicationArgs, producer: &Client, edge_url: &str) -> Result<Figures> {
    let reader = connect(edge_url).await?;
    let mut sub = reader.subscribe("bench.lag.>", Start::Latest).await?;
    let t0 = Instant::now();
    let total = a.rate * a.seconds;
    let pad = a.payload - 8;
    let send = async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let per_tick = (a.rate / 100).max(1);
        let mut sent = 0u64;
        // Each publish is its own task, so it goes out when it is made. (Futures kept in
        // a `FuturesUnordered` polled with `now_or_never` once per tick started only as
        // many as one poll reached before tokio's cooperative budget ran out; the rest
        // went out when publishing ended, and the "lag" measured was the bench's own
        // queue: seconds-old sends stamped when made, all topics alike.)
        let mut acks = tokio::task::JoinSet::new();
        while sent < total {
            tick.tick().await;
            for _ in 0..per_tick.min(total - sent) {
                let mut body = (t0.elapsed().as_micros() as u64).to_le_bytes().to_vec();
                body.resize(8 + pad, 0);
                let topic = format!("bench.lag.t{}", sent % 8);
                let p = producer.clone();
                acks.spawn_local(async move { p.publish(&topic, body).await });
                sent += 1;
            }
            while let Some(r) = acks.try_join_next() {
                r.context("lag publish task")?.context("lag publish")?;
            }
        }
        while let Some(r) = acks.join_next().await {
            r.context("lag publish task")?.context("lag publish")?;
        }
        anyhow::Ok(())
    };
    let receive = async {
        let mut hist = latency_histogram();
        // The worst lag of the messages sent in each second: where the tail comes from.
        let mut worst_by_second = vec![0u64; a.seconds as usize + 1];
        // Per topic, deliveries later than a second: is the tail one stream or all?
        let mut late_by_topic: BTreeMap<String, u64> = BTreeMap::new();
        let mut got = 0u64;
        while got < total {
            match sub.next_timeout(Duration::from_secs(30)).await {
                Some(Event::Msg(m)) => {
                    let sent = m
                        .data
                        .0
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_le_bytes)
                        .context("payload without send time")?;
                    let now = t0.elapsed().as_micros() as u64;
                    let lag = now.saturating_sub(sent).max(1);
                    let _ = hist.record(lag);
                    let second = ((sent / 1_000_000) as usize).min(worst_by_second.len() - 1);
                    worst_by_second[second] = worst_by_second[second].max(lag);
                    if lag > 1_000_000 {
                        *late_by_topic.entry(m.topic.clone()).or_default() += 1;
                    }
                    got += 1;
                }
                Some(Event::Gap { .. }) => bail!("lag: a gap on the edge"),
                Some(_) => {}
                None => bail!("lag: {got} of {total} delivered on the edge"),
            }
        }
        let worst: Vec<String> = worst_by_second
            .iter()
            .map(|us| format!("{:.1}", *us as f64 / 1000.0))
            .collect();
        eprintln!(
            "bench: lag, worst per second sent (ms): {}",
            worst.join(" ")
        );
        eprintln!("bench: lag, deliveries over 1 s late by topic: {late_by_topic:?}");
        Ok(hist)
    };
    let (sent, hist) = tokio::join!(send, receive);
    sent?;
    let hist = hist?;
    reader.close().await;
    Ok(vec![
        ("lag_p50_us".into(), hist.value_at_quantile(0.5) as f64),
        ("lag_p99_us".into(), hist.value_at_quantile(0.99) as f64),
        ("lag_max_us".into(), hist.max() as f64),
    ])
}
