//! Executing a session's validated commands: connect (auth), subscribe and
//! unsubscribe (broker, catch-up), publish (pipeline, then acks in order), history
//! (store reads), ping — and the ephemeral publishes of QUIC datagrams.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use edgesync_protocol::frame::LimitsInfo;
use edgesync_protocol::{Cursor, ErrorCode, ServerFrame};

use super::delivery::{CatchUp, gap_frame};
use super::driver::{Driver, SessionCtx};
use super::{Command, EphemeralPub, StartAt};
use crate::broker::ConnOut;
use crate::model::{HookOutcome, Publish, QueueJoin, Refusal};
use crate::pipeline::{AppendError, append_refusal};
use crate::store::Ack;

/// A publish on its way to the store; resolves to its ack.
pub(crate) type AckFuture = Pin<Box<dyn Future<Output = AckDone> + Send>>;

/// A publish whose store append finished.
pub(crate) struct AckDone {
    id: u64,
    topic: String,
    want_ack: bool,
    started: Instant,
    result: Result<Ack, AppendError>,
}

/// A validated publish waiting for its hooks.
pub(crate) struct QueuedPub {
    pub(crate) id: u64,
    pub(crate) req: Publish,
    pub(crate) ack: bool,
}

/// Count a refused command and answer it with its error.
fn refuse(ctx: &SessionCtx, out: &ConnOut, kind: &str, id: u64, r: Refusal) {
    ctx.count(kind, r.code.as_str());
    out.outbox
        .push_reply(&ServerFrame::error(Some(id), r.code, r.message));
}

/// Execute one validated command (publishes go through [`publish_all`]).
pub(crate) async fn command(d: &mut Driver, cmd: Command) {
    let kind = cmd.kind();
    let ok = match cmd {
        Command::Connect {
            id,
            client_id,
            token,
        } => connect(d, id, client_id, token).await,
        Command::Subscribe {
            id,
            pattern,
            start,
            queue: Some(join),
            ..
        } => join_queue(d, id, pattern, start, join).await,
        Command::Subscribe {
            id,
            pattern,
            start,
            presence,
            ..
        } => {
            let ok = subscribe(d, id, pattern.clone(), start).await;
            if ok && presence {
                let sender = d.sender();
                d.ctx.presence.enter(
                    &pattern,
                    &sender.client_id,
                    sender.principal.as_deref(),
                    &d.out,
                );
                d.session.add_presence(pattern);
            }
            ok
        }
        Command::LeaveQueue { id, pattern, group } => {
            d.ctx.queues.leave(d.out.id, &group);
            d.out
                .outbox
                .push_reply(&ServerFrame::Unsubscribed { id, topic: pattern });
            true
        }
        Command::Presence { id, topic } => {
            if read_allowed(d, "presence", id, &topic).await {
                let l = d.ctx.presence.list(&topic);
                d.out.outbox.push_reply(&ServerFrame::Presence {
                    id,
                    topic: l.topic,
                    count: l.count,
                    truncated: l.truncated,
                    members: l.members,
                });
                true
            } else {
                false
            }
        }
        Command::Answer(a) => match d.ctx.queues.answer(d.out.id, &a) {
            Ok(()) => {
                d.out.outbox.push_reply(&ServerFrame::Ok { id: a.id });
                true
            }
            Err(r) => {
                refuse(&d.ctx, &d.out, kind, a.id, r);
                false
            }
        },
        Command::Unsubscribe {
            id,
            pattern,
            sub,
            presence,
        } => {
            if presence {
                d.ctx.presence.leave(&pattern, d.out.id);
            }
            d.ctx.broker.unsubscribe(sub);
            d.ctx.metrics.subscriptions.dec();
            let reply = ServerFrame::Unsubscribed { id, topic: pattern };
            d.delivery.unsubscribed(sub, &d.out, &reply);
            true
        }
        Command::Publish { id, req, ack } => {
            publish_all(d, vec![QueuedPub { id, req, ack }]).await;
            return;
        }
        Command::PublishBatch { id, reqs } => publish_batch(d, id, reqs).await,
        Command::History {
            id,
            topic,
            start,
            limit,
        } => history(d, id, topic, start, limit).await,
        Command::Ping { id } => {
            d.out.outbox.push_reply(&ServerFrame::Pong { id });
            true
        }
    };
    if ok {
        d.ctx.count(kind, "ok");
    }
}

/// A `sub` with `queue`: the same read checks as any `sub`, then membership of the group.
/// `start` places a new group (one with no durable progress); a group that exists goes
/// on from its progress (docs/queues.md).
async fn join_queue(
    d: &mut Driver,
    id: u64,
    pattern: String,
    start: StartAt,
    join: QueueJoin,
) -> bool {
    let sender = d.sender();
    if let Err(r) = d.ctx.authorizer.subscribe(&sender, &pattern).await {
        refuse(&d.ctx, &d.out, "sub", id, r);
        return false;
    }
    if let Err(r) = d.ctx.queues.check(&pattern, &join) {
        refuse(&d.ctx, &d.out, "sub", id, r);
        return false;
    }
    // The reply goes first, so no delivery precedes it. A conflict can still follow
    // (another member raced in with other options): it comes as an error with this id.
    let reply = ServerFrame::Subscribed {
        id,
        topic: pattern.clone(),
        cursor: Cursor::new().encode(),
    };
    d.out.outbox.push_reply(&reply);
    if let Err(r) = d.ctx.queues.join(&d.out, &pattern, &start, &join) {
        refuse(&d.ctx, &d.out, "sub", id, r);
        return false;
    }
    d.session.add_queue(pattern, join.group);
    true
}

async fn connect(d: &mut Driver, id: u64, client_id: String, token: Option<String>) -> bool {
    let auth = d
        .ctx
        .authorizer
        .connect(d.out.id, &client_id, token.as_deref(), &d.info)
        .await;
    match auth {
        Ok(auth) => d.session.set_auth(auth),
        Err(r) => {
            d.session.reset_connect();
            let (code, message) = (r.code, r.message.clone());
            refuse(&d.ctx, &d.out, "connect", id, r);
            d.out.outbox.close(code, &message);
            return false;
        }
    }
    d.ctx.conns.set_client(d.out.id, &client_id);
    let l = &d.ctx.limits;
    d.out.outbox.push_reply(&ServerFrame::Connected {
        id,
        client_id,
        conn_id: d.out.id,
        node: d.ctx.store.node().to_string(),
        epoch: d.ctx.store.epoch(),
        version: edgesync_protocol::PROTOCOL_VERSION,
        limits: LimitsInfo {
            max_frame_bytes: l.max_frame_bytes as u64,
            max_topic_bytes: l.max_topic_bytes as u64,
            max_headers: l.max_headers as u64,
            max_subscriptions: l.max_subscriptions as u64,
            publish_rate_per_sec: u64::from(l.publish_rate_per_sec),
            idle_timeout_ms: l.idle_timeout_ms,
        },
    });
    true
}

/// The auth hooks' half of the read check (the session already checked the granted
/// patterns): `on-subscribe` for every read, `sub` and `history` alike, so a plugin that
/// denies a topic denies reading it by any path. False: refused and answered.
async fn read_allowed(d: &mut Driver, kind: &str, id: u64, pattern: &str) -> bool {
    let sender = d.sender();
    match d.ctx.authorizer.subscribe(&sender, pattern).await {
        Ok(()) => true,
        Err(r) => {
            refuse(&d.ctx, &d.out, kind, id, r);
            false
        }
    }
}

async fn subscribe(d: &mut Driver, id: u64, pattern: String, start: StartAt) -> bool {
    if !read_allowed(d, "sub", id, &pattern).await {
        return false;
    }
    let live = start == StartAt::Latest;
    let target = d.delivery.target(&d.out, &d.ctx.limits);
    let (sub, head) = d.ctx.broker.subscribe(&target, &pattern, live);
    d.session.add_subscription(pattern.clone(), sub);
    d.ctx.metrics.subscriptions.inc();
    let position = match start {
        StartAt::Latest => head,
        StartAt::Earliest => Cursor::new(),
        StartAt::Cursor(mut c) => {
            c.retain(|t| edgesync_protocol::topic::matches(&pattern, t));
            c
        }
        StartAt::Last(n) => {
            let mut c = Cursor::new();
            for (topic, _) in d.ctx.broker.sub_heads(sub) {
                c.set_topic(&topic, d.ctx.store.last_n_positions(&topic, n));
            }
            c
        }
    };
    let reply = ServerFrame::Subscribed {
        id,
        topic: pattern.clone(),
        cursor: position.encode(),
    };
    d.delivery.subscribed(&d.ctx, sub, &d.out, &target, &reply);
    if !live {
        d.delivery.catch_up(CatchUp {
            sub,
            tag: id,
            pattern,
            position,
            target,
        });
    }
    true
}

/// `pub_batch`: the route's plugins see the batch (one `on-batch` per chain); if any
/// message is refused the whole batch is, and nothing is stored; otherwise one commit
/// stores them all (messages a plugin dropped on purpose are acknowledged with seq 0,
/// like a dropped `pub`).
async fn publish_batch(d: &mut Driver, id: u64, mut reqs: Vec<Publish>) -> bool {
    let sender = d.sender();
    let outcomes = d.ctx.pipeline.ingest_batch(&sender, &mut reqs).await;
    let mut store = Vec::with_capacity(reqs.len());
    let mut slots = Vec::with_capacity(reqs.len());
    for (i, (req, outcome)) in reqs.into_iter().zip(outcomes).enumerate() {
        match outcome {
            Ok(HookOutcome::Store) => {
                slots.push(Ok(store.len()));
                store.push(req);
            }
            Ok(HookOutcome::Dropped | HookOutcome::LiveOnly) => slots.push(Err(req.topic)),
            Err(r) => {
                let r = Refusal::new(r.code, format!("message {i}: {}", r.message));
                refuse(&d.ctx, &d.out, "pub_batch", id, r);
                return false;
            }
        }
    }
    let acks = if store.is_empty() {
        Vec::new()
    } else {
        match d.ctx.pipeline.append_all(store.clone()).await {
            Ok(acks) => acks,
            Err(e) => {
                refuse(&d.ctx, &d.out, "pub_batch", id, append_refusal(&e));
                return false;
            }
        }
    };
    let mut cursor = Cursor::new();
    let mut items = Vec::with_capacity(slots.len());
    for slot in slots {
        items.push(match slot {
            Ok(i) => {
                let (req, ack) = (&store[i], &acks[i]);
                cursor.set_topic(&req.topic, ack.vv.clone());
                edgesync_protocol::BatchItemAck {
                    topic: req.topic.clone(),
                    origin: ack.origin.node.clone(),
                    epoch: ack.origin.epoch,
                    seq: ack.seq,
                    hlc: ack.hlc,
                    dup: ack.dup,
                }
            }
            Err(topic) => edgesync_protocol::BatchItemAck {
                topic,
                origin: String::new(),
                epoch: 0,
                seq: 0,
                hlc: 0,
                dup: false,
            },
        });
    }
    d.out.outbox.push_reply(&ServerFrame::BatchAck {
        id,
        acks: items,
        cursor: cursor.encode(),
    });
    true
}

async fn history(d: &mut Driver, id: u64, topic: String, start: StartAt, limit: usize) -> bool {
    if !read_allowed(d, "history", id, &topic).await {
        return false;
    }
    let store = &d.ctx.store;
    let after = match start {
        StartAt::Latest => store.head(&topic),
        StartAt::Earliest => BTreeMap::new(),
        StartAt::Cursor(c) => c.topic(&topic).cloned().unwrap_or_default(),
        StartAt::Last(n) => store.last_n_positions(&topic, n),
    };
    match store.read_bounded(&topic, &after, None, limit, d.ctx.limits.max_history_bytes) {
        Ok(batch) => {
            for m in &batch.missing {
                d.ctx.metrics.gap(m.corrupt);
                d.out.outbox.push_reply(&gap_frame(&topic, m, None));
            }
            let mut cursor = Cursor::new();
            cursor.set_topic(&topic, batch.positions.clone());
            d.out.outbox.push_reply(&ServerFrame::History {
                id,
                topic,
                msgs: batch.records.iter().map(|r| r.to_msg()).collect(),
                cursor: cursor.encode(),
                more: batch.more,
            });
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "history read failed");
            refuse(
                &d.ctx,
                &d.out,
                "history",
                id,
                Refusal::new(ErrorCode::StorageUnavailable, e.to_string()),
            );
            false
        }
    }
}

/// Several publishes of one frame, in order: plugins see them together
/// ([`crate::pipeline::Pipeline::ingest_batch`]); a lone one takes the single path.
pub(crate) async fn publish_all(d: &mut Driver, mut batch: Vec<QueuedPub>) {
    let started = Instant::now();
    let who = d.sender();
    if batch.len() == 1 {
        let mut p = batch.remove(0);
        let result = d.ctx.pipeline.ingest(&who, &mut p.req).await;
        after_ingest(d, p, started, result);
        return;
    }
    let (meta, mut reqs): (Vec<(u64, bool)>, Vec<Publish>) =
        batch.into_iter().map(|p| ((p.id, p.ack), p.req)).unzip();
    let results = d.ctx.pipeline.ingest_batch(&who, &mut reqs).await;
    for (((id, ack), req), result) in meta.into_iter().zip(reqs).zip(results) {
        after_ingest(d, QueuedPub { id, req, ack }, started, result);
    }
}

/// A publish after the hooks: refused, acknowledged as not stored, or on its way to the
/// store (its ack follows in order through `pending`).
fn after_ingest(
    d: &mut Driver,
    p: QueuedPub,
    started: Instant,
    result: Result<HookOutcome, Refusal>,
) {
    let QueuedPub { id, req, ack } = p;
    match result {
        Ok(HookOutcome::Store) => {}
        Ok(HookOutcome::Dropped | HookOutcome::LiveOnly) => {
            d.ctx.count("pub", "dropped");
            if ack {
                // A plugin dropped the message on purpose: acknowledged, not stored.
                d.out.outbox.push_reply(&ServerFrame::Puback {
                    id,
                    topic: req.topic,
                    origin: String::new(),
                    epoch: 0,
                    seq: 0,
                    hlc: 0,
                    cursor: String::new(),
                    dup: false,
                });
            }
            return;
        }
        Err(r) => {
            refuse(&d.ctx, &d.out, "pub", id, r);
            return;
        }
    }
    let topic = req.topic.clone();
    let append = d.ctx.pipeline.append(req);
    d.pending.push_back(Box::pin(async move {
        AckDone {
            id,
            topic,
            want_ack: ack,
            started,
            result: append.await,
        }
    }));
}

/// A publish is durable (or failed): its ack or error.
pub(crate) fn finish_publish(ctx: &SessionCtx, out: &ConnOut, done: AckDone) {
    ctx.metrics
        .publish_ack_seconds
        .observe(done.started.elapsed().as_secs_f64());
    match done.result {
        Ok(ack) => {
            ctx.count("pub", "ok");
            if done.want_ack {
                let mut cursor = Cursor::new();
                cursor.set_topic(&done.topic, ack.vv.clone());
                out.outbox.push_reply(&ServerFrame::Puback {
                    id: done.id,
                    topic: done.topic,
                    origin: ack.origin.node,
                    epoch: ack.origin.epoch,
                    seq: ack.seq,
                    hlc: ack.hlc,
                    cursor: cursor.encode(),
                    dup: ack.dup,
                });
            }
        }
        Err(e) => refuse(ctx, out, "pub", done.id, append_refusal(&e)),
    }
}

/// Validate one datagram like a `pub`, run it through the same ingest (permissions and
/// message hooks), and fan it out as an ephemeral message (`seq` 0, not stored, not acked).
pub(crate) async fn datagram(d: &mut Driver, datagram: &[u8]) {
    let ctx = d.ctx.clone();
    let count = |result: &str| ctx.count("datagram", result);
    ctx.metrics.bytes_in.inc_by(datagram.len() as u64);
    let mut frames: Vec<EphemeralPub> = match d.info.encoding.decode_all(datagram) {
        Ok(f) => f,
        Err(e) => return count(e.code().as_str()),
    };
    let (Some(p), true) = (frames.pop(), frames.is_empty()) else {
        return count(ErrorCode::BadFrame.as_str());
    };
    let req = match d.session.handle_ephemeral(p, super::driver::now()) {
        Ok(req) => req,
        Err(reply) => {
            if let ServerFrame::Error { code, .. } = &*reply {
                count(code.as_str());
            }
            return;
        }
    };
    let sender = d.sender();
    match ctx.pipeline.ingest_ephemeral(&sender, req).await {
        Ok(HookOutcome::Store) => count("ok"),
        Ok(HookOutcome::Dropped | HookOutcome::LiveOnly) => count("dropped"),
        Err(r) => count(r.code.as_str()),
    }
}
