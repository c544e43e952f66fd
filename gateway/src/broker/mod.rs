//! The broker: topics, the subscription index and fan-out.
//!
//! It owns, per topic, the *delivered head* — the version vector of what has
//! been fanned out — and the list of subscriptions that match the topic (exact
//! and wildcard alike, so fan-out costs O(matching subscriptions), not
//! O(patterns)). Committed batches arrive from the store in commit order; for
//! each record the push is encoded at most once per encoding and the same bytes
//! are queued in every matching connection's outbox (a connection subscribed
//! through several patterns gets the record once).
//!
//! A subscription is *live* (fan-out delivers to it) or *catching up* (its
//! session reads the store). The switch happens under the broker lock, only
//! when the session's position has reached the delivered head of every
//! matching topic, so a record is delivered exactly once: either from the
//! store by catch-up or by fan-out, never both and never neither.
//!
//! The broker never waits for a subscriber: a full outbox applies the topic's
//! slow-consumer policy (see [`crate::outbox`]).
//!
//! Nothing a client does holds the fan-out lock for a scan of every topic: a wildcard
//! is matched against a sorted catalog of topic names behind its own lock (a literal
//! prefix is a range of it), then acted on under the fan-out lock for its matches only
//! (subscribe, unsubscribe, catch-up, go-live; a topic generation counter tells when a
//! topic appeared in between). A topic without messages goes with its last subscription.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use edgesync_protocol::topic::{is_pattern, matches};
use edgesync_protocol::{Cursor, Encoding, Msg, Origin, ServerFrame};
use parking_lot::Mutex;

pub use crate::model::SubId;
use crate::outbox::{Outbox, Pushed, SlowConsumerPolicy};
use crate::store::{Committed, Record};

/// Catalog names read per hold of its lock.
const CATALOG_CHUNK: usize = 1024;

/// Attempts of [`Broker::try_go_live`] to match a wildcard off the lock before it
/// decides under the lock.
const GO_LIVE_TRIES: usize = 3;

/// Whether `position` is behind topic `name`'s delivered head.
fn behind(name: &str, t: &Topic, position: &Cursor) -> bool {
    t.head
        .iter()
        .any(|(origin, seq)| position.position(name, origin) < *seq)
}

/// Mark a subscription live, queueing `announce` (the `live` push) first — under the
/// lock fan-out takes too, so no live push can overtake it. True, for `try_go_live`.
fn set_live(g: &mut Inner, id: SubId, announce: &ServerFrame) -> bool {
    if let Some(sub) = g.subs.get_mut(&id) {
        sub.conn.outbox.push_reply(announce);
        sub.live = true;
    }
    true
}

/// Maps a topic to its slow-consumer policy (built from config).
pub type PolicyFn = Arc<dyn Fn(&str) -> SlowConsumerPolicy + Send + Sync>;

/// Told what fan-out did (the gateway's metrics implement it), so the broker never
/// depends on `metrics`. Called under the broker lock: quick, never blocking.
pub trait BrokerObserver: Send + Sync {
    /// `n` deliveries were queued to subscribers (live fan-out or catch-up).
    fn queued(&self, _n: u64) {}
    /// A delivery was dropped by a full outbox (a gap notice follows).
    fn gap_drop(&self) {}
    /// A record with HLC `hlc` reached its first live subscriber now.
    fn delivered(&self, _hlc: u64) {}
    /// An ephemeral delivery was queued (`true`) or dropped (`false`).
    fn ephemeral(&self, _queued: bool) {}
}

/// The observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBrokerObserver;

impl BrokerObserver for NoBrokerObserver {}

/// A connection as the broker sees it.
#[derive(Debug)]
pub struct ConnOut {
    pub id: u64,
    pub outbox: Outbox,
    /// Fan-out stamp of the last record queued here (dedupes overlapping subscriptions).
    stamp: AtomicU64,
}

impl ConnOut {
    pub fn new(id: u64, outbox: Outbox) -> Arc<Self> {
        Arc::new(ConnOut {
            id,
            outbox,
            stamp: AtomicU64::new(0),
        })
    }
}

struct Sub {
    conn: Arc<ConnOut>,
    pattern: Arc<str>,
    live: bool,
}

struct Topic {
    head: BTreeMap<Origin, u64>,
    subs: Vec<SubId>,
    policy: SlowConsumerPolicy,
    /// `Inner::generation` when the topic was created: a wildcard registered at or
    /// after it was attached by the creation itself.
    created: u64,
}

struct Inner {
    topics: HashMap<Arc<str>, Topic>,
    /// Wildcard subscriptions (also listed in each matching topic's `subs`).
    wild: Vec<SubId>,
    subs: HashMap<SubId, Sub>,
    next_sub: u64,
    stamp: u64,
    /// Incremented whenever a topic is created: lets the two-step wildcard operations
    /// (match the catalog off the lock, then act under it) see that a topic appeared in
    /// between.
    generation: u64,
}

/// The broker; shared by sessions (subscribe) and the fan-out task.
pub struct Broker {
    inner: Mutex<Inner>,
    /// The names of `inner.topics`, sorted, behind a lock of their own: a wildcard `sub`
    /// matches its pattern against them (a literal prefix is a range, not a scan)
    /// without holding the lock fan-out needs. Changed only with `inner` held (lock
    /// order: `inner`, then `catalog`).
    catalog: Mutex<BTreeSet<Arc<str>>>,
    policy: PolicyFn,
    observer: Arc<dyn BrokerObserver>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker whose delivered heads start at the store's heads.
    pub fn new(
        heads: HashMap<String, BTreeMap<Origin, u64>>,
        policy: PolicyFn,
        observer: Arc<dyn BrokerObserver>,
    ) -> Self {
        let topics = heads
            .into_iter()
            .map(|(name, head)| {
                let p = policy(&name);
                (
                    Arc::<str>::from(name),
                    Topic {
                        head,
                        subs: Vec::new(),
                        policy: p,
                        created: 0,
                    },
                )
            })
            .collect::<HashMap<Arc<str>, Topic>>();
        let catalog = topics.keys().cloned().collect();
        Broker {
            catalog: Mutex::new(catalog),
            inner: Mutex::new(Inner {
                topics,
                wild: Vec::new(),
                subs: HashMap::new(),
                next_sub: 1,
                stamp: 0,
                generation: 0,
            }),
            policy,
            observer,
        }
    }

    /// Add a subscription. `live`: deliver from now on; the returned cursor is the
    /// delivered head of every matching topic that holds messages (the position the
    /// subscription starts at; a client can make any number of empty topics, and they
    /// add nothing to a position). Not live: the caller catches up from the store and
    /// calls [`Broker::try_go_live`].
    ///
    /// A wildcard is registered first (so every topic created from then on lists it),
    /// then matched against the catalog without the fan-out lock, then attached to the
    /// matching topics: the fan-out lock is held for O(matching topics), never for a
    /// scan of every topic.
    pub fn subscribe(&self, conn: &Arc<ConnOut>, pattern: &str, live: bool) -> (SubId, Cursor) {
        let pattern: Arc<str> = Arc::from(pattern);
        if !is_pattern(&pattern) {
            return self.subscribe_exact(conn, pattern, live);
        }
        let (id, registered) = {
            let mut g = self.inner.lock();
            let id = SubId(g.next_sub);
            g.next_sub += 1;
            g.wild.push(id);
            g.subs.insert(
                id,
                Sub {
                    conn: conn.clone(),
                    pattern: pattern.clone(),
                    live,
                },
            );
            (id, g.generation)
        };
        let candidates = self.catalog_matches(&pattern);
        let mut g = self.inner.lock();
        let mut cursor = Cursor::new();
        for name in candidates {
            let Some(t) = g.topics.get_mut(&name) else {
                continue; // released meanwhile
            };
            // A topic created since registration lists it already (and all its records
            // reached it live): attach only older ones, and name them in the cursor.
            if t.created <= registered {
                t.subs.push(id);
                if !t.head.is_empty() {
                    cursor.set_topic(&name, t.head.clone());
                }
            }
        }
        (id, cursor)
    }

    fn subscribe_exact(
        &self,
        conn: &Arc<ConnOut>,
        pattern: Arc<str>,
        live: bool,
    ) -> (SubId, Cursor) {
        let mut g = self.inner.lock();
        let id = SubId(g.next_sub);
        g.next_sub += 1;
        let mut cursor = Cursor::new();
        let policy = &self.policy;
        let Inner {
            topics,
            wild,
            subs,
            generation,
            ..
        } = &mut *g;
        // A topic this subscription creates is also one of the wildcards' topics
        // (as it is when fan-out creates it).
        let t = match topics.entry(pattern.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let wildcards: Vec<SubId> = wild
                    .iter()
                    .filter(|w| subs.get(w).is_some_and(|s| matches(&s.pattern, &pattern)))
                    .copied()
                    .collect();
                self.catalog.lock().insert(pattern.clone());
                *generation += 1;
                e.insert(Topic {
                    head: BTreeMap::new(),
                    subs: wildcards,
                    policy: policy(&pattern),
                    created: *generation,
                })
            }
        };
        t.subs.push(id);
        if !t.head.is_empty() {
            cursor.set_topic(&pattern, t.head.clone());
        }
        subs.insert(
            id,
            Sub {
                conn: conn.clone(),
                pattern,
                live,
            },
        );
        (id, cursor)
    }

    /// Catalog names matching `pattern`: the names under its literal prefix (every
    /// segment before the first wildcard), all of them when it starts with a wildcard.
    ///
    /// Read in chunks of [`CATALOG_CHUNK`] names, the catalog lock released in between,
    /// so a long scan never holds back fan-out creating a topic (it takes this lock under
    /// its own). Every name present when the scan starts and still present when its
    /// chunk is read is seen; names added meanwhile may be missed, which the callers
    /// allow for (a topic created after a wildcard registered lists it already).
    fn catalog_matches(&self, pattern: &str) -> Vec<Arc<str>> {
        use std::ops::Bound;
        let literal: Vec<&str> = pattern
            .split('.')
            .take_while(|s| *s != "*" && *s != ">")
            .collect();
        let prefix = if literal.is_empty() {
            String::new()
        } else {
            format!("{}.", literal.join("."))
        };
        let mut out = Vec::new();
        let mut from: Bound<Arc<str>> = Bound::Included(Arc::from(prefix.as_str()));
        loop {
            let catalog = self.catalog.lock();
            let bounds = (from.as_ref().map(|n| &**n), Bound::Unbounded);
            let chunk: Vec<Arc<str>> = catalog
                .range::<str, _>(bounds)
                .take_while(|n| n.starts_with(&prefix))
                .take(CATALOG_CHUNK)
                .cloned()
                .collect();
            drop(catalog);
            let Some(last) = chunk.last().cloned() else {
                return out;
            };
            let full = chunk.len() == CATALOG_CHUNK;
            out.extend(chunk.into_iter().filter(|n| matches(pattern, n)));
            if !full {
                return out;
            }
            from = Bound::Excluded(last);
        }
    }

    /// Topics currently known that match `pattern` and hold messages, with their
    /// delivered heads. Scans every topic: for a subscription, use [`Broker::sub_heads`].
    pub fn matching_heads(&self, pattern: &str) -> Vec<(String, BTreeMap<Origin, u64>)> {
        let g = self.inner.lock();
        g.topics
            .iter()
            .filter(|(name, t)| !t.head.is_empty() && matches(pattern, name))
            .map(|(name, t)| (name.to_string(), t.head.clone()))
            .collect()
    }

    /// The topics a subscription matches that hold messages, with their delivered heads
    /// (O(matching topics) under the fan-out lock). Empty for an unknown subscription.
    /// A topic created meanwhile may be missing; [`Broker::try_go_live`] notices it.
    pub fn sub_heads(&self, id: SubId) -> Vec<(String, BTreeMap<Origin, u64>)> {
        let Some((pattern, _)) = self.pattern_of(id) else {
            return Vec::new();
        };
        let names = self.names_of(&pattern);
        let g = self.inner.lock();
        names
            .iter()
            .filter_map(|name| {
                let t = g.topics.get(name)?;
                (!t.head.is_empty()).then(|| (name.to_string(), t.head.clone()))
            })
            .collect()
    }

    /// Switch a catching-up subscription to live if `position` has reached the
    /// delivered head of every matching topic, queueing `announce` (the `live` push) in
    /// its outbox in the same step: ahead of the first live push it gets. Returns false
    /// when more must be read.
    pub fn try_go_live(&self, id: SubId, position: &Cursor, announce: &ServerFrame) -> bool {
        for _ in 0..GO_LIVE_TRIES {
            let Some((pattern, seen)) = self.pattern_of(id) else {
                return true;
            };
            let names = self.names_of(&pattern);
            let mut g = self.inner.lock();
            if is_pattern(&pattern) && g.generation != seen {
                continue; // a topic appeared since the match: match again
            }
            let behind = names.iter().any(|name| {
                g.topics
                    .get(name)
                    .is_some_and(|t| behind(name, t, position))
            });
            return !behind && set_live(&mut g, id, announce);
        }
        // Topics keep appearing: decide under the lock, scanning them all (rare).
        let mut g = self.inner.lock();
        let Some(pattern) = g.subs.get(&id).map(|s| s.pattern.clone()) else {
            return true;
        };
        let behind = g
            .topics
            .iter()
            .any(|(name, t)| matches(&pattern, name) && behind(name, t, position));
        !behind && set_live(&mut g, id, announce)
    }

    /// Remove one subscription, and every topic it leaves without subscriptions and
    /// without messages (an exact `sub` creates its topic; a client looping `sub`/`unsub`
    /// over new names must not grow the broker).
    pub fn unsubscribe(&self, id: SubId) {
        let pattern = {
            let mut g = self.inner.lock();
            let Some(sub) = g.subs.remove(&id) else {
                return;
            };
            if !is_pattern(&sub.pattern) {
                self.detach(&mut g, id, &sub.pattern);
                return;
            }
            g.wild.retain(|s| *s != id);
            sub.pattern
        };
        // No topic created from now on lists it, and every older one is in the catalog.
        let names = self.catalog_matches(&pattern);
        let mut g = self.inner.lock();
        for name in &names {
            self.detach(&mut g, id, name);
        }
    }

    /// A subscription's pattern, and the topic generation when it was read.
    fn pattern_of(&self, id: SubId) -> Option<(Arc<str>, u64)> {
        let g = self.inner.lock();
        g.subs.get(&id).map(|s| (s.pattern.clone(), g.generation))
    }

    /// The topics a pattern is attached to: itself, or a wildcard's catalog matches.
    fn names_of(&self, pattern: &Arc<str>) -> Vec<Arc<str>> {
        if is_pattern(pattern) {
            self.catalog_matches(pattern)
        } else {
            vec![pattern.clone()]
        }
    }

    /// Take `id` off topic `name`, releasing the topic if nothing is left on it.
    fn detach(&self, g: &mut Inner, id: SubId, name: &str) {
        let Some(t) = g.topics.get_mut(name) else {
            return;
        };
        t.subs.retain(|s| *s != id);
        if t.subs.is_empty() && t.head.is_empty() {
            g.topics.remove(name);
            self.catalog.lock().remove(name);
        }
    }

    /// Topics the broker holds (tests check with it that empty topics are released).
    pub fn topic_count(&self) -> usize {
        self.inner.lock().topics.len()
    }

    /// Remove every subscription of a connection.
    pub fn remove_conn(&self, ids: impl IntoIterator<Item = SubId>) {
        for id in ids {
            self.unsubscribe(id);
        }
    }

    /// Fan out one committed batch, in order.
    pub fn fanout(&self, batch: &Committed) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        for record in batch.iter() {
            inner.stamp += 1;
            let stamp = inner.stamp;
            let topic = match inner.topics.get_mut(record.topic.as_str()) {
                Some(t) => t,
                None => {
                    let name: Arc<str> = Arc::from(record.topic.as_str());
                    let subs: Vec<SubId> = inner
                        .wild
                        .iter()
                        .filter(|id| {
                            inner
                                .subs
                                .get(id)
                                .is_some_and(|s| matches(&s.pattern, &name))
                        })
                        .copied()
                        .collect();
                    let policy = (self.policy)(&name);
                    self.catalog.lock().insert(name.clone());
                    inner.generation += 1;
                    inner.topics.entry(name).or_insert(Topic {
                        head: BTreeMap::new(),
                        subs,
                        policy,
                        created: inner.generation,
                    })
                }
            };
            let head = topic.head.entry(record.origin.clone()).or_insert(0);
            debug_assert!(
                record.seq > *head,
                "fan-out out of order: {} <= {}",
                record.seq,
                *head
            );
            *head = (*head).max(record.seq);
            let mut frames = Encoded::default();
            let mut delivered = false;
            for id in &topic.subs {
                let Some(sub) = inner.subs.get(id) else {
                    continue;
                };
                if !sub.live || sub.conn.stamp.swap(stamp, Ordering::Relaxed) == stamp {
                    continue;
                }
                let frame = frames.get(record, sub.conn.outbox.encoding());
                match sub.conn.outbox.push_message(
                    frame,
                    &record.topic,
                    &record.origin,
                    record.seq,
                    topic.policy,
                ) {
                    Pushed::Queued => {
                        self.observer.queued(1);
                        delivered = true;
                    }
                    Pushed::Dropped => self.observer.gap_drop(),
                    Pushed::Closed => {}
                }
            }
            if delivered {
                self.observer.delivered(record.hlc);
            }
        }
    }

    /// Outbox depth over every connection with a subscription (read at scrape time).
    pub fn outbox_depths(&self) -> OutboxDepths {
        let g = self.inner.lock();
        let mut seen = std::collections::HashSet::new();
        let mut d = OutboxDepths::default();
        // By outbox, not connection id: a QUIC `edgesync/2` connection has one outbox
        // per subscription stream, all with the connection's id.
        for sub in g.subs.values() {
            if seen.insert(Arc::as_ptr(&sub.conn)) {
                let depth = sub.conn.outbox.depth() as u64;
                d.queued_frames += depth;
                d.max_frames = d.max_frames.max(depth);
            }
        }
        d
    }

    /// Deliver an ephemeral message (a QUIC datagram publish, `seq` 0) to the live
    /// subscriptions matching its topic, on every transport. Nothing is stored, no
    /// delivered head or version vector changes, no topic is created, and a full outbox
    /// drops the message instead of queueing it (best-effort). Returns the number queued.
    pub fn fanout_ephemeral(&self, msg: &Msg) -> usize {
        debug_assert_eq!(msg.seq, 0, "ephemeral messages carry seq 0");
        let mut g = self.inner.lock();
        let inner = &mut *g;
        inner.stamp += 1;
        let stamp = inner.stamp;
        let subs: &[SubId] = match inner.topics.get(msg.topic.as_str()) {
            Some(t) => &t.subs,
            None => &inner.wild,
        };
        let (mut json, mut msgpack): (Option<Bytes>, Option<Bytes>) = (None, None);
        let mut queued = 0;
        for id in subs {
            let Some(sub) = inner.subs.get(id) else {
                continue;
            };
            if !sub.live
                || !matches(&sub.pattern, &msg.topic)
                || sub.conn.stamp.swap(stamp, Ordering::Relaxed) == stamp
            {
                continue;
            }
            let enc = sub.conn.outbox.encoding();
            let slot = match enc {
                Encoding::Json => &mut json,
                Encoding::MsgPack => &mut msgpack,
            };
            let frame =
                slot.get_or_insert_with(|| Bytes::from(enc.encode(&ServerFrame::Msg(msg.clone()))));
            let ok = sub.conn.outbox.try_push_ephemeral(frame);
            self.observer.ephemeral(ok);
            queued += usize::from(ok);
        }
        queued
    }
}

/// Frames waiting in subscribers' outboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxDepths {
    /// All outboxes together.
    pub queued_frames: u64,
    /// The deepest one.
    pub max_frames: u64,
}

/// A record's push, encoded lazily at most once per encoding.
#[derive(Default)]
struct Encoded {
    json: Option<Bytes>,
    msgpack: Option<Bytes>,
}

impl Encoded {
    fn get(&mut self, record: &Record, enc: Encoding) -> &Bytes {
        let slot = match enc {
            Encoding::Json => &mut self.json,
            Encoding::MsgPack => &mut self.msgpack,
        };
        slot.get_or_insert_with(|| Bytes::from(enc.encode(&ServerFrame::Msg(record.to_msg()))))
    }
}

/// Encode one record as a push read by the catch-up of subscription `sub` (the `id` of
/// its `sub` command): fan-out's push, tagged for that subscription only.
pub fn encode_push(record: &Record, enc: Encoding, sub: u64) -> Bytes {
    let mut msg = record.to_msg();
    msg.sub = Some(sub);
    Bytes::from(enc.encode(&ServerFrame::Msg(msg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use edgesync_protocol::Headers;

    fn rec(topic: &str, seq: u64) -> Arc<Record> {
        Arc::new(Record {
            topic: topic.into(),
            origin: Origin::new("n", 1),
            seq,
            hlc: seq,
            client: "c".into(),
            mid: None,
            publish_key: None,
            headers: Headers::default(),
            payload: Bytes::from_static(b"x"),
        })
    }

    fn broker() -> Broker {
        Broker::new(
            HashMap::new(),
            Arc::new(|_| SlowConsumerPolicy::Gap),
            Arc::new(NoBrokerObserver),
        )
    }

    fn drain(c: &ConnOut) -> Vec<ServerFrame> {
        let mut out = Vec::new();
        c.outbox.drain_into(&mut out, usize::MAX);
        if out.is_empty() {
            return Vec::new();
        }
        Encoding::Json.decode_all(&out).expect("decode")
    }

    #[test]
    fn overlapping_patterns_deliver_once_and_wildcards_see_new_topics() {
        let b = broker();
        let c = ConnOut::new(1, Outbox::new(Encoding::Json, 100, 1 << 20));
        b.subscribe(&c, "a.>", true);
        b.subscribe(&c, "a.b", true);
        b.subscribe(&c, "*.b", true);
        b.fanout(&Arc::new(vec![rec("a.b", 1), rec("a.c", 1), rec("x.y", 1)]));
        let got: Vec<String> = drain(&c)
            .into_iter()
            .map(|f| match f {
                ServerFrame::Msg(m) => m.topic,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec!["a.b".to_string(), "a.c".to_string()]);
    }

    #[test]
    fn ephemeral_reaches_live_subscribers_without_touching_heads() {
        let b = broker();
        let live = ConnOut::new(1, Outbox::new(Encoding::Json, 100, 1 << 20));
        let catching_up = ConnOut::new(2, Outbox::new(Encoding::MsgPack, 100, 1 << 20));
        b.subscribe(&live, "e.*", true);
        b.subscribe(&live, "e.x", true);
        b.subscribe(&catching_up, "e.x", false);
        let msg = Msg {
            topic: "e.x".into(),
            origin: "n".into(),
            epoch: 1,
            seq: 0,
            hlc: 0,
            client: "c".into(),
            mid: None,
            headers: Headers::default(),
            data: edgesync_protocol::Payload::from("p"),
            sub: None,
            queue: None,
            delivery: None,
        };
        assert_eq!(
            b.fanout_ephemeral(&msg),
            1,
            "once per connection, live only"
        );
        assert_eq!(drain(&live).len(), 1);
        assert!(
            b.matching_heads("e.>").iter().all(|(_, h)| h.is_empty()),
            "no head moved"
        );
        let unknown = Msg {
            topic: "e.new".into(),
            ..msg
        };
        assert_eq!(
            b.fanout_ephemeral(&unknown),
            1,
            "wildcards match topics never stored"
        );
        assert!(b.matching_heads("e.new").is_empty(), "no topic created");
    }

    #[test]
    fn a_wildcard_sees_a_topic_first_created_by_an_exact_subscription() {
        let b = broker();
        let wide = ConnOut::new(1, Outbox::new(Encoding::Json, 100, 1 << 20));
        let exact = ConnOut::new(2, Outbox::new(Encoding::Json, 100, 1 << 20));
        b.subscribe(&wide, "s.>", true);
        b.subscribe(&exact, "s.new", true);
        b.fanout(&Arc::new(vec![rec("s.new", 1)]));
        assert_eq!(drain(&exact).len(), 1);
        assert_eq!(drain(&wide).len(), 1, "the wildcard subscriber gets it too");
    }

    #[test]
    fn catching_up_subscription_goes_live_only_at_head() {
        let b = broker();
        let c = ConnOut::new(1, Outbox::new(Encoding::Json, 100, 1 << 20));
        let (id, _) = b.subscribe(&c, "t", false);
        b.fanout(&Arc::new(vec![rec("t", 1), rec("t", 2)]));
        assert!(drain(&c).is_empty(), "not live: nothing fanned out");
        let mut pos = Cursor::new();
        let live = ServerFrame::Live {
            sub: 7,
            topic: "t".into(),
        };
        pos.observe("t", &Origin::new("n", 1), 1);
        assert!(!b.try_go_live(id, &pos, &live));
        assert!(drain(&c).is_empty(), "still catching up: no `live` push");
        pos.observe("t", &Origin::new("n", 1), 2);
        assert!(b.try_go_live(id, &pos, &live));
        b.fanout(&Arc::new(vec![rec("t", 3)]));
        let got = drain(&c);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], live, "`live` comes before the first live push");
        assert!(matches!(&got[1], ServerFrame::Msg(m) if m.seq == 3 && m.sub.is_none()));
        b.unsubscribe(id);
        b.fanout(&Arc::new(vec![rec("t", 4)]));
        assert!(drain(&c).is_empty());
        assert!(b.inner.lock().subs.is_empty());
    }
    /// Wildcards are matched against the catalog (a range for a literal prefix): they
    /// find existing topics with messages, not look-alike prefixes, not `$` topics for a
    /// leading wildcard; an `unsub` releases the empty topic an exact `sub` made, and
    /// the cursor never names empty topics.
    #[test]
    fn wildcards_use_the_catalog_and_empty_topics_are_released() {
        let b = broker();
        let c = ConnOut::new(1, Outbox::new(Encoding::Json, 100, 1 << 20));
        b.fanout(&Arc::new(vec![
            rec("a.x", 1),
            rec("a.y.z", 1),
            rec("ab.x", 1),
            rec("$dlq.p", 1),
        ]));
        let (empty, _) = b.subscribe(&c, "a.empty", true);
        assert_eq!(b.topic_count(), 5);
        let heads = |cursor: &Cursor, t: &str| cursor.topic(t).is_some();
        let (_, cur) = b.subscribe(&c, "a.>", true);
        assert!(heads(&cur, "a.x") && heads(&cur, "a.y.z"));
        assert!(!heads(&cur, "ab.x") && !heads(&cur, "a.empty"));
        let (_, cur) = b.subscribe(&c, ">", true);
        assert!(heads(&cur, "ab.x") && !heads(&cur, "$dlq.p"));
        let (dollar, cur) = b.subscribe(&c, "$dlq.*", true);
        assert!(heads(&cur, "$dlq.p"));
        b.fanout(&Arc::new(vec![rec("a.x", 2), rec("ab.x", 2)]));
        assert_eq!(
            drain(&c).len(),
            2,
            "the live wildcards got each record once"
        );
        b.unsubscribe(empty);
        assert_eq!(b.topic_count(), 5, "a wildcard still lists a.empty");
        b.remove_conn([SubId(2), SubId(3), dollar]);
        assert_eq!(
            b.topic_count(),
            4,
            "the empty topic went with its last subscription"
        );
        assert_eq!(b.catalog.lock().len(), 4);
    }
    /// A topic created after a catching-up wildcard registered is attached by its
    /// creation, read by catch-up, and holds the switch to live until it is read.
    #[test]
    fn a_topic_created_during_catch_up_holds_the_switch_to_live() {
        let b = broker();
        let c = ConnOut::new(1, Outbox::new(Encoding::Json, 100, 1 << 20));
        b.fanout(&Arc::new(vec![rec("w.old", 1)]));
        let (id, _) = b.subscribe(&c, "w.>", false);
        b.fanout(&Arc::new(vec![rec("w.new", 1)]));
        let heads: Vec<String> = b.sub_heads(id).into_iter().map(|(t, _)| t).collect();
        assert_eq!(heads.len(), 2, "{heads:?}");
        let mut pos = Cursor::new();
        pos.observe("w.old", &Origin::new("n", 1), 1);
        let live = ServerFrame::Live {
            sub: 1,
            topic: "w.>".into(),
        };
        assert!(!b.try_go_live(id, &pos, &live), "w.new is not read yet");
        pos.observe("w.new", &Origin::new("n", 1), 1);
        assert!(b.try_go_live(id, &pos, &live));
        b.fanout(&Arc::new(vec![rec("w.new", 2), rec("w.old", 2)]));
        assert_eq!(
            drain(&c).len(),
            3,
            "the `live` push, then live on both, each once"
        );
        b.unsubscribe(id);
        b.fanout(&Arc::new(vec![rec("w.new", 3)]));
        assert!(
            drain(&c).is_empty(),
            "detached from the topic made after it"
        );
    }
    /// The catalog is read in chunks: every name is still seen, with and without a
    /// literal prefix.
    #[test]
    fn catalog_scans_span_chunks() {
        let b = broker();
        let n = CATALOG_CHUNK * 2 + 7;
        let recs: Vec<Arc<Record>> = (0..n).map(|i| rec(&format!("k.t{i:05}"), 1)).collect();
        b.fanout(&Arc::new(recs));
        b.fanout(&Arc::new(vec![rec("j.x", 1), rec("l.x", 1)]));
        assert_eq!(b.catalog_matches("k.>").len(), n);
        assert_eq!(b.catalog_matches(">").len(), n + 2);
        assert_eq!(b.catalog_matches("*.x").len(), 2);
        let c = ConnOut::new(1, Outbox::new(Encoding::Json, 100, 1 << 20));
        let (_, cursor) = b.subscribe(&c, "k.*", true);
        assert_eq!(cursor.topics().count(), n);
    }
}
