//! `durable`: acknowledged publishes/s with fsync group commit.
//!
//! C publisher connections each keep `window` publishes in flight (pipelined:
//! a new one is sent as soon as an ack returns), 64-byte payloads, distinct
//! topics per connection so acks measure the store, not one topic's head.
//! The gateway acks only after the record is on disk (`fsync = always` for a
//! gateway the bench starts), so acks/s is durable throughput and ack latency
//! includes the group commit's fdatasync.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::gateway::CpuSpan;
use super::report::{Report, latency_histogram};
use super::{Counters, Target, wire};

/// Acks still outstanding at the end get this long to arrive before the connection closes.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct DurableArgs {
    /// Publisher connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub publishers: usize,
    /// Publishes in flight per connection (keep ≤ the gateway's `max_inflight_publishes`, 1024).
    #[arg(long, short = 'w', default_value_t = 256)]
    pub window: usize,
    /// Measured seconds (1-second windows), after a 1-second warm-up.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub seconds: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Most publishes per frame when refilling the window (default: all that fit, as a
    /// pipelining client sends them); 1 sends every publish in a frame of its own.
    #[arg(long, value_name = "N")]
    pub frame_publishes: Option<usize>,
    /// Publish without a client message id. By default every publish carries a `mid`,
    /// as the Rust client and the CLI send them, so the figure includes the dedupe
    /// lookup and the dedupe entries (and their expiry) every real publish costs.
    #[arg(long)]
    pub no_mid: bool,
}

pub async fn run(target: &Target, a: &DurableArgs) -> Result<Report> {
    let mut conns = Vec::with_capacity(a.publishers);
    for _ in 0..a.publishers {
        conns.push(target.open().await?);
    }
    let stop = CancellationToken::new();
    let measuring = Rc::new(std::cell::Cell::new(false));
    let counters = Rc::new(Counters::default());
    let hist = Rc::new(RefCell::new(latency_histogram()));
    let mut tasks = Vec::new();
    let proto = target.proto;
    // Distinct per run, so a rerun against the same gateway is not answered from its
    // dedupe window.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for (i, ws) in conns.into_iter().enumerate() {
        let p = Publisher {
            topic: format!("bench.durable.{i}"),
            window: a.window.max(1),
            frame_publishes: a.frame_publishes.unwrap_or(usize::MAX).max(1),
            payload: vec![0x5a; a.payload],
            mids: (!a.no_mid).then_some(run_id),
        };
        let (stop, counters, hist, measuring) = (
            stop.clone(),
            counters.clone(),
            hist.clone(),
            measuring.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            p.run(ws, proto, stop, counters, hist, measuring).await
        }));
    }
    let c2 = counters.clone();
    let m2 = measuring.clone();
    let cpu = Rc::new(std::cell::Cell::new(None));
    let (cpu2, pid) = (cpu.clone(), target.pid);
    let acked0 = Rc::new(std::cell::Cell::new(0u64));
    let a2 = acked0.clone();
    let rates = super::sample_rates(
        move || {
            // The first sample marks the end of the warm-up.
            m2.set(true);
            if cpu2.get().is_none() {
                cpu2.set(Some(CpuSpan::start(pid)));
                a2.set(c2.delivered.get());
            }
            c2.delivered.get()
        },
        Duration::from_secs(1),
        a.seconds,
    )
    .await;
    measuring.set(false);
    let cpu_used = cpu.get().map(|c| c.end()).unwrap_or((None, None));
    let acked_measured = counters.delivered.get().saturating_sub(acked0.get()) as f64;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.borrow();
    let mut r = Report::new("durable", target.label());
    r.param("publishers", a.publishers)
        .param("window", a.window)
        .param("seconds", a.seconds)
        .param("payload_bytes", a.payload)
        .param("frame_publishes", a.frame_publishes)
        .param("mid", !a.no_mid);
    r.windows("acks_per_sec", &rates)
        .latency("ack_us", &h)
        .metric("acked_total", counters.delivered.get() as f64)
        .metric("errors", counters.errors.get() as f64)
        .metric("dropped_conns", counters.dropped.get() as f64)
        .cpu(cpu_used, acked_measured, "acks");
    Ok(r)
}

struct Publisher {
    topic: String,
    window: usize,
    frame_publishes: usize,
    payload: Vec<u8>,
    /// Give every publish a client message id, unique per run (this prefix), topic
    /// and command id; `None` sends none.
    mids: Option<u64>,
}

impl Publisher {
    async fn run(
        self,
        mut ws: super::conn::Conn,
        proto: wire::Proto,
        stop: CancellationToken,
        counters: Rc<Counters>,
        hist: Rc<RefCell<Histogram<u64>>>,
        measuring: Rc<std::cell::Cell<bool>>,
    ) {
        let mut inflight: HashMap<u64, Instant> = HashMap::with_capacity(self.window * 2);
        let mut scanner = wire::Scanner::new(proto);
        let mut next_id = 100u64;
        let mut frame = Vec::new();
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        // Bounded by `stop` plus DRAIN.
        loop {
            if drain_deadline.is_none() && stop.is_cancelled() {
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN);
            }
            // Refill the window: frames of up to `frame_publishes` publishes each.
            while drain_deadline.is_none() && inflight.len() < self.window {
                frame.clear();
                let mut in_frame = 0;
                while inflight.len() < self.window && in_frame < self.frame_publishes {
                    in_frame += 1;
                    next_id += 1;
                    wire::encode_publish(
                        &mut frame,
                        proto,
                        &self.topic,
                        &self.payload,
                        next_id,
                        true,
                        self.mids.map(|run| format!("{run:016x}-{next_id:x}")),
                    );
                    inflight.insert(next_id, Instant::now());
                }
                if ws.send(frame.clone()).await.is_err() {
                    Counters::add(&counters.dropped, 1);
                    return;
                }
            }
            if drain_deadline.is_some() && inflight.is_empty() {
                break;
            }
            let deadline = drain_deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let next = tokio::select! {
                m = ws.next() => m,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.cancelled(), if drain_deadline.is_none() => continue,
            };
            let bytes = match next {
                Some(Ok(b)) => b,
                None => {
                    Counters::add(&counters.dropped, 1);
                    return;
                }
                Some(Err(_)) => {
                    Counters::add(&counters.errors, 1);
                    return;
                }
            };
            let now = Instant::now();
            let on = measuring.get();
            let mut acked = 0;
            let seen = scanner.scan(&bytes, &mut |_| {}, &mut |id| {
                if let Some(sent) = inflight.remove(&id) {
                    acked += 1;
                    if on {
                        let us = now.duration_since(sent).as_micros() as u64;
                        let _ = hist.borrow_mut().record(us.max(1));
                    }
                }
            });
            Counters::add(&counters.delivered, acked);
            if seen.errors > 0 {
                // An error reply (e.g. rate limited) also ends that publish.
                Counters::add(&counters.errors, seen.errors);
                inflight.clear();
            }
        }
        ws.close().await;
    }
}
