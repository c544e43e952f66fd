//! The simulated cluster: model stores, simulated connections, faults and the
//! invariant checker, all driven by one seeded RNG. The replication core under
//! test is the real [`Link`]; only the store and the network are models.
//!
//! # How simulated faults map to real ones
//!
//! | simulation | real system |
//! |---|---|
//! | a connection torn down (drop) | a lost packet the QUIC connection could not recover: idle timeout, reset; the driver dials again and a new `Link` starts with summary, diff, stream |
//! | partition of an edge, heal | a network partition; no dial succeeds until healed |
//! | per-stream FIFO with random delay; random choice among streams | QUIC: ordered reliable streams, no order across streams |
//! | duplicates | a resend after a reconnect (records in flight were never acked), and the same record from two peers in a mesh |
//! | pending ops lost on crash | `kill -9` / power loss: what was written but not fsynced is gone |
//! | epoch bump on restart | the store could not prove its tail intact |
//! | retention squeeze | the store deleted old records while a peer lagged (past the hold) |
//! | bit rot | a record's bytes changed on disk; found by a read's CRC check or a scrub |
//! | clock skew | wall clocks off by seconds (HLC of publishes and LWW writes) |

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use edgesync_protocol::Origin;
use edgesync_replication::digest::{self, BucketDigest, Entry, OriginDigest};
use edgesync_replication::link::{
    Action, ApplyBatch, ApplyOutcome, CloseReason, Committed, Link, LinkConfig, LinkEvent,
    LocalView, ReadRequest, ReadResult,
};
use edgesync_replication::lww::{LwwEntry, LwwMap, Merge};
use edgesync_replication::wire::{Direction, RecordBody, StreamId};
use edgesync_replication::{RangeSet, VersionVector};

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5eed_5eed_5eed_5eed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// How nodes are linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Mesh,
    Hub,
    Chain,
    Loop,
}

impl Topology {
    fn edges(self, n: usize) -> Vec<(usize, usize)> {
        match self {
            Topology::Mesh => (0..n)
                .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
                .collect(),
            // Edges dial the hub (node 0), as an edge behind NAT would.
            Topology::Hub => (1..n).map(|b| (b, 0)).collect(),
            Topology::Chain => (0..n - 1).map(|a| (a, a + 1)).collect(),
            Topology::Loop => (0..n).map(|a| (a, (a + 1) % n)).collect(),
        }
    }
}

/// A deliberately broken driver, to show the checker is not vacuous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Complete an apply (and so ack it) before the fsync that makes it durable.
    AckBeforeDurable,
    /// Drop `truncated`: no gap marker, the vector not advanced.
    IgnoreTruncated,
    /// Store a record without covering it in the vector.
    ForgetVector,
    /// A crash loses durable records too (a disk that lies about fsync).
    LoseDurableTail,
}

/// Everything a seed decides up front.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    pub nodes: usize,
    pub topology: Topology,
    pub topics: usize,
    pub publishes: u64,
    pub fault_steps: u64,
    pub lanes: u16,
    pub window_records: u64,
    pub window_bytes: u64,
    pub batch_records: u32,
    pub max_drift_ms: u64,
    /// In a mesh, one edge may carry less: one way only, or only topic `t.0`
    /// (the others still reach both ends through the rest of the mesh).
    pub restricted: Option<(usize, Restriction)>,
    pub bug: Option<Bug>,
}

/// How a restricted mesh edge differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// The dialer pushes, the acceptor pulls.
    OneWay,
    /// Both sides carry only `t.0`.
    OnlyT0,
}

impl Params {
    pub fn from_seed(seed: u64) -> Self {
        let mut p = Params::base(seed);
        // A separate stream, so adding this did not change older seeds' draws.
        let mut r = Rng::new(seed ^ 0xed9e_0000_0000_0001);
        if p.topology == Topology::Mesh && r.chance(500) {
            let edges = p.nodes * (p.nodes - 1) / 2;
            let kind = if r.chance(500) {
                Restriction::OneWay
            } else {
                Restriction::OnlyT0
            };
            p.restricted = Some((r.below(edges as u64) as usize, kind));
        }
        p
    }

    fn base(seed: u64) -> Self {
        let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        let topology = [
            Topology::Mesh,
            Topology::Hub,
            Topology::Chain,
            Topology::Loop,
        ][r.below(4) as usize];
        let tiny = r.chance(300);
        Params {
            seed,
            nodes: r.range(3, 5) as usize,
            topology,
            topics: r.range(1, 3) as usize,
            publishes: r.range(10, 60),
            fault_steps: r.range(300, 1500),
            lanes: r.range(1, 4) as u16,
            window_records: if tiny { r.range(1, 3) } else { r.range(8, 256) },
            window_bytes: if tiny {
                r.range(1, 64)
            } else {
                r.range(256, 1 << 16)
            },
            batch_records: r.range(1, 32) as u32,
            max_drift_ms: r.range(200, 2000),
            restricted: None,
            bug: None,
        }
    }
}

/// What one (topic, origin, seq) holds on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Record {
        crc: u32,
        hlc: u64,
        bytes: Bytes,
        /// The bytes on disk no longer match `crc` (bit rot).
        rotten: bool,
        /// The store has found the rot (read or scrub) and dropped it from its digest.
        detected: bool,
    },
    Gap,
}

#[derive(Debug, Clone, Default)]
struct TopicData {
    vv: VersionVector,
    entries: BTreeMap<(Origin, u64), Kind>,
    floors: BTreeMap<Origin, u64>,
    digests: BTreeMap<Origin, OriginDigest>,
    /// What a subscriber of this node has been delivered, per origin (a prefix).
    delivered: BTreeMap<Origin, u64>,
}

impl TopicData {
    fn floor(&self, o: &Origin) -> u64 {
        self.floors.get(o).copied().unwrap_or(1)
    }
}

#[derive(Debug)]
enum Op {
    Publish {
        topic: String,
        seq: u64,
        hlc: u64,
        bytes: Bytes,
    },
    Apply {
        conn: u64,
        side: usize,
        batch: ApplyBatch,
    },
}

/// A model node: a store with a durable part and a volatile queue of writes.
#[derive(Debug)]
pub struct Node {
    name: String,
    epoch: u64,
    up: bool,
    restart_at: u64,
    topics: BTreeMap<String, TopicData>,
    lww: LwwMap,
    /// Written, not yet fsynced: lost on a crash.
    pending: Vec<Op>,
    /// Reads the driver has been asked for.
    reads: Vec<(u64, usize, ReadRequest)>,
    /// Local seq allocation (volatile; recomputed from the vector on restart).
    next_seq: BTreeMap<String, u64>,
    hlc_last: u64,
    skew_ms: i64,
    /// Records found corrupt since the last fan-out to the links.
    found_corrupt: Vec<(String, Origin, u64)>,
}

impl Node {
    fn origin(&self) -> Origin {
        Origin::new(self.name.clone(), self.epoch)
    }

    fn wall_ms(&self, now: u64) -> u64 {
        (1_700_000_000_000i64 + now as i64 + self.skew_ms).max(0) as u64
    }

    fn tick_hlc(&mut self, now: u64) -> u64 {
        let wall = self.wall_ms(now) << 16;
        self.hlc_last = (self.hlc_last + 1).max(wall);
        self.hlc_last
    }

    /// Answer a read from durable state (finding rot on the way).
    fn read(&mut self, req: &ReadRequest) -> ReadResult {
        let mut out = ReadResult {
            end: req.to,
            ..ReadResult::default()
        };
        let Some(td) = self.topics.get_mut(&req.topic) else {
            return out;
        };
        let floor = td.floor(&req.origin);
        let mut bytes = 0u64;
        let mut trunc = RangeSet::new();
        for seq in req.from..=req.to {
            if out.records.len() as u32 >= req.max_records
                || (bytes >= req.max_bytes && !out.records.is_empty())
            {
                out.end = seq - 1;
                break;
            }
            if seq < floor {
                trunc.insert(seq);
                continue;
            }
            match td.entries.get_mut(&(req.origin.clone(), seq)) {
                Some(Kind::Gap) => {
                    trunc.insert(seq);
                }
                Some(Kind::Record {
                    crc,
                    hlc,
                    bytes: b,
                    rotten,
                    detected,
                }) => {
                    if *rotten {
                        out.corrupt.push(seq);
                        if !*detected {
                            *detected = true;
                            let el = Entry::Record { crc: *crc };
                            if let Some(d) = td.digests.get_mut(&req.origin) {
                                d.remove(&req.origin, seq, el);
                            }
                            self.found_corrupt
                                .push((req.topic.clone(), req.origin.clone(), seq));
                        }
                    } else {
                        bytes += b.len() as u64;
                        out.records.push(RecordBody {
                            seq,
                            hlc: *hlc,
                            crc: *crc,
                            bytes: b.clone(),
                        });
                    }
                }
                None => {}
            }
        }
        out.truncated = trunc.ranges().to_vec();
        out
    }
}

impl LocalView for Node {
    fn topics(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    fn vector(&self, topic: &str) -> Option<VersionVector> {
        self.topics.get(topic).map(|t| t.vv.clone())
    }

    fn digest(&self, topic: &str, origin: &Origin) -> Option<OriginDigest> {
        self.topics.get(topic)?.digests.get(origin).cloned()
    }

    fn lww_digests(&self) -> Vec<(String, u32, BucketDigest)> {
        self.lww
            .digests()
            .iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|((ns, b), d)| (ns.clone(), *b, *d))
            .collect()
    }

    fn lww_bucket(&self, namespace: &str, bucket: u32) -> Vec<LwwEntry> {
        self.lww.bucket_entries(namespace, bucket)
    }

    fn corrupt(&self) -> Vec<(String, Origin, u64)> {
        let mut out = Vec::new();
        for (t, td) in &self.topics {
            for ((o, s), k) in &td.entries {
                if matches!(
                    k,
                    Kind::Record {
                        rotten: true,
                        detected: true,
                        ..
                    }
                ) {
                    out.push((t.clone(), o.clone(), *s));
                }
            }
        }
        out
    }
}

/// The bytes of a record: its identity and a unique publish id, so a seq reused
/// after a crash (never visible before) makes a different record.
fn record_bytes(topic: &str, o: &Origin, seq: u64, publish_id: u64) -> Bytes {
    Bytes::from(format!("{topic}|{}|{}|{seq}|{publish_id}", o.node, o.epoch))
}

fn record_identity_ok(bytes: &[u8], topic: &str, o: &Origin, seq: u64) -> bool {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return false;
    };
    let want = format!("{topic}|{}|{}|{seq}|", o.node, o.epoch);
    s.starts_with(&want)
}

#[derive(Debug)]
struct Edge {
    a: usize,
    b: usize,
    cut: bool,
    conn: Option<u64>,
    redial_at: u64,
}

#[derive(Debug)]
struct Conn {
    edge: usize,
    nodes: [usize; 2],
    links: [Link; 2],
    /// Frames in flight to side `.0` on stream `.1`: (deliver at, body).
    queues: BTreeMap<(usize, StreamId), VecDeque<(u64, Bytes)>>,
}

/// Counts for the report.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub steps: u64,
    pub delivered_frames: u64,
    pub publishes_acked: u64,
    pub connections: u64,
    pub crashes: u64,
    pub epoch_bumps: u64,
    pub wipes: u64,
    pub corrupt_to_gap: u64,
    pub partitions: u64,
    pub drops: u64,
    pub squeezes: u64,
    pub rot: u64,
    pub gaps_received: u64,
    pub digest_mismatches: u64,
    pub lww_clamped: u64,
    pub quiesce_steps: u64,
}

pub struct World {
    pub p: Params,
    rng: Rng,
    /// A second stream for faults added later, so older seeds keep their draws.
    rng2: Rng,
    /// Acked publishes whose only durable copies were on a wiped disk.
    lost_with_disk: BTreeSet<(String, Origin, u64)>,
    /// Digest rounds a detected corrupt record has gone unrepaired, per node.
    corrupt_age: BTreeMap<(usize, String, Origin, u64), u32>,
    now: u64,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    publish_id: u64,
    /// Acked publishes: (topic, origin, seq) → crc.
    acked: BTreeMap<(String, Origin, u64), u32>,
    /// Every durable record ever seen anywhere: its one true crc.
    identity: BTreeMap<(String, Origin, u64), u32>,
    pub violations: Vec<String>,
    /// The fault schedule and other notable events, for the failure report.
    pub log: Vec<String>,
    pub stats: Stats,
}

const CLUSTER: &str = "sim";
const DIGEST_INTERVAL_MS: u64 = 2_000;

impl World {
    pub fn new(p: Params) -> Self {
        let mut rng = Rng::new(p.seed);
        let seed2 = p.seed ^ 0x0d15_c000_0000_0002;
        let nodes = (0..p.nodes)
            .map(|i| Node {
                name: format!("n{i}"),
                epoch: 1,
                up: true,
                restart_at: 0,
                topics: BTreeMap::new(),
                lww: LwwMap::new(),
                pending: Vec::new(),
                reads: Vec::new(),
                next_seq: BTreeMap::new(),
                hlc_last: 0,
                skew_ms: rng.range(0, 6000) as i64 - 3000,
                found_corrupt: Vec::new(),
            })
            .collect();
        let edges = p
            .topology
            .edges(p.nodes)
            .into_iter()
            .map(|(a, b)| Edge {
                a,
                b,
                cut: false,
                conn: None,
                redial_at: 0,
            })
            .collect();
        World {
            p,
            rng,
            rng2: Rng::new(seed2),
            lost_with_disk: BTreeSet::new(),
            corrupt_age: BTreeMap::new(),
            now: 0,
            nodes,
            edges,
            conns: BTreeMap::new(),
            next_conn: 1,
            publish_id: 0,
            acked: BTreeMap::new(),
            identity: BTreeMap::new(),
            violations: Vec::new(),
            log: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Run the seed: faults and publishes, then heal and quiesce, then check.
    pub fn run(&mut self) {
        let mut published = 0;
        while self.stats.steps < self.p.fault_steps && self.violations.is_empty() {
            self.stats.steps += 1;
            if published < self.p.publishes && self.rng.chance(60) {
                let n = self.rng.below(self.p.nodes as u64) as usize;
                let t = self.rng.below(self.p.topics as u64);
                if self.publish(n, &format!("t.{t}")) {
                    published += 1;
                }
                continue;
            }
            self.fault_or_progress();
        }
        while published < self.p.publishes && self.violations.is_empty() {
            let n = self.rng.below(self.p.nodes as u64) as usize;
            if self.publish(n, "t.0") {
                published += 1;
            } else {
                self.progress(false);
            }
        }
        if self.violations.is_empty() {
            self.quiesce();
        }
        if self.violations.is_empty() {
            self.check_final();
        }
    }

    // ----- the fault phase -----

    fn fault_or_progress(&mut self) {
        let roll = self.rng.below(1000);
        match roll {
            0..=5 => self.drop_random_conn(),
            6..=9 => self.partition(),
            10..=19 => self.heal_one(),
            20..=22 => self.crash_random(),
            23..=28 => self.squeeze(),
            29..=30 => self.rot(),
            31..=45 => self.lww_write(),
            _ => {
                self.progress(true);
            }
        }
    }

    /// One unit of normal progress; returns false when nothing could happen
    /// except time passing.
    fn progress(&mut self, random_time: bool) -> bool {
        self.restart_and_dial();
        let roll = self.rng.below(100);
        let done = match roll {
            0..=54 => self.deliver_one(),
            55..=69 => self.complete_read(),
            70..=84 => self.fsync_random(),
            _ => false,
        };
        if done {
            return true;
        }
        if self.deliver_one() || self.complete_read() || self.fsync_random() {
            return true;
        }
        let dt = if random_time {
            self.rng.range(1, 50)
        } else {
            1
        };
        self.advance(dt);
        false
    }

    fn advance(&mut self, dt: u64) {
        self.now += dt;
        let ids: Vec<(u64, usize)> = self
            .conns
            .iter()
            .flat_map(|(id, c)| {
                (0..2).filter_map(move |s| {
                    let t = c.links[s].poll_timeout()?;
                    Some((*id, s, t))
                })
            })
            .filter(|(_, _, t)| *t <= self.now)
            .map(|(id, s, _)| (id, s))
            .collect();
        for (id, s) in ids {
            self.call(id, s, |link, node, now| link.handle_timeout(now, node));
        }
    }

    fn restart_and_dial(&mut self) {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up && self.nodes[n].restart_at <= self.now {
                self.restart(n);
            }
        }
        for e in 0..self.edges.len() {
            let edge = &self.edges[e];
            if edge.conn.is_none()
                && !edge.cut
                && edge.redial_at <= self.now
                && self.nodes[edge.a].up
                && self.nodes[edge.b].up
            {
                self.dial(e);
            }
        }
    }

    fn link_config(&self, n: usize, edge: usize) -> LinkConfig {
        let node = &self.nodes[n];
        let mut cfg = LinkConfig::new(CLUSTER, &node.name, node.epoch, Direction::Both);
        match self.p.restricted {
            Some((e, Restriction::OneWay)) if e == edge => {
                cfg.direction = if self.edges[e].a == n {
                    Direction::Push
                } else {
                    Direction::Pull
                };
            }
            Some((e, Restriction::OnlyT0)) if e == edge => cfg.filters = vec!["t.0".into()],
            _ => {}
        }
        cfg.lanes = self.p.lanes;
        cfg.window_records = self.p.window_records;
        cfg.window_bytes = self.p.window_bytes;
        cfg.batch_records = self.p.batch_records;
        cfg.batch_bytes = 4096;
        cfg.reads_in_flight = 2;
        cfg.ready_bytes_max = 2048;
        cfg.digest_interval_ms = DIGEST_INTERVAL_MS;
        cfg
    }

    fn dial(&mut self, e: usize) {
        let (a, b) = (self.edges[e].a, self.edges[e].b);
        let id = self.next_conn;
        self.next_conn += 1;
        let la = Link::new(self.link_config(a, e), Some(self.nodes[b].name.clone()));
        let lb = Link::new(self.link_config(b, e), Some(self.nodes[a].name.clone()));
        self.conns.insert(
            id,
            Conn {
                edge: e,
                nodes: [a, b],
                links: [la, lb],
                queues: BTreeMap::new(),
            },
        );
        self.edges[e].conn = Some(id);
        self.stats.connections += 1;
        self.drain(id, 0);
        self.drain(id, 1);
    }

    fn teardown(&mut self, id: u64, why: &str) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.log.push(format!(
            "t={} conn {id} ({}-{}) down: {why}",
            self.now, c.nodes[0], c.nodes[1]
        ));
        for n in c.nodes {
            self.nodes[n].reads.retain(|(cid, _, _)| *cid != id);
        }
        let delay = self.rng.range(20, 400);
        let e = &mut self.edges[c.edge];
        e.conn = None;
        e.redial_at = self.now + delay;
    }

    fn drop_random_conn(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[self.rng.below(ids.len() as u64) as usize];
        self.stats.drops += 1;
        self.teardown(id, "dropped (fault)");
    }

    fn partition(&mut self) {
        // Cut a random subset of edges (at least one).
        let mut any = false;
        for e in 0..self.edges.len() {
            if self.rng.chance(400) || (!any && e + 1 == self.edges.len()) {
                any = true;
                self.edges[e].cut = true;
                if let Some(id) = self.edges[e].conn {
                    self.teardown(id, "partition");
                }
            }
        }
        self.stats.partitions += 1;
        self.log.push(format!(
            "t={} partition: cut {:?}",
            self.now,
            self.cut_edges()
        ));
    }

    fn cut_edges(&self) -> Vec<(usize, usize)> {
        self.edges
            .iter()
            .filter(|e| e.cut)
            .map(|e| (e.a, e.b))
            .collect()
    }

    fn heal_one(&mut self) {
        let cut: Vec<usize> = (0..self.edges.len())
            .filter(|&e| self.edges[e].cut)
            .collect();
        if cut.is_empty() {
            return;
        }
        let e = cut[self.rng.below(cut.len() as u64) as usize];
        self.edges[e].cut = false;
        self.log.push(format!(
            "t={} heal ({}-{})",
            self.now, self.edges[e].a, self.edges[e].b
        ));
    }

    fn crash_random(&mut self) {
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        if !self.nodes[n].up {
            return;
        }
        self.stats.crashes += 1;
        let lost = self.nodes[n].pending.len();
        self.log.push(format!(
            "t={} crash n{n} (loses {lost} unsynced writes)",
            self.now
        ));
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.nodes.contains(&n))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.teardown(id, "peer crashed");
        }
        let node = &mut self.nodes[n];
        node.up = false;
        node.pending.clear();
        node.reads.clear();
        node.found_corrupt.clear();
        node.next_seq.clear();
        node.restart_at = self.now + self.rng.range(50, 1500);
        if self.p.bug.is_none() && self.rng2.chance(100) {
            self.wipe(n);
            return;
        }
        let node = &mut self.nodes[n];
        if self.p.bug == Some(Bug::LoseDurableTail) {
            // A lying disk: the newest durable record of each local stream is gone.
            let origin = node.origin();
            for td in node.topics.values_mut() {
                let last = td.vv.get(&origin).and_then(RangeSet::last);
                if let Some(seq) = last {
                    td.vv.remove_range(&origin, seq, seq);
                    if let Some(Kind::Record { crc, .. }) =
                        td.entries.remove(&(origin.clone(), seq))
                        && let Some(d) = td.digests.get_mut(&origin)
                    {
                        d.remove(&origin, seq, Entry::Record { crc });
                    }
                }
            }
        }
    }

    /// The disk is replaced: the node comes back empty with a new epoch and
    /// pulls everything, its own old-epoch records included, from its peers.
    /// Acked records no other node held are lost with the disk (G1's premise).
    fn wipe(&mut self, n: usize) {
        let mut unique = 0;
        for key in self.acked.keys() {
            let (t, o, s) = key;
            let elsewhere = self.nodes.iter().enumerate().any(|(m, node)| {
                m != n
                    && node.topics.get(t).is_some_and(|td| {
                        *s < td.floor(o) || td.entries.contains_key(&(o.clone(), *s))
                    })
            });
            if !elsewhere {
                self.lost_with_disk.insert(key.clone());
                unique += 1;
            }
        }
        let node = &mut self.nodes[n];
        node.topics.clear();
        node.lww = LwwMap::new();
        node.hlc_last = 0;
        node.epoch += 1;
        self.stats.epoch_bumps += 1;
        self.stats.wipes += 1;
        self.log.push(format!(
            "t={} wipe n{n}: empty, next epoch {}; {unique} acked records were only there",
            self.now, node.epoch
        ));
    }

    fn restart(&mut self, n: usize) {
        let bump = self.rng.chance(500);
        let node = &mut self.nodes[n];
        node.up = true;
        if bump {
            node.epoch += 1;
            self.stats.epoch_bumps += 1;
        }
        self.log
            .push(format!("t={} restart n{n} epoch {}", self.now, node.epoch));
    }

    /// Retention: a node forgets old records of one (topic, origin).
    fn squeeze(&mut self) {
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        let node = &mut self.nodes[n];
        let topics: Vec<String> = node.topics.keys().cloned().collect();
        if topics.is_empty() || !node.up {
            return;
        }
        let t = &topics[self.rng.below(topics.len() as u64) as usize];
        let td = node.topics.get_mut(t).expect("listed");
        let origins: Vec<Origin> = td.vv.iter().map(|(o, _)| o.clone()).collect();
        if origins.is_empty() {
            return;
        }
        let o = origins[self.rng.below(origins.len() as u64) as usize].clone();
        let hwm = td.vv.high_water(&o);
        let old = td.floor(&o);
        if hwm < old {
            return;
        }
        let floor = self.rng.range(old + 1, hwm + 1);
        let doomed: Vec<u64> = td
            .entries
            .range((o.clone(), 0)..(o.clone(), floor))
            .map(|((_, s), _)| *s)
            .collect();
        for s in doomed {
            td.entries.remove(&(o.clone(), s));
        }
        td.floors.insert(o.clone(), floor);
        td.digests.entry(o.clone()).or_default().set_floor(floor);
        self.stats.squeezes += 1;
        self.log
            .push(format!("t={} squeeze n{n} {t} {o} below {floor}", self.now));
        self.check_topic(n, t);
    }

    /// Bit rot in one stored record that another node also holds intact.
    fn rot(&mut self) {
        if self.stats.rot >= 2 {
            return;
        }
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        let mut candidates = Vec::new();
        for (t, td) in &self.nodes[n].topics {
            for ((o, s), k) in &td.entries {
                if matches!(k, Kind::Record { rotten: false, .. }) {
                    let elsewhere = self.nodes.iter().enumerate().any(|(m, other)| {
                        m != n
                            && other.topics.get(t).is_some_and(|ot| {
                                matches!(
                                    ot.entries.get(&(o.clone(), *s)),
                                    Some(Kind::Record { rotten: false, .. })
                                )
                            })
                    });
                    if elsewhere {
                        candidates.push((t.clone(), o.clone(), *s));
                    }
                }
            }
        }
        if candidates.is_empty() {
            return;
        }
        let (t, o, s) = candidates[self.rng.below(candidates.len() as u64) as usize].clone();
        if let Some(Kind::Record { bytes, rotten, .. }) = self.nodes[n]
            .topics
            .get_mut(&t)
            .and_then(|td| td.entries.get_mut(&(o.clone(), s)))
        {
            let mut b = bytes.to_vec();
            b[0] ^= 0x20;
            *bytes = Bytes::from(b);
            *rotten = true;
        }
        self.stats.rot += 1;
        self.log
            .push(format!("t={} bit rot n{n} {t} {o} seq {s}", self.now));
    }

    fn lww_write(&mut self) {
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        if !self.nodes[n].up {
            return;
        }
        let key = format!("k{}", self.rng.below(5));
        let value = if self.rng.chance(200) {
            None
        } else {
            Some(Bytes::from(format!("v{}", self.rng.below(1000))))
        };
        let now = self.now;
        let node = &mut self.nodes[n];
        let entry = LwwEntry {
            namespace: "kv".into(),
            key,
            value,
            hlc: node.tick_hlc(now),
            origin: node.origin(),
        };
        self.merge_lww(n, None, vec![entry]);
    }

    /// Merge LWW entries into node `n` (from link `from`, or local), forward winners.
    fn merge_lww(&mut self, n: usize, from: Option<u64>, entries: Vec<LwwEntry>) {
        let wall = self.nodes[n].wall_ms(self.now);
        let mut winners = Vec::new();
        for e in entries {
            let (ns, key) = (e.namespace.clone(), e.key.clone());
            match self.nodes[n].lww.merge(e, wall, self.p.max_drift_ms) {
                Merge::Stale => {}
                m => {
                    if m == Merge::Clamped {
                        self.stats.lww_clamped += 1;
                    }
                    if let Some(stored) = self.nodes[n].lww.get(&ns, &key) {
                        winners.push(stored.clone());
                    }
                }
            }
        }
        if winners.is_empty() {
            return;
        }
        for (id, side) in self.links_of(n) {
            if Some(id) != from {
                let w = winners.clone();
                self.call(id, side, move |link, _, _| link.send_lww(&w));
            }
        }
    }

    fn links_of(&self, n: usize) -> Vec<(u64, usize)> {
        self.conns
            .iter()
            .flat_map(|(id, c)| {
                (0..2)
                    .filter(move |s| c.nodes[*s] == n)
                    .map(move |s| (*id, s))
            })
            .collect()
    }

    // ----- node operations -----

    fn publish(&mut self, n: usize, topic: &str) -> bool {
        if !self.nodes[n].up {
            return false;
        }
        self.publish_id += 1;
        let now = self.now;
        let node = &mut self.nodes[n];
        let origin = node.origin();
        let next = match node.next_seq.get(topic) {
            Some(s) => *s,
            None => {
                node.topics
                    .get(topic)
                    .and_then(|t| t.vv.get(&origin))
                    .and_then(RangeSet::last)
                    .unwrap_or(0)
                    + 1
            }
        };
        node.next_seq.insert(topic.to_owned(), next + 1);
        let hlc = node.tick_hlc(now);
        let bytes = record_bytes(topic, &origin, next, self.publish_id);
        node.pending.push(Op::Publish {
            topic: topic.to_owned(),
            seq: next,
            hlc,
            bytes,
        });
        true
    }

    fn fsync_random(&mut self) -> bool {
        let with: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].up && !self.nodes[n].pending.is_empty())
            .collect();
        if with.is_empty() {
            return false;
        }
        let n = with[self.rng.below(with.len() as u64) as usize];
        self.fsync(n);
        true
    }

    /// Make node `n`'s pending writes durable, then ack, answer applies and fan out.
    fn fsync(&mut self, n: usize) {
        let ops = std::mem::take(&mut self.nodes[n].pending);
        let mut committed: BTreeMap<(String, Origin), Committed> = BTreeMap::new();
        let mut answers = Vec::new();
        for op in ops {
            match op {
                Op::Publish {
                    topic,
                    seq,
                    hlc,
                    bytes,
                } => {
                    let origin = self.nodes[n].origin();
                    let crc = crc32c::crc32c(&bytes);
                    let body = RecordBody {
                        seq,
                        hlc,
                        crc,
                        bytes,
                    };
                    let fresh = self.store_record(n, &topic, &origin, &body, false);
                    debug_assert!(fresh, "a local seq is never reused once durable");
                    self.acked.insert((topic.clone(), origin.clone(), seq), crc);
                    self.stats.publishes_acked += 1;
                    let c = committed
                        .entry((topic.clone(), origin.clone()))
                        .or_insert_with(|| Committed {
                            topic,
                            origin,
                            records: Vec::new(),
                            gaps: Vec::new(),
                        });
                    c.records.push(body);
                }
                Op::Apply { conn, side, batch } => {
                    let (outcome, c) = self.apply(n, &batch);
                    if !c.records.is_empty() || !c.gaps.is_empty() {
                        let e = committed
                            .entry((c.topic.clone(), c.origin.clone()))
                            .or_insert_with(|| Committed {
                                topic: c.topic.clone(),
                                origin: c.origin.clone(),
                                records: Vec::new(),
                                gaps: Vec::new(),
                            });
                        e.records.extend(c.records);
                        e.gaps.extend(c.gaps);
                    }
                    answers.push((conn, side, batch.id, outcome));
                }
            }
        }
        let topics: BTreeSet<String> = committed.keys().map(|(t, _)| t.clone()).collect();
        for t in &topics {
            self.deliver_to_subscribers(n, t);
            self.check_topic(n, t);
        }
        for (conn, side, id, outcome) in answers {
            self.call(conn, side, move |link, _, _| {
                link.handle_applied(id, outcome)
            });
        }
        let batches: Vec<Committed> = committed.into_values().collect();
        for (id, side) in self.links_of(n) {
            let b = batches.clone();
            self.call(id, side, move |link, node, _| {
                for c in &b {
                    link.handle_committed(c, node);
                }
            });
        }
    }

    /// Store one record durably; returns true when it was new or repaired (so
    /// it is newly servable and goes out with the commit).
    fn store_record(
        &mut self,
        n: usize,
        topic: &str,
        o: &Origin,
        r: &RecordBody,
        repair: bool,
    ) -> bool {
        let key = (topic.to_owned(), o.clone(), r.seq);
        match self.identity.get(&key) {
            Some(crc) if *crc != r.crc => {
                self.violations.push(format!(
                    "two different records for {topic} {o} seq {}: crc {crc:#x} and {:#x} (on n{n})",
                    r.seq, r.crc
                ));
            }
            _ => {
                self.identity.insert(key, r.crc);
            }
        }
        let forget_vector = self.p.bug == Some(Bug::ForgetVector);
        let td = self.nodes[n].topics.entry(topic.to_owned()).or_default();
        let covered = td.vv.contains(o, r.seq);
        let k = (o.clone(), r.seq);
        let digest = td.digests.entry(o.clone()).or_default();
        if covered {
            if !repair || r.seq < td.floors.get(o).copied().unwrap_or(1) {
                return false;
            }
            match td.entries.get(&k) {
                Some(Kind::Record { rotten: false, .. }) => return false,
                Some(Kind::Record {
                    detected: false,
                    crc,
                    ..
                }) => {
                    digest.remove(o, r.seq, Entry::Record { crc: *crc });
                }
                Some(Kind::Gap) => digest.remove(o, r.seq, Entry::Gap),
                _ => {}
            }
        }
        digest.insert(o, r.seq, Entry::Record { crc: r.crc });
        td.entries.insert(
            k,
            Kind::Record {
                crc: r.crc,
                hlc: r.hlc,
                bytes: r.bytes.clone(),
                rotten: false,
                detected: false,
            },
        );
        if !forget_vector {
            td.vv.insert(o, r.seq);
        }
        true
    }

    /// The model store's apply: verify, skip what is covered, gap-mark truncations.
    fn apply(&mut self, n: usize, b: &ApplyBatch) -> (ApplyOutcome, Committed) {
        let mut c = Committed {
            topic: b.topic.clone(),
            origin: b.origin.clone(),
            records: Vec::new(),
            gaps: Vec::new(),
        };
        let mut rejected = Vec::new();
        for r in &b.records {
            if crc32c::crc32c(&r.bytes) != r.crc
                || !record_identity_ok(&r.bytes, &b.topic, &b.origin, r.seq)
            {
                rejected.push(r.seq);
                self.violations.push(format!(
                    "n{n} received a corrupt or misfiled record {} {} seq {}",
                    b.topic, b.origin, r.seq
                ));
                continue;
            }
            if self.store_record(n, &b.topic, &b.origin, r, b.repair) {
                c.records.push(r.clone());
            }
        }
        if self.p.bug != Some(Bug::IgnoreTruncated) {
            let td = self.nodes[n].topics.entry(b.topic.clone()).or_default();
            for &(from, to) in &b.gaps {
                let mut missing = RangeSet::from_range(from, to)
                    .difference(td.vv.get(&b.origin).unwrap_or(&RangeSet::new()));
                if b.repair {
                    // The peer cannot serve it either: a detected corrupt record
                    // becomes an explicit gap marker.
                    for seq in from..=to {
                        if let Some(Kind::Record { detected: true, .. }) =
                            td.entries.get(&(b.origin.clone(), seq))
                        {
                            td.entries.remove(&(b.origin.clone(), seq));
                            missing.insert(seq);
                        }
                    }
                }
                for seq in missing.iter() {
                    td.entries.insert((b.origin.clone(), seq), Kind::Gap);
                    td.digests.entry(b.origin.clone()).or_default().insert(
                        &b.origin,
                        seq,
                        Entry::Gap,
                    );
                    td.vv.insert(&b.origin, seq);
                }
                c.gaps.extend(missing.ranges().iter().copied());
            }
        }
        let durable = self.nodes[n]
            .topics
            .get(&b.topic)
            .and_then(|t| t.vv.get(&b.origin).cloned())
            .unwrap_or_default();
        (ApplyOutcome::Durable { durable, rejected }, c)
    }

    /// A subscriber of node `n` is delivered every newly contiguous seq, in order.
    fn deliver_to_subscribers(&mut self, n: usize, topic: &str) {
        let Some(td) = self.nodes[n].topics.get_mut(topic) else {
            return;
        };
        let origins: Vec<Origin> = td.vv.iter().map(|(o, _)| o.clone()).collect();
        for o in origins {
            let hwm = td.vv.high_water(&o);
            let floor = td.floor(&o);
            let done = td.delivered.entry(o.clone()).or_insert(0);
            while *done < hwm {
                let seq = *done + 1;
                let ok = seq < floor || td.entries.contains_key(&(o.clone(), seq));
                if !ok {
                    self.violations.push(format!(
                        "n{n} would deliver {topic} {o} seq {seq}, which it does not hold"
                    ));
                    return;
                }
                *done = seq;
            }
        }
    }

    fn complete_read(&mut self) -> bool {
        let with: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| !self.nodes[n].reads.is_empty())
            .collect();
        if with.is_empty() {
            return false;
        }
        let n = with[self.rng.below(with.len() as u64) as usize];
        let i = self.rng.below(self.nodes[n].reads.len() as u64) as usize;
        let (conn, side, req) = self.nodes[n].reads.swap_remove(i);
        let result = self.nodes[n].read(&req);
        self.call(conn, side, move |link, node, _| {
            link.handle_read(req.id, result, node)
        });
        self.report_corrupt(n);
        true
    }

    fn report_corrupt(&mut self, n: usize) {
        let found = std::mem::take(&mut self.nodes[n].found_corrupt);
        for (t, o, s) in found {
            self.log
                .push(format!("t={} n{n} found {t} {o} seq {s} corrupt", self.now));
            for (id, side) in self.links_of(n) {
                let (t, o) = (t.clone(), o.clone());
                self.call(id, side, move |link, _, _| link.handle_corrupt(&t, &o, s));
            }
        }
    }

    /// A background scrubber: every node re-verifies its records.
    fn scrub(&mut self) {
        for n in 0..self.nodes.len() {
            let node = &mut self.nodes[n];
            for (t, td) in node.topics.iter_mut() {
                for ((o, s), k) in td.entries.iter_mut() {
                    if let Kind::Record {
                        crc,
                        rotten: true,
                        detected,
                        ..
                    } = k
                        && !*detected
                    {
                        *detected = true;
                        if let Some(d) = td.digests.get_mut(o) {
                            d.remove(o, *s, Entry::Record { crc: *crc });
                        }
                        node.found_corrupt.push((t.clone(), o.clone(), *s));
                    }
                }
            }
            self.report_corrupt(n);
        }
    }

    /// The store's policy for a corrupt record no peer could repair: after
    /// three digest rounds it becomes an explicit gap marker (ERROR, counted),
    /// which peers then receive as `truncated`; a later repair may still fill it.
    fn give_up_on_corrupt(&mut self) {
        let mut still = BTreeSet::new();
        for n in 0..self.nodes.len() {
            for (t, o, s) in self.nodes[n].corrupt() {
                still.insert((n, t, o, s));
            }
        }
        self.corrupt_age.retain(|k, _| still.contains(k));
        let mut doomed = Vec::new();
        for k in still {
            let age = self.corrupt_age.entry(k.clone()).or_insert(0);
            *age += 1;
            if *age >= 3 {
                doomed.push(k);
            }
        }
        for (n, t, o, s) in doomed {
            self.corrupt_age.remove(&(n, t.clone(), o.clone(), s));
            let Some(td) = self.nodes[n].topics.get_mut(&t) else {
                continue;
            };
            td.entries.insert((o.clone(), s), Kind::Gap);
            td.digests
                .entry(o.clone())
                .or_default()
                .insert(&o, s, Entry::Gap);
            self.stats.corrupt_to_gap += 1;
            self.log.push(format!(
                "t={} n{n} gives up repairing {t} {o} seq {s}: gap marker",
                self.now
            ));
            let c = Committed {
                topic: t.clone(),
                origin: o,
                records: Vec::new(),
                gaps: vec![(s, s)],
            };
            for (id, side) in self.links_of(n) {
                let c = c.clone();
                self.call(id, side, move |link, node, _| {
                    link.handle_committed(&c, node)
                });
            }
            self.check_topic(n, &t);
        }
    }

    // ----- the network -----

    fn deliver_one(&mut self) -> bool {
        let now = self.now;
        let ready: Vec<(u64, usize, StreamId)> = self
            .conns
            .iter()
            .flat_map(|(id, c)| {
                c.queues
                    .iter()
                    .filter(|(_, q)| q.front().is_some_and(|(at, _)| *at <= now))
                    .map(move |((side, stream), _)| (*id, *side, *stream))
            })
            .collect();
        if ready.is_empty() {
            return false;
        }
        let (id, side, stream) = ready[self.rng.below(ready.len() as u64) as usize];
        let Some(frame) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.queues.get_mut(&(side, stream)))
            .and_then(VecDeque::pop_front)
            .map(|(_, f)| f)
        else {
            return false;
        };
        self.stats.delivered_frames += 1;
        self.call(id, side, move |link, node, now| {
            link.handle_frame(now, &frame[4..], node)
        });
        true
    }

    /// Run `f` on one link with its node's view, then carry out its actions.
    fn call(&mut self, id: u64, side: usize, f: impl FnOnce(&mut Link, &Node, u64)) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let n = conn.nodes[side];
        f(&mut conn.links[side], &self.nodes[n], self.now);
        self.drain(id, side);
    }

    fn drain(&mut self, id: u64, side: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(action) = conn.links[side].poll_action() else {
                return;
            };
            let (n, peer) = (conn.nodes[side], conn.nodes[1 - side]);
            match action {
                Action::Send { stream, frame } => {
                    let delay = self.rng.range(0, 30);
                    let q = conn.queues.entry((1 - side, stream)).or_default();
                    let at = q.back().map_or(0, |(t, _)| *t).max(self.now + delay);
                    q.push_back((at, frame));
                }
                Action::Read(req) => self.nodes[n].reads.push((id, side, req)),
                Action::Apply(batch) => {
                    self.nodes[n].pending.push(Op::Apply {
                        conn: id,
                        side,
                        batch,
                    });
                    if self.p.bug == Some(Bug::AckBeforeDurable) && self.rng.chance(500) {
                        // Broken: answer from the volatile state, then "fsync" later.
                        self.fsync_volatile_ack(n);
                    }
                }
                Action::LwwMerge(entries) => self.merge_lww(n, Some(id), entries),
                Action::PeerDurable {
                    topic,
                    origin,
                    durable,
                } => {
                    let held = self.nodes[peer]
                        .topics
                        .get(&topic)
                        .and_then(|t| t.vv.get(&origin).cloned())
                        .unwrap_or_default();
                    if !held.covers(&durable) {
                        self.violations.push(format!(
                            "n{peer} acked {topic} {origin} {:?} as durable but holds {:?}",
                            durable.ranges(),
                            held.ranges()
                        ));
                    }
                }
                Action::Up(_) => {}
                Action::Closed(reason) => {
                    if !matches!(reason, CloseReason::Local) {
                        self.violations
                            .push(format!("link n{n}->n{peer} closed: {reason}"));
                    }
                    self.teardown(id, "closed");
                    return;
                }
                Action::Event(e) => match e {
                    LinkEvent::GapReceived { .. } => self.stats.gaps_received += 1,
                    LinkEvent::DigestMismatch { .. } => self.stats.digest_mismatches += 1,
                    LinkEvent::Rejected { .. } | LinkEvent::Unavailable { .. } => {}
                },
            }
        }
    }

    /// The [`Bug::AckBeforeDurable`] driver: answers pending applies with what
    /// the vector *would* be, without making anything durable.
    fn fsync_volatile_ack(&mut self, n: usize) {
        let mut answers = Vec::new();
        self.nodes[n].pending.retain(|op| match op {
            Op::Apply { conn, side, batch } => {
                let mut durable = RangeSet::new();
                for r in &batch.records {
                    durable.insert(r.seq);
                }
                answers.push((*conn, *side, batch.id, durable));
                false
            }
            Op::Publish { .. } => true,
        });
        for (conn, side, id, durable) in answers {
            let outcome = ApplyOutcome::Durable {
                durable,
                rejected: Vec::new(),
            };
            self.call(conn, side, move |link, _, _| {
                link.handle_applied(id, outcome)
            });
        }
    }

    // ----- quiescence and checks -----

    fn quiet(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.up && n.pending.is_empty() && n.reads.is_empty())
            && self.edges.iter().all(|e| e.conn.is_some())
            && self.conns.values().all(|c| {
                c.queues.values().all(VecDeque::is_empty)
                    && c.links.iter().all(|l| l.is_up() && l.is_idle())
            })
    }

    /// Heal everything and let the cluster settle: deliver, read and fsync until
    /// nothing is in flight, then run a digest round (which may start repairs),
    /// and repeat until a round finds the cluster in agreement. Bounded: a
    /// cluster that does not settle within the bound is a failure.
    fn quiesce(&mut self) {
        for e in &mut self.edges {
            e.cut = false;
        }
        self.log.push(format!("t={} heal all; quiesce", self.now));
        self.scrub();
        const MAX_STEPS: u64 = 400_000;
        const MAX_ROUNDS: u32 = 30;
        let mut rounds = 0;
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > MAX_STEPS {
                self.violations
                    .push(format!("no quiescence within {MAX_STEPS} steps"));
                return;
            }
            self.restart_and_dial();
            if self.deliver_one() || self.complete_read() || self.fsync_random() {
                continue;
            }
            if !self.quiet() {
                self.advance(10);
                continue;
            }
            if rounds >= 2 && self.agrees() {
                break;
            }
            rounds += 1;
            if rounds > MAX_ROUNDS {
                self.check_final();
                let why = self.violations.pop().unwrap_or_default();
                self.violations.clear();
                self.violations.push(format!(
                    "no agreement after {MAX_ROUNDS} digest rounds: {why}"
                ));
                return;
            }
            // A digest round on every link (and a scrub, as a store's background verifier).
            self.advance(DIGEST_INTERVAL_MS);
            self.scrub();
            self.give_up_on_corrupt();
        }
        self.stats.quiesce_steps = steps;
    }

    /// Would the final check pass now? (Runs it and discards what it found.)
    fn agrees(&mut self) -> bool {
        let before = self.violations.len();
        self.check_final();
        let ok = self.violations.len() == before;
        self.violations.truncate(before);
        ok
    }

    /// Anytime invariants of one topic on one node.
    fn check_topic(&mut self, n: usize, topic: &str) {
        let Some(td) = self.nodes[n].topics.get(topic) else {
            return;
        };
        for (o, s) in td.entries.keys() {
            if !td.vv.contains(o, *s) {
                self.violations
                    .push(format!("n{n} holds {topic} {o} seq {s} outside its vector"));
                return;
            }
        }
        for (o, set) in td.vv.iter() {
            let floor = td.floor(o);
            for s in set.iter() {
                if s >= floor && !td.entries.contains_key(&(o.clone(), s)) {
                    self.violations.push(format!(
                        "n{n}'s vector covers {topic} {o} seq {s}, which is neither stored nor gap-marked"
                    ));
                    return;
                }
            }
            let entries = td
                .entries
                .range((o.clone(), 0)..=(o.clone(), u64::MAX))
                .filter_map(|((_, s), k)| match k {
                    Kind::Gap => Some((*s, Entry::Gap)),
                    Kind::Record { detected: true, .. } => None,
                    Kind::Record { crc, .. } => Some((*s, Entry::Record { crc: *crc })),
                });
            let again = OriginDigest::recompute(o, floor, entries);
            let mine = td.digests.get(o).cloned().unwrap_or_default();
            let mut mine_cmp = mine.clone();
            mine_cmp.set_floor(floor);
            // Only buckets at or above the floor's bucket are meaningful.
            let first = digest::bucket_of(floor) + 1;
            let a: BTreeMap<_, _> = mine_cmp.buckets.range(first..).collect();
            let b: BTreeMap<_, _> = again.buckets.range(first..).collect();
            if a != b || (floor <= 1 && mine.buckets != again.buckets) {
                self.violations.push(format!(
                    "n{n}'s digest of {topic} {o} differs from a recomputation"
                ));
                return;
            }
        }
    }

    /// Eventually (all nodes agree) and finally (every acked publish everywhere).
    fn check_final(&mut self) {
        let all_topics: BTreeSet<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.topics.keys().cloned())
            .collect();
        for t in &all_topics {
            let empty = TopicData::default();
            let base = self.nodes[0].topics.get(t).unwrap_or(&empty);
            for m in 1..self.nodes.len() {
                let other = self.nodes[m].topics.get(t).unwrap_or(&empty);
                if base.vv != other.vv {
                    self.violations.push(format!(
                        "after quiescence n0 and n{m} disagree on the vector of {t}: {:?} vs {:?}",
                        base.vv, other.vv
                    ));
                    return;
                }
                for (o, set) in base.vv.iter() {
                    // Buckets below the highest floor in the cluster may differ in
                    // gap-vs-record: a link compares only buckets above both its
                    // ends' floors, so a fill cannot cross a node that expired them.
                    let floor = self
                        .nodes
                        .iter()
                        .filter_map(|m| m.topics.get(t))
                        .map(|td| td.floor(o))
                        .max()
                        .unwrap_or(1);
                    let (mut da, mut db) = (
                        base.digests.get(o).cloned().unwrap_or_default(),
                        other.digests.get(o).cloned().unwrap_or_default(),
                    );
                    da.set_floor(floor);
                    db.set_floor(floor);
                    let bad = digest::mismatches(&da, set, &db, set);
                    if !bad.is_empty() {
                        let show = |td: &TopicData| -> Vec<String> {
                            set.iter()
                                .map(|q| match td.entries.get(&(o.clone(), q)) {
                                    None => format!("{q}:-"),
                                    Some(Kind::Gap) => format!("{q}:gap"),
                                    Some(Kind::Record { rotten: true, .. }) => format!("{q}:rot"),
                                    Some(Kind::Record { .. }) => format!("{q}:rec"),
                                })
                                .collect()
                        };
                        self.violations.push(format!(
                            "after quiescence n0 and n{m} digests of {t} {o} differ on {bad:?}: {:?} vs {:?}, floors {}/{}",
                            show(base),
                            show(other),
                            base.floor(o),
                            other.floor(o)
                        ));
                        return;
                    }
                    // Entries in buckets the digests compare must be equal too.
                    let first = if floor <= 1 {
                        1
                    } else {
                        floor.div_ceil(digest::BUCKET_SEQS) * digest::BUCKET_SEQS
                    };
                    for s in set.iter().filter(|s| *s >= first) {
                        let k = (o.clone(), s);
                        let (x, y) = (base.entries.get(&k), other.entries.get(&k));
                        if x != y {
                            self.violations.push(format!(
                                "after quiescence n0 and n{m} hold different entries at {t} {o} seq {s}: {x:?} vs {y:?}"
                            ));
                            return;
                        }
                    }
                }
            }
        }
        for ((t, o, s), crc) in &self.acked {
            if self.lost_with_disk.contains(&(t.clone(), o.clone(), *s)) {
                continue;
            }
            for (n, node) in self.nodes.iter().enumerate() {
                let td = node.topics.get(t);
                let ok = td.is_some_and(|td| {
                    *s < td.floor(o)
                        || match td.entries.get(&(o.clone(), *s)) {
                            Some(Kind::Gap) => true,
                            Some(Kind::Record { crc: c, rotten, .. }) => c == crc && !rotten,
                            None => false,
                        }
                });
                if !ok {
                    let held: Vec<String> = self
                        .nodes
                        .iter()
                        .map(|m| match m.topics.get(t) {
                            None => "-".to_owned(),
                            Some(td) => format!(
                                "floor {} {:?}",
                                td.floor(o),
                                td.entries.get(&(o.clone(), *s)).map(|k| match k {
                                    Kind::Gap => "gap",
                                    Kind::Record { rotten: true, .. } => "rotten",
                                    Kind::Record { .. } => "record",
                                })
                            ),
                        })
                        .collect();
                    self.violations.push(format!(
                        "acked publish {t} {o} seq {s} is missing on n{n} (no record, no gap marker); nodes hold {held:?}"
                    ));
                    return;
                }
            }
        }
        let lww0: Vec<LwwEntry> = self.nodes[0].lww.iter().cloned().collect();
        for m in 1..self.nodes.len() {
            let other: Vec<LwwEntry> = self.nodes[m].lww.iter().cloned().collect();
            if other != lww0 {
                self.violations.push(format!(
                    "after quiescence n0 and n{m} disagree on LWW state"
                ));
                return;
            }
        }
    }

    /// A summary line for the report.
    pub fn summary(&self) -> String {
        format!(
            "seed {} {:?} {:?} nodes={} topics={} lanes={} window={}r/{}B batch={} | {:?}",
            self.p.seed,
            self.p.topology,
            self.p.restricted,
            self.p.nodes,
            self.p.topics,
            self.p.lanes,
            self.p.window_records,
            self.p.window_bytes,
            self.p.batch_records,
            self.stats
        )
    }
}

/// A hand-made history for the checker's own tests: node 0 claims a record it
/// does not hold.
pub fn checker_sees_a_vector_over_a_hole() -> Vec<String> {
    let mut w = World::new(Params::from_seed(1));
    let o = Origin::new("n9", 1);
    let td = w.nodes[0].topics.entry("t.0".into()).or_default();
    td.vv.insert_range(&o, 1, 3);
    td.entries.insert((o.clone(), 1), Kind::Gap);
    td.entries.insert((o.clone(), 3), Kind::Gap);
    w.check_topic(0, "t.0");
    w.violations
}

/// A hand-made history: an acked publish that a node lacks after quiescence.
pub fn checker_sees_a_lost_ack() -> Vec<String> {
    let mut w = World::new(Params::from_seed(1));
    w.acked.insert(("t.0".into(), Origin::new("n0", 1), 1), 7);
    w.check_final();
    w.violations
}
