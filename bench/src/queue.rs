//! `queue`: queue groups and presence, through the Rust client against a child gateway.
//!
//! 1. **Acked throughput**: one producer stores `messages` records (pipelined, 256 in
//!    flight; its durable publishes/s are the same run's baseline), then `workers`
//!    members of a group made at `earliest` (each `max_unacked` wide) take and ack
//!    them all: records acked per second through the queue, and the ratio.
//! 2. **Redelivery latency**: a member `nak`s `redeliveries` messages with no delay;
//!    the time from sending the `nak` to receiving the redelivery.
//! 3. **Presence**: `members` clients present on one topic; then the time for one more
//!    client's `join` to reach every member (p50/p99 over the members), and the
//!    `presence` query's latency with that many members.
//!
//! The child gateway fsyncs every group commit (`--fsync always`, the default here):
//! acks of publishes are durable; acks of deliveries ride the same group commit.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgesync_client::{Client, ClientOptions, Event, QueueOptions, Start};
use futures_util::StreamExt;

use super::BenchArgs;
use super::gateway::{ChildGateway, Fsync};
use super::report::{Report, latency_histogram};

#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// Records the producer publishes.
    #[arg(long, short = 'n', default_value_t = 200_000)]
    pub messages: u64,
    /// Members of the group.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Each member's window (`max_unacked`).
    #[arg(long, default_value_t = 256)]
    pub max_unacked: u32,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Messages naked once to time their redelivery.
    #[arg(long, default_value_t = 2_000)]
    pub redeliveries: u64,
    /// Clients present on the presence topic (0 skips the phase).
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
}

/// # Errors
/// The gateway did not start, or a phase did not finish in time.
pub async fn run(args: &BenchArgs, a: &QueueArgs) -> Result<Vec<Report>> {
    let exe = match &args.server_bin {
        Some(p) => p.clone(),
        None => super::gateway_binary()?,
    };
    let fsync = args.fsync.unwrap_or(Fsync::Always);
    // The child's config allows 18k connections; the query lists the default 1,000
    // members (with the full count).
    if a.members > 17_000 {
        bail!("at most 17000 members (the child gateway's connection limit)");
    }
    let gw = ChildGateway::start_with(&exe, args.server_cpus.as_deref(), fsync, "")?;
    let mut reports = Vec::new();
    let (rate, publish_rate) = throughput(&gw.url, a).await?;
    let redelivery = redelivery(&gw.url, a).await?;
    let mut r = Report::new("queue", "edgesync");
    r.param("messages", a.messages)
        .param("workers", a.workers)
        .param("max_unacked", a.max_unacked)
        .param("payload_bytes", a.payload)
        .param("fsync", format!("{fsync:?}").to_lowercase());
    r.metric("acked_msgs_per_sec", rate)
        .metric("producer_acks_per_sec", publish_rate)
        .metric("queue_vs_publish", rate / publish_rate)
        .latency("redelivery_us", &redelivery);
    reports.push(r);
    if a.members > 0 {
        super::gateway::raise_nofile();
        let (join, query) = presence(&gw.url, a.members).await?;
        let mut p = Report::new("presence", "edgesync");
        p.param("members", a.members);
        p.latency("join_reaches_all_us", &join)
            .latency("query_us", &query);
        reports.push(p);
    }
    gw.stop();
    Ok(reports)
}

async fn connect(url: &str) -> Result<Client> {
    let mut o = ClientOptions::new(url);
    o.reconnect = false;
    o.request_timeout = Duration::from_secs(120);
    Client::connect(o).await.context("connect to the gateway")
}

/// Phase 1: the producer stores `messages` records (its acked publishes/s are the
/// baseline of the same run); then the members, joining a group made at `earliest`,
/// take and ack them all: records acked per second through the queue.
async fn throughput(url: &str, a: &QueueArgs) -> Result<(f64, f64)> {
    let producer = connect(url).await?;
    let payload = vec![0x5a_u8; a.payload];
    let started = Instant::now();
    let results: Vec<_> = futures_util::stream::iter(0..a.messages)
        .map(|i| {
            let (p, body) = (&producer, payload.clone());
            async move { p.publish(&format!("bench.q.t{}", i % 16), body).await }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let published = started.elapsed().as_secs_f64();
    if let Some(e) = results.into_iter().find_map(|r| r.err()) {
        bail!("publish failed: {e}");
    }
    producer.close().await;
    let mut members = Vec::new();
    for _ in 0..a.workers {
        members.push(connect(url).await?);
    }
    let acked = Rc::new(Cell::new(0u64));
    let all_acked = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in members {
        let mut q = QueueOptions::new("bench");
        q.max_unacked = Some(a.max_unacked);
        q.start = Start::Earliest;
        let mut sub = c.join_queue("bench.q.>", q).await?;
        let acked = acked.clone();
        let total = a.messages;
        let all_acked = all_acked.clone();
        workers.push(tokio::task::spawn_local(async move {
            let mut acks = futures_util::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    () = all_acked.cancelled() => break,
                    ev = sub.next_timeout(Duration::from_secs(30)) => match ev {
                        Some(Event::Msg(m)) => {
                            let c = c.clone();
                            acks.push(async move { c.ack(&m).await });
                        }
                        Some(_) => {}
                        None => break,
                    },
                    Some(done) = acks.next(), if !acks.is_empty() => {
                        if done.is_ok() {
                            acked.set(acked.get() + 1);
                            if acked.get() >= total {
                                all_acked.cancel();
                            }
                        }
                    }
                }
            }
            while let Some(done) = acks.next().await {
                if done.is_ok() {
                    acked.set(acked.get() + 1);
                }
            }
            c.close().await;
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if acked.get() < a.messages {
        bail!("only {} of {} acked", acked.get(), a.messages);
    }
    Ok((a.messages as f64 / elapsed, a.messages as f64 / published))
}

/// Phase 2: `nak` (no delay) → the redelivery arrives.
async fn redelivery(url: &str, a: &QueueArgs) -> Result<hdrhistogram::Histogram<u64>> {
    let c = connect(url).await?;
    let mut q = QueueOptions::new("bench-redeliver");
    q.max_unacked = Some(1);
    let mut sub = c.join_queue("bench.r.>", q).await?;
    let producer = connect(url).await?;
    let mut hist = latency_histogram();
    for i in 0..a.redeliveries {
        producer.publish("bench.r.x", format!("r{i}")).await?;
        let first = next_msg(&mut sub).await?;
        let naked = Instant::now();
        c.nak(&first, Duration::ZERO).await?;
        let again = next_msg(&mut sub).await?;
        let us = naked.elapsed().as_micros() as u64;
        if again.seq != first.seq || again.delivery != Some(2) {
            bail!("expected seq {} delivery 2, got {again:?}", first.seq);
        }
        let _ = hist.record(us.max(1));
        c.ack(&again).await?;
    }
    c.close().await;
    producer.close().await;
    Ok(hist)
}

async fn next_msg(sub: &mut edgesync_client::Subscription) -> Result<edgesync_client::Msg> {
    loop {
        match sub.next_timeout(Duration::from_secs(30)).await {
            Some(Event::Msg(m)) => return Ok(m),
            Some(_) => {}
            None => bail!("no delivery within 30 s"),
        }
    }
}

/// Phase 3: `members` present; one more joins: when does each member see it?
async fn presence(
    url: &str,
    members: usize,
) -> Result<(hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>)> {
    let mut subs = Vec::with_capacity(members);
    let mut clients = Vec::with_capacity(members);
    for i in 0..members {
        let c = connect(url).await?;
        subs.push(c.subscribe_present("bench.room", Start::Latest).await?);
        clients.push(c);
        if i % 1000 == 999 {
            eprintln!("presence: {} members", i + 1);
        }
    }
    // Drain the joins that building the room produced, up to each member's own view.
    let drained =
        futures_util::future::join_all(subs.iter_mut().enumerate().map(|(i, s)| async move {
            // Member i sees its own join and those of the members after it.
            let mut left = members - i;
            while left > 0 {
                match s.next_timeout(Duration::from_secs(60)).await {
                    Some(Event::Join { .. }) => left -= 1,
                    Some(_) => {}
                    None => return false,
                }
            }
            true
        }))
        .await;
    if drained.iter().any(|ok| !ok) {
        bail!("some members never saw the room fill");
    }
    let newcomer = connect(url).await?;
    let joined = Instant::now();
    let _room = newcomer
        .subscribe_present("bench.room", Start::Latest)
        .await?;
    let seen = futures_util::future::join_all(subs.iter_mut().map(|s| async move {
        loop {
            match s.next_timeout(Duration::from_secs(60)).await {
                Some(Event::Join { .. }) => return Some(joined.elapsed().as_micros() as u64),
                Some(_) => {}
                None => return None,
            }
        }
    }))
    .await;
    let mut join = latency_histogram();
    for us in seen {
        let us = us.context("a member never saw the join")?;
        let _ = join.record(us.max(1));
    }
    let mut query = latency_histogram();
    for _ in 0..100 {
        let t = Instant::now();
        let l = newcomer.presence("bench.room").await?;
        let _ = query.record((t.elapsed().as_micros() as u64).max(1));
        if l.count != members as u64 + 1 {
            bail!("presence lists {} of {}", l.count, members + 1);
        }
    }
    for c in clients {
        c.close().await;
    }
    newcomer.close().await;
    Ok((join, query))
}
