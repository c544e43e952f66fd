//! Queue groups end to end over real WebSockets (JSON, as a client in another language
//! would speak it): one member per message, answers, redelivery, dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use edgesync_tests::TestGateway;
use edgesync_tests::json::Conn;
use serde_json::json;

async fn publish(p: &mut Conn, topic: &str, n: u64) {
    for i in 0..n {
        p.send(json!({"t":"pub","id":1000 + i,"topic":topic,"data":format!("job-{i}")}))
            .await;
        assert_eq!(p.next_of("puback").await["id"], 1000 + i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_members_get_each_message_once() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = Conn::open(&url, &format!("w{i}")).await;
        m.join(2, "jobs.>", "work", json!({"max_unacked": 100}))
            .await;
        members.push(m);
    }
    let mut p = Conn::open(&url, "producer").await;
    publish(&mut p, "jobs.a", 30).await;
    let mut got: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_member = [0usize; 3];
    let mut answer_id = 10;
    while got.len() < 30 {
        for (i, m) in members.iter_mut().enumerate() {
            while let Ok(v) =
                tokio::time::timeout(Duration::from_millis(200), m.next_of("msg")).await
            {
                assert_eq!(
                    (v["queue"].as_str(), v["delivery"].as_u64()),
                    (Some("work"), Some(1)),
                    "{v}"
                );
                *got.entry(v["seq"].as_u64().expect("seq")).or_default() += 1;
                per_member[i] += 1;
                answer_id += 1;
                let ok = m.answer(answer_id, "ack", &v, json!({})).await;
                assert_eq!(ok["t"], "ok", "{ok}");
            }
        }
        assert!(answer_id < 1000, "bounded");
    }
    assert!(
        got.values().all(|n| *n == 1),
        "each message to exactly one member: {got:?}"
    );
    assert_eq!(got.len(), 30);
    assert_eq!(per_member, [10, 10, 10], "round robin over free members");
    // An ack from a connection that does not hold it: not_in_flight.
    let fake = json!({"queue":"work","topic":"jobs.a","origin":"x","epoch":1,"seq":1});
    let e = members[0].answer(5000, "ack", &fake, json!({})).await;
    assert_eq!(e["code"], "not_in_flight", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_members_work_goes_to_another() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let mut a = Conn::open(&url, "a").await;
    a.join(2, "jobs.>", "work", json!({"max_unacked": 10}))
        .await;
    let mut p = Conn::open(&url, "producer").await;
    publish(&mut p, "jobs.a", 3).await;
    for _ in 0..3 {
        assert_eq!(a.next_of("msg").await["delivery"], 1);
    }
    let mut b = Conn::open(&url, "b").await;
    b.join(2, "jobs.>", "work", json!({"max_unacked": 10}))
        .await;
    drop(a); // killed mid-task: nothing acked
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let v = b.next_of("msg").await;
        assert_eq!(v["delivery"], 2, "{v}");
        seqs.push(v["seq"].as_u64().expect("seq"));
        assert_eq!(
            b.answer(50 + v["seq"].as_u64().expect("seq"), "ack", &v, json!({}))
                .await["t"],
            "ok"
        );
    }
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3]);
    // A second member asking for other group options is refused.
    let mut c = Conn::open(&url, "c").await;
    c.send(json!({"t":"sub","id":3,"topic":"jobs.>","queue":"work","ordering":"strict"}))
        .await;
    let e = c.next().await;
    assert_eq!(
        (e["t"].as_str(), e["code"].as_str()),
        (Some("error"), Some("queue_conflict")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_wait_redelivers_and_max_deliveries_dead_letters_with_the_reason() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let mut dlq = Conn::open(&url, "dlq-reader").await;
    dlq.send(json!({"t":"sub","id":2,"topic":"$dlq.queue.work"}))
        .await;
    assert_eq!(dlq.next().await["t"], "subscribed");
    let mut m = Conn::open(&url, "m").await;
    m.join(
        2,
        "jobs.>",
        "work",
        json!({"ack_wait_ms": 100, "max_deliveries": 3}),
    )
    .await;
    let mut p = Conn::open(&url, "producer").await;
    publish(&mut p, "jobs.a", 2).await;
    // jobs.a 1: never answered → redelivered after each ack wait, then dead-lettered.
    // jobs.a 2: termed at once.
    let mut deliveries_of_1 = Vec::new();
    for _ in 0..100 {
        let v = m.next_of("msg").await;
        match v["seq"].as_u64() {
            Some(1) => {
                deliveries_of_1.push(v["delivery"].as_u64().expect("delivery"));
                if deliveries_of_1.len() == 3 {
                    break;
                }
            }
            Some(2) => {
                let ok = m
                    .answer(7, "term", &v, json!({"reason": "bad input"}))
                    .await;
                assert_eq!(ok["t"], "ok", "{ok}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(deliveries_of_1, vec![1, 2, 3]);
    let mut reasons = BTreeMap::new();
    for _ in 0..2 {
        let d = dlq.next_of("msg").await;
        assert_eq!(d["headers"]["queue-topic"], "jobs.a", "{d}");
        reasons.insert(
            d["headers"]["queue-seq"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            (
                d["headers"]["queue-reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                d["data"].as_str().unwrap_or_default().to_string(),
            ),
        );
    }
    assert_eq!(
        reasons["1"],
        ("max_deliveries".to_string(), "job-0".to_string())
    );
    assert_eq!(reasons["2"], ("bad input".to_string(), "job-1".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_order_keeps_one_message_per_topic_out() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let mut m1 = Conn::open(&url, "m1").await;
    let mut m2 = Conn::open(&url, "m2").await;
    for m in [&mut m1, &mut m2] {
        m.join(
            2,
            "jobs.>",
            "ordered",
            json!({"ordering": "strict", "max_unacked": 10}),
        )
        .await;
    }
    let mut p = Conn::open(&url, "producer").await;
    publish(&mut p, "jobs.a", 5).await;
    let mut order = Vec::new();
    let mut id = 100;
    while order.len() < 5 {
        // One of the two gets the topic's next message …
        let (i, v) = tokio::select! {
            v = m1.next_of("msg") => (0, v),
            v = m2.next_of("msg") => (1, v),
        };
        // … and while it holds it, neither gets another (a breach would be a push
        // already on its way; a slow machine can only hide one, never invent one).
        for m in [&mut m1, &mut m2] {
            if let Ok(extra) =
                tokio::time::timeout(Duration::from_millis(300), m.next_of("msg")).await
            {
                panic!("two of one topic out at once: {v} and {extra}");
            }
        }
        order.push(v["seq"].as_u64().expect("seq"));
        id += 1;
        let m = if i == 0 { &mut m1 } else { &mut m2 };
        assert_eq!(m.answer(id, "ack", &v, json!({})).await["t"], "ok");
    }
    assert_eq!(order, vec![1, 2, 3, 4, 5]);
}

/// Nothing arrives on `m` for a moment (a delivery that should not exist would be
/// on its way; a slow machine can hide it, never invent one).
async fn quiet(m: &mut Conn) {
    if let Ok(v) = tokio::time::timeout(Duration::from_millis(300), m.next_of("msg")).await {
        panic!("unexpected delivery {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_where_its_first_member_says_and_windows_hold() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let mut p = Conn::open(&url, "producer").await;
    publish(&mut p, "jobs.a", 3).await;
    // A group made at `latest` (the default) owes nothing published before it.
    let mut late = Conn::open(&url, "late").await;
    late.join(2, "jobs.>", "late", json!({})).await;
    // A group made at `earliest` owes everything retained; a window of 2 holds 2.
    let mut all = Conn::open(&url, "all").await;
    all.join(
        2,
        "jobs.>",
        "all",
        json!({"start": "earliest", "max_unacked": 2}),
    )
    .await;
    let a = all.next_of("msg").await;
    let b = all.next_of("msg").await;
    assert_eq!((a["seq"].as_u64(), b["seq"].as_u64()), (Some(1), Some(2)));
    quiet(&mut all).await;
    assert_eq!(all.answer(10, "ack", &a, json!({})).await["t"], "ok");
    assert_eq!(all.next_of("msg").await["seq"], 3);
    quiet(&mut late).await;
    publish(&mut p, "jobs.a", 1).await;
    let v = late.next_of("msg").await;
    assert_eq!(
        (v["seq"].as_u64(), v["queue"].as_str()),
        (Some(4), Some("late"))
    );
    // A nak with a delay brings it back to the same (only) member, counted.
    assert_eq!(
        late.answer(11, "nak", &v, json!({"delay_ms": 100})).await["t"],
        "ok"
    );
    let again = late.next_of("msg").await;
    assert_eq!(
        (again["seq"].as_u64(), again["delivery"].as_u64()),
        (Some(4), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_work_survives_sigkill_and_acked_work_never_comes_back() {
    let exe = env!("CARGO_BIN_EXE_edgesync-test-gateway");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = edgesync_tests::free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let mut child = edgesync_tests::spawn_gateway_process(exe, dir.path(), port);
    let open = |id: &'static str| {
        let url = url.clone();
        async move {
            for _ in 0..200 {
                if tokio_tungstenite::connect_async(url.as_str()).await.is_ok() {
                    return Conn::open(&url, id).await;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("gateway at {url} never answered");
        }
    };
    let mut p = open("producer").await;
    publish(&mut p, "jobs.a", 6).await;
    let mut m = open("m").await;
    m.join(
        2,
        "jobs.>",
        "work",
        json!({"start": "earliest", "max_unacked": 10}),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(m.next_of("msg").await);
    }
    for (i, v) in held.iter().take(3).enumerate() {
        assert_eq!(
            m.answer(20 + i as u64, "ack", v, json!({})).await["t"],
            "ok"
        );
    }
    // Killed with 1..3 acked and 4..6 held.
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    drop((m, p));
    let mut child = edgesync_tests::spawn_gateway_process(exe, dir.path(), port);
    let mut m = open("m2").await;
    // `start` only places a new group: this one goes on from its progress.
    m.join(
        2,
        "jobs.>",
        "work",
        json!({"start": "earliest", "max_unacked": 10}),
    )
    .await;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let v = m.next_of("msg").await;
        seqs.push(v["seq"].as_u64().expect("seq"));
        assert_eq!(
            m.answer(30 + seqs.len() as u64, "ack", &v, json!({})).await["t"],
            "ok"
        );
    }
    seqs.sort_unstable();
    assert_eq!(seqs, vec![4, 5, 6], "exactly the unacked ones come back");
    let mut p = open("producer").await;
    publish(&mut p, "jobs.a", 1).await;
    // The new message (a new epoch may number it from 1 again after the kill).
    let v = m.next_of("msg").await;
    assert_eq!(
        (v["data"].as_str(), v["delivery"].as_u64()),
        (Some("job-0"), Some(1)),
        "{v}"
    );
    quiet(&mut m).await;
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgesync_work_runs_a_command_per_message_and_answers_by_exit_code() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let mut p = Conn::open(&url, "producer").await;
    let payloads = ["a", "b", "bad", "c", "poison", "d", "e", "f"];
    for (i, data) in payloads.iter().enumerate() {
        p.send(json!({"t":"pub","id":100 + i,"topic":"jobs.x","data":data}))
            .await;
        assert_eq!(p.next_of("puback").await["id"], 100 + i);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("done.txt");
    // `bad` fails its first delivery (nak, retried); `poison` always exits 9 (term).
    let script = r#"read p
if [ "$p" = poison ]; then exit 9; fi
if [ "$p" = bad ] && [ "$EDGESYNC_DELIVERY" = 1 ]; then exit 7; fi
echo "$p $EDGESYNC_QUEUE $EDGESYNC_TOPIC" >> "$OUT""#;
    let worker = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_edgesync-test-gateway"))
            .args(["work", "jobs.>", "--group", "grp", "--from", "earliest"])
            .args([
                "--max-unacked",
                "2",
                "--nak-delay-ms",
                "50",
                "--term-exit",
                "9",
            ])
            .args(["--idle-exit", "2", "--url", &url, "--", "sh", "-c", script])
            .env("OUT", &out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn worker")
    };
    let mut workers = [worker(), worker()];
    for w in &mut workers {
        let status = tokio::task::block_in_place(|| w.wait()).expect("worker ends");
        assert!(status.success(), "{status}");
    }
    let text = std::fs::read_to_string(&out).expect("output");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "a grp jobs.x",
            "b grp jobs.x",
            "bad grp jobs.x",
            "c grp jobs.x",
            "d grp jobs.x",
            "e grp jobs.x",
            "f grp jobs.x"
        ],
        "each message handled once, the failed one after its retry"
    );
    p.send(json!({"t":"history","id":7,"topic":"$dlq.queue.grp"}))
        .await;
    let h = p.next_of("history").await;
    let msgs = h["msgs"].as_array().expect("msgs");
    assert_eq!(msgs.len(), 1, "{h}");
    assert_eq!(msgs[0]["data"], "poison");
    assert_eq!(msgs[0]["headers"]["queue-reason"], "exit 9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_clients_over_quic_and_websocket_share_a_group_in_messagepack() {
    use edgesync_client::{Client, ClientOptions, Event, QueueOptions, Start};
    let gw = TestGateway::start(|c| {
        c.listen.quic =
            edgesync::config::ListenAddr(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))));
    })
    .await;
    let client = |url: String| {
        let mut o = ClientOptions::new(url);
        o.ca = Some(gw.ca());
        o.reconnect = false;
        o.request_timeout = Duration::from_secs(20);
        async move { Client::connect(o).await.expect("client connects") }
    };
    let quic = client(gw.quic_url()).await;
    let ws = client(gw.ws_url()).await;
    let mut opts = QueueOptions::new("mix");
    opts.max_unacked = Some(4);
    let mut on_quic = quic.join_queue("jobs.>", opts.clone()).await.expect("join");
    let mut on_ws = ws.join_queue("jobs.>", opts).await.expect("join");
    // One entry per pattern on a connection (unsub names it): the same pattern again
    // is refused, an overlapping plain subscription gets every message, never a delivery.
    match ws.subscribe("jobs.>", Start::Latest).await {
        Err(edgesync_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, edgesync_client::ErrorCode::AlreadySubscribed)
        }
        other => panic!("{other:?}"),
    }
    let mut plain = ws.subscribe("jobs.q", Start::Latest).await.expect("sub");
    let producer = client(gw.ws_url()).await;
    for i in 0..20 {
        producer
            .publish("jobs.q", format!("job-{i}"))
            .await
            .expect("publish");
    }
    let mut done: BTreeMap<u64, (&str, u32)> = BTreeMap::new();
    let mut nakked = false;
    for _ in 0..100 {
        if done.len() == 20 {
            break;
        }
        let (who, c, ev) = tokio::select! {
            ev = on_quic.next_timeout(Duration::from_secs(10)) => ("quic", &quic, ev),
            ev = on_ws.next_timeout(Duration::from_secs(10)) => ("ws", &ws, ev),
        };
        let Some(Event::Msg(m)) = ev else {
            panic!("{who}: no delivery: {ev:?}")
        };
        assert_eq!(m.queue.as_deref(), Some("mix"));
        if !nakked {
            // The first delivery is given back once: it comes again, delivery 2.
            nakked = true;
            c.nak(&m, Duration::ZERO).await.expect("nak");
            continue;
        }
        c.ack(&m).await.expect("ack");
        let first = done.insert(m.seq, (who, m.delivery.unwrap_or(0)));
        assert!(first.is_none(), "seq {} delivered twice: {first:?}", m.seq);
    }
    assert_eq!(done.len(), 20);
    assert_eq!(
        done.values().filter(|(_, d)| *d == 2).count(),
        1,
        "{done:?}"
    );
    assert!(done.values().any(|(w, _)| *w == "quic") && done.values().any(|(w, _)| *w == "ws"));
    // An answer for what the connection no longer holds.
    let fake = edgesync_client::Msg {
        topic: "jobs.q".into(),
        origin: "nobody".into(),
        epoch: 1,
        seq: 1,
        hlc: 0,
        client: String::new(),
        mid: None,
        headers: edgesync_client::Headers::default(),
        data: edgesync_client::Payload(Vec::new().into()),
        sub: None,
        queue: Some("mix".into()),
        delivery: Some(1),
    };
    match quic.ack(&fake).await {
        Err(edgesync_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, edgesync_client::ErrorCode::NotInFlight)
        }
        other => panic!("{other:?}"),
    }
    for _ in 0..20 {
        match plain.next_timeout(Duration::from_secs(10)).await {
            Some(Event::Msg(m)) => assert!(m.queue.is_none(), "{m:?}"),
            other => panic!("plain subscription: {other:?}"),
        }
    }
    let groups = gw.gateway().queues.list();
    assert_eq!(
        (groups.len(), groups[0].members, groups[0].in_flight),
        (1, 2, 0),
        "{groups:?}"
    );
    let text = gw.gateway().metrics.render();
    assert!(
        text.contains("edgesync_queue_deliveries_total{group=\"mix\"} 21"),
        "{text}"
    );
}
