//! How a session's subscriptions reach the client: catch-up reads from the store
//! before a subscription goes live, and the per-subscription lanes of transports that
//! have them (QUIC `edgesync/2`).
//!
//! Catch-up reads in bounded steps, only while the target outbox has room, up to the
//! broker's delivered head, then asks the broker to switch the subscription to live
//! (see [`crate::broker`] for why that hand-over is exactly-once).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use edgesync_protocol::frame::GapReason;
use edgesync_protocol::{Cursor, Origin, ServerFrame};

use super::driver::{Lanes, SessionCtx};
use crate::broker::{ConnOut, encode_push};
use crate::config::Limits;
use crate::model::SubId;
use crate::outbox::{Budget, Outbox};
use crate::store::{MissingRange, StoreError};

/// Most records read per catch-up step (bytes: a quarter of the target outbox).
const CATCHUP_CHUNK: usize = 256;

/// A subscription reading stored records before going live.
pub(crate) struct CatchUp {
    pub(crate) sub: SubId,
    /// The `id` of the `sub` command: every catch-up push carries it.
    pub(crate) tag: u64,
    pub(crate) pattern: String,
    pub(crate) position: Cursor,
    /// Where its records go: the session's outbox, or the subscription's lane.
    pub(crate) target: Arc<ConnOut>,
}

/// A session's catch-ups in progress and, when the transport has them, its lanes.
pub(crate) struct Delivery {
    catchups: VecDeque<CatchUp>,
    lanes: Option<LaneSet>,
}

/// A session's subscriptions with a lane each (QUIC `edgesync/2`).
///
/// Memory stays that of one connection outbox: the lanes share one byte budget of
/// `outbox_bytes`, and each holds at most half of it (and `outbox_frames` frames), so a
/// stalled subscription overflows into gap notices of its own while the others keep at
/// least half the budget.
struct LaneSet {
    opener: Arc<dyn Lanes>,
    budget: Arc<Budget>,
    lanes: HashMap<SubId, Arc<ConnOut>>,
}

impl Delivery {
    pub(crate) fn new(opener: Option<Arc<dyn Lanes>>, limits: &Limits) -> Self {
        Delivery {
            catchups: VecDeque::new(),
            lanes: opener.map(|opener| LaneSet {
                opener,
                budget: Budget::new(limits.outbox_bytes),
                lanes: HashMap::new(),
            }),
        }
    }

    /// True while some subscription is still catching up.
    pub(crate) fn catching_up(&self) -> bool {
        !self.catchups.is_empty()
    }

    /// True unless the lanes' replies (a `subscribed` names the topics it starts from)
    /// went past their shared budget: the session then runs no further command until
    /// the client reads its streams. Always true without lanes.
    pub(crate) fn reply_room(&self) -> bool {
        self.lanes.as_ref().is_none_or(|set| set.budget.within())
    }

    /// Wait until [`Delivery::reply_room`].
    pub(crate) async fn wait_reply_room(&self) {
        if let Some(set) = &self.lanes {
            set.budget.wait_within().await;
        }
    }

    /// Wait until the outbox of the catch-up that runs next has room.
    pub(crate) async fn room(&self) {
        match self.catchups.front() {
            Some(c) => c.target.outbox.wait_room().await,
            None => std::future::pending().await,
        }
    }

    /// Where a new subscription's pushes go: a new lane when the transport has lanes
    /// (its writer starts in [`Delivery::subscribed`], once `subscribed` is queued in
    /// it), else the session's outbox.
    pub(crate) fn target(&self, out: &Arc<ConnOut>, limits: &Limits) -> Arc<ConnOut> {
        let Some(set) = &self.lanes else {
            return out.clone();
        };
        ConnOut::new(
            out.id,
            Outbox::new(
                out.outbox.encoding(),
                limits.outbox_frames,
                limits.outbox_bytes / 2,
            )
            .with_budget(set.budget.clone()),
        )
    }

    /// Queue a new subscription's `subscribed` reply and, for a lane, start its writer
    /// (only now: a writer started earlier could send a push fan-out queued meanwhile
    /// as the stream's first frame).
    pub(crate) fn subscribed(
        &mut self,
        ctx: &SessionCtx,
        sub: SubId,
        out: &Arc<ConnOut>,
        target: &Arc<ConnOut>,
        reply: &ServerFrame,
    ) {
        match &mut self.lanes {
            None => out.outbox.push_reply(reply),
            Some(set) => {
                // A lane starts with its `subscribed`, ahead of anything fan-out queued
                // there since `subscribe` (all of it after the reply's cursor).
                target.outbox.push_reply_front(reply);
                set.opener.open(target.clone(), out.clone(), ctx);
                set.lanes.insert(sub, target.clone());
            }
        }
    }

    /// Start catching `c` up from its position.
    pub(crate) fn catch_up(&mut self, c: CatchUp) {
        self.catchups.push_back(c);
    }

    /// Queue a subscription's `unsubscribed` reply: on its lane as the last frame (the
    /// stream ends after it), else on the session's outbox.
    pub(crate) fn unsubscribed(&mut self, sub: SubId, out: &ConnOut, reply: &ServerFrame) {
        self.catchups.retain(|c| c.sub != sub);
        match self.lanes.as_mut().and_then(|set| set.lanes.remove(&sub)) {
            Some(lane) => {
                lane.outbox.push_reply(reply);
                lane.outbox.finish();
            }
            None => out.outbox.push_reply(reply),
        }
    }

    /// The session ends: every lane's writer drains and ends its stream.
    pub(crate) fn finish_lanes(&self) {
        for lane in self.lanes.iter().flat_map(|set| set.lanes.values()) {
            lane.outbox.finish();
        }
    }

    /// One bounded step of the next catch-up; it goes to the back of the queue unless
    /// it went live.
    pub(crate) fn step(&mut self, ctx: &SessionCtx) -> Result<(), StoreError> {
        let Some(mut c) = self.catchups.pop_front() else {
            return Ok(());
        };
        if !catch_up_step(ctx, &mut c)? {
            self.catchups.push_back(c);
        }
        Ok(())
    }
}

/// The `gap` push for a stored range a reader cannot be given; `sub`: the catch-up's
/// subscription tag (none for a `history` read).
pub(crate) fn gap_frame(topic: &str, m: &MissingRange, sub: Option<u64>) -> ServerFrame {
    let mut cursor = Cursor::new();
    cursor.observe(topic, &m.origin, m.from.saturating_sub(1));
    ServerFrame::Gap {
        topic: topic.to_string(),
        origin: m.origin.node.clone(),
        epoch: m.origin.epoch,
        from: m.from,
        to: m.to,
        reason: if m.corrupt {
            GapReason::Corrupt
        } else {
            GapReason::Retention
        },
        cursor: cursor.encode(),
        sub,
    }
}

/// One bounded step of catch-up. Returns true when the subscription went live.
fn catch_up_step(ctx: &SessionCtx, c: &mut CatchUp) -> Result<bool, StoreError> {
    let out = &c.target;
    let enc = out.outbox.encoding();
    let mut budget = CATCHUP_CHUNK;
    // A step runs only while the outbox is under half full, and queues at most a
    // quarter of it (plus one record): catch-up never holds more than the outbox may.
    let mut bytes_left = out.outbox.max_bytes() / 4;
    for (topic, head) in ctx.broker.sub_heads(c.sub) {
        let after: BTreeMap<Origin, u64> = c.position.topic(&topic).cloned().unwrap_or_default();
        if head
            .iter()
            .all(|(o, s)| after.get(o).copied().unwrap_or(0) >= *s)
        {
            continue;
        }
        let batch =
            ctx.store
                .read_bounded(&topic, &after, Some(&head), budget, bytes_left.max(1))?;
        for m in &batch.missing {
            ctx.metrics.gap(m.corrupt);
            out.outbox
                .push_history(Bytes::from(enc.encode(&gap_frame(&topic, m, Some(c.tag)))));
        }
        for r in &batch.records {
            let push = encode_push(r, enc, c.tag);
            bytes_left = bytes_left.saturating_sub(push.len());
            out.outbox.push_history(push);
        }
        ctx.metrics.messages_out.inc_by(batch.records.len() as u64);
        budget = budget.saturating_sub(batch.records.len());
        c.position.set_topic(&topic, batch.positions);
        if budget == 0 || bytes_left == 0 {
            return Ok(false);
        }
    }
    let live = ServerFrame::Live {
        sub: c.tag,
        topic: c.pattern.clone(),
    };
    Ok(ctx.broker.try_go_live(c.sub, &c.position, &live))
}
