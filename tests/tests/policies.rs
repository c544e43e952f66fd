//! Per-topic policies and connection limits end to end, over real sockets: a retention
//! gap on the wire, the `disconnect` slow-consumer policy, the total connection limit.

use std::time::Duration;

use edgesync::config::TopicConfig;
use edgesync::outbox::SlowConsumerPolicy;
use edgesync_client::{Encoding, Event, GapReason, Start};
use edgesync_tests::{TestGateway, eventually};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(10);

fn topic(pattern: &str) -> TopicConfig {
    TopicConfig {
        pattern: pattern.into(),
        max_messages: None,
        max_bytes: None,
        max_age_secs: None,
        slow_consumer: SlowConsumerPolicy::Gap,
        ack: Default::default(),
    }
}

fn closed(gw: &TestGateway, reason: &str) -> u64 {
    gw.gateway()
        .metrics
        .connections_closed
        .with_label_values(&[reason])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_past_retention_gets_a_retention_gap_then_the_rest() {
    let gw = TestGateway::start(|c| {
        c.topics = vec![TopicConfig {
            max_messages: Some(5),
            ..topic("ret.>")
        }];
    })
    .await;
    let c = gw.client(Encoding::Json).await;
    for i in 1..=20 {
        c.publish("ret.t", format!("m{i}")).await.expect("publish");
    }
    // Retention runs in the store's housekeeping (once a second): wait until it trimmed.
    let mut trimmed = false;
    for _ in 0..100 {
        let h = c
            .history("ret.t", Start::Earliest, None)
            .await
            .expect("history");
        if h.msgs.first().is_some_and(|m| m.seq == 16) {
            trimmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(trimmed, "count retention kept the last 5");
    let mut sub = c
        .subscribe("ret.t", Start::Earliest)
        .await
        .expect("subscribe");
    match sub.next_timeout(WAIT).await {
        Some(Event::Gap {
            from,
            to,
            reason,
            cursor,
            ..
        }) => {
            assert_eq!((from, to, reason), (1, 15, GapReason::Retention));
            assert!(!cursor.is_empty());
        }
        other => panic!("expected the retention gap first, got {other:?}"),
    }
    for want in 16..=20 {
        match sub.next_timeout(WAIT).await {
            Some(Event::Msg(m)) => assert_eq!(m.seq, want),
            other => panic!("expected message {want}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disconnect_policy_closes_a_subscriber_that_cannot_keep_up() {
    let gw = TestGateway::start(|c| {
        c.limits.outbox_frames = 16;
        c.limits.outbox_bytes = 1 << 20;
        c.topics = vec![TopicConfig {
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ..topic("dc.>")
        }];
    })
    .await;
    // A raw subscriber that stops reading after `subscribed`.
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.ws_url())
            .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "edgesync.json.v1".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    use futures_util::SinkExt;
    for cmd in [
        r#"{"t":"connect","id":1}"#,
        r#"{"t":"sub","id":2,"topic":"dc.t"}"#,
    ] {
        ws.send(Message::text(cmd)).await.expect("send");
    }
    let mut subscribed = false;
    while !subscribed {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("reply") {
            Some(Ok(Message::Text(t))) => subscribed = t.contains("\"subscribed\""),
            other => panic!("expected replies, got {other:?}"),
        }
    }
    let publisher = gw.client(Encoding::MsgPack).await;
    let payload = vec![b'p'; 64 << 10];
    let before = closed(&gw, "slow_consumer");
    // Far more than the socket buffers and the 1 MiB outbox hold.
    for _ in 0..400 {
        publisher
            .publish("dc.t", payload.clone())
            .await
            .expect("publishers are never held back by a slow subscriber");
    }
    // The outbox overflowed and closed. (Until the subscriber reads, its session waits
    // on the full socket to write what was queued before — bounded by the write
    // timeout, `idle_timeout_ms`, which this test does not wait for.)
    // What it reads now ends with the reason, then the close code.
    let mut reason = None;
    let mut close = None;
    while let Ok(Some(frame)) = tokio::time::timeout(WAIT, ws.next()).await {
        match frame {
            Ok(Message::Text(t)) if t.contains("\"slow_consumer\"") => reason = Some(t),
            Ok(Message::Close(c)) => {
                close = c;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(reason.is_some(), "an error push names slow_consumer");
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Again));
    assert!(
        eventually(250, || closed(&gw, "slow_consumer") > before).await,
        "counted as closed for slow_consumer"
    );
    publisher.ping().await.expect("the publisher is unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_connection_limit_refuses_the_next_connection() {
    let gw = TestGateway::start(|c| {
        c.limits.max_connections = 2;
        c.limits.max_connections_per_ip = 100;
    })
    .await;
    let a = gw.client(Encoding::Json).await;
    let _b = gw.client(Encoding::Json).await;
    let mut o = edgesync_client::ClientOptions::new(gw.ws_url());
    o.reconnect = false;
    let refused = edgesync_client::Client::connect(o.clone())
        .await
        .expect_err("a third connection is over the limit");
    assert_eq!(
        refused.code(),
        Some(edgesync_client::ErrorCode::TooManyConnections),
        "{refused}"
    );
    assert!(refused.to_string().contains("too_many_connections"));
    a.close().await;
    let mut ok = false;
    for _ in 0..100 {
        if edgesync_client::Client::connect(o.clone()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed slot admits the next connection");
}
