//! The replication chaos run (issue 13, "How it is proven" → chaos command): 3-5
//! real gateway processes in a full mesh whose peer links go through
//! [`FaultProxy`]s, clients over WebSocket and QUIC that publish with `mid`s and
//! subscribe while hopping gateways with their cursors, and a seeded nemesis: kill -9
//! and restart, SIGSTOP/SIGCONT, a node cut off, a pair cut, lossy and slow links, a
//! bit flipped in a stopped node's store, a full disk (a tmpfs, when mounting works).
//! Then everything heals, writes stop, and the run waits until every node holds the
//! same log. A [`History`] of every client operation and the nodes' final logs go
//! through [`check`], which counts what must never happen.
//!
//! Used by the `edgesync-chaos` binary (long runs) and `tests/tests/chaos.rs` (a
//! short run in the suite). The seed decides the fault schedule (kinds, victims,
//! durations, losses); the interleaving with real processes does not replay exactly,
//! but a seed that found something keeps finding it far more often than chance.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edgesync_client::{Client, ClientOptions, Event, PublishOptions, Start};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::cluster::{self, Node, Tmpfs};
use crate::fault_proxy::{FaultProxy, Faults, Setting};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Gateway processes (3-5).
    pub nodes: usize,
    /// How long the nemesis and the publishers run.
    pub seconds: u64,
    pub seed: u64,
    /// Publishing clients (and as many hopping subscribers); half over QUIC.
    pub clients: usize,
    /// The gateway binary (runs `serve` and `cert`).
    pub exe: PathBuf,
    /// Longest wait for convergence after the heal (a liveness bound, not a figure).
    pub converge_max: Duration,
    /// Keep the run's directory (configs, data, gateway logs) even when it passed.
    pub keep: bool,
    /// Print each fault as it happens.
    pub verbose: bool,
}

impl Options {
    /// A run of `seconds` with `seed` on 3 nodes and 4 clients.
    pub fn new(exe: PathBuf, seed: u64, seconds: u64) -> Options {
        Options {
            nodes: 3,
            seconds,
            seed,
            clients: 4,
            exe,
            converge_max: Duration::from_secs(90),
            keep: false,
            verbose: false,
        }
    }
}

/// Topics published to: `local` acks (`chaos.loc.*`) and `replicated:1` (`chaos.rep.*`).
pub const TOPICS: [&str; 5] = [
    "chaos.loc.a",
    "chaos.loc.b",
    "chaos.loc.c",
    "chaos.rep.a",
    "chaos.rep.b",
];

/// The topic config every node gets.
const TOPIC_CONFIG: &str = "[[topic]]\npattern = \"chaos.rep.>\"\nack = \"replicated:1\"\n";
/// Size of the disk-full node's tmpfs.
const TMPFS_MB: u32 = 128;
/// Bytes of padding after the mid in a payload (a bit flip lands in it).
const PAD: usize = 48;

/// The counts the checker prints; all but `dup_after_kill` (and the informational
/// ones) must be zero.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub seconds: u64,
    /// Fault kinds applied, with how often.
    pub faults: BTreeMap<String, u32>,
    pub attempted: usize,
    pub acked: usize,
    /// Attempts that ended in an error (stored or not: both are allowed).
    pub failed: usize,
    pub deliveries: usize,
    /// `gap` events subscribers received (a corrupt record before its repair).
    pub gaps: usize,
    /// Records per node after convergence.
    pub records: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub dup_after_kill: usize,
    pub reordered: usize,
    pub diverged: usize,
    pub phantom: usize,
    /// From the last write (everything healed) until every node held the same log.
    pub converge: Option<Duration>,
    /// One line per finding (bounded), for the failure message.
    pub details: Vec<String>,
    /// Things skipped or worth knowing (disk-full not possible, a bit flip not placed).
    pub notes: Vec<String>,
    /// Where the run's configs, data and gateway logs are (when kept).
    pub dir: Option<PathBuf>,
}

impl Report {
    /// Every must-be-zero count is zero and the cluster converged.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.diverged == 0
            && self.phantom == 0
            && self.converge.is_some()
    }

    /// The human summary the binary prints and a failing test shows.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos: seed {} · {} nodes · {} s",
            self.seed, self.nodes, self.seconds
        );
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect();
        let _ = writeln!(s, "faults: {}", faults.join(", "));
        let _ = writeln!(
            s,
            "publishes: {} attempted, {} acked, {} failed · deliveries {} · gaps seen {} · records per node {}",
            self.attempted, self.acked, self.failed, self.deliveries, self.gaps, self.records
        );
        let _ = writeln!(
            s,
            "lost {} · duplicated {} · dup_after_kill {} · reordered {} · diverged {} · phantom {}",
            self.lost,
            self.duplicated,
            self.dup_after_kill,
            self.reordered,
            self.diverged,
            self.phantom
        );
        match self.converge {
            Some(d) => {
                let _ = writeln!(s, "time to converge: {:.2} s", d.as_secs_f64());
            }
            None => {
                let _ = writeln!(s, "did NOT converge");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for d in &self.details {
            let _ = writeln!(s, "  {d}");
        }
        if let Some(dir) = &self.dir {
            let _ = writeln!(s, "configs, data and gateway logs: {}", dir.display());
        }
        let _ = write!(s, "{}", if self.ok() { "PASS" } else { "FAIL" });
        s
    }
}

/// The identity of a stored record.
pub type RecordKey = (String, String, u64, u64);

/// One publish as the client saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub client: String,
    pub topic: String,
    pub payload: String,
    pub started: Instant,
    pub finished: Option<Instant>,
    /// The ack: (origin, epoch, seq, dup).
    pub ack: Option<(String, u64, u64, bool)>,
    pub errors: Vec<String>,
}

/// One message a subscriber took.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subscriber: String,
    pub topic: String,
    pub origin: String,
    pub epoch: u64,
    pub seq: u64,
    pub mid: Option<String>,
    pub payload: String,
}

/// A fault while it lasted; `node` is the victim's name when there is one.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: String,
    pub node: Option<String>,
    pub from: Instant,
    pub to: Instant,
}

impl Fault {
    /// The victim's process died or froze (a client fails over; what it stored
    /// unreplicated may come back next to a resend).
    fn interrupts_node(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "kill" | "stop" | "bitflip" | "disk_full"
        )
    }
}

/// Every client operation, and the faults.
#[derive(Debug, Default)]
pub struct History {
    /// By mid.
    pub attempts: HashMap<String, Attempt>,
    pub deliveries: Vec<Delivery>,
    pub gaps: usize,
    pub faults: Vec<Fault>,
}

type Shared = Arc<Mutex<History>>;

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a node stores: per topic, record → (mid, payload).
pub type Log = BTreeMap<String, BTreeMap<RecordKey, (Option<String>, String)>>;

/// Start the cluster, run clients and nemesis for `opts.seconds`, heal, wait for
/// convergence and check. An `Err` is a failure of the harness (a process that
/// does not start), not a finding.
///
/// # Errors
/// The cluster could not be set up, or a node's log could not be read at the end.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!((3..=5).contains(&opts.nodes), "--nodes takes 3 to 5");
    let tmp = tempfile::Builder::new()
        .prefix("edgesync-chaos-")
        .tempdir()?;
    let root = tmp.path().to_path_buf();
    let mut report = Report {
        seed: opts.seed,
        nodes: opts.nodes,
        seconds: opts.seconds,
        ..Report::default()
    };
    let mut cluster = Cluster::start(opts, &root, &mut report.notes).await?;
    let history: Shared = Arc::default();
    let stop_writes = Arc::new(AtomicBool::new(false));
    let stop_reads = Arc::new(AtomicBool::new(false));
    let urls = cluster.urls();
    let ca = cluster.certs.join("ca.pem");
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for k in 0..opts.clients {
        let ctx = ClientCtx {
            k,
            urls: urls.clone(),
            ca: ca.clone(),
            history: history.clone(),
            seed: opts.seed.wrapping_add(1 + k as u64),
        };
        writers.push(tokio::spawn(publisher(ctx.clone(), stop_writes.clone())));
        readers.push(tokio::spawn(subscriber(ctx, stop_reads.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let mut nemesis = Nemesis {
        rng: StdRng::seed_from_u64(opts.seed),
        history: history.clone(),
        verbose: opts.verbose,
    };
    nemesis.run(&mut cluster, deadline, &mut report.notes).await;
    cluster.heal_all().await;
    stop_writes.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let writes_stopped = Instant::now();
    let (logs, converged) = cluster.converge(opts.converge_max).await?;
    report.converge = converged.then(|| writes_stopped.elapsed());
    // Subscribers get a moment to take what converged, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_reads.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let h = lock(&history);
    check(&h, &cluster.names(), &logs, &mut report);
    drop(h);
    if !report.ok() || opts.keep {
        report.dir = Some(tmp.keep());
    }
    drop(cluster);
    Ok(report)
}

/// The processes, their proxies and the disk-full node's tmpfs.
struct Cluster {
    nodes: Vec<Node>,
    /// (dialer, listener) → the proxy the dialer's link goes through.
    proxies: Vec<((usize, usize), FaultProxy)>,
    certs: PathBuf,
    /// The tmpfs under node 0's data, and the filler file that fills it.
    disk: Option<(Tmpfs, PathBuf)>,
}

impl Cluster {
    async fn start(opts: &Options, root: &Path, notes: &mut Vec<String>) -> anyhow::Result<Self> {
        let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let certs = cluster::make_certs(&opts.exe, &root.join("certs"), &refs);
        let mut nodes: Vec<Node> = names
            .iter()
            .map(|n| Node::new(&opts.exe, root, n, &certs, "chaos", &[]))
            .collect();
        let disk = Tmpfs::mount(&root.join("node-1-disk"), TMPFS_MB);
        let disk = match disk {
            Some(t) => {
                nodes[0].data = t.dir.join("data");
                let filler = t.dir.join("filler");
                Some((t, filler))
            }
            None => {
                notes.push("disk-full skipped: mounting a tmpfs failed (not root?)".into());
                None
            }
        };
        let mut proxies = Vec::new();
        for i in 0..nodes.len() {
            for (j, listener) in nodes.iter().enumerate().skip(i + 1) {
                let seed = opts.seed ^ ((i as u64) << 32 | j as u64);
                let p = FaultProxy::start(listener.quic, seed)
                    .await
                    .context("fault proxy")?;
                proxies.push(((i, j), p));
            }
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            // Each pair has one link, dialed by the lower index through its proxy.
            let dials: Vec<u16> = proxies
                .iter()
                .filter(|((d, _), _)| *d == i)
                .map(|(_, p)| p.port)
                .collect();
            n.peer_topics = vec!["chaos.>".into()];
            n.extra = TOPIC_CONFIG.into();
            n.log = Some(n.dir.join("gateway.log"));
            n.write_config(&certs, "chaos", &dials);
            n.start();
        }
        let c = Cluster {
            nodes,
            proxies,
            certs,
            disk,
        };
        c.wait_mesh(Duration::from_secs(30)).await?;
        Ok(c)
    }

    fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Per node: (WebSocket URL, QUIC URL).
    fn urls(&self) -> Vec<(String, String)> {
        self.nodes.iter().map(|n| (n.url(), n.quic_url())).collect()
    }

    /// Wait until every node has a link to every other.
    async fn wait_mesh(&self, bound: Duration) -> anyhow::Result<()> {
        let want = self.nodes.len() - 1;
        let until = Instant::now() + bound;
        loop {
            let mut all = true;
            for n in &self.nodes {
                all &= n.links_up().await == want;
            }
            if all {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < until, "the mesh did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything back: processes running and thawed, links clean, disk with room.
    async fn heal_all(&mut self) {
        for (_, p) in &self.proxies {
            p.heal();
        }
        if let Some((_, filler)) = &self.disk {
            let _ = std::fs::remove_file(filler);
        }
        for n in &mut self.nodes {
            if n.running() {
                n.signal("CONT");
            } else {
                n.start();
            }
        }
        let _ = self.wait_mesh(Duration::from_secs(30)).await;
    }

    /// Read every node's log until all are equal (bounded by `max`): the last logs
    /// read, and whether they were equal.
    async fn converge(&self, max: Duration) -> anyhow::Result<(Vec<Log>, bool)> {
        let until = Instant::now() + max;
        loop {
            let mut logs = Vec::new();
            for n in &self.nodes {
                logs.push(read_log(&n.url()).await);
            }
            let equal = logs.windows(2).all(|w| w[0] == w[1]);
            if equal || Instant::now() >= until {
                return Ok((logs, equal));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// A node's whole log of every chaos topic, read with `history` pages (empty for a
/// topic the node cannot be read from within 10 s).
async fn read_log(url: &str) -> Log {
    let mut log = Log::new();
    let mut o = ClientOptions::new(url);
    o.reconnect = false;
    o.request_timeout = Duration::from_secs(10);
    let Ok(c) = Client::connect(o).await else {
        return log;
    };
    for topic in TOPICS {
        let recs = log.entry(topic.to_string()).or_default();
        let mut start = Start::Earliest;
        // Bounded: 10,000 pages of the default size.
        for _ in 0..10_000 {
            let Ok(page) = c.history(topic, start, Some(500)).await else {
                break;
            };
            for m in &page.msgs {
                recs.insert(
                    (m.topic.clone(), m.origin.clone(), m.epoch, m.seq),
                    (
                        m.mid.clone(),
                        String::from_utf8_lossy(&m.data.0).into_owned(),
                    ),
                );
            }
            if !page.more {
                break;
            }
            start = Start::Cursor(page.cursor);
        }
    }
    c.close().await;
    log
}

/// What a client task needs.
#[derive(Clone)]
struct ClientCtx {
    k: usize,
    /// Per node: (ws, quic).
    urls: Vec<(String, String)>,
    ca: PathBuf,
    history: Shared,
    seed: u64,
}

impl ClientCtx {
    /// Options for a client starting at node `first`, the others as fallbacks, over
    /// QUIC or WebSocket.
    fn options(&self, id: String, first: usize, quic: bool) -> ClientOptions {
        let n = self.urls.len();
        let pick = |i: usize| {
            let (ws, q) = &self.urls[i % n];
            if quic { q.clone() } else { ws.clone() }
        };
        let mut o = ClientOptions::new(pick(first));
        o.fallback_urls = (1..n).map(|d| pick(first + d)).collect();
        o.client_id = Some(id);
        o.ca = Some(self.ca.clone());
        o.max_backoff = Duration::from_millis(300);
        o.request_timeout = Duration::from_secs(5);
        o.liveness_timeout = Duration::from_secs(2);
        o
    }
}

/// Connect, trying for at most 20 s.
async fn connect(o: &ClientOptions) -> Option<Client> {
    for _ in 0..100 {
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_secs(5), Client::connect(o.clone())).await
        {
            return Some(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Publish until told to stop: each publish has its own mid, is retried with that
/// mid on errors (at most 8 tries), and is written to the history before it is sent.
async fn publisher(ctx: ClientCtx, stop: Arc<AtomicBool>) {
    let quic = ctx.k % 2 == 1;
    let name = format!("pub-{}", ctx.k);
    let o = ctx.options(name.clone(), ctx.k, quic);
    let Some(client) = connect(&o).await else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let topic = TOPICS[rng.random_range(0..TOPICS.len())];
        let mid = format!("{name}-{n}");
        let payload = format!("chaos|{mid}|{}", "p".repeat(PAD));
        lock(&ctx.history).attempts.insert(
            mid.clone(),
            Attempt {
                client: name.clone(),
                topic: topic.into(),
                payload: payload.clone(),
                started: Instant::now(),
                finished: None,
                ack: None,
                errors: Vec::new(),
            },
        );
        for _ in 0..8 {
            let opts = PublishOptions {
                mid: Some(mid.clone()),
                ..PublishOptions::default()
            };
            let sent = client.publish_with(topic, payload.clone(), opts);
            let res = tokio::time::timeout(Duration::from_secs(10), sent).await;
            let acked = {
                let mut h = lock(&ctx.history);
                let Some(a) = h.attempts.get_mut(&mid) else {
                    break;
                };
                match res {
                    Ok(Ok(ack)) => {
                        a.ack = Some((ack.origin.node, ack.origin.epoch, ack.seq, ack.dup));
                        true
                    }
                    Ok(Err(e)) => {
                        a.errors.push(e.to_string());
                        false
                    }
                    Err(_) => {
                        a.errors.push("no answer in 10 s".into());
                        false
                    }
                }
            };
            if acked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(a) = lock(&ctx.history).attempts.get_mut(&mid) {
            a.finished = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))).await;
    }
    client.close().await;
}

/// Subscribe to `chaos.>` and hop: every 1.5-4 s take the cursor, close, connect to
/// the next gateway (alternating WebSocket and QUIC) and resume from the cursor. The
/// client's own failover (fallback URLs) covers a gateway dying under it.
async fn subscriber(ctx: ClientCtx, stop: Arc<AtomicBool>) {
    let name = format!("sub-{}", ctx.k);
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0x5eed);
    let mut start = Start::Earliest;
    let mut hop = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let o = ctx.options(name.clone(), ctx.k + hop, (ctx.k + hop) % 2 == 1);
        hop += 1;
        let Some(client) = connect(&o).await else {
            continue;
        };
        let Ok(mut sub) = client.subscribe("chaos.>", start.clone()).await else {
            client.close().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let until = Instant::now() + Duration::from_millis(rng.random_range(1500..4000));
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            match sub.next_timeout(Duration::from_millis(200)).await {
                Some(Event::Msg(m)) => lock(&ctx.history).deliveries.push(Delivery {
                    subscriber: name.clone(),
                    topic: m.topic.clone(),
                    origin: m.origin.clone(),
                    epoch: m.epoch,
                    seq: m.seq,
                    mid: m.mid.clone(),
                    payload: String::from_utf8_lossy(&m.data.0).into_owned(),
                }),
                Some(Event::Gap { .. }) => lock(&ctx.history).gaps += 1,
                _ => {}
            }
        }
        start = Start::Cursor(sub.cursor().encode());
        client.close().await;
    }
}

/// The seeded fault schedule.
struct Nemesis {
    rng: StdRng,
    history: Shared,
    verbose: bool,
}

/// Fault kinds and their weights.
const KINDS: [(&str, u32); 7] = [
    ("kill", 3),
    ("stop", 2),
    ("isolate", 2),
    ("cut_pair", 2),
    ("lossy", 2),
    ("bitflip", 1),
    ("disk_full", 1),
];

impl Nemesis {
    async fn run(&mut self, c: &mut Cluster, deadline: Instant, notes: &mut Vec<String>) {
        let total: u32 = KINDS.iter().map(|(_, w)| w).sum();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(300..1000))).await;
            let mut pick = self.rng.random_range(0..total);
            let kind = KINDS
                .iter()
                .find(|(_, w)| {
                    let hit = pick < *w;
                    pick = pick.saturating_sub(*w);
                    hit
                })
                .map_or("kill", |(k, _)| *k);
            let victim = self.rng.random_range(0..c.nodes.len());
            let hold = Duration::from_millis(self.rng.random_range(800..3000));
            let from = Instant::now();
            let node = self.apply(c, kind, victim, hold, notes).await;
            let fault = Fault {
                kind: kind.into(),
                node,
                from,
                to: Instant::now(),
            };
            if self.verbose {
                println!(
                    "fault {} on {} for {:.1} s",
                    fault.kind,
                    fault.node.as_deref().unwrap_or("links"),
                    (fault.to - fault.from).as_secs_f64()
                );
            }
            lock(&self.history).faults.push(fault);
        }
    }

    /// Apply one fault for `hold`, then undo it; the victim's name when it is a node.
    async fn apply(
        &mut self,
        c: &mut Cluster,
        kind: &str,
        v: usize,
        hold: Duration,
        notes: &mut Vec<String>,
    ) -> Option<String> {
        let name = c.nodes[v].name.clone();
        match kind {
            "kill" => {
                c.nodes[v].kill9();
                tokio::time::sleep(hold).await;
                c.nodes[v].start();
            }
            "stop" => {
                c.nodes[v].signal("STOP");
                tokio::time::sleep(hold).await;
                c.nodes[v].signal("CONT");
            }
            "isolate" => {
                self.cut(c, |(a, b)| a == v || b == v, hold).await;
            }
            "cut_pair" => {
                let n = c.nodes.len();
                let other = (v + self.rng.random_range(1..n)) % n;
                self.cut(c, |(a, b)| (a, b) == (v.min(other), v.max(other)), hold)
                    .await;
                return Some(format!("{name}|{}", c.nodes[other].name));
            }
            "lossy" => {
                for (_, p) in &c.proxies {
                    if self.rng.random_bool(0.6) {
                        let mut f = || Faults {
                            loss: self.rng.random_range(0.02..0.3),
                            delay: Duration::from_millis(self.rng.random_range(0..25)),
                        };
                        p.set(Setting {
                            forward: f(),
                            backward: f(),
                            partitioned: false,
                        });
                    }
                }
                tokio::time::sleep(hold * 2).await;
                for (_, p) in &c.proxies {
                    p.heal();
                }
                return None;
            }
            "bitflip" => self.bitflip(c, v, notes),
            "disk_full" => {
                let Some((_, filler)) = &c.disk else {
                    return None;
                };
                let filler = filler.clone();
                fill(&filler);
                tokio::time::sleep(hold).await;
                let _ = std::fs::remove_file(&filler);
                // A store that failed a write may stay read-only: restart it, as an
                // operator would once there is room.
                c.nodes[0].kill9();
                c.nodes[0].start();
                return Some(c.nodes[0].name.clone());
            }
            _ => {}
        }
        Some(name)
    }

    /// Partition the proxies `which` selects for `hold`.
    async fn cut(&self, c: &Cluster, which: impl Fn((usize, usize)) -> bool, hold: Duration) {
        for (pair, p) in &c.proxies {
            if which(*pair) {
                p.set_partitioned(true);
            }
        }
        tokio::time::sleep(hold).await;
        for (pair, p) in &c.proxies {
            if which(*pair) {
                p.set_partitioned(false);
            }
        }
    }

    /// Kill node `v`, flip a bit inside a record of another origin in its store
    /// (journal or table file: the first file holding the chosen payload), restart it.
    fn bitflip(&mut self, c: &mut Cluster, v: usize, notes: &mut Vec<String>) {
        let name = c.nodes[v].name.clone();
        // Acked elsewhere at least a second ago: v had time to receive it.
        let mut candidates: Vec<String> = lock(&self.history)
            .attempts
            .iter()
            .filter(|(_, a)| {
                a.ack.as_ref().is_some_and(|(o, ..)| *o != name)
                    && a.finished
                        .is_some_and(|t| t.elapsed() > Duration::from_secs(1))
            })
            .map(|(mid, _)| mid.clone())
            .collect();
        candidates.sort();
        c.nodes[v].kill9();
        let files = cluster::files(&c.nodes[v].data);
        let mut placed = None;
        for _ in 0..candidates.len().min(40) {
            let mid = &candidates[self.rng.random_range(0..candidates.len())];
            let needle = format!("chaos|{mid}|");
            for f in &files {
                let Ok(bytes) = std::fs::read(f) else {
                    continue;
                };
                let Some(at) = bytes
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                else {
                    continue;
                };
                // One byte written in place: rewriting the whole file would turn a
                // sparse, preallocated journal into that many bytes on the tmpfs.
                let pos = at + needle.len() + 3;
                if flip_byte(f, pos as u64, bytes[pos] ^ 0x20).is_ok() {
                    placed = Some(f.clone());
                }
                break;
            }
            if placed.is_some() {
                break;
            }
        }
        match placed {
            Some(f) if self.verbose => println!("bit flipped in {}", f.display()),
            Some(_) => {}
            None => notes.push(format!(
                "bitflip on {name}: no record of another origin found in its files"
            )),
        }
        c.nodes[v].start();
    }
}

/// Overwrite the byte at `pos` of `path` with `value`, in place.
fn flip_byte(path: &Path, pos: u64, value: u8) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&[value], pos)?;
    f.sync_all()
}

/// Write zeros to `filler` until the disk refuses (bounded by 4 GiB).
fn fill(filler: &Path) {
    use std::io::Write as _;
    let Ok(mut f) = std::fs::File::create(filler) else {
        return;
    };
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..4096 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

/// The checker: compare the history with the nodes' final logs.
///
/// - **lost**: an acked publish whose record (the ack's origin, epoch, seq) some node
///   lacks, or holds with another mid;
/// - **duplicated**: a mid stored as more than one record, except **dup_after_kill**:
///   records of one mid under different origins where a gateway holding one of them
///   was killed, frozen or restarted while the publish was in flight (it stored the
///   publish, could not replicate or ack it, and the client's resend went elsewhere —
///   the documented limit of idempotent publish across gateways);
/// - **reordered**: a subscriber took, per (topic, origin, epoch), a seq not above the
///   last it took (across hops and failovers: a repeat counts too);
/// - **diverged**: records not held by every node (after the convergence wait);
/// - **phantom**: a stored or delivered message nobody published (unknown mid, or
///   another payload than the publish with that mid).
pub fn check(h: &History, names: &[String], logs: &[Log], r: &mut Report) {
    let detail = |d: &mut Vec<String>, s: String| {
        if d.len() < 20 {
            d.push(s);
        }
    };
    for f in &h.faults {
        *r.faults.entry(f.kind.clone()).or_default() += 1;
    }
    r.attempted = h.attempts.len();
    r.acked = h.attempts.values().filter(|a| a.ack.is_some()).count();
    r.failed = r.attempted - r.acked;
    r.deliveries = h.deliveries.len();
    r.gaps = h.gaps;
    r.records = logs
        .first()
        .map_or(0, |l| l.values().map(BTreeMap::len).sum());
    // Lost.
    for (mid, a) in &h.attempts {
        let Some((origin, epoch, seq, _)) = &a.ack else {
            continue;
        };
        let key = (a.topic.clone(), origin.clone(), *epoch, *seq);
        for (i, log) in logs.iter().enumerate() {
            let held = log.get(&a.topic).and_then(|t| t.get(&key));
            if held.is_none_or(|(m, _)| m.as_deref() != Some(mid)) {
                r.lost += 1;
                detail(
                    &mut r.details,
                    format!("lost: {mid} acked as {key:?}, on {}: {held:?}", names[i]),
                );
                break;
            }
        }
    }
    // Union of stored records; duplicates and phantoms.
    let mut union: BTreeMap<RecordKey, (Option<String>, String)> = BTreeMap::new();
    for log in logs {
        for t in log.values() {
            union.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let mut by_mid: BTreeMap<&str, Vec<&RecordKey>> = BTreeMap::new();
    for (key, (mid, payload)) in &union {
        let known = mid
            .as_deref()
            .and_then(|m| h.attempts.get(m))
            .is_some_and(|a| a.payload == *payload && a.topic == key.0);
        if !known {
            r.phantom += 1;
            detail(
                &mut r.details,
                format!("phantom: stored {key:?} mid {mid:?}"),
            );
        }
        if let Some(m) = mid {
            by_mid.entry(m).or_default().push(key);
        }
    }
    for (mid, keys) in by_mid.iter().filter(|(_, k)| k.len() > 1) {
        let origins: BTreeSet<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let excused = origins.len() == keys.len()
            && h.attempts.get(*mid).is_some_and(|a| {
                let end = a.finished.unwrap_or_else(Instant::now) + Duration::from_secs(1);
                h.faults.iter().any(|f| {
                    f.interrupts_node()
                        && f.node.as_deref().is_some_and(|n| origins.contains(n))
                        && f.from <= end
                        && f.to >= a.started
                })
            });
        if excused {
            r.dup_after_kill += 1;
        } else {
            r.duplicated += 1;
            detail(&mut r.details, format!("duplicated: {mid} as {keys:?}"));
        }
    }
    // Reordered and delivered phantoms.
    let mut last: HashMap<(&str, &str, &str, u64), u64> = HashMap::new();
    for d in &h.deliveries {
        let slot = last
            .entry((&d.subscriber, &d.topic, &d.origin, d.epoch))
            .or_insert(0);
        if d.seq <= *slot {
            r.reordered += 1;
            detail(
                &mut r.details,
                format!(
                    "reordered: {} took {} {}/{} seq {} after seq {}",
                    d.subscriber, d.topic, d.origin, d.epoch, d.seq, *slot
                ),
            );
        }
        *slot = (*slot).max(d.seq);
        let known = d
            .mid
            .as_deref()
            .and_then(|m| h.attempts.get(m))
            .is_some_and(|a| a.payload == d.payload);
        if !known {
            r.phantom += 1;
            detail(
                &mut r.details,
                format!("phantom delivery to {}: {:?}", d.subscriber, d.mid),
            );
        }
    }
    // Diverged: records some node lacks.
    for key in union.keys() {
        let missing: Vec<&str> = logs
            .iter()
            .zip(names)
            .filter(|(l, _)| l.get(&key.0).is_none_or(|t| !t.contains_key(key)))
            .map(|(_, n)| n.as_str())
            .collect();
        if !missing.is_empty() {
            r.diverged += 1;
            detail(
                &mut r.details,
                format!("diverged: {key:?} missing on {missing:?}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(topic: &str, mid: &str, ack: Option<(&str, u64)>) -> Attempt {
        let now = Instant::now();
        Attempt {
            client: "pub-0".into(),
            topic: topic.into(),
            payload: format!("chaos|{mid}|"),
            started: now,
            finished: Some(now),
            ack: ack.map(|(o, seq)| (o.to_string(), 1, seq, false)),
            errors: Vec::new(),
        }
    }

    fn put(log: &mut Log, topic: &str, origin: &str, seq: u64, mid: &str) {
        log.entry(topic.into()).or_default().insert(
            (topic.into(), origin.into(), 1, seq),
            (Some(mid.into()), format!("chaos|{mid}|")),
        );
    }

    fn delivery(seq: u64, mid: &str) -> Delivery {
        Delivery {
            subscriber: "sub-0".into(),
            topic: "t".into(),
            origin: "a".into(),
            epoch: 1,
            seq,
            mid: Some(mid.into()),
            payload: format!("chaos|{mid}|"),
        }
    }

    /// A clean history checks clean; each kind of damage is counted where it belongs.
    #[test]
    fn the_checker_counts_each_kind_of_damage() {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut h = History::default();
        h.attempts
            .insert("m1".into(), attempt("t", "m1", Some(("a", 1))));
        h.attempts
            .insert("m2".into(), attempt("t", "m2", Some(("a", 2))));
        h.deliveries = vec![delivery(1, "m1"), delivery(2, "m2")];
        let mut log = Log::new();
        put(&mut log, "t", "a", 1, "m1");
        put(&mut log, "t", "a", 2, "m2");
        let mut r = Report::default();
        check(&h, &names, &[log.clone(), log.clone()], &mut r);
        assert_eq!(
            (r.lost, r.duplicated, r.reordered, r.diverged, r.phantom),
            (0, 0, 0, 0, 0)
        );

        // b lacks m2 (lost and diverged); m1 stored again under b with no fault
        // (duplicated); an unknown record (phantom); a repeat delivery (reordered).
        let mut on_b = Log::new();
        put(&mut on_b, "t", "a", 1, "m1");
        put(&mut on_b, "t", "b", 1, "m1");
        put(&mut on_b, "t", "b", 2, "nobody");
        h.deliveries.push(delivery(2, "m2"));
        let mut r = Report::default();
        check(&h, &names, &[log.clone(), on_b.clone()], &mut r);
        assert_eq!(r.lost, 1, "{}", r.summary());
        assert_eq!(r.duplicated, 1, "{}", r.summary());
        assert_eq!(r.dup_after_kill, 0);
        assert_eq!(r.phantom, 1, "{}", r.summary());
        assert_eq!(r.reordered, 1, "{}", r.summary());
        // m2 on a only; b's copy of m1 and the phantom on b only.
        assert_eq!(r.diverged, 3, "{}", r.summary());

        // The same duplicate while b was killed during the publish: excused.
        let now = Instant::now();
        h.faults.push(Fault {
            kind: "kill".into(),
            node: Some("b".into()),
            from: now - Duration::from_secs(5),
            to: now + Duration::from_secs(5),
        });
        let mut r = Report::default();
        check(&h, &names, &[log, on_b], &mut r);
        assert_eq!((r.duplicated, r.dup_after_kill), (0, 1), "{}", r.summary());
    }
}
