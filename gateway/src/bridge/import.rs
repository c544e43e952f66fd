//! Import: a JetStream durable pull consumer → the pipeline, like a publish.
//!
//! The consumer's start is ours, not JetStream's: at every (re)connect the durable
//! consumer is recreated to start after the *floor* — the highest stream sequence
//! committed here, kept in the store. Messages of a fetch are handled strictly in
//! order: hooks (plugins run once, here), one group commit for the batch, the floor
//! written, then the acks. Each record's `mid` comes from the stream sequence, so a
//! batch resent after a crash between our commit and the floor write is answered
//! by the store's dedupe index (within `store.dedupe_window_ms`), not stored twice.
//! A message carrying an edgesync identity that this store already holds (our own
//! export, or a record replication brought) is acknowledged and not imported.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{
    BridgeCtx, BridgeError, FIRST_BACKOFF, Link, UP, mapping, next_backoff, pause, remote,
};
use crate::model::{HookOutcome, Publish, Sender};
use crate::pipeline::check_rewritten;

/// How long a fetch waits for messages before coming back empty.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);

/// JetStream redelivers a message unacknowledged this long (we ack right after the
/// commit; this only matters when the gateway is stuck).
const ACK_WAIT: Duration = Duration::from_secs(30);

/// Run the import of `link` until `stop`.
pub(super) async fn run(link: Arc<Link>, ctx: BridgeCtx, stop: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = session(&link, &ctx, &mut backoff) => r,
        };
        if let Err(e) = result {
            link.failed(false, &e);
        }
        if !pause(backoff, &stop).await {
            return;
        }
        backoff = next_backoff(backoff, link.cfg.retry_max_ms);
    }
}

async fn session(link: &Link, ctx: &BridgeCtx, backoff: &mut Duration) -> Result<(), BridgeError> {
    let js = link.connect().await?;
    let stream = link.stream(&js).await?;
    let key = mapping::import_key(&link.cfg.stream);
    let mut floor = match ctx.store.position_get(&link.name, &key)? {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| remote("the stored import floor is not 8 bytes"))?,
        ),
        None => 0,
    };
    let consumer = consumer(link, &stream, floor).await?;
    link.set_state(false, UP);
    *backoff = FIRST_BACKOFF;
    let sender = Sender {
        conn_id: 0,
        client_id: mapping::import_client(&link.name),
        principal: None,
        plugin: None,
    };
    loop {
        let mut fetched = consumer
            .fetch()
            .max_messages(link.cfg.batch)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map_err(remote)?;
        let mut msgs = Vec::new();
        while let Some(m) = fetched.next().await {
            msgs.push(m.map_err(remote)?);
        }
        if msgs.is_empty() {
            link.m.lag_import.set(0);
            continue;
        }
        floor = commit(link, ctx, &sender, &msgs, floor).await?;
        ctx.store.position_put(
            &link.name,
            &[(key.clone(), Some(floor.to_be_bytes().to_vec()))],
        )?;
        for m in &msgs {
            m.ack().await.map_err(remote)?;
        }
    }
}

/// The durable consumer, recreated to start right after `floor`.
async fn consumer(
    link: &Link,
    stream: &jetstream::stream::Stream,
    floor: u64,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BridgeError> {
    let name = link.cfg.consumer_name();
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(bridge = link.name, consumer = name, error = %e, "no consumer to delete");
    }
    let topics = &link.cfg.topics;
    let config = pull::Config {
        durable_name: Some(name),
        deliver_policy: if floor == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            }
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: i64::try_from(link.cfg.batch * 4).unwrap_or(i64::MAX),
        filter_subject: if topics.len() == 1 {
            topics[0].clone()
        } else {
            String::new()
        },
        ..Default::default()
    };
    stream.create_consumer(config).await.map_err(remote)
}

/// Hooks, one group commit for the batch; returns the new floor. Messages refused
/// for good (invalid, a plugin's reject) count as handled, so the floor passes them.
async fn commit(
    link: &Link,
    ctx: &BridgeCtx,
    sender: &Sender,
    msgs: &[jetstream::Message],
    mut floor: u64,
) -> Result<u64, BridgeError> {
    let stream = &link.cfg.stream;
    let mut reqs = Vec::with_capacity(msgs.len());
    let mut pending = 0;
    for m in msgs {
        let info = m.info().map_err(remote)?;
        let sseq = info.stream_sequence;
        pending = info.pending;
        if sseq <= floor {
            link.m.dup_import.inc();
            continue;
        }
        floor = sseq;
        let topic = m.subject.as_str();
        if !link.matches(topic)
            || edgesync_protocol::topic::validate_topic(topic, ctx.limits.max_topic_bytes).is_err()
        {
            link.m.skipped_filtered.inc();
            continue;
        }
        if let Some((origin, seq)) = m.headers.as_ref().and_then(mapping::identity)
            && ctx
                .store
                .head(topic)
                .get(&origin)
                .is_some_and(|h| *h >= seq)
        {
            link.m.skipped_known.inc();
            continue;
        }
        let req = Publish {
            topic: topic.to_string(),
            client: sender.client_id.clone(),
            principal: None,
            mid: Some(mapping::import_mid(stream, sseq)),
            headers: mapping::import_headers(m.headers.as_ref(), stream, sseq),
            payload: m.payload.clone(),
        };
        if let Err(r) = check_rewritten(&ctx.limits, &req) {
            link.m.skipped_rejected.inc();
            tracing::warn!(bridge = link.name, topic, stream_seq = sseq, reason = %r, "imported message over the gateway's bounds; not stored");
            continue;
        }
        reqs.push(req);
    }
    let outcomes = ctx.pipeline.ingest_batch(sender, &mut reqs).await;
    let mut appends = Vec::with_capacity(reqs.len());
    for (req, outcome) in reqs.into_iter().zip(outcomes) {
        match outcome {
            Ok(HookOutcome::Store) => appends.push(ctx.pipeline.append(req)),
            Ok(HookOutcome::Dropped | HookOutcome::LiveOnly) => {}
            Err(r) => {
                link.m.skipped_rejected.inc();
                tracing::warn!(bridge = link.name, topic = req.topic, reason = %r, "a plugin refused an imported message; not stored");
            }
        }
    }
    for ack in futures_util::future::join_all(appends).await {
        if ack?.dup {
            link.m.dup_import.inc();
        } else {
            link.m.imported.inc();
        }
    }
    link.m
        .lag_import
        .set(i64::try_from(pending).unwrap_or(i64::MAX));
    Ok(floor)
}
