//! `idle`: server memory per idle connection.
//!
//! Reads the server's `VmRSS` (/proc/<pid>/status), opens N connections
//! (WebSocket handshake, or QUIC handshake and the session stream; then the
//! protocol's connect: edgesync `connect`, NATS `CONNECT`/`PING`), waits for the server to settle, reads `VmRSS`
//! again, and reports (after − before) / N. The server must be another
//! process (the child gateway, or `--server-pid`): the load generator's own
//! sockets would otherwise be counted, and both sides need the file limit.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;

use super::Target;
use super::conn::Conn;
use super::gateway::rss_kib;
use super::report::Report;

/// Time for the server to finish its per-connection setup before the second reading.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, short = 'n', default_value_t = 15_000)]
    pub connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    pub parallel: usize,
    /// Each connection also subscribes to a topic of its own (`bench.idle.<i>`), as a
    /// device fleet does: the figure then includes a subscription (with QUIC
    /// `edgesync/2`, its stream, writer task and outbox).
    #[arg(long)]
    pub subscribe: bool,
}

pub async fn run(target: &Target, a: &IdleArgs) -> Result<Report> {
    let pid = target.pid.context(
        "idle needs the server's pid: let the bench start the gateway, or pass --server-pid",
    )?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let opened: Vec<Result<Conn>> = futures_util::stream::iter(0..a.connections)
        .map(|i| async move {
            let mut c = target.open().await?;
            if a.subscribe {
                super::wire::subscribe(&mut c, target.proto, &format!("bench.idle.{i}")).await?;
            }
            Ok(c)
        })
        .buffer_unordered(a.parallel.max(1))
        .collect()
        .await;
    let open_secs = started.elapsed().as_secs_f64();
    let mut conns = Vec::with_capacity(opened.len());
    let mut failed = 0u64;
    let mut first_error = None;
    for c in opened {
        match c {
            Ok(ws) => conns.push(ws),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = &first_error {
        eprintln!("bench: {failed} connections failed; first: {e:#}");
    }
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(pid)?;
    let open = conns.len();
    let closing = Instant::now();
    futures_util::stream::iter(conns)
        .for_each_concurrent(a.parallel.max(1), Conn::close)
        .await;
    let mut r = Report::new("idle", target.label());
    r.param("connections", a.connections)
        .param("subscribe", a.subscribe);
    r.metric("connections_open", open as f64)
        .metric("connections_failed", failed as f64)
        .metric("rss_before_kib", before as f64)
        .metric("rss_after_kib", after as f64)
        .metric(
            "kib_per_conn",
            if open > 0 {
                after.saturating_sub(before) as f64 / open as f64
            } else {
                0.0
            },
        )
        .metric("open_secs", open_secs)
        .metric("close_secs", closing.elapsed().as_secs_f64());
    Ok(r)
}
