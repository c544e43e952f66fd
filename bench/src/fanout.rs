//! `fanout`: one publisher, N subscribers on one subject, 64-byte payloads.
//!
//! The publisher runs flat out but stays at most `window` messages ahead of
//! the average subscriber (closed loop), so the figure is what the server
//! delivers, not how much it can queue; neither server then hits its
//! slow-consumer policy (edgesync gap notices are counted and reported).
//! The result is the median (and p10/p90) of delivered messages/s over
//! 1-second windows after a 1-second warm-up.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::gateway::CpuSpan;
use super::report::Report;
use super::{Counters, Target, wire};

const SUBJECT: &str = "bench.fanout";

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    /// Measured seconds (1-second windows), after a 1-second warm-up.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub seconds: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Most messages the publisher runs ahead of the average subscriber.
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// Publishes per frame from the publisher.
    #[arg(long, default_value_t = 16)]
    pub pub_batch: usize,
}

pub async fn run(target: &Target, a: &FanoutArgs) -> Result<Report> {
    let subs = super::open_subscribers(target, SUBJECT, a.subscribers, 64).await?;
    let mut publisher = target.open().await?;
    let stop = CancellationToken::new();
    let counters = Rc::new(Counters::default());
    let readers = super::spawn_counting_readers(subs, target.proto, &stop, &counters);
    let published = Rc::new(std::cell::Cell::new(0u64));
    let pub_task = {
        let (stop, counters, published, proto) = (
            stop.clone(),
            counters.clone(),
            published.clone(),
            target.proto,
        );
        let (n, window, batch, size) = (
            a.subscribers as u64,
            a.window,
            a.pub_batch.max(1),
            a.payload.max(8),
        );
        tokio::task::spawn_local(async move {
            let payload = vec![0x5au8; size];
            let mut frame = Vec::with_capacity(batch * (size + 64));
            let mut id = 100u64;
            // Bounded by `stop`.
            while !stop.is_cancelled() {
                let ahead = (published.get() * n).saturating_sub(counters.delivered.get());
                if ahead > window * n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                frame.clear();
                for _ in 0..batch {
                    id += 1;
                    wire::encode_publish(&mut frame, proto, SUBJECT, &payload, id, false, None);
                }
                if publisher.send(frame.clone()).await.is_err() {
                    break;
                }
                published.set(published.get() + batch as u64);
                // Let the subscribers run between publishes.
                tokio::task::yield_now().await;
            }
            publisher.close().await;
        })
    };
    let started = Instant::now();
    let c2 = counters.clone();
    let cpu = std::rc::Rc::new(std::cell::Cell::new(None));
    let (cpu2, pid) = (cpu.clone(), target.pid);
    let measured0 = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let m2 = measured0.clone();
    let rates = super::sample_rates(
        move || {
            let n = c2.delivered.get();
            // The first sample ends the warm-up: CPU accounting starts there.
            if cpu2.get().is_none() {
                cpu2.set(Some(CpuSpan::start(pid)));
                m2.set(n);
            }
            n
        },
        Duration::from_secs(1),
        a.seconds,
    )
    .await;
    let cpu_used = cpu.get().map(|c| c.end()).unwrap_or((None, None));
    let measured = counters.delivered.get().saturating_sub(measured0.get()) as f64;
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = pub_task.await;
    for r in readers {
        let _ = r.await;
    }
    let mut r = Report::new("fanout", target.label());
    r.param("subscribers", a.subscribers)
        .param("seconds", a.seconds)
        .param("payload_bytes", a.payload)
        .param("window", a.window);
    r.windows("msgs_per_sec", &rates)
        .metric("published", published.get() as f64)
        .metric("delivered", counters.delivered.get() as f64)
        .metric("publish_per_sec_mean", published.get() as f64 / elapsed)
        .metric("gap_msgs", counters.gap_msgs.get() as f64)
        .metric("errors", counters.errors.get() as f64)
        .metric("dropped_conns", counters.dropped.get() as f64)
        .cpu(cpu_used, measured, "msgs");
    Ok(r)
}
