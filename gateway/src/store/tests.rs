//! Store tests: a model-based property test over appends, reopens and reads,
//! plus dedupe, retention and tail-proof cases. All on a real on-disk database.

use super::*;
use bytes::Bytes;
use edgesync_protocol::Headers;
use proptest::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn req(topic: &str, payload: &[u8], mid: Option<&str>) -> Publish {
    Publish {
        topic: topic.into(),
        client: "c1".into(),
        principal: None,
        mid: mid.map(String::from),
        headers: Headers::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

fn open(dir: &std::path::Path) -> (Store, mpsc::Receiver<Committed>) {
    Store::open(StoreOptions::new(dir)).expect("open")
}

fn read_all(store: &Store, topic: &str) -> Vec<Record> {
    let mut after = BTreeMap::new();
    let mut out = Vec::new();
    loop {
        let b = store.read(topic, &after, None, 7).expect("read");
        out.extend(b.records);
        after = b.positions;
        if !b.more {
            return out;
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append { topic: u8, len: u8, mid: Option<u8> },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..3, 0u8..40, prop::option::of(0u8..6)).prop_map(|(topic, len, mid)| Op::Append { topic, len, mid }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The store agrees with a model (per-topic list of payloads, dedupe by mid)
    /// across reopens: seqs are dense, reads return exactly what was acked, in order.
    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        let (mut store, mut _rx) = open(dir.path());
        let mut model: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut mids: HashMap<(String, String), u64> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Append { topic, len, mid } => {
                    let topic = format!("t.{topic}");
                    let payload = vec![i as u8; *len as usize];
                    let mid = mid.map(|m| format!("m{m}"));
                    let ack = rt.block_on(store.append(req(&topic, &payload, mid.as_deref()))).expect("append");
                    if let Some(m) = &mid {
                        let key = (topic.clone(), m.clone());
                        if let Some(seq0) = mids.get(&key) {
                            // (client, topic, mid) identifies the message: the retry gets
                            // the original ack and nothing new is stored. The same mid on
                            // another topic is another message.
                            prop_assert!(ack.dup);
                            prop_assert_eq!(ack.seq, *seq0);
                            continue;
                        }
                        mids.insert(key, ack.seq);
                    }
                    prop_assert!(!ack.dup);
                    let list = model.entry(topic.clone()).or_default();
                    list.push(payload);
                    prop_assert_eq!(ack.seq, list.len() as u64);
                    prop_assert_eq!(ack.vv.get(&ack.origin).copied(), Some(ack.seq));
                }
                Op::Reopen => {
                    rt.block_on(store.shutdown());
                    drop(store);
                    let (s, r) = open(dir.path());
                    store = s;
                    _rx = r;
                    prop_assert!(store.new_epoch_reason().is_none());
                }
            }
        }
        for (topic, payloads) in &model {
            let recs = read_all(&store, topic);
            let got: Vec<Vec<u8>> = recs.iter().map(|r| r.payload.to_vec()).collect();
            prop_assert_eq!(&got, payloads);
            for (i, r) in recs.iter().enumerate() {
                prop_assert_eq!(r.seq, i as u64 + 1);
            }
        }
        rt.block_on(store.shutdown());
    }
}

#[test]
fn committed_batches_reach_the_broker_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (store, mut rx) = open(dir.path());
    rt.block_on(async {
        let mut joins = Vec::new();
        for i in 0..200u32 {
            let s = store.clone();
            joins.push(tokio::spawn(async move {
                s.append(req("a", &i.to_le_bytes(), None)).await
            }));
        }
        for j in joins {
            j.await.expect("join").expect("append");
        }
        let mut seqs = Vec::new();
        while seqs.len() < 200 {
            let batch = rx.recv().await.expect("batch");
            seqs.extend(batch.iter().map(|r| r.seq));
        }
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        store.shutdown().await;
    });
}

#[test]
fn count_retention_trims_oldest_and_reports_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut opts = StoreOptions::new(dir.path());
    opts.retention = Arc::new(|t: &str| {
        if t.starts_with("short") {
            Retention {
                max_messages: Some(3),
                ..Retention::default()
            }
        } else {
            Retention::default()
        }
    });
    let (store, _rx) = Store::open(opts).expect("open");
    rt.block_on(async {
        for i in 0..10u8 {
            store
                .append(req("short.a", &[i], None))
                .await
                .expect("append");
            store
                .append(req("long.a", &[i], None))
                .await
                .expect("append");
        }
        // Housekeeping runs after a batch once a second has passed.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        store
            .append(req("long.a", &[99], None))
            .await
            .expect("append");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store
            .topics()
            .iter()
            .find(|t| t.topic == "short.a")
            .map(|t| t.messages)
            != Some(3)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "retention did not run"
            );
            store.tick();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let b = store
            .read("short.a", &BTreeMap::new(), None, 100)
            .expect("read");
        assert_eq!(
            b.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(b.missing.len(), 1);
        assert_eq!(
            (b.missing[0].from, b.missing[0].to, b.missing[0].corrupt),
            (1, 7, false)
        );
        assert_eq!(read_all(&store, "long.a").len(), 11);
        store.shutdown().await;
    });
}

#[test]
fn reopen_keeps_node_and_epoch_and_rejects_other_node_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (store, _rx) = open(dir.path());
    let (node, epoch) = (store.node().to_string(), store.epoch());
    rt.block_on(store.append(req("a", b"x", None)))
        .expect("append");
    rt.block_on(store.shutdown());
    drop(store);
    let (store, _rx) = open(dir.path());
    assert_eq!((store.node(), store.epoch()), (node.as_str(), epoch));
    rt.block_on(store.shutdown());
    drop(store);
    let mut opts = StoreOptions::new(dir.path());
    opts.node_id = Some("someone-else".into());
    assert!(matches!(
        Store::open(opts),
        Err(StoreError::NodeMismatch { .. })
    ));
}

#[test]
fn missing_tail_record_starts_a_new_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (store, _rx) = open(dir.path());
    for i in 0..5u8 {
        rt.block_on(store.append(req("a", &[i], None)))
            .expect("append");
    }
    // Simulate a lost tail: remove the newest record behind the store's back.
    let oid = store.shared.index.read().origin_ids[store.local_origin()];
    let tid = store.shared.index.read().topics["a"].id;
    store
        .shared
        .records
        .remove(record_key(tid, oid, 5).as_slice())
        .expect("remove");
    store
        .shared
        .db
        .persist(PersistMode::SyncAll)
        .expect("persist");
    rt.block_on(store.shutdown());
    let old_epoch = store.epoch();
    drop(store);
    let (store, _rx) = open(dir.path());
    assert_eq!(store.epoch(), old_epoch + 1);
    assert!(store.new_epoch_reason().is_some());
    let ack = rt
        .block_on(store.append(req("a", b"new", None)))
        .expect("append");
    assert_eq!((ack.origin.epoch, ack.seq), (old_epoch + 1, 1));
    rt.block_on(store.shutdown());
}

/// Records what the writer reports, for the observer test.
#[derive(Default)]
pub(super) struct Recorder {
    commits: parking_lot::Mutex<Vec<CommitStats>>,
    pub(super) syncs: std::sync::atomic::AtomicUsize,
}

impl StoreObserver for Recorder {
    fn committed(&self, stats: &CommitStats) {
        self.commits.lock().push(*stats);
    }
    fn synced(&self, _elapsed: Duration) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn observer_sees_commits_and_fsyncs_and_totals_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = Arc::new(Recorder::default());
    let mut opts = StoreOptions::new(dir.path());
    opts.observer = rec.clone();
    let (store, _rx) = Store::open(opts).expect("open");
    rt().block_on(async {
        store
            .append(req("a", b"xyz", Some("m1")))
            .await
            .expect("append");
        store
            .append(req("a", b"xyz", Some("m1")))
            .await
            .expect("dup");
        store.append(req("b", b"12", None)).await.expect("append");
        store.shutdown().await;
    });
    let commits = rec.commits.lock().clone();
    assert_eq!(
        commits.iter().map(|c| c.requests).sum::<usize>(),
        3,
        "{commits:?}"
    );
    assert_eq!(
        commits.iter().map(|c| c.records).sum::<usize>(),
        2,
        "the duplicate is not a new record"
    );
    assert!(
        rec.syncs.load(Ordering::Relaxed) >= 2,
        "fsync policy always: one fsync per commit"
    );
    assert_eq!(
        store.totals(),
        StoreTotals {
            topics: 2,
            records: 2,
            payload_bytes: 5
        }
    );
    assert!(!store.is_poisoned());
}

#[test]
fn kv_writes_never_fsync_alone_and_ride_the_next_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = Arc::new(Recorder::default());
    let mut opts = StoreOptions::new(dir.path());
    opts.observer = rec.clone();
    let (store, _rx) = Store::open(opts).expect("open");
    let syncs = || rec.syncs.load(std::sync::atomic::Ordering::SeqCst);
    let before = syncs();
    for i in 0..500u32 {
        store
            .kv_write(&[(format!("k{i}").into_bytes(), Some(i.to_le_bytes().to_vec()))])
            .expect("kv write");
    }
    assert_eq!(syncs(), before, "no fsync per kv write");
    let rt = rt();
    rt.block_on(store.append(req("a", b"x", None)))
        .expect("append");
    assert_eq!(syncs(), before + 1, "one group commit syncs them all");
    // With no publish, the writer's tick syncs them.
    store
        .kv_write(&[(b"late".to_vec(), Some(b"v".to_vec()))])
        .expect("kv write");
    store.tick();
    for _ in 0..500 {
        if syncs() > before + 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(syncs(), before + 2, "the tick synced the pending kv write");
    rt.block_on(store.shutdown());
    drop(store);
    let (store, _rx) = open(dir.path());
    assert_eq!(
        store.kv_get(b"k499").expect("get"),
        Some(499u32.to_le_bytes().to_vec())
    );
    assert_eq!(store.kv_get(b"late").expect("get"), Some(b"v".to_vec()));
    rt.block_on(store.shutdown());
}

/// A dedupe backlog far above the per-pass minimum (50 k expired entries, as a
/// gateway taking 25 k publishes/s with `mid`s builds in two seconds) is gone in a
/// bounded number of passes, and entries still inside the window stay.
#[test]
fn dedupe_expiry_keeps_up_with_a_backlog() {
    use crate::clock::ManualClock;
    const EXPIRED: u64 = 50_000;
    let dir = tempfile::tempdir().expect("tmp");
    let clock = ManualClock::new(1_000_000);
    let mut opts = StoreOptions::new(dir.path());
    opts.clock = clock.clone();
    opts.dedupe_window = Duration::from_secs(10);
    let (store, _rx) = Store::open(opts).expect("open");
    let rt = rt();
    // The entries the writer would have written: `w`·written_ms·identity and `k`·identity.
    let dedupe = &store.shared.dedupe;
    let mut b = store.shared.db.batch();
    for i in 0..EXPIRED {
        let written = 1_000_000 + i / 25; // 25 per millisecond, over 2 s
        let id = format!("\u{0}client{i}");
        let mut w = b"w".to_vec();
        w.extend_from_slice(&written.to_be_bytes());
        w.extend_from_slice(id.as_bytes());
        let mut k = b"k".to_vec();
        k.extend_from_slice(id.as_bytes());
        b.insert(dedupe, w, b"".as_slice());
        b.insert(dedupe, k, [0u8; 32].as_slice());
    }
    b.commit().expect("commit");
    clock.advance(15_000); // all 50 k are past the 10 s window
    rt.block_on(store.append(req("fresh", b"x", Some("kept"))))
        .expect("append");
    // Expired entries still held (written before the clock moved on).
    let left = || {
        store
            .shared
            .dedupe
            .prefix(b"w")
            .map(|g| g.key().expect("key"))
            .filter(|k| {
                k.get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .is_some_and(|b| u64::from_be_bytes(b) < 1_010_000)
            })
            .count()
    };
    assert_eq!(left(), EXPIRED as usize);
    let mut passes = 0;
    while left() > 0 {
        passes += 1;
        assert!(passes <= 4, "{} entries left after 4 passes", left());
        store.tick();
        // The writer handles requests in order and runs housekeeping after the
        // batch that held the tick: the second append starts after that pass.
        for m in ["sync1", "sync2"] {
            rt.block_on(store.append(req("sync", b"x", Some(m))))
                .expect("append");
        }
    }
    // Budgets 10 k, 20 k, 40 k: three passes, each at most twice the one before.
    assert_eq!(passes, 3, "expiry follows the backlog");
    assert!(
        store.shared.dedupe.prefix(b"k").count() >= 3,
        "live entries stay"
    );
    let dup = rt
        .block_on(store.append(req("fresh", b"x", Some("kept"))))
        .expect("append");
    assert!(dup.dup, "an entry inside the window still deduplicates");
    rt.block_on(store.shutdown());
}

/// The poison cause says "the disk is full" for ENOSPC and EDQUOT however deep the
/// I/O error sits, and passes other errors through with their sources.
#[test]
fn poison_cause_names_a_full_disk() {
    let enospc = fjall::Error::Io(std::io::Error::from_raw_os_error(28));
    let text = describe_io(&StoreError::Engine(enospc));
    assert!(text.starts_with("the disk is full ("), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    let quota = std::io::Error::from_raw_os_error(122);
    assert!(describe_io(&quota).starts_with("the disk is full"));
    let eio = fjall::Error::Io(std::io::Error::from_raw_os_error(5));
    let text = describe_io(&StoreError::Engine(eio));
    assert!(!text.contains("disk is full"), "{text}");
    assert!(text.contains("Input/output error"), "{text}");
    assert!(engine_poisoned(&StoreError::Engine(fjall::Error::Poisoned)));
    assert!(!engine_poisoned(&std::io::Error::from_raw_os_error(28)));
}

/// Once poisoned, every write is refused with the first cause (later failures do
/// not overwrite it), and shutdown still ends.
#[test]
fn a_poisoned_store_refuses_writes_with_the_first_cause() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, _rx) = open(dir.path());
    let rt = rt();
    rt.block_on(store.append(req("a", b"x", None)))
        .expect("append");
    assert_eq!(store.poison_cause(), None);
    let full = std::io::Error::from_raw_os_error(28);
    store.shared.poison("a group commit failed", &full);
    store
        .shared
        .poison("later", &std::io::Error::from_raw_os_error(5));
    let cause = store.poison_cause().expect("poisoned");
    assert!(
        cause.starts_with("a group commit failed: the disk is full"),
        "{cause}"
    );
    for e in [
        rt.block_on(store.append(req("a", b"y", None)))
            .expect_err("refused"),
        store
            .kv_write(&[(b"k".to_vec(), Some(b"v".to_vec()))])
            .expect_err("refused"),
    ] {
        assert!(matches!(&e, StoreError::Poisoned(c) if *c == cause), "{e}");
        assert!(e.to_string().contains("the disk is full"), "{e}");
    }
    rt.block_on(store.shutdown());
}

/// Retention deleting records while a reader scans them is a race, not damage: every
/// range a reader cannot get while retention trims under it is reported `retention`,
/// never `corrupt`, and nothing lands on the corrupt list. Bounded: a writer appends
/// 1,500 records and ticks housekeeping (count retention of 3) while a reader keeps
/// re-reading from the start.
#[test]
fn a_retention_race_is_never_reported_as_corruption() {
    const APPENDS: u32 = 1500;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = StoreOptions::new(dir.path());
    opts.retention = Arc::new(|_: &str| Retention {
        max_messages: Some(3),
        ..Retention::default()
    });
    let (store, rx) = Store::open(opts).expect("open");
    drop(rx); // no fan-out here: the writer must not wait for a reader of commits
    let appended = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writer = {
        let (store, appended) = (store.clone(), appended.clone());
        std::thread::spawn(move || {
            let rt = rt();
            for n in 0..APPENDS {
                rt.block_on(store.append(req("race.t", &n.to_be_bytes(), None)))
                    .expect("append");
                appended.store(n + 1, Ordering::Release);
                if n % 4 == 0 {
                    store.tick();
                }
            }
        })
    };
    let (mut trimmed, mut reads) = (0usize, 0u64);
    while appended.load(Ordering::Acquire) < APPENDS && reads < 50_000_000 {
        reads += 1;
        let b = store
            .read("race.t", &BTreeMap::new(), None, 64)
            .expect("read");
        for m in &b.missing {
            assert!(!m.corrupt, "a retention race reported as corruption: {m:?}");
            trimmed += 1;
        }
        assert!(b.records.windows(2).all(|w| w[0].seq < w[1].seq));
    }
    writer.join().expect("writer");
    assert!(
        trimmed > 0,
        "retention ran during the reads ({reads} reads)"
    );
    assert!(
        store.corrupt_records().is_empty(),
        "nothing on the corrupt list"
    );
}

/// Retention deletes with tombstones; the reclaimer then drops the record tables that
/// lie wholly below a stream's floor, so the disk gives back what retention removed
/// (the one-hour soak grew by its ingest rate without it). What is left reads intact.
#[test]
fn tables_wholly_below_a_retention_floor_are_dropped() {
    use fjall::AbstractTree as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut opts = StoreOptions::new(dir.path());
    opts.retention = Arc::new(|_: &str| Retention {
        max_messages: Some(1000),
        ..Retention::default()
    });
    let (store, _rx) = Store::open(opts).expect("open");
    let payload = [7u8; 200];
    rt.block_on(async {
        for _table in 0..3 {
            for _ in 0..10 {
                let batch = (0..500).map(|_| req("t", &payload, None)).collect();
                store.append_all(batch).await.expect("append");
            }
            // Each 5,000 records become their own table.
            store
                .shared
                .records
                .rotate_memtable_and_wait()
                .expect("flush");
        }
    });
    let tables_before = store.shared.records.tree.table_count();
    let disk_before = store.shared.records.disk_space();
    assert!(tables_before >= 3, "{tables_before} tables");
    // Retention keeps the newest 1,000: seqs 1..=14000 go (tombstones, no space back).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.topics()[0].messages != 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run"
        );
        store.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    store.shared.reclaim().expect("reclaim");
    // (The reclaimer thread may have got there first; either way the tables go.)
    while store.shared.records.tree.table_count() > tables_before - 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "tables below the floor were not dropped: {} of {tables_before} left",
            store.shared.records.tree.table_count()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let disk_after = store.shared.records.disk_space();
    assert!(
        disk_after < disk_before / 2,
        "disk {disk_before} -> {disk_after}"
    );
    let kept = read_all(&store, "t");
    assert_eq!(
        kept.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (14001..=15000).collect::<Vec<_>>()
    );
    let b = store.read("t", &BTreeMap::new(), None, 10).expect("read");
    assert_eq!(
        (b.missing[0].from, b.missing[0].to, b.missing[0].corrupt),
        (1, 14000, false)
    );
    rt.block_on(store.shutdown());
}
