//! Replication between real gateway processes (issue 13): certificates made with the
//! CLI, `[cluster]` / `[[peer]]` configs, peer links over QUIC with mutual TLS on
//! 127.0.0.1, clients over WebSocket.
//!
//! - the first example of docs/replication.md: publish on A, `edgesync sub` on B gets
//!   it; B killed with SIGKILL while A takes more, restarted: B catches up with no gap
//!   and no duplicate; a cursor taken on A resumes on B exactly where it stopped;
//! - edge ↔ hub with the link cut (the hub killed): the edge keeps accepting, and
//!   everything arrives both ways once the hub is back;
//! - a partition (a UDP proxy between edge and hub drops everything, both alive): both
//!   keep accepting, the link is noticed down, and after the heal both hold everything;
//! - a peer with a certificate from another CA, and one of another cluster, are refused
//!   and counted (`edgesync_peer_refused_total`), and nothing of theirs is stored;
//! - a chain A → B → C carries A's records to C (any node forwards any origin), and a
//!   mesh of three converges after one of them was killed;
//! - the Rust client with a fallback URL fails over when its gateway is killed: its
//!   subscription resumes on the other gateway from its cursor (no gap, no duplicate)
//!   and it publishes there;
//! - a byte flipped in a stopped node's journal costs nothing once it is back: what
//!   the damage took is pulled again from its peer, intact;
//! - retention holds records a peer lacks (the peer away), then trims once it has them;
//! - `replicated:1` acks only once a peer holds the record, and without a peer fails
//!   with the retryable `replication_timeout`; the retry with the same mid is answered
//!   with the original record once the peer is back;
//! - idempotent publish across gateways: A stores and replicates a publish but dies
//!   before acking it; the client fails over to B and resends the same mid; B answers
//!   with A's record, and the cluster holds it once;
//! - plugin kv (`kv-counter`) written on both sides converges to the last writer's
//!   value, live, after a partition, and across a kill -9 of one side.
//!
//! Every wait is bounded; failures print what arrived.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edgesync_client::{
    Client, ClientError, ClientOptions, ErrorCode, Event, PublishOptions, Start,
};
use edgesync_tests::cluster::{self, Node, TOKEN, files};
use edgesync_tests::fault_proxy::FaultProxy;

const EXE: &str = env!("CARGO_BIN_EXE_edgesync-test-gateway");
/// Longest wait for records to cross a link (bounded; normally milliseconds).
const ARRIVAL: Duration = Duration::from_secs(20);

/// A cluster CA in `dir` and a node certificate per name, made with the CLI.
fn make_certs(dir: &Path, nodes: &[&str]) -> PathBuf {
    cluster::make_certs(Path::new(EXE), dir, nodes)
}

/// A node of the test gateway binary (see [`cluster::Node::new`]).
fn node(root: &Path, name: &str, certs: &Path, cluster: &str, peers: &[u16]) -> Node {
    Node::new(Path::new(EXE), root, name, certs, cluster, peers)
}

/// Publish `prefix{i}` for `range` on `topic`, each acked durably.
async fn publish(c: &Client, topic: &str, prefix: &str, range: std::ops::Range<u32>) {
    for i in range {
        c.publish(topic, format!("{prefix}{i}"))
            .await
            .unwrap_or_else(|e| panic!("publish {prefix}{i}: {e}"));
    }
}

/// Subscribe from `start` and take exactly `n` messages (payload, origin, seq), then
/// check nothing more arrives for a moment (no duplicate, no phantom).
async fn take(c: &Client, pattern: &str, start: Start, n: usize) -> Vec<(String, String, u64)> {
    let mut sub = c.subscribe(pattern, start).await.expect("subscribe");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.next_timeout(left).await {
            Some(Event::Msg(m)) => got.push((
                String::from_utf8_lossy(&m.data.0).into_owned(),
                m.origin.clone(),
                m.seq,
            )),
            Some(other) => panic!("unexpected {other:?} after {got:?}"),
            None => panic!("only {} of {n} arrived: {got:?}", got.len()),
        }
    }
    if let Some(Event::Msg(m)) = sub.next_timeout(Duration::from_millis(300)).await {
        panic!("more than {n} messages: extra {:?} seq {}", m.data, m.seq);
    }
    c.unsubscribe(pattern).await.expect("unsubscribe");
    got
}

fn payloads_of(msgs: &[edgesync_client::Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8_lossy(&m.data.0).into_owned())
        .collect()
}

fn payloads(got: &[(String, String, u64)]) -> Vec<String> {
    got.iter().map(|(p, _, _)| p.clone()).collect()
}

fn expected(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// The issue's first example: two gateways that dial each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_a_is_read_on_b_and_b_catches_up_after_kill_9() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[]);
    a.write_config(&certs, "plant-7", &[b.quic]);
    b.write_config(&certs, "plant-7", &[a.quic]);
    a.start();
    b.start();
    let ca = a.client().await;
    let _ = b.client().await;
    // Both dial: one of the two links is closed, on both sides.
    a.wait_links_up(1).await;
    b.wait_links_up(1).await;
    // `edgesync peers` shows the link.
    let out = Command::new(EXE)
        .args(["peers", "--admin", &format!("127.0.0.1:{}", a.admin)])
        .args(["--token", TOKEN])
        .output()
        .expect("peers");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.starts_with("cluster plant-7, node node-a\n"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-b") && l.contains(" up ")),
        "{table}"
    );
    publish(&ca, "sensors.t1", "m", 0..10).await;

    // `edgesync sub` on B prints what was published on A.
    let out = tokio::task::spawn_blocking({
        let url = b.url();
        move || {
            Command::new(EXE)
                .args(["sub", "sensors.>", "--from", "earliest", "--count", "10"])
                .args(["--idle-exit", "20", "--url", &url])
                .output()
                .expect("sub")
        }
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, expected("m", 0..10), "edgesync sub on B");

    // A reader on A stops after m4; its cursor will resume on B.
    let mut reader = ca
        .subscribe("sensors.>", Start::Earliest)
        .await
        .expect("sub");
    for i in 0..5 {
        match reader.next_timeout(ARRIVAL).await {
            Some(Event::Msg(m)) => assert_eq!(&m.data.0[..], format!("m{i}").as_bytes()),
            other => panic!("reader on A: {other:?}"),
        }
    }
    let cursor = reader.cursor().encode();

    // B dies without a flush; A keeps taking publishes; B comes back and catches up.
    b.kill9();
    publish(&ca, "sensors.t1", "m", 10..30).await;
    publish(&ca, "sensors.t2", "n", 0..5).await;
    b.start();
    let cb = b.client().await;
    let got = take(&cb, "sensors.t1", Start::Earliest, 30).await;
    assert_eq!(payloads(&got), expected("m", 0..30), "B after restart");
    for (i, (_, origin, seq)) in got.iter().enumerate() {
        assert_eq!((origin.as_str(), *seq), ("node-a", i as u64 + 1));
    }
    let got = take(&cb, "sensors.t2", Start::Earliest, 5).await;
    assert_eq!(payloads(&got), expected("n", 0..5));

    // The cursor from A resumes on B: m5.. exactly, then the other topic.
    let got = take(&cb, "sensors.t1", Start::Cursor(cursor), 25).await;
    assert_eq!(payloads(&got), expected("m", 5..30), "cursor from A on B");

    // And B's publishes reach A (both directions).
    publish(&cb, "sensors.t3", "b", 0..3).await;
    let got = take(&ca, "sensors.t3", Start::Earliest, 3).await;
    assert_eq!(payloads(&got), expected("b", 0..3));
    assert!(
        b.metric("edgesync_peer_records_in_total{peer=\"node-a\"}")
            .await
            >= 25.0
    );
}

/// Store and forward: the edge dials the hub; while the hub is down the edge keeps
/// accepting, and everything arrives once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_keeps_accepting_while_the_hub_is_down() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["hub", "edge-1"]);
    let mut hub = node(root.path(), "hub", &certs, "plant-7", &[]);
    let mut edge = node(root.path(), "edge-1", &certs, "plant-7", &[hub.quic]);
    hub.start();
    edge.start();
    let ce = edge.client().await;
    edge.wait_link_up().await;
    publish(&ce, "sensors.e", "e", 0..5).await;
    let ch = hub.client().await;
    assert_eq!(
        payloads(&take(&ch, "sensors.e", Start::Earliest, 5).await),
        expected("e", 0..5)
    );
    publish(&ch, "sensors.h", "h", 0..3).await;
    // `local` acks: the hub's publishes are on the edge once replicated, not at the ack.
    assert_eq!(
        payloads(&take(&ce, "sensors.h", Start::Earliest, 3).await),
        expected("h", 0..3)
    );

    hub.kill9();
    publish(&ce, "sensors.e", "e", 5..40).await;
    // The edge still serves its readers, with the hub's records it already had.
    assert_eq!(
        payloads(&take(&ce, "sensors.e", Start::Earliest, 40).await),
        expected("e", 0..40)
    );
    assert_eq!(
        payloads(&take(&ce, "sensors.h", Start::Earliest, 3).await),
        expected("h", 0..3)
    );

    hub.start();
    let ch = hub.client().await;
    publish(&ch, "sensors.h", "h", 3..6).await;
    assert_eq!(
        payloads(&take(&ch, "sensors.e", Start::Earliest, 40).await),
        expected("e", 0..40),
        "the hub got everything the edge took while it was down"
    );
    assert_eq!(
        payloads(&take(&ce, "sensors.h", Start::Earliest, 6).await),
        expected("h", 0..6)
    );
}

/// A certificate from another CA and another cluster id are refused, counted, and
/// nothing of theirs is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_and_wrong_cluster_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-c"]);
    let other = make_certs(&root.path().join("other-ca"), &["rogue"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    a.start();
    let _ = a.client().await;
    let mut rogue = node(root.path(), "rogue", &other, "plant-7", &[a.quic]);
    let mut wrong = node(root.path(), "node-c", &certs, "plant-8", &[a.quic]);
    rogue.start();
    wrong.start();
    let cr = rogue.client().await;
    let cw = wrong.client().await;
    publish(&cr, "sensors.x", "r", 0..3).await;
    publish(&cw, "sensors.x", "w", 0..3).await;
    let mut counted = (0.0, 0.0);
    for _ in 0..200 {
        counted = (
            a.metric("edgesync_peer_refused_total{reason=\"certificate\"}")
                .await,
            a.metric("edgesync_peer_refused_total{reason=\"cluster\"}")
                .await,
        );
        if counted.0 >= 1.0 && counted.1 >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        counted.0 >= 1.0 && counted.1 >= 1.0,
        "refusals counted (certificate, cluster): {counted:?}"
    );
    // The refused side counts it too (it refuses A's hello, or learns A refused it).
    let mut on_wrong = 0.0;
    for _ in 0..200 {
        on_wrong = wrong
            .metric("edgesync_peer_refused_total{reason=\"by_peer\"}")
            .await
            + wrong
                .metric("edgesync_peer_refused_total{reason=\"cluster\"}")
                .await;
        if on_wrong >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        on_wrong >= 1.0,
        "the node of another cluster counts the refusal"
    );
    assert!(!a.admin_get("/v1/peers").await.contains("\"state\":\"up\""));
    let ca = a.client().await;
    let mut sub = ca
        .subscribe("sensors.>", Start::Earliest)
        .await
        .expect("sub");
    assert!(
        sub.next_timeout(Duration::from_millis(500)).await.is_none(),
        "nothing from refused peers is stored"
    );
}

/// A chain: C dials B, B dials A; A's records reach C through B, C's reach A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_forwards_every_origin() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b", "node-c"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[a.quic]);
    let mut c = node(root.path(), "node-c", &certs, "plant-7", &[b.quic]);
    a.start();
    b.start();
    c.start();
    let (ca, cc) = (a.client().await, c.client().await);
    publish(&ca, "sensors.chain", "a", 0..20).await;
    publish(&cc, "sensors.chain", "c", 0..20).await;
    for (node, client) in [(&a, &ca), (&c, &cc)] {
        let got = take(client, "sensors.chain", Start::Earliest, 40).await;
        let mut from_a: Vec<String> = Vec::new();
        let mut from_c: Vec<String> = Vec::new();
        for (p, origin, _) in &got {
            match origin.as_str() {
                "node-a" => from_a.push(p.clone()),
                "node-c" => from_c.push(p.clone()),
                o => panic!("{}: unexpected origin {o}", node.name),
            }
        }
        // Per-origin order, no gap, no duplicate.
        assert_eq!(from_a, expected("a", 0..20), "{}", node.name);
        assert_eq!(from_c, expected("c", 0..20), "{}", node.name);
    }
}

/// A mesh of three: every node dials the other two; each pair keeps one link; every
/// origin reaches every node; a node killed and restarted catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_of_three_converges() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b", "node-c"]);
    let mut nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| node(root.path(), n, &certs, "plant-7", &[]))
        .collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.quic).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        let others: Vec<u16> = (0..3).filter(|j| *j != i).map(|j| ports[j]).collect();
        n.write_config(&certs, "plant-7", &others);
        n.start();
    }
    for n in &nodes {
        n.wait_links_up(2).await;
    }
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await);
    }
    for (i, c) in clients.iter().enumerate() {
        publish(c, "sensors.mesh", &format!("{i}-"), 0..10).await;
    }
    nodes[2].kill9();
    publish(&clients[0], "sensors.mesh", "0-", 10..20).await;
    publish(&clients[1], "sensors.mesh", "1-", 10..20).await;
    nodes[2].start();
    clients[2] = nodes[2].client().await;
    for (n, c) in nodes.iter().zip(&clients) {
        let got = take(c, "sensors.mesh", Start::Earliest, 50).await;
        let by_origin = |o: &str| -> Vec<String> {
            got.iter()
                .filter(|(_, origin, _)| origin == o)
                .map(|(p, _, _)| p.clone())
                .collect()
        };
        assert_eq!(by_origin("node-a"), expected("0-", 0..20), "{}", n.name);
        assert_eq!(by_origin("node-b"), expected("1-", 0..20), "{}", n.name);
        assert_eq!(by_origin("node-c"), expected("2-", 0..10), "{}", n.name);
    }
    // Lag drains to 0 once everything is acked (the gauge is refreshed every second).
    for n in &nodes {
        let mut lag = f64::MAX;
        for _ in 0..100 {
            let text = n.admin_get("/metrics").await;
            lag = text
                .lines()
                .filter(|l| l.starts_with("edgesync_peer_lag_records{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if lag == 0.0 && text.contains("edgesync_peer_link_up{") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            lag,
            0.0,
            "{}: lag after convergence: {}",
            n.name,
            n.admin_get("/v1/peers").await
        );
    }
}

/// `[[topic]] ack = "replicated:1"`: acked only when a peer holds it; with the peer
/// down, a retryable `replication_timeout` (never an early ack), and the retry with
/// the same mid gets the original record once the peer is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_acks_wait_for_a_peer_and_never_ack_early() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    a.extra = "[[topic]]\npattern = \"orders.>\"\nack = \"replicated:1\"\n".into();
    a.write_config(&certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[a.quic]);
    a.start();
    b.start();
    let ca = a.client().await;
    a.wait_link_up().await;
    let with_mid = |mid: &str| PublishOptions {
        mid: Some(mid.into()),
        ..PublishOptions::default()
    };
    let ack = ca
        .publish_with("orders.eu", "o1", with_mid("o1"))
        .await
        .expect("acked with the peer up");
    // Acked means durable on B: B has it at once (no wait beyond reading it).
    let cb = b.client().await;
    let page = cb
        .history("orders.eu", Start::Earliest, Some(10))
        .await
        .expect("history on B");
    assert_eq!(page.msgs.len(), 1, "o1 is on B when A acks it");
    assert_eq!(page.msgs[0].seq, ack.seq);

    b.kill9();
    // Wait until A noticed (its link is down), so the next publish cannot reach B.
    for _ in 0..200 {
        if !a.admin_get("/v1/peers").await.contains("\"state\":\"up\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `local` topics keep acking alone.
    publish(&ca, "sensors.x", "s", 0..3).await;
    let err = ca
        .publish_with("orders.eu", "o2", with_mid("o2"))
        .await
        .expect_err("no peer: no ack");
    match &err {
        ClientError::Server { code, retry, .. } => {
            assert_eq!(*code, ErrorCode::ReplicationTimeout, "{err}");
            assert!(*retry, "{err}");
        }
        other => panic!("{other}"),
    }
    b.start();
    // Retry as a client does (same mid) until B is back and holds it.
    let mut again = None;
    for _ in 0..10 {
        match ca.publish_with("orders.eu", "o2", with_mid("o2")).await {
            Ok(ack) => {
                again = Some(ack);
                break;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::ReplicationTimeout), "{e}"),
        }
    }
    let again = again.expect("the retry is acked once B is back");
    assert!(again.dup, "the retry is answered with the original record");
    assert_eq!(again.seq, ack.seq + 1);
    let cb = b.client().await;
    let got = take(&cb, "orders.eu", Start::Earliest, 2).await;
    assert_eq!(payloads(&got), vec!["o1".to_string(), "o2".to_string()]);
}

/// Client failover: the client's gateway dies; it reconnects to the fallback gateway
/// and its subscription resumes from its cursor with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_with_its_cursor() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[a.quic]);
    a.start();
    b.start();
    let pa = a.client().await;
    let pb = b.client().await;
    b.wait_link_up().await;
    let mut o = ClientOptions::new(a.url());
    o.fallback_urls = vec![b.url()];
    o.max_backoff = Duration::from_millis(300);
    let client = Client::connect(o).await.expect("connect to A");
    assert_eq!(client.session().node, "node-a");
    let mut sub = client
        .subscribe("sensors.f", Start::Earliest)
        .await
        .expect("sub");
    publish(&pa, "sensors.f", "a", 0..10).await;
    // Everything A took is on B before A dies (as a publisher with replicated acks would know).
    let on_b = take(&pb, "sensors.f", Start::Earliest, 10).await;
    assert_eq!(payloads(&on_b), expected("a", 0..10));
    let mut got = Vec::new();
    while got.len() < 10 {
        match sub.next_timeout(ARRIVAL).await {
            Some(Event::Msg(m)) => got.push(String::from_utf8_lossy(&m.data.0).into_owned()),
            other => panic!("before failover: {other:?} after {got:?}"),
        }
    }
    a.kill9();
    publish(&pb, "sensors.f", "b", 0..10).await;
    while got.len() < 20 {
        match sub.next_timeout(ARRIVAL).await {
            Some(Event::Msg(m)) => got.push(String::from_utf8_lossy(&m.data.0).into_owned()),
            other => panic!("after failover: {other:?} after {got:?}"),
        }
    }
    let mut want = expected("a", 0..10);
    want.extend(expected("b", 0..10));
    assert_eq!(got, want, "no gap, no duplicate across the failover");
    let ack = client
        .publish("sensors.f", "c0")
        .await
        .expect("publish on B");
    assert_eq!(ack.origin.node, "node-b");
    match sub.next_timeout(ARRIVAL).await {
        Some(Event::Msg(m)) => assert_eq!(&m.data.0[..], b"c0"),
        other => panic!("own publish: {other:?}"),
    }
    assert!(
        sub.next_timeout(Duration::from_millis(300)).await.is_none(),
        "nothing repeated"
    );
}

/// Idempotent publish across gateways (issue 13 item 7): A holds the publish and B
/// has it by replication, but A dies before its ack leaves (A waits for two peers and
/// has one). The client fails over to B and resends the same mid: B answers with A's
/// record (`dup`), and after A is back each gateway holds the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_resent_after_failover_is_stored_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    // Never acked on A: replicated:2 with one peer, and a timeout the test never sees.
    a.extra = "[[topic]]\npattern = \"orders.>\"\nack = \"replicated:2\"\n".into();
    a.write_config(&certs, "plant-7", &[]);
    let config = a.dir.join("edgesync.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace("ack_timeout_ms = 1500", "ack_timeout_ms = 60000");
    std::fs::write(&config, text).expect("config");
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[a.quic]);
    a.start();
    b.start();
    let pb = b.client().await;
    a.client().await;
    b.wait_link_up().await;
    let mut o = ClientOptions::new(a.url());
    o.fallback_urls = vec![b.url()];
    o.max_backoff = Duration::from_millis(300);
    let client = Client::connect(o).await.expect("connect to A");
    assert_eq!(client.session().node, "node-a");
    let opts = PublishOptions {
        mid: Some("order-1".into()),
        ..PublishOptions::default()
    };
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish_with("orders.eu", "o1", opts).await }
    });
    // B holds A's record (replicated); A has not acked it.
    let mut held = Vec::new();
    for _ in 0..200 {
        held = pb
            .history("orders.eu", Start::Earliest, Some(10))
            .await
            .expect("history on B")
            .msgs;
        if !held.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(payloads_of(&held), vec!["o1".to_string()], "B has it");
    assert_eq!(held[0].origin, "node-a");
    assert!(!publishing.is_finished(), "A must not have acked");
    a.kill9();
    let ack = tokio::time::timeout(ARRIVAL, publishing)
        .await
        .expect("the resent publish is answered")
        .expect("task")
        .expect("acked by B");
    assert!(ack.dup, "B answers with the original record: {ack:?}");
    assert_eq!((ack.origin.node.as_str(), ack.seq), ("node-a", held[0].seq));
    // Resent once more on B: still the original.
    let again = client
        .publish_with(
            "orders.eu",
            "o1",
            PublishOptions {
                mid: Some("order-1".into()),
                ..PublishOptions::default()
            },
        )
        .await
        .expect("retry on B");
    assert!(again.dup);
    assert_eq!(again.origin.node, "node-a");
    a.start();
    a.wait_link_up().await;
    let pa = a.client().await;
    let on_a = take(&pa, "orders.eu", Start::Earliest, 1).await;
    let on_b = take(&pb, "orders.eu", Start::Earliest, 1).await;
    assert_eq!(on_a, on_b, "one record cluster-wide");
    assert_eq!(payloads(&on_b), vec!["o1".to_string()]);
}

/// G6 with a peer: B's journal is damaged while it is stopped (a flipped byte inside a
/// replicated record); B starts, and what the damage took comes back from A intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_replica_is_repaired_from_its_peer() {
    const N: u32 = 60;
    let body = |i: u32| format!("bits-{i:03}-{}", "z".repeat(200));
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[a.quic]);
    a.start();
    b.start();
    let ca = a.client().await;
    b.wait_link_up().await;
    for i in 1..=N {
        ca.publish("sensors.bits", body(i)).await.expect("publish");
    }
    let cb = b.client().await;
    let _ = take(&cb, "sensors.bits", Start::Earliest, N as usize).await;
    drop(cb);
    b.kill9();
    // Flip a byte inside record 25's payload in B's journal (its records live there).
    let needle = b"bits-025-";
    let mut flipped = false;
    for f in files(&b.dir.join("data")) {
        if f.extension().is_none_or(|x| x != "jnl") {
            continue;
        }
        let mut bytes = std::fs::read(&f).expect("read");
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + needle.len() + 3] ^= 0x20;
            std::fs::write(&f, &bytes).expect("write");
            flipped = true;
            break;
        }
    }
    assert!(flipped, "record 25 is in B's journal");
    b.start();
    let cb = b.client().await;
    // Until the repair arrived, a reader may see a `corrupt` gap; afterwards, everything.
    let mut last = Vec::new();
    for _ in 0..50 {
        let mut sub = cb
            .subscribe("sensors.bits", Start::Earliest)
            .await
            .expect("sub");
        let mut got = Vec::new();
        let mut gap = false;
        while got.len() < N as usize && !gap {
            match sub.next_timeout(ARRIVAL).await {
                Some(Event::Msg(m)) => got.push(String::from_utf8_lossy(&m.data.0).into_owned()),
                Some(Event::Gap { .. }) => gap = true,
                Some(other) => panic!("unexpected {other:?}"),
                None => panic!("B stalled after {} records", got.len()),
            }
        }
        cb.unsubscribe("sensors.bits").await.expect("unsubscribe");
        if !gap {
            assert_eq!(
                got,
                (1..=N).map(body).collect::<Vec<_>>(),
                "intact, in order"
            );
            return;
        }
        last = got;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("B was not repaired: {} records then a gap", last.len());
}

/// A partition with both sides alive: both keep accepting; after the heal, both hold
/// everything, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_with_nothing_lost() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["hub", "edge-1"]);
    let mut hub = node(root.path(), "hub", &certs, "plant-7", &[]);
    let relay = FaultProxy::start(hub.quic, 7).await.expect("proxy");
    let mut edge = node(root.path(), "edge-1", &certs, "plant-7", &[relay.port]);
    hub.start();
    edge.start();
    let (ch, ce) = (hub.client().await, edge.client().await);
    edge.wait_links_up(1).await;
    publish(&ce, "sensors.p", "e", 0..5).await;
    assert_eq!(
        payloads(&take(&ch, "sensors.p", Start::Earliest, 5).await),
        expected("e", 0..5)
    );

    relay.set_partitioned(true);
    // Both sides accept while cut off; the link is noticed down (keep-alive idle timeout).
    publish(&ce, "sensors.p", "e", 5..25).await;
    publish(&ch, "sensors.q", "h", 0..20).await;
    edge.wait_links_up(0).await;
    hub.wait_links_up(0).await;
    assert!(edge.metric("edgesync_peer_link_up{peer=\"hub\"}").await == 0.0);

    relay.set_partitioned(false);
    assert_eq!(
        payloads(&take(&ch, "sensors.p", Start::Earliest, 25).await),
        expected("e", 0..25),
        "the hub got what the edge took during the partition"
    );
    assert_eq!(
        payloads(&take(&ce, "sensors.q", Start::Earliest, 20).await),
        expected("h", 0..20),
        "the edge got what the hub took during the partition"
    );
}

/// The retention hold: a topic keeping 5 messages keeps the 20 a peer lacks while it
/// is away, the peer gets all of them (no gap), then retention trims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_holds_what_an_away_peer_lacks() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    a.extra = "[[topic]]\npattern = \"sensors.r\"\nmax_messages = 5\n".into();
    a.write_config(&certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[a.quic]);
    a.start();
    b.start();
    let ca = a.client().await;
    a.wait_link_up().await;
    publish(&ca, "sensors.r", "r", 0..1).await;
    let cb = b.client().await;
    let _ = take(&cb, "sensors.r", Start::Earliest, 1).await;
    drop(cb);
    b.kill9();
    publish(&ca, "sensors.r", "r", 1..21).await;
    // Retention runs every second: give it two passes while B is away.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let page = ca
        .history("sensors.r", Start::Earliest, Some(100))
        .await
        .expect("history on A");
    // r0 was on B already (trimmed); r1..r20 B lacks: held, beyond max_messages.
    assert_eq!(
        payloads_of(&page.msgs),
        expected("r", 1..21),
        "what B lacks is held"
    );
    b.start();
    let cb = b.client().await;
    assert_eq!(
        payloads(&take(&cb, "sensors.r", Start::Earliest, 21).await),
        expected("r", 0..21),
        "B got everything, no gap"
    );
    // Once B has acked them, retention trims A to its limit.
    let mut held = usize::MAX;
    for _ in 0..100 {
        held = ca
            .history("sensors.r", Start::Earliest, Some(100))
            .await
            .expect("history")
            .msgs
            .len();
        if held == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held, 5, "trimmed once B holds them");
}

/// A measurement, not a test (run with `--ignored --nocapture`): records a peer catches
/// up per second after being away (debug build of the gateway; deps optimised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints a figure"]
async fn catch_up_rate_figure() {
    const N: u32 = 50_000;
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    a.extra = "[limits]\npublish_rate_per_sec = 1000000\n".into();
    a.write_config(&certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[a.quic]);
    a.start();
    let ca = a.client().await;
    let payload = vec![b'x'; 100];
    for i in 0..N {
        let opts = PublishOptions {
            ack: i + 1 == N,
            ..PublishOptions::default()
        };
        ca.publish_with(&format!("sensors.t{}", i % 8), payload.clone(), opts)
            .await
            .expect("publish");
    }
    let started = std::time::Instant::now();
    b.start();
    let cb = b.client().await;
    let mut total = 0u32;
    let mut sub = cb
        .subscribe("sensors.>", Start::Earliest)
        .await
        .expect("sub");
    while total < N {
        match sub.next_timeout(Duration::from_secs(30)).await {
            Some(Event::Msg(_)) => total += 1,
            other => panic!("after {total}: {other:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "catch-up: {N} records of 100 B on 8 topics in {secs:.2} s (B's start included) = {:.0} records/s",
        f64::from(N) / secs
    );
}

/// A measurement, not a test (run with `--ignored --nocapture`): `replicated:1` publish
/// ack latency, sequential publishes (debug build of the gateway; deps optimised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints a figure"]
async fn replicated_ack_latency_figure() {
    const N: usize = 2000;
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    a.extra = "[[topic]]\npattern = \"orders.>\"\nack = \"replicated:1\"\n".into();
    a.write_config(&certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[a.quic]);
    a.start();
    b.start();
    let ca = a.client().await;
    a.wait_link_up().await;
    let mut local = Vec::with_capacity(N);
    let mut replicated = Vec::with_capacity(N);
    for i in 0..N {
        let t = std::time::Instant::now();
        ca.publish("sensors.l", format!("{i}"))
            .await
            .expect("local");
        local.push(t.elapsed());
        let t = std::time::Instant::now();
        ca.publish("orders.r", format!("{i}"))
            .await
            .expect("replicated");
        replicated.push(t.elapsed());
    }
    for (what, mut v) in [("local", local), ("replicated:1", replicated)] {
        v.sort();
        let ms = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
        println!(
            "{what} ack: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({N} sequential publishes)",
            ms(0.5),
            ms(0.99),
            ms(1.0)
        );
    }
}

/// Take `n` queue deliveries from `sub`, ack each; their payloads, sorted.
async fn work_off(c: &Client, sub: &mut edgesync_client::Subscription, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        match sub.next_timeout(ARRIVAL).await {
            Some(Event::Msg(m)) => {
                got.push(String::from_utf8_lossy(&m.data.0).into_owned());
                c.ack(&m).await.expect("ack");
            }
            Some(_) => {}
            None => panic!("only {} of {n} deliveries: {got:?}", got.len()),
        }
    }
    got.sort();
    got
}

/// Queue groups in a cluster: no message is handed out twice in one group. Without a
/// `[[queue]]` entry each node serves the messages first stored on it; with one, the
/// owner serves every origin and members elsewhere are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_hands_each_message_out_once_across_the_cluster() {
    use edgesync_client::QueueOptions;
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[]);
    let owned = "[[queue]]\ngroup = \"central\"\nowner = \"node-a\"\n";
    a.extra = owned.into();
    b.extra = owned.into();
    a.write_config(&certs, "plant-7", &[b.quic]);
    b.write_config(&certs, "plant-7", &[]);
    a.start();
    b.start();
    a.wait_link_up().await;
    b.wait_link_up().await;
    let (ca, cb) = (a.client().await, b.client().await);
    let join = |group: &str| {
        let mut q = QueueOptions::new(group);
        q.start = Start::Earliest;
        q
    };
    let mut local_a = ca
        .join_queue("orders.>", join("local"))
        .await
        .expect("join");
    let mut local_b = cb
        .join_queue("orders.>", join("local"))
        .await
        .expect("join");
    // One pattern per connection: the other group's members on their own connections.
    let (ca2, cb2) = (a.client().await, b.client().await);
    let mut central = ca2
        .join_queue("orders.>", join("central"))
        .await
        .expect("join");
    match cb2.join_queue("orders.>", join("central")).await {
        Err(edgesync_client::ClientError::Server { code, message, .. }) => {
            assert_eq!(code, edgesync_client::ErrorCode::QueueConflict);
            assert!(message.contains("node-a"), "{message}");
        }
        other => panic!("a member on a node that does not own the group: {other:?}"),
    }
    publish(&ca, "orders.q", "a-", 0..5).await;
    publish(&cb, "orders.q", "b-", 0..5).await;
    // Both nodes hold all ten (replicated) before anyone looks.
    assert_eq!(take(&ca, "orders.q", Start::Earliest, 10).await.len(), 10);
    assert_eq!(take(&cb, "orders.q", Start::Earliest, 10).await.len(), 10);
    assert_eq!(work_off(&ca, &mut local_a, 5).await, expected("a-", 0..5));
    assert_eq!(work_off(&cb, &mut local_b, 5).await, expected("b-", 0..5));
    let mut all = expected("a-", 0..5);
    all.extend(expected("b-", 0..5));
    all.sort();
    assert_eq!(work_off(&ca2, &mut central, 10).await, all);
    // Nothing else comes: each message was handed out once per group.
    for sub in [&mut local_a, &mut local_b, &mut central] {
        if let Some(Event::Msg(m)) = sub.next_timeout(Duration::from_millis(300)).await {
            panic!("handed out twice: {m:?}");
        }
    }
}

/// The `kv-counter` plugin on `count.>` (its kv is replicated last-writer-wins).
fn kv_plugin() -> String {
    format!(
        "[[plugin]]\nname = \"kv-counter\"\npath = \"{}\"\n[[route]]\ntopics = \"count.>\"\nplugins = [\"kv-counter\"]\n",
        edgesync_plugin_host::built::KV_COUNTER
    )
}

/// Run a `kv-counter` command on this node; its answer (the stored replacement).
async fn kv(c: &Client, cmd: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let topic = format!(
        "count.cmd{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    c.publish(&topic, cmd.to_string())
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let page = c
        .history(&topic, Start::Earliest, None)
        .await
        .expect("history");
    payloads_of(&page.msgs).pop().expect("the command's answer")
}

/// Wait until `get key` on this node answers `want` (value@version, or `none`).
async fn kv_eventually(c: &Client, key: &str, want: &str, node: &str) {
    let mut last = String::new();
    for _ in 0..400 {
        last = kv(c, &format!("get {key}")).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{node}: `get {key}` answers {last:?}, not {want:?}");
}

/// Plugin kv written on both sides converges to the last writer's value: live while
/// linked, after a partition heals (writes on both sides meanwhile, deletes too), and
/// across a kill -9 and restart of one side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_kv_converges_last_writer_wins() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["hub", "edge-1"]);
    let mut hub = node(root.path(), "hub", &certs, "plant-7", &[]);
    hub.extra = kv_plugin();
    hub.write_config(&certs, "plant-7", &[]);
    let relay = FaultProxy::start(hub.quic, 11).await.expect("proxy");
    let mut edge = node(root.path(), "edge-1", &certs, "plant-7", &[]);
    edge.extra = kv_plugin();
    edge.write_config(&certs, "plant-7", &[relay.port]);
    hub.start();
    edge.start();
    let (ch, ce) = (hub.client().await, edge.client().await);
    edge.wait_links_up(1).await;

    // Live: a write on one side is read on the other (value and version as written).
    assert_eq!(kv(&ce, "set color red").await, "v1");
    kv_eventually(&ch, "color", "red@1", "hub").await;
    assert_eq!(kv(&ch, "set color blue").await, "v2");
    kv_eventually(&ce, "color", "blue@2", "edge").await;
    assert_eq!(kv(&ce, "set doomed x").await, "v1");
    kv_eventually(&ch, "doomed", "x@1", "hub").await;

    // Partition: both write the same keys; the later write of each key wins everywhere.
    relay.set_partitioned(true);
    edge.wait_links_up(0).await;
    hub.wait_links_up(0).await;
    // A few ms between the two writers of a key: "later" is by the wall clock (ms).
    let tick = || tokio::time::sleep(Duration::from_millis(5));
    assert_eq!(kv(&ch, "set color hub-early").await, "v3");
    assert_eq!(kv(&ce, "set shape edge-early").await, "v1");
    tick().await;
    assert_eq!(kv(&ce, "set color edge-late").await, "v3");
    assert_eq!(kv(&ch, "set shape hub-late").await, "v1");
    assert_eq!(kv(&ch, "del doomed").await, "true");
    assert_eq!(kv(&ce, "set edge-only e").await, "v1");
    relay.set_partitioned(false);
    for (c, node) in [(&ch, "hub"), (&ce, "edge")] {
        kv_eventually(c, "color", "edge-late@3", node).await;
        kv_eventually(c, "shape", "hub-late@1", node).await;
        kv_eventually(c, "doomed", "none", node).await;
        kv_eventually(c, "edge-only", "e@1", node).await;
    }
    assert!(
        hub.metric("edgesync_peer_lww_entries_total{outcome=\"won\"}")
            .await
            >= 2.0
    );

    // A kill -9 of the edge loses none of it, and the two stay converged afterwards.
    drop(ce);
    edge.kill9();
    assert_eq!(kv(&ch, "set color after-kill").await, "v4");
    edge.start();
    let ce = edge.client().await;
    edge.wait_links_up(1).await;
    kv_eventually(&ce, "shape", "hub-late@1", "edge").await;
    kv_eventually(&ce, "color", "after-kill@4", "edge").await;
    kv_eventually(&ce, "doomed", "none", "edge").await;
    assert_eq!(kv(&ce, "scan ").await, kv(&ch, "scan ").await);
}

/// A client with a fixed id on `node` (reconnect off).
async fn client_as(node: &Node, id: &str) -> Client {
    for _ in 0..200 {
        let mut o = ClientOptions::new(node.url());
        o.client_id = Some(id.to_string());
        o.reconnect = false;
        o.request_timeout = Duration::from_secs(5);
        if let Ok(c) = Client::connect(o).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} did not come up", node.name);
}

/// The next join/leave on a presence subscription: (kind, client, node).
async fn presence_event(sub: &mut edgesync_client::Subscription) -> (String, String, String) {
    match sub.next_timeout(ARRIVAL).await {
        Some(Event::Join { client, node, .. }) => ("join".into(), client, node),
        Some(Event::Leave { client, node, .. }) => ("leave".into(), client, node),
        other => panic!("expected a presence event, got {other:?}"),
    }
}

/// Presence spans the cluster: a client present on A is listed on B with A's node and
/// B's watchers see it join and leave; when A is killed and restarts, its old members
/// leave everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_the_cluster() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&root.path().join("certs"), &["node-a", "node-b"]);
    let mut a = node(root.path(), "node-a", &certs, "plant-7", &[]);
    let mut b = node(root.path(), "node-b", &certs, "plant-7", &[]);
    a.write_config(&certs, "plant-7", &[b.quic]);
    a.start();
    b.start();
    a.wait_links_up(1).await;
    b.wait_links_up(1).await;
    let watcher = client_as(&b, "watcher").await;
    let mut watch = watcher
        .subscribe_present("chat.room", Start::Latest)
        .await
        .expect("watch");
    let me = presence_event(&mut watch).await;
    assert_eq!(me, ("join".into(), "watcher".into(), "node-b".into()));

    let alice = client_as(&a, "alice").await;
    let _here = alice
        .subscribe_present("chat.room", Start::Latest)
        .await
        .expect("present");
    let joined = presence_event(&mut watch).await;
    assert_eq!(joined, ("join".into(), "alice".into(), "node-a".into()));
    let list = watcher.presence("chat.room").await.expect("presence");
    let listed: Vec<(String, String)> = list
        .members
        .iter()
        .map(|m| (m.client.clone(), m.node.clone()))
        .collect();
    assert_eq!(
        listed,
        [
            ("alice".into(), "node-a".into()),
            ("watcher".into(), "node-b".into())
        ]
    );
    assert_eq!(list.count, 2);
    // A sees B's watcher too.
    let from_a = alice.presence("chat.room").await.expect("presence");
    assert_eq!(from_a.count, 2, "{from_a:?}");

    alice.unsubscribe("chat.room").await.expect("unsubscribe");
    let left = presence_event(&mut watch).await;
    assert_eq!(left, ("leave".into(), "alice".into(), "node-a".into()));
    assert_eq!(
        watcher.presence("chat.room").await.expect("presence").count,
        1
    );

    // Present again, then A dies: after its restart, its old member leaves on B.
    let _again = alice
        .subscribe_present("chat.room", Start::Latest)
        .await
        .expect("present");
    assert_eq!(presence_event(&mut watch).await.0, "join");
    // SIGKILL: A says nothing; B still lists alice (its link is down for less than the
    // hiding bound).
    a.kill9();
    drop(alice);
    assert_eq!(
        watcher.presence("chat.room").await.expect("presence").count,
        2
    );
    a.start();
    a.wait_links_up(1).await;
    let left = presence_event(&mut watch).await;
    assert_eq!(left, ("leave".into(), "alice".into(), "node-a".into()));
    assert_eq!(
        watcher.presence("chat.room").await.expect("presence").count,
        1
    );
}
