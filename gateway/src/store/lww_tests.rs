//! Plugin kv as LWW state (`lww`): stamps stay internal, merges keep the greatest
//! rank, tombstones, the drift clamp, digests across reopen, unstamped values.

use super::*;
use crate::clock::ManualClock;
use bytes::Bytes;
use edgesync_replication::lww::LWW_BUCKETS;
use edgesync_replication::{BucketDigest, LwwEntry};

const T0: u64 = 1_700_000_000_000;

fn open_at(dir: &std::path::Path, node: &str, clock: &Arc<ManualClock>) -> Store {
    let mut opts = StoreOptions::new(dir);
    opts.node_id = Some(node.to_string());
    opts.clock = clock.clone();
    Store::open(opts).expect("open").0
}

fn close(store: Store) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(store.shutdown());
}

fn pkey(plugin: &str, key: &str) -> Vec<u8> {
    let mut k = vec![b'p'];
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn entry(key: &str, value: Option<&str>, ms: u64, node: &str) -> LwwEntry {
    LwwEntry {
        namespace: "kv/counter".into(),
        key: key.into(),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        hlc: ms << 16,
        origin: Origin::new(node, 1),
    }
}

/// Every stored entry, bucket by bucket (what a peer would be sent).
fn all_entries(store: &Store) -> Vec<LwwEntry> {
    let mut out = Vec::new();
    for (ns, b, _) in store.lww_digest_list() {
        out.extend(store.lww_bucket_entries(&ns, b).expect("bucket"));
    }
    out
}

/// The digests recomputed from the stored entries.
fn recomputed(store: &Store) -> Vec<(String, u32, BucketDigest)> {
    let mut m: BTreeMap<(String, u32), BucketDigest> = BTreeMap::new();
    for b in 0..LWW_BUCKETS {
        for e in store.lww_bucket_entries("kv/counter", b).expect("bucket") {
            m.entry((e.namespace.clone(), b))
                .or_default()
                .add(e.element());
        }
    }
    m.into_iter().map(|((n, b), d)| (n, b, d)).collect()
}

#[test]
fn plugins_read_plain_values_and_deletes_are_kept_as_tombstones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_at(dir.path(), "a", &clock);
    let mut live = store.subscribe_lww();
    store
        .plugin_kv_put(&pkey("counter", "x"), Some(b"one"))
        .expect("put");
    store
        .plugin_kv_put(&pkey("counter", "y"), Some(b"two"))
        .expect("put");
    assert_eq!(
        store.plugin_kv_get(&pkey("counter", "x")).expect("get"),
        Some(b"one".to_vec())
    );
    let raw = store
        .kv_get(&pkey("counter", "x"))
        .expect("raw")
        .expect("stored");
    assert_ne!(raw, b"one".to_vec(), "the stamp is stored with the value");
    store
        .plugin_kv_put(&pkey("counter", "x"), None)
        .expect("delete");
    assert_eq!(
        store.plugin_kv_get(&pkey("counter", "x")).expect("get"),
        None
    );
    let scan = store.plugin_kv_scan(b"pcounter\0", None, 10).expect("scan");
    assert_eq!(scan, vec![(pkey("counter", "y"), b"two".to_vec())]);
    // The delete is a stored tombstone, counted in the digests and sent live.
    let tomb: Vec<_> = all_entries(&store)
        .into_iter()
        .filter(|e| e.key == "x")
        .collect();
    assert_eq!(tomb.len(), 1);
    assert_eq!(tomb[0].value, None);
    let mut sent = Vec::new();
    while let Ok(b) = live.try_recv() {
        assert_eq!(b.source, LWW_SOURCE_LOCAL);
        sent.extend(b.entries.iter().cloned());
    }
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|e| e.origin == *store.local_origin()));
    assert!(sent.windows(2).all(|w| w[0].hlc < w[1].hlc), "stamps grow");
    assert_eq!(store.lww_digest_list(), recomputed(&store));
    close(store);
}

#[test]
fn merge_keeps_the_greatest_rank_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_at(dir.path(), "a", &clock);
    let batch = vec![
        entry("k", Some("old"), T0 - 10, "b"),
        entry("k", Some("new"), T0 - 5, "b"),
        entry("k", Some("older"), T0 - 20, "c"),
        entry("j", Some("v"), T0 - 5, "b"),
    ];
    let m = store.lww_merge(batch.clone(), 7).expect("merge");
    assert_eq!(m.winners.len(), 2, "one winner per key");
    assert_eq!(m.stale, 1, "the older entry after the newer one");
    assert_eq!(
        store.plugin_kv_get(&pkey("counter", "k")).expect("get"),
        Some(b"new".to_vec())
    );
    let digests = store.lww_digest_list();
    // Again, in another order: nothing changes.
    let mut again = batch;
    again.reverse();
    let m = store.lww_merge(again, 7).expect("merge");
    assert!(m.winners.is_empty());
    assert_eq!(m.stale, 4);
    assert_eq!(store.lww_digest_list(), digests);
    // An older stamp loses to the stored one; a tie on the stamp is broken by origin.
    let m = store
        .lww_merge(vec![entry("k", Some("late"), T0 - 6, "z")], 7)
        .expect("merge");
    assert_eq!(m.stale, 1);
    let m = store
        .lww_merge(vec![entry("k", Some("tie"), T0 - 5, "c")], 7)
        .expect("merge");
    assert_eq!(m.winners.len(), 1, "origin c > b at the same stamp");
    // A newer tombstone wins; an older value does not bring the key back.
    let m = store
        .lww_merge(vec![entry("k", None, T0 - 1, "b")], 7)
        .expect("merge");
    assert_eq!(m.winners.len(), 1);
    assert_eq!(
        store.plugin_kv_get(&pkey("counter", "k")).expect("get"),
        None
    );
    let m = store
        .lww_merge(vec![entry("k", Some("zombie"), T0 - 2, "z")], 7)
        .expect("merge");
    assert_eq!(m.stale, 1);
    assert_eq!(
        store.plugin_kv_get(&pkey("counter", "k")).expect("get"),
        None
    );
    // A local write after a merge outranks it, whatever the wall clock says.
    clock.set(T0 - 100);
    store
        .plugin_kv_put(&pkey("counter", "k"), Some(b"local"))
        .expect("put");
    let m = store
        .lww_merge(vec![entry("k", None, T0 - 1, "b")], 7)
        .expect("merge");
    assert_eq!(m.stale, 1);
    assert_eq!(
        store.plugin_kv_get(&pkey("counter", "k")).expect("get"),
        Some(b"local".to_vec())
    );
    // Not plugin kv: refused, nothing stored.
    let mut other = entry("k", Some("v"), T0, "b");
    other.namespace = "elsewhere".into();
    assert_eq!(store.lww_merge(vec![other], 7).expect("merge").refused, 1);
    assert_eq!(store.lww_digest_list(), recomputed(&store));
    close(store);
}

#[test]
fn a_stamp_beyond_the_drift_bound_is_clamped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_at(dir.path(), "a", &clock);
    let far = entry("k", Some("future"), T0 + 3_600_000, "skewed");
    let m = store.lww_merge(vec![far.clone()], 3).expect("merge");
    assert_eq!(m.clamped, 1);
    assert_eq!(m.winners[0].hlc, (T0 + LWW_MAX_DRIFT_MS) << 16);
    // A write stamped just past the clamp (its logical counter) wins over the skewed one.
    let mut honest = entry("k", Some("honest"), T0 + LWW_MAX_DRIFT_MS, "b");
    honest.hlc += 1;
    assert_eq!(
        store
            .lww_merge(vec![honest], 3)
            .expect("merge")
            .winners
            .len(),
        1
    );
    assert_eq!(
        store.plugin_kv_get(&pkey("counter", "k")).expect("get"),
        Some(b"honest".to_vec())
    );
    // Within the bound: stored as sent.
    let near = entry("n", Some("v"), T0 + 1_000, "b");
    let m = store.lww_merge(vec![near.clone()], 3).expect("merge");
    assert_eq!((m.clamped, m.winners), (0, vec![near]));
    close(store);
}

#[test]
fn digests_and_stamps_survive_reopen_and_unstamped_values_are_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_at(dir.path(), "a", &clock);
    store
        .plugin_kv_put(&pkey("counter", "s"), Some(b"stamped"))
        .expect("put");
    // A value written before stamps (the raw keyspace, as older versions did).
    store
        .kv_write(&[(pkey("counter", "legacy"), Some(b"plain".to_vec()))])
        .expect("raw");
    assert_eq!(
        store
            .plugin_kv_get(&pkey("counter", "legacy"))
            .expect("get"),
        Some(b"plain".to_vec())
    );
    let before = store.lww_digest_list();
    let last = store.shared.lww.lock().last_hlc;
    close(store);
    // The migration runs once per store; force it again by clearing its marker.
    {
        let store = open_at(dir.path(), "a", &clock);
        assert_eq!(store.lww_digest_list(), before, "digests reload from meta");
        store
            .shared
            .meta
            .remove(lww::META_MIGRATED)
            .expect("unmark");
        close(store);
    }
    clock.set(T0 - 60_000); // the wall clock stepped back
    let store = open_at(dir.path(), "a", &clock);
    assert_eq!(
        store
            .plugin_kv_get(&pkey("counter", "legacy"))
            .expect("get"),
        Some(b"plain".to_vec())
    );
    let entries = all_entries(&store);
    assert_eq!(
        entries.len(),
        2,
        "the unstamped value is an LWW entry now: {entries:?}"
    );
    let legacy = entries
        .iter()
        .find(|e| e.key == "legacy")
        .expect("migrated");
    assert!(legacy.hlc > last, "stamps keep growing across reopen");
    assert_eq!(store.lww_digest_list(), recomputed(&store));
    close(store);
}

#[test]
fn two_stores_exchanging_entries_converge() {
    let (da, db) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let clock = ManualClock::new(T0);
    let a = open_at(da.path(), "a", &clock);
    let b = open_at(db.path(), "b", &clock);
    for i in 0..40 {
        clock.advance(1);
        let key = pkey("counter", &format!("k{}", i % 7));
        let value = format!("v{i}");
        if i % 2 == 0 {
            a.plugin_kv_put(&key, Some(value.as_bytes())).expect("put");
        } else if i % 5 == 0 {
            b.plugin_kv_put(&key, None).expect("delete");
        } else {
            b.plugin_kv_put(&key, Some(value.as_bytes())).expect("put");
        }
    }
    assert_ne!(a.lww_digest_list(), b.lww_digest_list());
    b.lww_merge(all_entries(&a), 1).expect("merge");
    a.lww_merge(all_entries(&b), 1).expect("merge");
    assert_eq!(a.lww_digest_list(), b.lww_digest_list());
    let scan = |s: &Store| s.plugin_kv_scan(b"p", None, 100).expect("scan");
    assert_eq!(scan(&a), scan(&b));
    close(a);
    close(b);
}

#[test]
fn an_expired_entry_is_removed_without_a_tombstone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_at(dir.path(), "a", &clock);
    store
        .plugin_kv_put(&pkey("counter", "rl:1"), Some(b"1"))
        .expect("put");
    store
        .plugin_kv_put(&pkey("counter", "keep"), Some(b"2"))
        .expect("put");
    let mut live = store.subscribe_lww();
    store
        .plugin_kv_remove_expired(&pkey("counter", "rl:1"))
        .expect("remove");
    assert!(live.try_recv().is_err(), "nothing sent to peers");
    assert_eq!(
        store.kv_get(&pkey("counter", "rl:1")).expect("raw"),
        None,
        "no tombstone"
    );
    let keys: Vec<String> = all_entries(&store).into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["keep"]);
    assert_eq!(store.lww_digest_list(), recomputed(&store));
    close(store);
}

#[test]
fn tombstones_go_after_their_bound_and_an_expired_one_still_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_at(dir.path(), "a", &clock);
    for k in ["x", "y", "z"] {
        store
            .plugin_kv_put(&pkey("counter", k), Some(b"v"))
            .expect("put");
    }
    store
        .plugin_kv_put(&pkey("counter", "x"), None)
        .expect("del");
    store
        .plugin_kv_put(&pkey("counter", "y"), None)
        .expect("del");
    let mut from = None;
    assert_eq!(
        store.shared.collect_tombstones(&mut from).expect("sweep"),
        0
    );
    assert!(from.is_none(), "one pass saw every key");
    assert!(store.kv_get(&pkey("counter", "x")).expect("raw").is_some());

    let ttl = i64::try_from(DEFAULT_KV_TOMBSTONE_TTL.as_millis()).expect("ms");
    clock.advance(ttl + 1_000);
    assert_eq!(
        store.shared.collect_tombstones(&mut from).expect("sweep"),
        2
    );
    assert_eq!(store.kv_get(&pkey("counter", "x")).expect("raw"), None);
    assert_eq!(store.kv_get(&pkey("counter", "y")).expect("raw"), None);
    assert_eq!(store.lww_digest_list(), recomputed(&store));

    // An expired tombstone from a peer: nothing to delete → stale, not stored; one
    // that outranks a value deletes it and leaves no tombstone.
    let m = store
        .lww_merge(vec![entry("x", None, T0 + 5, "b")], 1)
        .expect("merge");
    assert_eq!((m.stale, m.winners.len()), (1, 0));
    let m = store
        .lww_merge(vec![entry("z", None, T0 + 5, "b")], 1)
        .expect("merge");
    assert_eq!(m.winners.len(), 1, "the delete wins over z's value");
    assert_eq!(
        store.plugin_kv_get(&pkey("counter", "z")).expect("get"),
        None
    );
    assert_eq!(store.kv_get(&pkey("counter", "z")).expect("raw"), None);
    assert!(store.lww_digest_list().is_empty(), "nothing left");

    // Sweeps are bounded and resume where they stopped.
    let n = lww::TOMBSTONE_SWEEP_BUDGET + 10;
    for i in 0..n {
        let k = pkey("counter", &format!("k{i:05}"));
        store.plugin_kv_put(&k, Some(b"v")).expect("put");
        store.plugin_kv_put(&k, None).expect("del");
    }
    clock.advance(ttl + 1_000);
    let first = store.shared.collect_tombstones(&mut from).expect("sweep");
    assert_eq!(first, lww::TOMBSTONE_SWEEP_BUDGET);
    assert!(from.is_some(), "the next pass resumes");
    let second = store.shared.collect_tombstones(&mut from).expect("sweep");
    assert_eq!((second, from.is_none()), (10, true));
    assert!(store.lww_digest_list().is_empty());
    close(store);
}
