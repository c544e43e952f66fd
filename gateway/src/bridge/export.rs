//! Export: committed records of the matching topics → JetStream.
//!
//! A pass walks the matching topics; for each one behind, it reads up to `batch`
//! records after the position and publishes them (a window, async); windows are
//! pipelined (at most [`INFLIGHT_WINDOWS`] unacknowledged), and a window's position —
//! the version vector its read returned — is written to the store only after every
//! ack of it and of the windows before it. A crash anywhere before that write resends the window at
//! the next start; JetStream's duplicate window drops what it already holds
//! (`Nats-Msg-Id`). Past that window, [`reconcile`] looks at the stream's last
//! message per subject at every (re)connect and moves the position up to it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use edgesync_protocol::Origin;
use tokio_util::sync::CancellationToken;

use super::{
    BridgeCtx, BridgeError, FIRST_BACKOFF, Link, UP, mapping, next_backoff, pause, remote,
};

/// Topics a pass serves at most `MAX_ROUNDS` windows each before moving on, so one
/// busy topic cannot starve the others.
const MAX_ROUNDS: usize = 8;

/// Topics [`reconcile`] checks per (re)connect at most (one request each).
const MAX_RECONCILE_TOPICS: usize = 1024;

/// Run the export of `link` until `stop`.
pub(super) async fn run(link: Arc<Link>, ctx: BridgeCtx, stop: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = session(&link, &ctx, &stop, &mut backoff) => r,
        };
        if let Err(e) = result {
            link.failed(true, &e);
            // While JetStream is away the lag still grows: keep reporting it.
            if let Ok(positions) = load(&link, &ctx) {
                set_lag(&link, &ctx.store.heads(), &positions);
            }
        }
        if !pause(backoff, &stop).await {
            return;
        }
        backoff = next_backoff(backoff, link.cfg.retry_max_ms);
    }
}

/// Connect, check the stream, reconcile, then export until something fails.
async fn session(
    link: &Link,
    ctx: &BridgeCtx,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), BridgeError> {
    let js = link.connect().await?;
    let stream = link.stream(&js).await?;
    let mut positions = load(link, ctx)?;
    reconcile(link, ctx, &stream, &mut positions).await?;
    link.set_state(true, UP);
    *backoff = FIRST_BACKOFF;
    let mut commits = ctx.commits.clone();
    loop {
        let moved = pass(link, ctx, &js, &mut positions).await?;
        if !moved {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                changed = commits.changed() => {
                    if changed.is_err() {
                        // The fan-out task ended (shutdown): poll instead.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                // Retention moves and applied replicas also change heads.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// The positions this bridge stored, per topic.
fn load(
    link: &Link,
    ctx: &BridgeCtx,
) -> Result<HashMap<String, BTreeMap<Origin, u64>>, BridgeError> {
    let mut out = HashMap::new();
    for (k, v) in ctx.store.positions(&link.name)? {
        let Some(topic) = k.strip_prefix(b"x") else {
            continue;
        };
        let topic = String::from_utf8_lossy(topic).into_owned();
        match mapping::decode_vv(&v) {
            Some(vv) => {
                out.insert(topic, vv);
            }
            None => tracing::error!(
                bridge = link.name,
                topic,
                "an export position does not decode; that topic is resent from the start (JetStream drops duplicates within its window)"
            ),
        }
    }
    Ok(out)
}

/// Past JetStream's duplicate window a resend would be stored twice, so before
/// sending, the stream's last message of each topic that is behind is read: when it
/// carries one of our identities ahead of the position, the position moves up to it
/// (per (topic, origin) the records were published in order, so everything before it
/// is there).
async fn reconcile(
    link: &Link,
    ctx: &BridgeCtx,
    stream: &jetstream::stream::Stream,
    positions: &mut HashMap<String, BTreeMap<Origin, u64>>,
) -> Result<(), BridgeError> {
    let behind: Vec<(String, BTreeMap<Origin, u64>)> = ctx
        .store
        .heads()
        .into_iter()
        .filter(|(t, head)| link.matches(t) && mapping::lag(head, positions.get(t)) > 0)
        .take(MAX_RECONCILE_TOPICS)
        .collect();
    for (topic, head) in behind {
        let last = match stream.get_last_raw_message_by_subject(&topic).await {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                continue;
            }
            Err(e) => return Err(remote(format!("last message of {topic}: {e}"))),
        };
        let Some((origin, seq)) = mapping::identity(&last.headers) else {
            continue;
        };
        let pos = positions.entry(topic.clone()).or_default();
        let at = pos.get(&origin).copied().unwrap_or(0);
        let high = head.get(&origin).copied().unwrap_or(0);
        if seq > at && seq <= high {
            pos.insert(origin.clone(), seq);
            save(link, ctx, &topic, pos)?;
            tracing::info!(bridge = link.name, topic, origin = %origin, from = at, to = seq, "export position moved up to what the stream already holds");
        }
    }
    Ok(())
}

/// One pass over the matching topics. True when anything moved.
///
/// Windows are pipelined, across topics too: up to [`INFLIGHT_WINDOWS`] × `batch`
/// records are published before the oldest window's acks are awaited, and each
/// topic's position moves window by window, in order, only once its acks are in.
async fn pass(
    link: &Link,
    ctx: &BridgeCtx,
    js: &jetstream::Context,
    positions: &mut HashMap<String, BTreeMap<Origin, u64>>,
) -> Result<bool, BridgeError> {
    let mut heads: Vec<(String, BTreeMap<Origin, u64>)> = ctx
        .store
        .heads()
        .into_iter()
        .filter(|(t, _)| link.matches(t))
        .collect();
    heads.sort_by(|a, b| a.0.cmp(&b.0));
    let mut moved = false;
    let mut inflight: VecDeque<Window> = VecDeque::new();
    let mut inflight_records = 0;
    for (topic, head) in &heads {
        let mut cursor = positions.get(topic).cloned().unwrap_or_default();
        for _ in 0..MAX_ROUNDS {
            if mapping::lag(head, Some(&cursor)) == 0 {
                break;
            }
            let w = send(link, ctx, js, topic, &cursor).await?;
            if w.after == cursor {
                // Nothing readable past the position yet (a hole replication fills
                // later): come back on the next pass.
                break;
            }
            cursor = w.after.clone();
            inflight_records += w.acks.len();
            inflight.push_back(w);
            moved = true;
            while inflight_records > (INFLIGHT_WINDOWS - 1) * link.cfg.batch
                && let Some(w) = inflight.pop_front()
            {
                inflight_records -= settle(link, ctx, w, positions).await?;
            }
        }
    }
    while let Some(w) = inflight.pop_front() {
        settle(link, ctx, w, positions).await?;
    }
    set_lag(link, &heads.into_iter().collect(), positions);
    Ok(moved)
}

/// Windows (of up to `batch` records) published and not yet acknowledged, at most.
/// The JetStream context's ack permits are sized above this (see `Link::connect`).
pub(super) const INFLIGHT_WINDOWS: usize = 3;

/// The export lag gauge: records of the matching topics past the positions.
fn set_lag(
    link: &Link,
    heads: &HashMap<String, BTreeMap<Origin, u64>>,
    positions: &HashMap<String, BTreeMap<Origin, u64>>,
) {
    let lag: u64 = heads
        .iter()
        .filter(|(t, _)| link.matches(t))
        .map(|(t, head)| mapping::lag(head, positions.get(t)))
        .sum();
    link.m
        .lag_export
        .set(i64::try_from(lag).unwrap_or(i64::MAX));
}

/// One published window: its acks to await and the position it reaches.
struct Window {
    topic: String,
    acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
    after: BTreeMap<Origin, u64>,
}

/// Read up to `batch` records of `topic` after `from` and publish them (without
/// waiting for acks).
async fn send(
    link: &Link,
    ctx: &BridgeCtx,
    js: &jetstream::Context,
    topic: &str,
    from: &BTreeMap<Origin, u64>,
) -> Result<Window, BridgeError> {
    let read = ctx.store.read(topic, from, None, link.cfg.batch)?;
    let mut acks = Vec::with_capacity(read.records.len());
    for r in &read.records {
        if mapping::is_imported(r) {
            link.m.skipped_imported.inc();
            continue;
        }
        let (headers, left_out) = mapping::export_headers(r);
        if left_out > 0 {
            tracing::debug!(
                bridge = link.name,
                topic,
                seq = r.seq,
                left_out,
                "headers that are not valid NATS headers were left out"
            );
        }
        let msg = PublishMessage::build()
            .payload(mapping::payload(r))
            .headers(headers);
        acks.push(
            js.send_publish(topic.to_string(), msg)
                .await
                .map_err(remote)?,
        );
        link.m.published.inc();
    }
    for gap in &read.missing {
        let n = gap.to - gap.from + 1;
        link.m.skipped_gap.inc_by(n);
        tracing::error!(bridge = link.name, topic, origin = %gap.origin, from = gap.from, to = gap.to, corrupt = gap.corrupt, "records the store no longer holds (retention or damage) were not exported");
    }
    Ok(Window {
        topic: topic.to_string(),
        acks,
        after: read.positions,
    })
}

/// Await a window's acks, then store and adopt its position. Returns its record count.
async fn settle(
    link: &Link,
    ctx: &BridgeCtx,
    w: Window,
    positions: &mut HashMap<String, BTreeMap<Origin, u64>>,
) -> Result<usize, BridgeError> {
    let n = w.acks.len();
    for ack in w.acks {
        let ack = ack.await.map_err(remote)?;
        link.m.acked.inc();
        if ack.duplicate {
            link.m.dup_export.inc();
        }
    }
    save(link, ctx, &w.topic, &w.after)?;
    positions.insert(w.topic, w.after);
    Ok(n)
}

fn save(
    link: &Link,
    ctx: &BridgeCtx,
    topic: &str,
    pos: &BTreeMap<Origin, u64>,
) -> Result<(), BridgeError> {
    ctx.store.position_put(
        &link.name,
        &[(mapping::export_key(topic), Some(mapping::encode_vv(pos)))],
    )?;
    Ok(())
}
