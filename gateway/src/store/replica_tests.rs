//! The replication seam against the real on-disk store: idempotent apply of
//! foreign records (byte-identical), out-of-order arrival, gap markers, repair,
//! the HLC receive-merge, digests and ranged vectors across a reopen.

use std::collections::BTreeMap;

use bytes::Bytes;
use edgesync_protocol::{Headers, Origin};
use edgesync_replication::RangeSet;
use edgesync_replication::digest::{Entry, OriginDigest};

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn peer() -> Origin {
    Origin::new("peer-a", 3)
}

/// Bytes of a record of `peer()` as its store would have written them.
fn foreign(topic: &str, seq: u64, hlc: u64) -> Bytes {
    Bytes::from(
        Record {
            topic: topic.into(),
            origin: peer(),
            seq,
            hlc,
            client: "dev-1".into(),
            mid: None,
            publish_key: None,
            headers: Headers::default(),
            payload: Bytes::from(format!("payload {seq}")),
        }
        .encode()
        .expect("encode"),
    )
}

fn apply(store: &Store, records: Vec<Bytes>, gaps: Vec<(u64, u64)>, repair: bool) -> Applied {
    rt().block_on(store.apply(ApplyRequest {
        topic: "t".into(),
        origin: peer(),
        records,
        gaps,
        repair,
    }))
    .expect("apply")
}

fn seqs_delivered(rx: &mut mpsc::Receiver<Committed>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(b) = rx.try_recv() {
        out.extend(b.iter().map(|r| r.seq));
    }
    out
}

fn set(ranges: &[(u64, u64)]) -> RangeSet {
    let mut s = RangeSet::new();
    for &(a, b) in ranges {
        s.insert_range(a, b);
    }
    s
}

#[test]
fn apply_is_idempotent_byte_identical_and_waits_for_holes_before_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mut rx) = Store::open(StoreOptions::new(dir.path())).expect("open");
    let hlc = 1_000u64 << 16;
    // 4 and 5 arrive before 1..=3.
    let a = apply(
        &store,
        vec![foreign("t", 5, hlc), foreign("t", 4, hlc)],
        vec![],
        false,
    );
    assert_eq!(a.durable, set(&[(4, 5)]));
    assert_eq!(a.stored, 2);
    assert!(
        seqs_delivered(&mut rx).is_empty(),
        "nothing is delivered above a hole"
    );
    assert!(store.head("t").get(&peer()).is_none_or(|h| *h == 0));
    let a = apply(
        &store,
        (1..=3).map(|s| foreign("t", s, hlc)).collect(),
        vec![],
        false,
    );
    assert_eq!(a.durable, set(&[(1, 5)]));
    assert_eq!(
        seqs_delivered(&mut rx),
        vec![1, 2, 3, 4, 5],
        "the hole filled: all in order"
    );
    // Again: nothing new is stored or delivered.
    let a = apply(
        &store,
        (1..=5).map(|s| foreign("t", s, hlc)).collect(),
        vec![],
        false,
    );
    assert_eq!((a.stored, a.durable.clone()), (0, set(&[(1, 5)])));
    assert!(seqs_delivered(&mut rx).is_empty());
    assert_eq!(store.head("t").get(&peer()), Some(&5));
    // Byte for byte what the origin wrote.
    let r = store
        .read_range("t", &peer(), 1, 5, 100, u64::MAX)
        .expect("read");
    assert_eq!(r.records.len(), 5);
    for raw in &r.records {
        assert_eq!(raw.bytes, foreign("t", raw.seq, hlc));
    }
    assert_eq!(store.topics()[0].messages, 5);
    rt().block_on(store.shutdown());
}

#[test]
fn bad_bytes_and_foreign_identities_are_rejected_not_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _rx) = Store::open(StoreOptions::new(dir.path())).expect("open");
    let mut flipped = foreign("t", 1, 1 << 16).to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let other_topic = foreign("u", 2, 1 << 16);
    let a = apply(
        &store,
        vec![Bytes::from(flipped), other_topic],
        vec![],
        false,
    );
    assert_eq!(a.rejected, vec![1, 2]);
    assert_eq!(a.stored, 0);
    assert!(a.durable.is_empty());
    // Our own origin may not be allocated by a peer.
    let own = store.local_origin().clone();
    let mine = Record {
        topic: "t".into(),
        origin: own.clone(),
        seq: 1,
        hlc: 1,
        client: "x".into(),
        mid: None,
        publish_key: None,
        headers: Headers::default(),
        payload: Bytes::new(),
    };
    let out = rt()
        .block_on(store.apply(ApplyRequest {
            topic: "t".into(),
            origin: own,
            records: vec![Bytes::from(mine.encode().expect("encode"))],
            gaps: vec![],
            repair: false,
        }))
        .expect("apply");
    assert_eq!(out.rejected, vec![1]);
    rt().block_on(store.shutdown());
}

#[test]
fn gaps_move_the_floor_or_become_markers_that_repair_replaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mut rx) = Store::open(StoreOptions::new(dir.path())).expect("open");
    let hlc = 7u64 << 16;
    // The peer's retention removed 1..=10: our floor becomes 11.
    let a = apply(&store, vec![foreign("t", 11, hlc)], vec![(1, 10)], false);
    assert_eq!(a.durable, set(&[(1, 11)]));
    assert_eq!(seqs_delivered(&mut rx), vec![11]);
    // 12..=14 lost at the origin while 15 exists: an interior gap marker.
    let a = apply(&store, vec![foreign("t", 15, hlc)], vec![(12, 14)], false);
    assert_eq!(a.durable, set(&[(1, 15)]));
    assert_eq!(seqs_delivered(&mut rx), vec![15]);
    let b = store.read("t", &BTreeMap::new(), None, 100).expect("read");
    assert_eq!(
        b.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![11, 15]
    );
    let missing: Vec<(u64, u64, bool)> = b
        .missing
        .iter()
        .map(|m| (m.from, m.to, m.corrupt))
        .collect();
    assert_eq!(
        missing,
        vec![(1, 10, false), (12, 14, false)],
        "markers read as retention gaps"
    );
    let r = store
        .read_range("t", &peer(), 1, 15, 100, u64::MAX)
        .expect("range");
    assert_eq!(r.truncated, vec![(1, 10), (12, 14)]);
    assert!(r.corrupt.is_empty());
    assert_eq!(r.end, 15);
    // A later repair fills 13 out of the marker: 12 and 14 stay markers.
    let a = apply(&store, vec![foreign("t", 13, hlc)], vec![], true);
    assert_eq!(a.stored, 1);
    let r = store
        .read_range("t", &peer(), 11, 15, 100, u64::MAX)
        .expect("range");
    assert_eq!(
        r.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![11, 13, 15]
    );
    assert_eq!(r.truncated, vec![(12, 12), (14, 14)]);
    // Repair never replaces a valid record.
    let a = apply(&store, vec![foreign("t", 11, hlc + 1)], vec![], true);
    assert_eq!(a.stored, 0);
    rt().block_on(store.shutdown());
}

#[test]
fn received_hlcs_pull_the_local_clock_within_the_drift_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = crate::clock::ManualClock::new(1_000_000);
    let mut opts = StoreOptions::new(dir.path());
    opts.clock = clock.clone();
    let (store, _rx) = Store::open(opts).expect("open");
    let rt = rt();
    let ahead = (1_000_000 + 30_000) << 16; // 30 s ahead: followed
    apply(&store, vec![foreign("t", 1, ahead)], vec![], false);
    let ack = rt.block_on(store.append(Publish {
        topic: "local".into(),
        client: "c".into(),
        principal: None,
        mid: None,
        headers: Headers::default(),
        payload: Bytes::new(),
    }));
    assert!(
        ack.expect("append").hlc > ahead,
        "a local record orders after what it has seen"
    );
    let far = (1_000_000 + MAX_HLC_DRIFT_MS + 60_000) << 16; // beyond the bound: stored, not followed
    let a = apply(&store, vec![foreign("t", 2, far)], vec![], false);
    assert_eq!(a.stored, 1);
    let ack = rt
        .block_on(store.append(Publish {
            topic: "local".into(),
            client: "c".into(),
            principal: None,
            mid: None,
            headers: Headers::default(),
            payload: Bytes::new(),
        }))
        .expect("append");
    assert!(ack.hlc < far);
    rt.block_on(store.shutdown());
}

#[test]
fn digests_and_ranged_vectors_are_incremental_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hlc = 9u64 << 16;
    let expected_digest = |store: &Store| {
        let r = store
            .read_range("t", &peer(), 1, 5000, 10_000, u64::MAX)
            .expect("range");
        let mut entries: Vec<(u64, Entry)> = r
            .records
            .iter()
            .map(|x| (x.seq, Entry::Record { crc: x.crc }))
            .collect();
        for &(a, b) in &r.truncated {
            entries.extend((a..=b).map(|s| (s, Entry::Gap)));
        }
        OriginDigest::recompute(&peer(), 1, entries)
    };
    {
        let (store, _rx) = Store::open(StoreOptions::new(dir.path())).expect("open");
        // Two buckets (1024 seqs each), a hole, an interior marker.
        apply(
            &store,
            (1..=1500).map(|s| foreign("t", s, hlc)).collect(),
            vec![],
            false,
        );
        apply(
            &store,
            vec![foreign("t", 2100, hlc)],
            vec![(1600, 1700)],
            false,
        );
        assert_eq!(
            store.vector("t").and_then(|v| v.get(&peer()).cloned()),
            Some(set(&[(1, 1500), (1600, 1700), (2100, 2100)]))
        );
        assert_eq!(store.digest("t", &peer()), Some(expected_digest(&store)));
        rt().block_on(store.shutdown());
    }
    let (store, _rx) = Store::open(StoreOptions::new(dir.path())).expect("reopen");
    assert_eq!(
        store.vector("t").and_then(|v| v.get(&peer()).cloned()),
        Some(set(&[(1, 1500), (1600, 1700), (2100, 2100)])),
        "out-of-order ranges are durable"
    );
    assert_eq!(store.digest("t", &peer()), Some(expected_digest(&store)));
    // Local appends keep their digest too.
    let rt = rt();
    for _ in 0..3 {
        rt.block_on(store.append(Publish {
            topic: "t".into(),
            client: "c".into(),
            principal: None,
            mid: None,
            headers: Headers::default(),
            payload: Bytes::from_static(b"x"),
        }))
        .expect("append");
    }
    let own = store.local_origin().clone();
    let r = store
        .read_range("t", &own, 1, 3, 10, u64::MAX)
        .expect("range");
    let want = OriginDigest::recompute(
        &own,
        1,
        r.records
            .iter()
            .map(|x| (x.seq, Entry::Record { crc: x.crc })),
    );
    assert_eq!(store.digest("t", &own), Some(want.clone()));
    // Our own records forwarded back by a peer: held already, not "failed verification"
    // (which would make the link pull them again), and nothing changes.
    let back = rt
        .block_on(store.apply(ApplyRequest {
            topic: "t".into(),
            origin: own.clone(),
            records: r.records.iter().map(|x| x.bytes.clone()).collect(),
            gaps: vec![],
            repair: false,
        }))
        .expect("apply");
    assert!(back.rejected.is_empty(), "{:?}", back.rejected);
    assert_eq!(back.stored, 0);
    assert_eq!(store.digest("t", &own), Some(want));
    rt.block_on(store.shutdown());
}

#[test]
fn a_corrupt_record_is_listed_and_repair_from_a_peer_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _rx) = Store::open(StoreOptions::new(dir.path())).expect("open");
    let hlc = 3u64 << 16;
    apply(
        &store,
        (1..=3).map(|s| foreign("t", s, hlc)).collect(),
        vec![],
        false,
    );
    // Overwrite seq 2 with bytes that fail their CRC, as a bad disk would.
    let (tid, oid) = {
        let idx = store.shared.index.read();
        (idx.topics["t"].id, idx.origin_ids[&peer()])
    };
    let mut bad = foreign("t", 2, hlc).to_vec();
    bad[40] ^= 0xff;
    store
        .shared
        .records
        .insert(keys::record_key(tid, oid, 2), bad)
        .expect("insert");
    let r = store
        .read_range("t", &peer(), 1, 3, 10, u64::MAX)
        .expect("range");
    assert_eq!(
        r.records.iter().map(|x| x.seq).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(r.corrupt, vec![2]);
    assert_eq!(store.corrupt_records(), vec![("t".to_string(), peer(), 2)]);
    let a = apply(&store, vec![foreign("t", 2, hlc)], vec![], true);
    assert_eq!(a.stored, 1);
    assert!(store.corrupt_records().is_empty());
    let b = store.read("t", &BTreeMap::new(), None, 10).expect("read");
    assert_eq!(b.records.len(), 3);
    assert!(b.missing.is_empty());
    rt().block_on(store.shutdown());
}

/// A record of `origin` carrying the publish key of `req` (as its origin's writer
/// would have written it).
fn keyed(origin: &Origin, seq: u64, hlc: u64, req: &Publish) -> Bytes {
    let mid = req.mid.as_deref().expect("mid");
    Bytes::from(
        Record {
            topic: req.topic.clone(),
            origin: origin.clone(),
            seq,
            hlc,
            client: req.client.clone(),
            mid: req.mid.clone(),
            publish_key: Some(keys::publish_key(req, mid)),
            headers: Headers::default(),
            payload: Bytes::from_static(b"once"),
        }
        .encode()
        .expect("encode"),
    )
}

fn publish(principal: &str, mid: &str) -> Publish {
    Publish {
        topic: "t".into(),
        client: "dev-1".into(),
        principal: Some(principal.into()),
        mid: Some(mid.into()),
        headers: Headers::default(),
        payload: Bytes::from_static(b"once"),
    }
}

fn apply_from(store: &Store, origin: &Origin, records: Vec<Bytes>) -> Applied {
    rt().block_on(store.apply(ApplyRequest {
        topic: "t".into(),
        origin: origin.clone(),
        records,
        gaps: vec![],
        repair: false,
    }))
    .expect("apply")
}

/// Issue 13 item 7: a publish retried on a gateway that holds the original by
/// replication gets the original ack and stores nothing; another principal's
/// identical (client, mid) is not a duplicate; of two records with one publish key
/// the entry names the earlier by (hlc, origin), whatever the arrival order.
#[test]
fn replicated_records_answer_retried_publishes_with_the_original_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _rx) = Store::open(StoreOptions::new(dir.path())).expect("open");
    let now_hlc = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64)
        << 16;
    let req = publish("alice", "m-1");
    let a = apply_from(&store, &peer(), vec![keyed(&peer(), 1, now_hlc, &req)]);
    assert_eq!(a.stored, 1);
    let ack = rt().block_on(store.append(req.clone())).expect("append");
    assert!(ack.dup, "the retry is answered from the replicated record");
    assert_eq!((ack.origin.clone(), ack.seq, ack.hlc), (peer(), 1, now_hlc));
    let local = store.local_origin().clone();
    let vv = store.vector("t").expect("vector");
    assert!(
        vv.get(&local).is_none(),
        "nothing stored under this node: {vv:?}"
    );

    // Same client and mid, another principal: a different publish.
    let other = rt()
        .block_on(store.append(publish("mallory", "m-1")))
        .expect("append");
    assert!(!other.dup);
    assert_eq!(other.origin, local);

    // A later copy under a third origin (its origin crashed before replicating and
    // the client retried there) does not move the answer; an earlier one does.
    let later = Origin::new("peer-b", 1);
    apply_from(&store, &later, vec![keyed(&later, 1, now_hlc + 5, &req)]);
    let ack = rt().block_on(store.append(req.clone())).expect("append");
    assert_eq!((ack.origin.clone(), ack.seq), (peer(), 1));
    let earlier = Origin::new("peer-c", 1);
    apply_from(
        &store,
        &earlier,
        vec![keyed(&earlier, 1, now_hlc - 5, &req)],
    );
    let ack = rt().block_on(store.append(req.clone())).expect("append");
    assert!(ack.dup);
    assert_eq!((ack.origin.clone(), ack.hlc), (earlier, now_hlc - 5));
    // It survives a reopen (the index is on disk, not in memory).
    rt().block_on(store.shutdown());
    drop(store);
    let (store, _rx) = Store::open(StoreOptions::new(dir.path())).expect("reopen");
    let ack = rt().block_on(store.append(req)).expect("append");
    assert!(ack.dup);
    assert_eq!(ack.origin, Origin::new("peer-c", 1));
    rt().block_on(store.shutdown());
}

/// A peer link's round: requests for several streams share one atomic batch and one
/// fsync; a stream named again starts the next batch (it sees the first committed);
/// answers come back in request order; two streams carrying one publish key in the
/// same batch leave the entry naming the earlier record, as separate applies do.
#[test]
fn apply_all_commits_distinct_streams_with_one_fsync_and_answers_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let syncs = Arc::new(super::tests::Recorder::default());
    let mut opts = StoreOptions::new(dir.path());
    opts.observer = syncs.clone();
    let (store, mut rx) = Store::open(opts).expect("open");
    let hlc = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64)
        << 16;
    let req = |topic: &str, origin: &Origin, records: Vec<Bytes>| ApplyRequest {
        topic: topic.into(),
        origin: origin.clone(),
        records,
        gaps: vec![],
        repair: false,
    };
    let (b, c) = (Origin::new("peer-b", 1), Origin::new("peer-c", 1));
    let retried = publish("alice", "m-9");
    let before = syncs.syncs.load(std::sync::atomic::Ordering::Relaxed);
    let all = rt()
        .block_on(store.apply_all(vec![
            req(
                "a",
                &peer(),
                (1..=3).map(|s| foreign("a", s, hlc)).collect(),
            ),
            req(
                "b",
                &peer(),
                (1..=2).map(|s| foreign("b", s, hlc)).collect(),
            ),
            // The earlier copy first: the later one, in the same batch, must not
            // replace its entry (it cannot be read back before the commit).
            req("t", &c, vec![keyed(&c, 1, hlc - 5, &retried)]),
            req("t", &b, vec![keyed(&b, 1, hlc + 5, &retried)]),
            // "a" of the same origin again: its own batch, after the first.
            req(
                "a",
                &peer(),
                vec![foreign("a", 5, hlc), foreign("a", 4, hlc)],
            ),
            // Bytes of another topic: rejected, answered in its place.
            req("b", &b, vec![foreign("a", 9, hlc)]),
        ]))
        .expect("apply_all");
    let after = syncs.syncs.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 2, "one fsync per batch of distinct streams");
    let durable: Vec<RangeSet> = all.iter().map(|a| a.durable.clone()).collect();
    assert_eq!(
        durable,
        vec![
            set(&[(1, 3)]),
            set(&[(1, 2)]),
            set(&[(1, 1)]),
            set(&[(1, 1)]),
            set(&[(1, 5)]),
            RangeSet::new(),
        ]
    );
    let stored: Vec<usize> = all.iter().map(|a| a.stored).collect();
    assert_eq!(stored, vec![3, 2, 1, 1, 2, 0]);
    assert_eq!(all[5].rejected, vec![9]);
    let mut delivered: Vec<(String, String, u64)> = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        delivered.extend(
            batch
                .iter()
                .map(|r| (r.topic.clone(), r.origin.node.clone(), r.seq)),
        );
    }
    let of = |topic: &str| -> Vec<u64> {
        delivered
            .iter()
            .filter(|d| d.0 == topic && d.1 == "peer-a")
            .map(|d| d.2)
            .collect()
    };
    assert_eq!(of("a"), vec![1, 2, 3, 4, 5], "per stream in seq order");
    assert_eq!(of("b"), vec![1, 2]);
    let ack = rt().block_on(store.append(retried)).expect("append");
    assert!(ack.dup, "the retry is answered from a replicated record");
    assert_eq!((ack.origin, ack.hlc), (c, hlc - 5));
    rt().block_on(store.shutdown());
}
