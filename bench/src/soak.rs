//! `soak`: a long run at a steady rate with connection churn; is the server flat?
//!
//! One publisher sends `rate` messages/s to `bench.soak`, read by N steady
//! subscribers; meanwhile `churn` connections per second open, subscribe to a
//! topic of their own, publish once and close. Every `sample` seconds the
//! server's resident set (`VmRSS`) and open file descriptors (`/proc/<pid>/fd`)
//! are read. The report gives the first and last samples, the spread of the
//! samples after the warm-up (the first tenth of the run) relative to their
//! median, and how much the highest sample of the second half exceeds that of the
//! first: the store's memtables make RSS a sawtooth (filled, then flushed), so a
//! server that does not leak keeps its peaks level while the spread is the
//! sawtooth's height. It also counts deliveries the steady subscribers missed (a
//! correctness check: at a rate the server sustains, none).
//!
//! Run it for an hour at half the capacity `durable`/`fanout` measured (see
//! BENCHMARKS.md, "Soak"); `bench/tests/soak.rs` runs a short slice in the suite.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::gateway::rss_kib;
use super::report::{Report, quantile};
use super::{Counters, Target, wire};

const SUBJECT: &str = "bench.soak";
/// Deliveries still in flight when publishing stops get this long to arrive.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Measured seconds.
    #[arg(long, short = 'd', default_value_t = 3600)]
    pub seconds: u64,
    /// Publishes per second (choose half the measured capacity).
    #[arg(long, short = 'r', default_value_t = 1000)]
    pub rate: u64,
    /// Steady subscriber connections.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub subscribers: usize,
    /// Connections opened (subscribe, publish once, close) per second.
    #[arg(long, default_value_t = 20)]
    pub churn: u64,
    /// Seconds between RSS / descriptor samples.
    #[arg(long, default_value_t = 10)]
    pub sample: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
}

/// Open descriptors of `pid`.
fn fds(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("/proc/{pid}/fd"))?
        .count() as u64)
}

/// (max − min) / median of `values`, in percent.
fn spread_pct(values: &[f64]) -> f64 {
    let median = quantile(values, 0.5);
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    if median <= 0.0 || values.is_empty() {
        return 0.0;
    }
    (hi - lo) / median * 100.0
}

/// Growth of the highest sample from the first half of `values` to the second, in
/// percent. The store's memtables make RSS a sawtooth (they fill, then flush to
/// tables), so the spread of a healthy server is the sawtooth's height; a leak shows
/// as peaks that keep rising.
fn peak_growth_pct(values: &[f64]) -> f64 {
    let half = values.len() / 2;
    let peak = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (first, second) = (peak(&values[..half]), peak(&values[half..]));
    if first <= 0.0 {
        return 0.0;
    }
    (second - first) / first * 100.0
}

pub async fn run(target: &Target, a: &SoakArgs) -> Result<Report> {
    let pid = target.pid.context(
        "soak needs the server's pid: let the bench start the gateway, or pass --server-pid",
    )?;
    let subs = super::open_subscribers(target, SUBJECT, a.subscribers, 64).await?;
    let stop = CancellationToken::new();
    let counters = Rc::new(Counters::default());
    let readers = super::spawn_counting_readers(subs, target.proto, &stop, &counters);
    // Churn: bounded by `stop`; each connection lives for one publish.
    let churned = Rc::new(std::cell::Cell::new((0u64, 0u64))); // (opened, failed)
    let churn = {
        let (stop, churned, target_proto) = (stop.clone(), churned.clone(), target.proto);
        let every = Duration::from_nanos(1_000_000_000 / a.churn.max(1));
        let enabled = a.churn > 0;
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut i = 0u64;
            while enabled && !stop.is_cancelled() {
                tick.tick().await;
                i += 1;
                let one = async {
                    let mut c = target.open().await?;
                    wire::subscribe(
                        &mut c,
                        target_proto,
                        &format!("bench.soak.churn.{}", i % 1000),
                    )
                    .await?;
                    let mut frame = Vec::new();
                    wire::encode_publish(
                        &mut frame,
                        target_proto,
                        "bench.soak.churn",
                        b"x",
                        1,
                        false,
                        None,
                    );
                    c.send(frame).await?;
                    c.close().await;
                    anyhow::Ok(())
                };
                let (opened, failed) = churned.get();
                churned.set(match one.await {
                    Ok(()) => (opened + 1, failed),
                    Err(_) => (opened + 1, failed + 1),
                });
            }
        }
    };
    let samples = Rc::new(std::cell::RefCell::new(Vec::<(f64, u64, u64)>::new()));
    let sampler = {
        let (stop, samples) = (stop.clone(), samples.clone());
        let every = Duration::from_secs(a.sample.max(1));
        async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(every);
            while !stop.is_cancelled() {
                tick.tick().await;
                if let (Ok(rss), Ok(fd)) = (rss_kib(pid), fds(pid)) {
                    let t = started.elapsed().as_secs_f64();
                    eprintln!("bench: soak t={t:.0}s rss={rss} KiB fds={fd}");
                    samples.borrow_mut().push((t, rss, fd));
                }
            }
        }
    };
    let publish = async {
        let mut publisher = target.open().await?;
        let total = a.rate.max(1) * a.seconds;
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / a.rate.max(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let payload = vec![0x5au8; a.payload.max(1)];
        let mut frame = Vec::with_capacity(a.payload + 64);
        // Bounded: `total` publishes.
        for i in 0..total {
            tick.tick().await;
            frame.clear();
            // With a `mid`, as every Rust client and CLI publish: the dedupe window is soaked too.
            let mid = Some(format!("soak-{i}"));
            wire::encode_publish(
                &mut frame,
                target.proto,
                SUBJECT,
                &payload,
                100 + i,
                false,
                mid,
            );
            publisher.send(frame.clone()).await?;
        }
        tokio::time::sleep(DRAIN).await;
        publisher.close().await;
        anyhow::Ok(total)
    };
    // One task: the churn and the sampler end at `stop`, which the publisher sets.
    let (published, (), ()) = tokio::join!(
        async {
            let r = publish.await;
            stop.cancel();
            r
        },
        churn,
        sampler
    );
    for r in readers {
        let _ = r.await;
    }
    let published = published?;
    let samples = samples.borrow();
    let warm = samples.len() / 10;
    let after_warmup = &samples[warm.min(samples.len())..];
    let rss: Vec<f64> = after_warmup.iter().map(|s| s.1 as f64).collect();
    let fd: Vec<f64> = after_warmup.iter().map(|s| s.2 as f64).collect();
    let expected = published * a.subscribers as u64;
    let (opened, failed) = churned.get();
    let mut r = Report::new("soak", target.label());
    r.param("seconds", a.seconds)
        .param("rate", a.rate)
        .param("subscribers", a.subscribers)
        .param("churn_per_sec", a.churn)
        .param("payload_bytes", a.payload);
    r.metric("published", published as f64)
        .metric(
            "missing_deliveries",
            expected.saturating_sub(counters.delivered.get()) as f64,
        )
        .metric("gap_msgs", counters.gap_msgs.get() as f64)
        .metric("errors", counters.errors.get() as f64)
        .metric("dropped_conns", counters.dropped.get() as f64)
        .metric("churn_connections", opened as f64)
        .metric("churn_failed", failed as f64)
        .metric("samples", samples.len() as f64)
        .metric("rss_kib_first", samples.first().map_or(0.0, |s| s.1 as f64))
        .metric("rss_kib_last", samples.last().map_or(0.0, |s| s.1 as f64))
        .metric("rss_spread_pct", spread_pct(&rss))
        .metric("rss_peak_growth_pct", peak_growth_pct(&rss))
        .metric("fds_first", samples.first().map_or(0.0, |s| s.2 as f64))
        .metric("fds_last", samples.last().map_or(0.0, |s| s.2 as f64))
        .metric("fds_spread_pct", spread_pct(&fd));
    Ok(r)
}
