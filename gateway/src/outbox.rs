//! Per-connection bounded outbox of pre-encoded frames.
//!
//! The broker pushes each message's bytes (encoded once per encoding and shared
//! by every subscriber through `Bytes`) into the outbox of every subscribed
//! connection; the connection's writer drains everything queued into one
//! transport frame. The outbox never blocks the broker:
//!
//! - while it has room (`max_frames` and `max_bytes`), a push is queued;
//! - when it is full, policy `gap` records the missed range per (topic, origin)
//!   and drops the message; once the queue has drained below half, the gap
//!   notices are queued ahead of anything newer, so a subscriber always learns
//!   exactly what it missed (and reads it from history);
//! - policy `disconnect` closes the connection with `slow_consumer` instead.
//!
//! Replies to commands are always queued, so a reply is never lost. What bounds them
//! is the session, not the outbox: one reply per command, a command runs only while
//! the outbox is under half full ([`Outbox::has_reply_room`]), the next frame is read
//! only once the last one's commands have all run, and each reply is bounded (publish
//! acks by `max_inflight_publishes` in flight; a `history` reply by `max_history`
//! records and `max_history_bytes`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use edgesync_protocol::frame::GapReason;
use edgesync_protocol::{Cursor, Encoding, ErrorCode, Origin, ServerFrame};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// What to do with a subscriber whose outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Drop, and announce the missed range with a `gap` push.
    #[default]
    Gap,
    /// Close the connection with error `slow_consumer`.
    Disconnect,
}

/// Result of pushing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Dropped; a gap notice will follow.
    Dropped,
    /// The outbox is closed (connection ending).
    Closed,
}

/// Most distinct (topic, origin) gap ranges held per connection before it is
/// disconnected instead (bounds memory for a subscriber to many topics).
pub const MAX_PENDING_GAPS: usize = 1024;

/// Why an outbox was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug)]
struct PendingGap {
    topic: String,
    origin: Origin,
    from: u64,
    to: u64,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Bytes>,
    bytes: usize,
    gaps: Vec<PendingGap>,
    closed: Option<CloseReason>,
    /// No more pushes will come: the writer sends what is queued, then ends its stream.
    finished: bool,
}

/// The outbox. Shared between the broker (pushes) and the connection writer (drains).
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Wakes the writer when the queue goes from empty to non-empty or closes.
    ready: Notify,
    /// Wakes catch-up reads when the writer has drained.
    drained: Notify,
    encoding: Encoding,
    max_frames: usize,
    max_bytes: usize,
    /// Bytes shared with the connection's other outboxes, if any.
    budget: Option<Arc<Budget>>,
}

/// A byte bound shared by several outboxes: the subscription lanes of one QUIC
/// `edgesync/2` connection together hold no more than one connection outbox would.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
    /// Wakes [`Budget::wait_within`] when one of the outboxes drained.
    drained: Notify,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            max: max.max(1024),
            drained: Notify::new(),
        })
    }

    /// Bytes queued over all the outboxes that share it.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// True unless replies pushed the outboxes past the budget. (Pushes never do: they
    /// are dropped or refused at the bound; replies are queued whatever the fullness,
    /// so this is what a session checks before it runs another command.)
    pub fn within(&self) -> bool {
        self.used() <= self.max
    }

    /// Count `bytes` a writer took out of one of the outboxes but has not written yet
    /// (a QUIC stream waiting for flow-control credit), until the returned guard drops.
    pub fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Held {
            budget: self.clone(),
            bytes,
        }
    }

    /// Wait until [`Budget::within`].
    pub async fn wait_within(&self) {
        loop {
            let notified = self.drained.notified();
            if self.within() {
                return;
            }
            notified.await;
        }
    }
}

/// Bytes a writer holds against a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.drained.notify_waiters();
    }
}

impl Outbox {
    pub fn new(encoding: Encoding, max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            drained: Notify::new(),
            encoding,
            max_frames: max_frames.max(2),
            max_bytes: max_bytes.max(1024),
            budget: None,
        }
    }

    /// This outbox also counts its bytes against `budget`, and is full when it is.
    #[must_use]
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    fn is_full(&self, g: &Inner, len: usize) -> bool {
        g.queue.len() >= self.max_frames
            || g.bytes + len > self.max_bytes
            || self.budget.as_ref().is_some_and(|b| b.used() + len > b.max)
    }

    fn add(&self, g: &mut Inner, len: usize) {
        g.bytes += len;
        if let Some(b) = &self.budget {
            b.used.fetch_add(len, Ordering::Relaxed);
        }
    }

    fn sub(&self, g: &mut Inner, len: usize) {
        g.bytes -= len;
        if let Some(b) = &self.budget {
            b.used.fetch_sub(len, Ordering::Relaxed);
        }
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Keep `bytes` just drained from this outbox counted against its shared budget
    /// (if any) until the returned guard drops: a writer that cannot write yet still
    /// holds them.
    pub fn hold(&self, bytes: usize) -> Option<Held> {
        self.budget.as_ref().map(|b| b.hold(bytes))
    }

    /// The byte bound of this outbox alone (a shared [`Budget`] may be tighter).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Queue a delivery of message `seq` of (`topic`, `origin`), applying the slow-consumer policy.
    pub fn push_message(
        &self,
        frame: &Bytes,
        topic: &str,
        origin: &Origin,
        seq: u64,
        policy: SlowConsumerPolicy,
    ) -> Pushed {
        let mut g = self.inner.lock();
        if g.closed.is_some() {
            return Pushed::Closed;
        }
        let full = self.is_full(&g, frame.len());
        let recovering = !g.gaps.is_empty() && g.queue.len() > self.max_frames / 2;
        if full || recovering {
            if policy == SlowConsumerPolicy::Disconnect {
                self.close_locked(
                    &mut g,
                    ErrorCode::SlowConsumer,
                    "outbox overflowed: subscriber too slow",
                );
                return Pushed::Closed;
            }
            let pending = g.gaps.len();
            match g
                .gaps
                .iter_mut()
                .find(|p| p.topic == topic && p.origin == *origin)
            {
                Some(p) => p.to = seq,
                None if pending >= MAX_PENDING_GAPS => {
                    self.close_locked(
                        &mut g,
                        ErrorCode::SlowConsumer,
                        "too many distinct gaps pending",
                    );
                    return Pushed::Closed;
                }
                None => g.gaps.push(PendingGap {
                    topic: topic.into(),
                    origin: origin.clone(),
                    from: seq,
                    to: seq,
                }),
            }
            // An idle writer (nothing queued: the drop came from a shared lane budget, or
            // one message larger than the bound) must still announce the gap now — on a
            // quiet topic no later push would wake it.
            let idle = g.queue.is_empty();
            drop(g);
            if idle {
                self.ready.notify_one();
            }
            return Pushed::Dropped;
        }
        let was_empty = g.queue.is_empty();
        if !g.gaps.is_empty() {
            self.flush_gaps_locked(&mut g);
        }
        self.add(&mut g, frame.len());
        g.queue.push_back(frame.clone());
        drop(g);
        if was_empty {
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// Queue a reply ahead of everything queued (a subscription stream's `subscribed`,
    /// which must precede the pushes fan-out may already have queued there).
    pub fn push_reply_front(&self, frame: &ServerFrame) {
        self.enqueue(Bytes::from(self.encoding.encode(frame)), true);
    }

    /// Queue a reply or control push; never dropped (bounded by the caller).
    pub fn push_reply(&self, frame: &ServerFrame) {
        self.enqueue(Bytes::from(self.encoding.encode(frame)), false);
    }

    /// Queue `bytes` whatever the fullness (at the front or the back), unless closed.
    fn enqueue(&self, bytes: Bytes, front: bool) {
        let mut g = self.inner.lock();
        if g.closed.is_some() {
            return;
        }
        let was_empty = g.queue.is_empty();
        self.add(&mut g, bytes.len());
        if front {
            g.queue.push_front(bytes);
        } else {
            g.queue.push_back(bytes);
        }
        drop(g);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Queue an ephemeral (datagram) delivery only if there is room and no gap is pending;
    /// otherwise drop it. Ephemeral messages are best-effort: a drop never applies the
    /// slow-consumer policy and never produces a gap notice. Returns true when queued.
    pub fn try_push_ephemeral(&self, frame: &Bytes) -> bool {
        let mut g = self.inner.lock();
        let full = self.is_full(&g, frame.len());
        if g.closed.is_some() || full || !g.gaps.is_empty() {
            return false;
        }
        let was_empty = g.queue.is_empty();
        self.add(&mut g, frame.len());
        g.queue.push_back(frame.clone());
        drop(g);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// True when a catch-up reader may queue more (below half full, no pending gaps).
    pub fn has_room(&self) -> bool {
        let g = self.inner.lock();
        g.closed.is_none()
            && g.gaps.is_empty()
            && g.queue.len() < self.max_frames / 2
            && g.bytes < self.max_bytes / 2
            && self.budget.as_ref().is_none_or(|b| b.used() < b.max / 2)
    }

    /// Queue pre-encoded history bytes regardless of fullness (caller checked [`Outbox::has_room`]).
    pub fn push_history(&self, frame: Bytes) {
        self.enqueue(frame, false);
    }

    /// Close the outbox; the writer sends `code` as a final error and closes the connection.
    pub fn close(&self, code: ErrorCode, message: &str) {
        let mut g = self.inner.lock();
        self.close_locked(&mut g, code, message);
    }

    fn close_locked(&self, g: &mut Inner, code: ErrorCode, message: &str) {
        if g.closed.is_none() {
            g.closed = Some(CloseReason {
                code,
                message: message.into(),
            });
            self.ready.notify_one();
            self.drained.notify_waiters();
        }
    }

    /// Announce that nothing more will be pushed: the writer drains what is queued and
    /// ends (a subscription stream after `unsubscribed`, or at the session's end).
    pub fn finish(&self) {
        let mut g = self.inner.lock();
        if !g.finished {
            g.finished = true;
            drop(g);
            self.ready.notify_one();
        }
    }

    /// True once [`Outbox::finish`] was called and everything queued was drained.
    pub fn is_done(&self) -> bool {
        let g = self.inner.lock();
        g.finished && g.queue.is_empty() && g.gaps.is_empty()
    }

    /// Why the outbox closed, if it did.
    pub fn closed(&self) -> Option<CloseReason> {
        self.inner.lock().closed.clone()
    }

    /// Wait until there is something to write (or the outbox closed).
    pub async fn ready(&self) {
        loop {
            {
                let g = self.inner.lock();
                if !g.queue.is_empty() || !g.gaps.is_empty() || g.closed.is_some() || g.finished {
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Wait until the outbox is closed (a writer blocked on the socket gives up its
    /// write then: a closing connection is not kept waiting for a peer that does not read).
    pub async fn wait_closed(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches it from creation on.
            let notified = self.drained.notified();
            if self.inner.lock().closed.is_some() {
                return;
            }
            notified.await;
        }
    }

    /// True when the session may run another command: its replies would find the
    /// outbox under half full (bytes and frames). Replies are queued whatever the
    /// fullness, so this is what bounds them: a session runs no command while the
    /// outbox is past half, and one command's reply is bounded (`history` by
    /// `limits.max_history_bytes`).
    pub fn has_reply_room(&self) -> bool {
        let g = self.inner.lock();
        g.closed.is_none() && g.queue.len() < self.max_frames / 2 && g.bytes < self.max_bytes / 2
    }

    /// True while the outbox is within its limits (frames and bytes): a control push
    /// that is never dropped (presence) may still be queued.
    pub fn within_limits(&self) -> bool {
        let g = self.inner.lock();
        g.closed.is_none() && g.queue.len() < self.max_frames && g.bytes < self.max_bytes
    }

    /// Queue pre-encoded control bytes (a push that is never dropped; the caller bounds
    /// it, e.g. with [`Outbox::within_limits`]).
    pub fn push_control(&self, frame: Bytes) {
        self.enqueue(frame, false);
    }

    /// Wait until [`Outbox::has_reply_room`] (or the outbox closed).
    pub async fn wait_reply_room(&self) {
        loop {
            let notified = self.drained.notified();
            if self.has_reply_room() || self.closed().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Wait until the writer has drained (for catch-up readers).
    pub async fn wait_room(&self) {
        let notified = self.drained.notified();
        if self.has_room() {
            return;
        }
        notified.await;
    }

    /// Move queued frames into `out`, joined by the encoding's separator, up to about
    /// `max_bytes` (at least one frame). Returns the number of messages moved.
    pub fn drain_into(&self, out: &mut Vec<u8>, max_bytes: usize) -> usize {
        let mut g = self.inner.lock();
        let sep = self.encoding.separator();
        // One allocation of the frame's final size instead of doubling up
        // to `max_bytes` (each step a copy of everything so far): what is
        // queued, separators included, capped at the batch limit plus the
        // one frame that may exceed it.
        let front = g.queue.front().map_or(0, Bytes::len);
        let want = (g.bytes + g.queue.len() * sep.len()).min(max_bytes.max(front));
        out.reserve(want);
        let mut n = 0;
        loop {
            while let Some(front) = g.queue.front() {
                if n > 0 && out.len() + front.len() > max_bytes {
                    break;
                }
                if n > 0 {
                    out.extend_from_slice(sep);
                }
                out.extend_from_slice(front);
                let len = front.len();
                g.queue.pop_front();
                self.sub(&mut g, len);
                n += 1;
            }
            // Everything older is written: announce pending gaps in the same frame.
            if g.queue.is_empty() && !g.gaps.is_empty() {
                self.flush_gaps_locked(&mut g);
                continue;
            }
            break;
        }
        drop(g);
        if n > 0 {
            self.drained.notify_waiters();
            if let Some(b) = &self.budget {
                b.drained.notify_waiters();
            }
        }
        n
    }

    /// Queued frame count (for metrics and tests).
    pub fn depth(&self) -> usize {
        self.inner.lock().queue.len()
    }

    fn flush_gaps_locked(&self, g: &mut Inner) {
        for gap in std::mem::take(&mut g.gaps) {
            let mut cursor = Cursor::new();
            cursor.observe(&gap.topic, &gap.origin, gap.from.saturating_sub(1));
            let frame = ServerFrame::Gap {
                topic: gap.topic,
                origin: gap.origin.node,
                epoch: gap.origin.epoch,
                from: gap.from,
                to: gap.to,
                reason: GapReason::SlowConsumer,
                cursor: cursor.encode(),
                // The live stream's loss: every matching live subscription's.
                sub: None,
            };
            let bytes = Bytes::from(self.encoding.encode(&frame));
            self.add(g, bytes.len());
            g.queue.push_back(bytes);
        }
    }
}

impl Drop for Outbox {
    /// Bytes still queued when an outbox goes (its connection ended) leave the budget.
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.used
                .fetch_sub(self.inner.get_mut().bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Bytes {
        Bytes::from(format!("m{seq}"))
    }

    #[test]
    fn overflow_becomes_one_gap_per_stream_then_recovers_in_order() {
        let ob = Outbox::new(Encoding::Json, 4, 1 << 20);
        let o = Origin::new("n", 1);
        for seq in 1..=4 {
            assert_eq!(
                ob.push_message(&msg(seq), "t", &o, seq, SlowConsumerPolicy::Gap),
                Pushed::Queued
            );
        }
        for seq in 5..=9 {
            assert_eq!(
                ob.push_message(&msg(seq), "t", &o, seq, SlowConsumerPolicy::Gap),
                Pushed::Dropped
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            ob.drain_into(&mut out, 1 << 20),
            5,
            "4 messages then the gap notice"
        );
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..4], &["m1", "m2", "m3", "m4"]);
        let gap: ServerFrame = serde_json::from_str(lines[4]).expect("gap");
        match gap {
            ServerFrame::Gap {
                from,
                to,
                topic,
                cursor,
                ..
            } => {
                assert_eq!((from, to, topic.as_str()), (5, 9, "t"));
                let c = Cursor::decode(&cursor, 1024).expect("cursor");
                assert_eq!(c.position("t", &o), 4);
            }
            other => panic!("expected gap, got {other:?}"),
        }
        assert_eq!(
            ob.push_message(&msg(10), "t", &o, 10, SlowConsumerPolicy::Gap),
            Pushed::Queued
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_on_a_quiet_topic_wakes_an_idle_writer() {
        // Lane `a` is empty, but lane `b` holds the whole shared budget: `a` drops and
        // nothing else will ever be pushed to it (a quiet topic).
        let budget = Budget::new(2048);
        let a = Outbox::new(Encoding::Json, 1000, 1 << 20).with_budget(budget.clone());
        let b = Outbox::new(Encoding::Json, 1000, 1 << 20).with_budget(budget.clone());
        let o = Origin::new("n", 1);
        let big = Bytes::from(vec![b'x'; 2047]);
        assert_eq!(
            b.push_message(&big, "t", &o, 1, SlowConsumerPolicy::Gap),
            Pushed::Queued
        );
        let mut writer = std::pin::pin!(a.ready());
        assert!(
            futures_util::poll!(writer.as_mut()).is_pending(),
            "nothing to write yet"
        );
        assert_eq!(
            a.push_message(&msg(7), "quiet", &o, 7, SlowConsumerPolicy::Gap),
            Pushed::Dropped
        );
        tokio::time::timeout(std::time::Duration::from_secs(60), writer)
            .await
            .expect("the waiting writer is woken for the gap");
        let mut out = Vec::new();
        assert_eq!(a.drain_into(&mut out, 1 << 20), 1);
        let gap: ServerFrame = serde_json::from_slice(&out).expect("gap");
        assert!(
            matches!(gap, ServerFrame::Gap { from: 7, to: 7, .. }),
            "{gap:?}"
        );
    }

    #[test]
    fn disconnect_policy_closes() {
        let ob = Outbox::new(Encoding::MsgPack, 2, 1 << 20);
        let o = Origin::new("n", 1);
        ob.push_message(&msg(1), "t", &o, 1, SlowConsumerPolicy::Disconnect);
        ob.push_message(&msg(2), "t", &o, 2, SlowConsumerPolicy::Disconnect);
        assert_eq!(
            ob.push_message(&msg(3), "t", &o, 3, SlowConsumerPolicy::Disconnect),
            Pushed::Closed
        );
        assert_eq!(ob.closed().map(|c| c.code), Some(ErrorCode::SlowConsumer));
    }

    #[test]
    fn a_shared_budget_bounds_lanes_together_and_each_lane_alone() {
        let budget = Budget::new(4096);
        let lane = |max| Outbox::new(Encoding::Json, 1000, max).with_budget(budget.clone());
        let (a, b) = (lane(2048), lane(2048));
        let o = Origin::new("n", 1);
        let big = Bytes::from(vec![b'x'; 1000]);
        let push = |ob: &Outbox, seq| ob.push_message(&big, "t", &o, seq, SlowConsumerPolicy::Gap);
        assert_eq!(push(&a, 1), Pushed::Queued);
        assert_eq!(push(&a, 2), Pushed::Queued);
        assert_eq!(
            push(&a, 3),
            Pushed::Dropped,
            "a lane is capped at its own bound"
        );
        assert_eq!(
            push(&b, 1),
            Pushed::Queued,
            "the stalled lane left room for the others"
        );
        assert_eq!(push(&b, 2), Pushed::Queued);
        assert_eq!(budget.used(), 4000);
        let c = lane(2048);
        assert_eq!(push(&c, 1), Pushed::Dropped, "the shared budget is spent");
        let mut out = Vec::new();
        b.drain_into(&mut out, 1 << 20);
        assert_eq!(budget.used(), 2000, "drained bytes return to the budget");
        assert_eq!(push(&c, 2), Pushed::Queued, "behind c's own gap notice");
        let before = budget.used();
        drop(a);
        assert_eq!(
            budget.used(),
            before - 2000,
            "a dropped outbox returns what it held"
        );
    }

    #[test]
    fn replies_are_never_dropped() {
        let ob = Outbox::new(Encoding::Json, 2, 1 << 20);
        for id in 0..10 {
            ob.push_reply(&ServerFrame::Pong { id });
        }
        assert_eq!(ob.depth(), 10);
    }
}
