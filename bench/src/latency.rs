//! `latency`: publish at a fixed rate to N subscribers; publish → deliver latency.
//!
//! Each payload carries the send time (ns since the bench started, first 8
//! bytes); every subscriber records now − sent into one HDR histogram (µs).
//! Publisher and subscribers share one process and one clock, so the figure
//! includes the load generator's own queueing (reading N sockets on one core),
//! exactly as it does for the peer measured in the same run.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::gateway::CpuSpan;
use super::report::{Report, latency_histogram};
use super::{Counters, Target, wire};

const SUBJECT: &str = "bench.latency";
/// Deliveries still in flight when publishing stops get this long to arrive.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// Subscriber connections.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishes per second.
    #[arg(long, short = 'r', default_value_t = 100)]
    pub rate: u64,
    /// Measured seconds, after a 1-second warm-up.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub seconds: u64,
    /// Payload bytes (≥ 8: the timestamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
}

pub async fn run(target: &Target, a: &LatencyArgs) -> Result<Report> {
    let subs = super::open_subscribers(target, SUBJECT, a.subscribers, 64).await?;
    let mut publisher = target.open().await?;
    let epoch = Instant::now();
    let warmup_ns = Duration::from_secs(1).as_nanos() as u64;
    let hist = Rc::new(RefCell::new(latency_histogram()));
    let stop = CancellationToken::new();
    let counters = Rc::new(Counters::default());
    let mut readers = Vec::with_capacity(subs.len());
    for ws in subs {
        let hist = hist.clone();
        let on_msg = move |p: &[u8]| {
            let Some(head) = p.get(..8).and_then(|h| <[u8; 8]>::try_from(h).ok()) else {
                return;
            };
            if u64::from_le_bytes(head) < warmup_ns {
                return;
            }
            if let Some(us) = super::age_us(p, epoch) {
                let _ = hist.borrow_mut().record(us.max(1));
            }
        };
        readers.push(tokio::task::spawn_local(super::subscriber(
            ws,
            target.proto,
            stop.clone(),
            counters.clone(),
            on_msg,
        )));
    }
    let total = a.rate.max(1) * (a.seconds + 1);
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / a.rate.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut payload = vec![0x5au8; a.payload.max(8)];
    let (mut frame, mut measured) = (Vec::with_capacity(256), 0u64);
    let started = Instant::now();
    let cpu = CpuSpan::start(target.pid);
    // Bounded: `total` publishes.
    for i in 0..total {
        tick.tick().await;
        let sent_ns = super::stamp(&mut payload, epoch);
        frame.clear();
        wire::encode_publish(
            &mut frame,
            target.proto,
            SUBJECT,
            &payload,
            100 + i,
            false,
            None,
        );
        publisher.send(frame.clone()).await?;
        if sent_ns >= warmup_ns {
            measured += 1;
        }
    }
    let rate_actual = total as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(DRAIN).await;
    let cpu_used = cpu.end();
    stop.cancel();
    publisher.close().await;
    for r in readers {
        let _ = r.await;
    }
    let h = hist.borrow();
    let expected = measured * a.subscribers as u64;
    let mut r = Report::new("latency", target.label());
    r.param("subscribers", a.subscribers)
        .param("rate", a.rate)
        .param("seconds", a.seconds)
        .param("payload_bytes", a.payload);
    r.latency("latency_us", &h)
        .metric("publish_rate_actual", rate_actual)
        .metric("expected_deliveries", expected as f64)
        .metric(
            "missing_deliveries",
            expected.saturating_sub(h.len()) as f64,
        )
        .metric("gap_msgs", counters.gap_msgs.get() as f64)
        .metric("errors", counters.errors.get() as f64)
        .metric("dropped_conns", counters.dropped.get() as f64)
        .cpu(cpu_used, (total * a.subscribers as u64) as f64, "msgs");
    Ok(r)
}
