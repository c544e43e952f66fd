//! Pub/sub end to end over real WebSocket connections on 127.0.0.1:
//! wildcards in both encodings, resume from a cursor with no gap and no
//! duplicate (also across a gateway restart with automatic reconnect),
//! idempotent retry, history and wss with the generated development CA.

use std::collections::BTreeSet;
use std::time::Duration;

use edgesync_client::{Client, ClientError, ClientOptions, Encoding, Event, PublishOptions, Start};
use edgesync_tests::TestGateway;

const WAIT: Duration = Duration::from_secs(10);

async fn next_msg(sub: &mut edgesync_client::Subscription) -> edgesync_client::Msg {
    match sub.next_timeout(WAIT).await {
        Some(Event::Msg(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_in_both_encodings() {
    let gw = TestGateway::start(|_| {}).await;
    for enc in [Encoding::Json, Encoding::MsgPack] {
        let sub_client = gw.client(enc).await;
        let pub_client = gw.client(enc).await;
        let prefix = format!("{enc:?}").to_lowercase();
        let mut one = sub_client
            .subscribe(&format!("{prefix}.*.t"), Start::Latest)
            .await
            .expect("sub *");
        let mut rest = sub_client
            .subscribe(&format!("{prefix}.>"), Start::Latest)
            .await
            .expect("sub >");
        let mut exact = sub_client
            .subscribe(&format!("{prefix}.eu.t"), Start::Latest)
            .await
            .expect("sub exact");
        for topic in ["eu.t", "us.t", "eu.x.t", "us.h"] {
            let payload = vec![0u8, 255, b'x'];
            pub_client
                .publish(&format!("{prefix}.{topic}"), payload)
                .await
                .expect("publish");
        }
        let got: Vec<String> = [next_msg(&mut one).await, next_msg(&mut one).await]
            .into_iter()
            .map(|m| m.topic)
            .collect();
        assert_eq!(
            got,
            vec![format!("{prefix}.eu.t"), format!("{prefix}.us.t")]
        );
        let mut all = Vec::new();
        for _ in 0..4 {
            let m = next_msg(&mut rest).await;
            assert_eq!(
                m.data.0.as_ref(),
                &[0u8, 255, b'x'],
                "binary payload survives {enc:?}"
            );
            all.push(m.topic);
        }
        assert_eq!(all.len(), 4);
        assert_eq!(next_msg(&mut exact).await.topic, format!("{prefix}.eu.t"));
        assert!(
            exact
                .next_timeout(Duration::from_millis(200))
                .await
                .is_none(),
            "exact sub gets nothing else"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_cursor_has_no_gap_and_no_duplicate() {
    let gw = TestGateway::start(|_| {}).await;
    let publisher = gw.client(Encoding::MsgPack).await;
    for i in 0..20u32 {
        publisher
            .publish(if i % 2 == 0 { "r.a" } else { "r.b" }, format!("m{i}"))
            .await
            .expect("publish");
    }
    let reader = gw.client(Encoding::Json).await;
    let mut sub = reader.subscribe("r.>", Start::Earliest).await.expect("sub");
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        let m = next_msg(&mut sub).await;
        assert!(seen.insert(String::from_utf8_lossy(&m.data.0).into_owned()));
    }
    let cursor = reader.cursor().await.expect("cursor").encode();
    reader.close().await;
    for i in 20..30u32 {
        publisher
            .publish(if i % 2 == 0 { "r.a" } else { "r.b" }, format!("m{i}"))
            .await
            .expect("publish");
    }
    let again = gw.client(Encoding::MsgPack).await;
    let mut sub = again
        .subscribe("r.>", Start::Cursor(cursor))
        .await
        .expect("resume");
    let mut last_seq = std::collections::HashMap::new();
    for _ in 0..18 {
        let m = next_msg(&mut sub).await;
        if let Some(prev) = last_seq.insert(m.topic.clone(), m.seq) {
            assert_eq!(m.seq, prev + 1, "per-topic order, no gap");
        }
        assert!(
            seen.insert(String::from_utf8_lossy(&m.data.0).into_owned()),
            "duplicate {m:?}"
        );
    }
    assert_eq!(seen.len(), 30);
    assert!(
        sub.next_timeout(Duration::from_millis(300)).await.is_none(),
        "nothing extra"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_and_resumes_across_a_gateway_restart() {
    let mut gw = TestGateway::start(|_| {}).await;
    let port = gw
        .running
        .as_ref()
        .expect("running")
        .bound
        .ws
        .expect("ws")
        .port();
    let mut o = ClientOptions::new(gw.ws_url());
    o.max_backoff = Duration::from_millis(200);
    let sub_client = Client::connect(o).await.expect("connect");
    let mut sub = sub_client
        .subscribe("rs.t", Start::Latest)
        .await
        .expect("sub");
    let publisher = gw.client(Encoding::MsgPack).await;
    for i in 1..=5u32 {
        publisher
            .publish("rs.t", format!("{i}"))
            .await
            .expect("publish");
    }
    for i in 1..=5u64 {
        assert_eq!(next_msg(&mut sub).await.seq, i);
    }
    gw.stop().await;
    let dir = gw.dir.clone();
    let gw2 = TestGateway::start_in(&dir, |c| {
        c.listen.ws =
            edgesync::config::ListenAddr(Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))));
    })
    .await;
    let publisher = gw2.client(Encoding::MsgPack).await;
    for i in 6..=9u32 {
        publisher
            .publish("rs.t", format!("{i}"))
            .await
            .expect("publish after restart");
    }
    for i in 6..=9u64 {
        let m = next_msg(&mut sub).await;
        assert_eq!(
            (m.seq, String::from_utf8_lossy(&m.data.0).into_owned()),
            (i, i.to_string())
        );
    }
    assert!(sub.next_timeout(Duration::from_millis(300)).await.is_none());
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_stores_once_and_returns_the_original_ack() {
    let gw = TestGateway::start(|_| {}).await;
    let c = gw.client(Encoding::MsgPack).await;
    let opts = PublishOptions {
        mid: Some("order-17".into()),
        ..PublishOptions::default()
    };
    let first = c
        .publish_with("orders", "pay", opts.clone())
        .await
        .expect("first");
    let retry = c
        .publish_with("orders", "pay", opts.clone())
        .await
        .expect("retry");
    assert!(!first.dup);
    assert!(retry.dup);
    assert_eq!(
        (retry.seq, retry.origin.clone()),
        (first.seq, first.origin.clone())
    );
    // Another connection with the same client id is the same client.
    let mut o = ClientOptions::new(gw.ws_url());
    o.client_id = Some(c.session().client_id.clone());
    o.reconnect = false;
    let c2 = Client::connect(o).await.expect("connect");
    let again = c2
        .publish_with("orders", "pay", opts)
        .await
        .expect("retry elsewhere");
    assert!(again.dup && again.seq == first.seq);
    let h = c
        .history("orders", Start::Earliest, None)
        .await
        .expect("history");
    assert_eq!(h.msgs.len(), 1);
    assert_eq!(h.msgs[0].mid.as_deref(), Some("order-17"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_and_last_n() {
    let gw = TestGateway::start(|c| c.limits.max_history = 4).await;
    let c = gw.client(Encoding::Json).await;
    for i in 1..=10u32 {
        c.publish("h.t", format!("{i}")).await.expect("publish");
    }
    let mut start = Start::Earliest;
    let mut got = Vec::new();
    for _ in 0..10 {
        let page = c
            .history("h.t", start.clone(), Some(100))
            .await
            .expect("page");
        assert!(page.msgs.len() <= 4, "max_history bounds a page");
        got.extend(page.msgs.iter().map(|m| m.seq));
        start = Start::Cursor(page.cursor);
        if !page.more {
            break;
        }
    }
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    let mut sub = c
        .subscribe("h.t", Start::Last(3))
        .await
        .expect("sub last 3");
    let seqs: Vec<u64> = [
        next_msg(&mut sub).await.seq,
        next_msg(&mut sub).await.seq,
        next_msg(&mut sub).await.seq,
    ]
    .into();
    assert_eq!(seqs, vec![8, 9, 10]);
    c.publish("h.t", "11").await.expect("publish");
    assert_eq!(next_msg(&mut sub).await.seq, 11, "then live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_the_generated_ca() {
    let gw = TestGateway::start(|_| {}).await;
    let mut o = ClientOptions::new(gw.wss_url());
    o.ca = Some(gw.ca());
    o.reconnect = false;
    let c = Client::connect(o.clone()).await.expect("wss with CA");
    let mut sub = c.subscribe("tls.t", Start::Latest).await.expect("sub");
    c.publish("tls.t", "secret").await.expect("publish");
    assert_eq!(next_msg(&mut sub).await.data.0.as_ref(), b"secret");
    o.ca = None;
    assert!(
        matches!(Client::connect(o.clone()).await, Err(ClientError::Tls(_))),
        "no CA: refused"
    );
    let other = tempfile::tempdir().expect("tmp");
    let (wrong_ca, _) =
        edgesync::transport::tls::generate_ca(other.path(), "someone else").expect("ca");
    o.ca = Some(wrong_ca);
    assert!(
        Client::connect(o.clone()).await.is_err(),
        "untrusted CA: refused"
    );
    o.ca = None;
    o.insecure = true;
    Client::connect(o)
        .await
        .expect("insecure dev mode connects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_hand_over_from_catch_up_to_live_under_concurrent_publishes() {
    // `o.>` is live; `o.x` then catches up on stored messages while a writer keeps
    // publishing. Live pushes that match both reach the connection while `o.x` is still
    // reading history: they must not count as seen for it (protocol version 2 tags the
    // catch-up and marks its end with `live`), and the hand-over from catch-up to live
    // must lose and repeat nothing.
    const STORED: u64 = 400;
    const MORE: u64 = 300;
    let gw = TestGateway::start(|_| {}).await;
    for enc in [Encoding::Json, Encoding::MsgPack] {
        let topic = format!("o{enc:?}.x").to_lowercase();
        let wide_pattern = format!("o{enc:?}.>").to_lowercase();
        let c = gw.client(enc).await;
        assert_eq!(c.session().version, 2);
        let writer = gw.client(Encoding::MsgPack).await;
        for i in 1..=STORED {
            writer
                .publish(&topic, format!("m{i}"))
                .await
                .expect("publish");
        }
        let mut wide = c
            .subscribe(&wide_pattern, Start::Latest)
            .await
            .expect("sub wide");
        let publishing = {
            let (writer, topic) = (writer.clone(), topic.clone());
            tokio::spawn(async move {
                for i in STORED + 1..=STORED + MORE {
                    writer
                        .publish(&topic, format!("m{i}"))
                        .await
                        .expect("publish");
                }
            })
        };
        let mut narrow = c
            .subscribe(&topic, Start::Earliest)
            .await
            .expect("sub narrow");
        for want in 1..=STORED + MORE {
            let m = next_msg(&mut narrow).await;
            assert_eq!(m.seq, want, "{enc:?} {topic}: every message once, in order");
        }
        // `latest` starts after the broker's delivered head, which may trail the last
        // ack by a record or so; from there, every one once and in order.
        let first = next_msg(&mut wide).await.seq;
        assert!(first <= STORED + 1, "{enc:?} wide starts at {first}");
        for want in first + 1..=STORED + MORE {
            assert_eq!(
                next_msg(&mut wide).await.seq,
                want,
                "{enc:?} wide: the live ones"
            );
        }
        publishing.await.expect("writer");
        assert!(
            narrow
                .next_timeout(Duration::from_millis(100))
                .await
                .is_none(),
            "nothing twice"
        );
    }
}
