//! A flipped bit must not take the node down: bytes flipped in the journal and in
//! the tables of a stopped gateway. The gateway starts, serves everything intact,
//! reports the damaged range as a `gap` with reason `corrupt`, and keeps accepting
//! writes; `edgesync store check` names the damage and `repair` fixes what it can.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgesync_client::{Client, Encoding, Event, GapReason, Start};
use edgesync_tests::{TestGateway, connect_retry, free_port, spawn_gateway_process};

const N: u64 = 60;

fn payload(prefix: &str, i: u64) -> String {
    format!("{prefix}-{i:03}-{}", "z".repeat(200))
}

/// Every file under `dir` (recursively).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Flip one byte a few bytes into the first occurrence of `needle` in the files
/// `select` accepts. Returns the file.
fn flip_inside(dir: &Path, needle: &[u8], select: impl Fn(&Path) -> bool) -> PathBuf {
    for f in files(dir).into_iter().filter(|p| select(p)) {
        let mut bytes = std::fs::read(&f).expect("read");
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + needle.len() + 3] ^= 0x20;
            std::fs::write(&f, &bytes).expect("write");
            return f;
        }
    }
    panic!("no file holds {:?}", String::from_utf8_lossy(needle));
}

/// Read the topic from the start until every seq is a message or inside a gap.
async fn read_everything(c: &Client, topic: &str) -> (BTreeSet<u64>, Vec<(u64, u64, GapReason)>) {
    let mut sub = c.subscribe(topic, Start::Earliest).await.expect("sub");
    let mut msgs = BTreeSet::new();
    let mut gaps = Vec::new();
    let accounted = |m: &BTreeSet<u64>, g: &Vec<(u64, u64, GapReason)>| {
        m.len() as u64 + g.iter().map(|(f, t, _)| t - f + 1).sum::<u64>()
    };
    while accounted(&msgs, &gaps) < N {
        match sub.next_timeout(Duration::from_secs(20)).await {
            Some(Event::Msg(m)) => {
                let text = String::from_utf8_lossy(&m.data.0).into_owned();
                assert!(
                    text.contains(&format!("-{:03}-", m.seq)),
                    "intact payload for {}",
                    m.seq
                );
                assert!(msgs.insert(m.seq), "seq {} twice", m.seq);
            }
            Some(Event::Gap {
                from, to, reason, ..
            }) => gaps.push((from, to, reason)),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("stream ended: {} msgs, gaps {gaps:?}", msgs.len()),
        }
    }
    (msgs, gaps)
}

fn store_cli(dir: &Path, cmd: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgesync-test-gateway"))
        .args(["store", cmd, "--data-dir"])
        .arg(dir)
        .output()
        .expect("run store cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_journal_byte_costs_one_record_not_the_node() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Publish one record per batch through a real process, then SIGKILL it: the
    // records live only in the journal.
    let port = free_port();
    let mut child = spawn_gateway_process(
        env!("CARGO_BIN_EXE_edgesync-test-gateway"),
        tmp.path(),
        port,
    );
    let client = connect_retry(&format!("ws://127.0.0.1:{port}")).await;
    for i in 1..=N {
        let ack = client
            .publish("bits", payload("jnl", i))
            .await
            .expect("publish");
        assert_eq!(ack.seq, i);
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let journal = flip_inside(tmp.path(), b"jnl-025-", |p| {
        p.extension().is_some_and(|x| x == "jnl")
    });
    // What quarantine must keep: the damaged journal up to its last byte in use (the
    // engine preallocates journals with zeros; a whole copy would cost that space).
    let flipped = std::fs::read(&journal).expect("read journal");
    let used = flipped.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    assert!(
        used < flipped.len(),
        "the journal is preallocated past its use"
    );

    // `store check` reports the damage without changing anything.
    let (ok, report) = store_cli(tmp.path(), "check");
    assert!(!ok, "check exits non-zero on damage: {report}");
    assert!(report.contains("damaged journal batch"), "{report}");

    let mut gw = TestGateway::start_in(tmp.path(), |_| {}).await;
    let c = gw.client(Encoding::MsgPack).await;
    let (msgs, gaps) = read_everything(&c, "bits").await;
    assert_eq!(
        gaps,
        vec![(25, 25, GapReason::Corrupt)],
        "exactly the damaged record, as corrupt"
    );
    assert_eq!(msgs.len() as u64, N - 1);
    let kept = tmp
        .path()
        .join("quarantine")
        .read_dir()
        .expect("quarantine")
        .next()
        .expect("a quarantine directory")
        .expect("entry")
        .path()
        .join(journal.file_name().expect("journal name"));
    assert_eq!(
        std::fs::read(&kept).expect("the original journal is kept"),
        flipped[..used],
        "quarantine keeps the damaged journal's used bytes, without the zero padding"
    );
    // Still accepting writes, after the highest seq.
    let ack = c
        .publish("bits", payload("jnl", N + 1))
        .await
        .expect("publish after damage");
    assert!(
        ack.seq > N || ack.origin.epoch > 1,
        "no seq is reused: {ack:?}"
    );
    gw.stop().await;

    // The damage is remembered across restarts (the corrupt list is durable).
    let mut gw = TestGateway::start_in(tmp.path(), |_| {}).await;
    let c = gw.client(Encoding::Json).await;
    let (_, gaps) = read_everything(&c, "bits").await;
    assert_eq!(gaps, vec![(25, 25, GapReason::Corrupt)]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_table_byte_is_a_corrupt_gap_not_a_refusal_to_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut gw = TestGateway::start_in(tmp.path(), |_| {}).await;
    let c = gw.client(Encoding::MsgPack).await;
    for i in 1..=N {
        c.publish("bits", payload("tbl", i)).await.expect("publish");
    }
    drop(c);
    // A clean stop writes the memtables out as tables.
    gw.stop().await;
    let table = flip_inside(tmp.path(), b"tbl-030-", |p| {
        p.extension().is_none_or(|x| x != "jnl") && !p.starts_with(tmp.path().join("quarantine"))
    });
    assert!(!table.to_string_lossy().ends_with(".jnl"));

    let (ok, report) = store_cli(tmp.path(), "check");
    assert!(!ok, "check exits non-zero on damage: {report}");
    assert!(report.contains("corrupt"), "{report}");

    let mut gw = TestGateway::start_in(tmp.path(), |_| {}).await;
    let c = gw.client(Encoding::MsgPack).await;
    let (msgs, gaps) = read_everything(&c, "bits").await;
    assert!(!gaps.is_empty());
    assert!(gaps.iter().all(|g| g.2 == GapReason::Corrupt), "{gaps:?}");
    assert!(
        gaps.iter().any(|(f, t, _)| (*f..=*t).contains(&30)),
        "{gaps:?}"
    );
    let lost: u64 = gaps.iter().map(|(f, t, _)| t - f + 1).sum();
    assert!(lost < N / 2, "only the damaged block is lost: {gaps:?}");
    assert!(
        msgs.contains(&1) && msgs.contains(&N),
        "records outside the block are served"
    );
    c.publish("bits", payload("tbl", N + 1))
        .await
        .expect("writes still accepted");
    gw.stop().await;
}
