//! The gateway's queue groups: [`Group`]s fed from the store, deliveries pushed into
//! members' outboxes, dead letters stored through the pipeline, ack-wait deadlines
//! driven by one timer task, progress durable in the store.
//!
//! # Where the work waits
//!
//! Not in memory: a group holds at most a window of records (about twice its members'
//! windows, bounded by [`MAX_HELD`]) and reads the next ones from the store as members
//! answer. A commit only marks its topics *dirty* for the groups whose pattern matches
//! them. So a group with slow or absent members costs no memory, and nothing is dropped
//! when work piles up: the backlog is the log.
//!
//! # What is durable
//!
//! Per (group, topic, origin) the set of answered seqs (acked, or dead-lettered once the
//! dead letter is stored), as ranges, in the store's key/value keyspace under the
//! reserved prefix `\0q\0` (plugin keys always start with a plugin name, never `\0`).
//! A group's marker key holds its pattern. Writes ride the store's group commit
//! (`store/kv.rs`): an `ack` answered `ok` survives a crash of the process at once and
//! a power loss within about a second. On the first join after a restart the group
//! reloads its answered sets and hands out everything else again — unacked work is
//! redelivered, acked work never is. Delivery counts are not durable: they start again
//! after a restart (docs/queues.md).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;

use edgesync_protocol::topic::matches;
use edgesync_protocol::{ErrorCode, Headers, Msg, Ordering, Origin, QueueAnswer, ServerFrame};
use edgesync_replication::ranges::RangeSet;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::group::{Answered, DeadLetter, Group, GroupOptions, JobKey, MemberId};
use crate::broker::ConnOut;
use crate::metrics::Metrics;
use crate::model::{Publish, QueueJoin, Refusal, StartAt};
use crate::pipeline::Pipeline;
use crate::store::{Committed, Record, Store};

/// Most records one group holds in memory (ready, delayed and in flight).
pub const MAX_HELD: usize = 1024;
/// Most bytes one read from the store brings into a group.
const READ_BYTES: usize = 4 << 20;

/// The current time for groups: tokio's clock, so tests can pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Progress of one (topic, origin) stream in one group.
#[derive(Debug, Default)]
struct StreamPos {
    /// Seqs answered for good (acked, dead letter stored, or skipped: retention).
    done: RangeSet,
    /// Highest seq read into the group.
    fetched: u64,
}

struct GroupRt {
    pattern: String,
    group: Group<Arc<Record>>,
    outs: HashMap<MemberId, Arc<ConnOut>>,
    streams: HashMap<(String, Origin), StreamPos>,
    /// Topics that may hold records past `fetched`.
    dirty: BTreeSet<String>,
    /// Where the next fill starts among the dirty topics (round robin).
    next_topic: Option<String>,
}

impl GroupRt {
    /// How many records the group may hold: twice its members' windows, within bounds.
    fn target(&self) -> usize {
        (self.group.windows() * 2).clamp(16, MAX_HELD)
    }
}

/// Every queue group of this gateway with at least one member.
pub struct Queues {
    groups: Mutex<HashMap<String, GroupRt>>,
    pipeline: Arc<Pipeline>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Most groups at once (also bounds the metrics' `group` label).
    max_groups: usize,
    /// `[[queue]]`: groups served by one node of the cluster (group → node id).
    owners: HashMap<String, String>,
    me: Weak<Queues>,
    /// Woken when a deadline may have moved earlier.
    wake: Notify,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

/// One group as the admin API sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupInfo {
    pub group: String,
    pub pattern: String,
    pub members: usize,
    /// Records of the group's topics not answered yet (in the store or held).
    pub pending: u64,
    pub in_flight: usize,
    pub ordering: &'static str,
    pub ack_wait_ms: u64,
    pub max_deliveries: u32,
}

/// The marker's value: what the group was created with.
#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    pattern: String,
}

fn prefix(group: &str) -> Vec<u8> {
    let mut k = b"\0q\0".to_vec();
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}

fn stream_key(group: &str, topic: &str, origin: &Origin) -> Vec<u8> {
    let mut k = prefix(group);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(origin.node.as_bytes());
    k.push(0);
    k.extend_from_slice(origin.epoch.to_string().as_bytes());
    k
}

fn parse_stream_key(group: &str, key: &[u8]) -> Option<(String, Origin)> {
    let rest = key.strip_prefix(prefix(group).as_slice())?;
    let mut parts = rest.split(|b| *b == 0);
    let topic = std::str::from_utf8(parts.next()?).ok()?;
    let node = std::str::from_utf8(parts.next()?).ok()?;
    let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    (parts.next().is_none() && !topic.is_empty())
        .then(|| (topic.to_string(), Origin::new(node.to_string(), epoch)))
}

impl Queues {
    pub fn new(
        pipeline: Arc<Pipeline>,
        store: Store,
        metrics: Arc<Metrics>,
        max_groups: usize,
    ) -> Arc<Self> {
        Self::with_owners(pipeline, store, metrics, max_groups, HashMap::new())
    }

    /// [`Queues::new`] with `[[queue]]` owners (group → node id).
    pub fn with_owners(
        pipeline: Arc<Pipeline>,
        store: Store,
        metrics: Arc<Metrics>,
        max_groups: usize,
        owners: HashMap<String, String>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Queues {
            groups: Mutex::new(HashMap::new()),
            pipeline,
            store,
            metrics,
            max_groups,
            owners,
            me: me.clone(),
            wake: Notify::new(),
        })
    }

    /// Run the ack-wait timer until `shutdown`.
    pub fn spawn_timer(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let q = self.clone();
        tokio::spawn(async move {
            loop {
                let next = q.next_deadline();
                let sleep = async {
                    match next {
                        Some(t) => {
                            tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = q.wake.notified() => {}
                    () = sleep => q.expire(),
                }
            }
        });
    }

    /// Whether `join` may join its group with `pattern` (the group's pattern and options).
    ///
    /// # Errors
    /// `queue_conflict`, as [`Queues::join`]; `too_many_subscriptions` when the gateway has
    /// `max_queue_groups` groups and this would be a new one.
    pub fn check(&self, pattern: &str, join: &QueueJoin) -> Result<(), Refusal> {
        if let Some(owner) = self.owners.get(&join.group)
            && owner != self.store.node()
        {
            return Err(Refusal::new(
                ErrorCode::QueueConflict,
                format!(
                    "queue {:?} is served by node {owner:?} ([[queue]] owner); join it there",
                    join.group
                ),
            ));
        }
        let groups = self.groups.lock();
        match groups.get(&join.group) {
            Some(rt) => conflict(&join.group, rt, pattern, options(join)),
            None if groups.len() >= self.max_groups => Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "this gateway serves {} queue groups (limits.max_queue_groups)",
                    self.max_groups
                ),
            )),
            None => Ok(()),
        }
    }

    /// `out` joins the group `join.group` with `pattern`. The first member of a group
    /// that is not in memory loads its durable progress, or creates the group at
    /// `start` when it has none (or had another pattern).
    ///
    /// # Errors
    /// `queue_conflict` when the group exists with another pattern or other options;
    /// `storage_unavailable` when its progress cannot be read or written.
    pub fn join(
        &self,
        out: &Arc<ConnOut>,
        pattern: &str,
        start: &StartAt,
        join: &QueueJoin,
    ) -> Result<(), Refusal> {
        let opts = options(join);
        let mut groups = self.groups.lock();
        if !groups.contains_key(&join.group) {
            let rt = self.load(&join.group, pattern, start, opts)?;
            groups.insert(join.group.clone(), rt);
        }
        let Some(rt) = groups.get_mut(&join.group) else {
            return Ok(()); // inserted above
        };
        conflict(&join.group, rt, pattern, opts)?;
        rt.group.join(out.id, join.max_unacked);
        rt.outs.insert(out.id, out.clone());
        self.fill(&join.group, rt);
        pump(&join.group, rt, &self.metrics);
        drop(groups);
        self.wake.notify_one();
        Ok(())
    }

    /// Connection `conn` left `group` (`unsub`): what it held is delivered again.
    pub fn leave(&self, conn: MemberId, group: &str) {
        self.leave_where(conn, |name| name == group);
    }

    /// Connection `conn` is gone: everything it held in any group is delivered again.
    /// A group left without members leaves memory (its progress stays in the store).
    pub fn leave_conn(&self, conn: MemberId) {
        self.leave_where(conn, |_| true);
    }

    fn leave_where(&self, conn: MemberId, which: impl Fn(&str) -> bool) {
        let mut groups = self.groups.lock();
        let mut empty = Vec::new();
        for (name, rt) in groups.iter_mut() {
            if which(name) && rt.outs.remove(&conn).is_some() {
                let gave_back = rt.group.leave(conn);
                self.metrics
                    .queue_redeliveries
                    .with_label_values(&[name])
                    .inc_by(gave_back as u64);
                if rt.outs.is_empty() {
                    empty.push(name.clone());
                } else {
                    pump(name, rt, &self.metrics);
                }
            }
        }
        for name in empty {
            groups.remove(&name);
            self.metrics.forget_queue(&name);
        }
        drop(groups);
        self.wake.notify_one();
    }

    /// A committed batch: groups whose pattern matches one of its topics read on.
    pub fn on_commit(&self, batch: &Committed) {
        let mut groups = self.groups.lock();
        if groups.is_empty() {
            return;
        }
        for (name, rt) in groups.iter_mut() {
            let mut hit = false;
            for r in batch.iter().filter(|r| matches(&rt.pattern, &r.topic)) {
                rt.dirty.insert(r.topic.clone());
                hit = true;
            }
            if hit {
                self.fill(name, rt);
                pump(name, rt, &self.metrics);
            }
        }
        drop(groups);
        self.wake.notify_one();
    }

    /// A member's `ack`/`nak`/`progress`/`term`.
    ///
    /// # Errors
    /// `not_in_flight` when connection `conn` does not hold that delivery;
    /// `storage_unavailable` when an ack cannot be recorded (the delivery is then
    /// handed out again).
    pub fn answer(&self, conn: MemberId, a: &QueueAnswer) -> Result<(), Refusal> {
        let not_held = || {
            Refusal::new(
                ErrorCode::NotInFlight,
                format!(
                    "{} {} seq {} is not held by this connection",
                    a.queue, a.topic, a.seq
                ),
            )
        };
        let mut groups = self.groups.lock();
        let rt = groups.get_mut(&a.queue).ok_or_else(not_held)?;
        if !rt.outs.contains_key(&conn) {
            return Err(not_held());
        }
        let key = JobKey {
            topic: a.topic.clone(),
            origin: Origin::new(a.origin.clone(), a.epoch),
            seq: a.seq,
        };
        let done = rt
            .group
            .answer(conn, &key, &a.verdict, now())
            .map_err(|_| not_held())?;
        let mut result = Ok(());
        match done {
            Answered::Acked { held } => {
                self.metrics
                    .queue_ack_seconds
                    .with_label_values(&[&a.queue])
                    .observe(held.as_secs_f64());
                if let Err(r) = self.mark_done(&a.queue, rt, &key) {
                    result = Err(r);
                }
            }
            Answered::Requeued => {
                self.metrics
                    .queue_redeliveries
                    .with_label_values(&[&a.queue])
                    .inc();
            }
            Answered::Extended => {}
            Answered::Dead(dead) => self.dead_letter(&a.queue, dead),
        }
        self.fill(&a.queue, rt);
        pump(&a.queue, rt, &self.metrics);
        drop(groups);
        self.wake.notify_one();
        result
    }

    /// The groups in memory (those with members), for the admin API.
    pub fn list(&self) -> Vec<GroupInfo> {
        let groups = self.groups.lock();
        let mut out: Vec<GroupInfo> = groups
            .iter()
            .map(|(name, rt)| {
                let o = rt.group.options();
                GroupInfo {
                    group: name.clone(),
                    pattern: rt.pattern.clone(),
                    members: rt.group.members(),
                    pending: self.backlog(name, rt),
                    in_flight: rt.group.in_flight(),
                    ordering: match o.ordering {
                        Ordering::Strict => "strict",
                        Ordering::Parallel => "parallel",
                    },
                    ack_wait_ms: u64::try_from(o.ack_wait.as_millis()).unwrap_or(u64::MAX),
                    max_deliveries: o.max_deliveries,
                }
            })
            .collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }

    /// Set the per-group gauges (called at scrape time).
    pub fn sample(&self) {
        for g in self.list() {
            let pending = i64::try_from(g.pending).unwrap_or(i64::MAX);
            self.metrics
                .queue_pending
                .with_label_values(&[&g.group])
                .set(pending);
            self.metrics
                .queue_in_flight
                .with_label_values(&[&g.group])
                .set(g.in_flight as i64);
            self.metrics
                .queue_members
                .with_label_values(&[&g.group])
                .set(g.members as i64);
        }
    }

    /// Whether this gateway hands out `origin`'s records in `group`: all of them when
    /// it owns the group (`[[queue]]`), else only those first stored here — so in a
    /// cluster no message is handed out twice in one group.
    fn serves(&self, group: &str, origin: &Origin) -> bool {
        match self.owners.get(group) {
            Some(owner) => owner == self.store.node(),
            None => origin.node == self.store.node(),
        }
    }

    /// Records of the group's streams not answered yet: per stream, the head minus
    /// what is done (retention may have removed some of them since).
    fn backlog(&self, group: &str, rt: &GroupRt) -> u64 {
        let mut total = 0;
        for (topic, vv) in self.store.heads() {
            if !matches(&rt.pattern, &topic) {
                continue;
            }
            for (origin, head) in vv {
                if !self.serves(group, &origin) {
                    continue;
                }
                let done = rt
                    .streams
                    .get(&(topic.clone(), origin))
                    .map_or(0, |s| s.done.intersect_range(1, head).len());
                total += head.saturating_sub(done);
            }
        }
        total
    }

    /// Read the group's durable progress, or create it at `start`.
    fn load(
        &self,
        group: &str,
        pattern: &str,
        start: &StartAt,
        opts: GroupOptions,
    ) -> Result<GroupRt, Refusal> {
        let unavailable = |e: String| {
            Refusal::new(
                ErrorCode::StorageUnavailable,
                format!("queue {group:?}: progress: {e}"),
            )
        };
        let pre = prefix(group);
        let mut keys = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .kv_scan(&pre, after.as_deref(), 1024)
                .map_err(|e| unavailable(e.to_string()))?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            keys.extend(page);
        }
        let marker: Option<Marker> = keys
            .iter()
            .find(|(k, _)| k.as_slice() == pre.as_slice())
            .and_then(|(_, v)| serde_json::from_slice(v).ok());
        let mut rt = GroupRt {
            pattern: pattern.to_string(),
            group: Group::new(opts),
            outs: HashMap::new(),
            streams: HashMap::new(),
            dirty: BTreeSet::new(),
            next_topic: None,
        };
        let heads = self.store.heads();
        if marker.is_some_and(|m| m.pattern == pattern) {
            for (k, v) in &keys {
                let Some(id) = parse_stream_key(group, k) else {
                    continue;
                };
                let Ok(done) = serde_json::from_slice::<RangeSet>(v) else {
                    tracing::error!(queue = %group, topic = %id.0, "queue progress unreadable; the stream is handed out again from its start");
                    continue;
                };
                let fetched = done.high_water();
                rt.streams.insert(id, StreamPos { done, fetched });
            }
        } else {
            // New (or redefined with another pattern): drop any old progress, start
            // at `start`, and write down where that is.
            let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                keys.into_iter().map(|(k, _)| (k, None)).collect();
            let marker = serde_json::to_vec(&Marker {
                pattern: pattern.to_string(),
            })
            .map_err(|e| unavailable(e.to_string()))?;
            writes.push((pre.clone(), Some(marker)));
            for (topic, vv) in heads.iter().filter(|(t, _)| matches(pattern, t)) {
                for (origin, head) in vv {
                    let upto = match start {
                        StartAt::Latest => *head,
                        StartAt::Earliest => 0,
                        StartAt::Last(n) => head.saturating_sub(*n),
                        StartAt::Cursor(c) => c.position(topic, origin).min(*head),
                    };
                    let mut done = RangeSet::new();
                    if upto > 0 {
                        done.insert_range(1, upto);
                    }
                    let v = serde_json::to_vec(&done).map_err(|e| unavailable(e.to_string()))?;
                    writes.push((stream_key(group, topic, origin), Some(v)));
                    rt.streams.insert(
                        (topic.clone(), origin.clone()),
                        StreamPos {
                            done,
                            fetched: upto,
                        },
                    );
                }
            }
            self.store
                .kv_write(&writes)
                .map_err(|e| unavailable(e.to_string()))?;
        }
        rt.dirty = heads
            .keys()
            .filter(|t| matches(pattern, t))
            .cloned()
            .collect();
        Ok(rt)
    }

    /// Read records from the dirty topics until the group holds its target.
    fn fill(&self, name: &str, rt: &mut GroupRt) {
        let chunk = match rt.group.options().ordering {
            Ordering::Strict => 8,
            Ordering::Parallel => 64,
        };
        // Refill in chunks, once the group is down to half its target: one read per
        // answer would cost a store read per message.
        if rt.group.pending() > rt.target() / 2 {
            return;
        }
        let mut passes = 0;
        while rt.group.pending() < rt.target() && !rt.dirty.is_empty() && passes < 64 {
            passes += 1;
            let topic = match &rt.next_topic {
                Some(t) => rt
                    .dirty
                    .range::<String, _>((std::ops::Bound::Excluded(t), std::ops::Bound::Unbounded))
                    .next()
                    .or_else(|| rt.dirty.iter().next())
                    .cloned(),
                None => rt.dirty.iter().next().cloned(),
            };
            let Some(topic) = topic else { break };
            rt.next_topic = Some(topic.clone());
            let after: std::collections::BTreeMap<Origin, u64> = rt
                .streams
                .iter()
                .filter(|((t, _), _)| *t == topic)
                .map(|((_, o), s)| (o.clone(), s.fetched))
                .collect();
            let room = rt.target() - rt.group.pending();
            let batch = match self.store.read_bounded(
                &topic,
                &after,
                None,
                room.min(chunk),
                READ_BYTES,
            ) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(queue = %name, topic = %topic, error = %e, "queue group cannot read its topic; retried on the next commit or answer");
                    break;
                }
            };
            for m in &batch.missing {
                tracing::warn!(queue = %name, topic = %topic, origin = %m.origin, from = m.from, to = m.to, corrupt = m.corrupt, "queue messages gone before they were handed out (retention or damage); skipped");
                self.metrics
                    .queue_skipped
                    .with_label_values(&[name])
                    .inc_by(m.to + 1 - m.from);
                let s = rt
                    .streams
                    .entry((topic.clone(), m.origin.clone()))
                    .or_default();
                s.done.insert_range(m.from, m.to);
            }
            let got = batch.records.len();
            for r in batch.records {
                let s = rt
                    .streams
                    .entry((topic.clone(), r.origin.clone()))
                    .or_default();
                s.fetched = s.fetched.max(r.seq);
                if s.done.contains(r.seq) || !self.serves(name, &r.origin) {
                    continue;
                }
                let key = JobKey {
                    topic: topic.clone(),
                    origin: r.origin.clone(),
                    seq: r.seq,
                };
                rt.group.offer(key, Arc::new(r));
            }
            for (origin, pos) in batch.positions {
                let s = rt.streams.entry((topic.clone(), origin)).or_default();
                s.fetched = s.fetched.max(pos);
            }
            if !batch.more && got < room.min(chunk) {
                rt.dirty.remove(&topic);
            }
        }
    }

    /// Record that `key` is answered for good, durably.
    fn mark_done(&self, group: &str, rt: &mut GroupRt, key: &JobKey) -> Result<(), Refusal> {
        let s = rt
            .streams
            .entry((key.topic.clone(), key.origin.clone()))
            .or_default();
        s.done.insert(key.seq);
        let v = serde_json::to_vec(&s.done).unwrap_or_default();
        self.store
            .kv_write(&[(stream_key(group, &key.topic, &key.origin), Some(v))])
            .map_err(|e| {
                tracing::error!(queue = %group, topic = %key.topic, seq = key.seq, error = %e, "queue ack not recorded; the message will be delivered again");
                Refusal::new(
                    ErrorCode::StorageUnavailable,
                    format!("ack not recorded: {e}"),
                )
                })
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .lock()
            .values()
            .filter_map(|rt| rt.group.next_deadline())
            .min()
    }

    fn expire(&self) {
        let t = now();
        let mut groups = self.groups.lock();
        for (name, rt) in groups.iter_mut() {
            let before = rt.group.in_flight();
            for dead in rt.group.expire(t) {
                self.dead_letter(name, dead);
            }
            let timed_out = before.saturating_sub(rt.group.in_flight());
            self.metrics
                .queue_redeliveries
                .with_label_values(&[name])
                .inc_by(timed_out as u64);
            self.fill(name, rt);
            pump(name, rt, &self.metrics);
        }
    }

    /// Store `dead` in `$dlq.queue.<group>` with why, in headers (no hooks: it is the
    /// gateway's own record, like a plugin's dead letter); once stored, the message is
    /// answered for good. If storing fails it stays unanswered and is handed out again
    /// when the group next loads.
    fn dead_letter(&self, group: &str, dead: DeadLetter<Arc<Record>>) {
        self.metrics
            .queue_dead_lettered
            .with_label_values(&[group])
            .inc();
        let r = &dead.msg;
        let mut h: Headers = r.headers.clone();
        h.0.push(("queue-topic".into(), r.topic.clone()));
        h.0.push(("queue-origin".into(), r.origin.node.clone()));
        h.0.push(("queue-epoch".into(), r.origin.epoch.to_string()));
        h.0.push(("queue-seq".into(), r.seq.to_string()));
        h.0.push(("queue-deliveries".into(), dead.deliveries.to_string()));
        h.0.push(("queue-reason".into(), dead.reason.clone()));
        let req = Publish {
            topic: format!("$dlq.queue.{group}"),
            client: r.client.clone(),
            principal: None,
            mid: None,
            headers: h,
            payload: r.payload.clone(),
        };
        let fut = self.pipeline.append(req);
        let me = self.me.clone();
        let group = group.to_string();
        tokio::spawn(async move {
            let key = dead.key;
            match fut.await {
                Ok(ack) => {
                    tracing::warn!(queue = %group, topic = %key.topic, seq = key.seq, dlq_seq = ack.seq, reason = %dead.reason, "queue message dead-lettered");
                    let Some(q) = me.upgrade() else { return };
                    let mut groups = q.groups.lock();
                    match groups.get_mut(&group) {
                        Some(rt) => {
                            let _ = q.mark_done(&group, rt, &key);
                        }
                        None => {
                            // The group left memory meanwhile: record it in the store.
                            let _ = q.mark_done_cold(&group, &key);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(queue = %group, topic = %key.topic, seq = key.seq, error = %e, "dead letter not stored; the message stays unanswered and is handed out again when the group reloads");
                }
            }
        });
    }

    /// [`Queues::mark_done`] for a group not in memory.
    fn mark_done_cold(&self, group: &str, key: &JobKey) -> Result<(), String> {
        let k = stream_key(group, &key.topic, &key.origin);
        let mut done: RangeSet = match self.store.kv_get(&k).map_err(|e| e.to_string())? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| e.to_string())?,
            None => RangeSet::new(),
        };
        done.insert(key.seq);
        let v = serde_json::to_vec(&done).map_err(|e| e.to_string())?;
        self.store
            .kv_write(&[(k, Some(v))])
            .map_err(|e| e.to_string())
    }
}

fn options(join: &QueueJoin) -> GroupOptions {
    GroupOptions {
        ack_wait: std::time::Duration::from_millis(join.ack_wait_ms),
        max_deliveries: join.max_deliveries,
        ordering: join.ordering,
    }
}

/// `queue_conflict` unless the group has this pattern and these options.
fn conflict(name: &str, rt: &GroupRt, pattern: &str, opts: GroupOptions) -> Result<(), Refusal> {
    if rt.pattern == pattern && rt.group.options() == opts {
        return Ok(());
    }
    Err(Refusal::new(
        ErrorCode::QueueConflict,
        format!(
            "queue {name:?} is {:?} with {:?}; this sub asks {pattern:?} with {opts:?}",
            rt.pattern,
            rt.group.options()
        ),
    ))
}

/// Hand out what the group can and push each delivery to its member.
fn pump(name: &str, rt: &mut GroupRt, metrics: &Metrics) {
    for d in rt.group.assign(now()) {
        let Some(out) = rt.outs.get(&d.member) else {
            continue;
        };
        let mut msg: Msg = d.msg.to_msg();
        msg.queue = Some(name.to_string());
        msg.delivery = Some(d.delivery);
        metrics.queue_delivered.with_label_values(&[name]).inc();
        // A reply-class push: never dropped; bounded by the member's window.
        out.outbox.push_reply(&ServerFrame::Msg(msg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_round_trip_and_stay_under_their_group() {
        let o = Origin::new("edge-1".to_string(), 7);
        let k = stream_key("resize", "jobs.img", &o);
        assert!(k.starts_with(&prefix("resize")));
        assert!(!k.starts_with(&prefix("resiz")));
        assert_eq!(
            parse_stream_key("resize", &k),
            Some(("jobs.img".to_string(), o))
        );
        assert_eq!(parse_stream_key("resize", &prefix("resize")), None);
        assert_eq!(parse_stream_key("other", &k), None);
    }
}
