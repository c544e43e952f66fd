//! `pub_batch` over a real socket: all or nothing, refusals that name the message,
//! one commit (a subscriber sees the batch's records together, in order).

use edgesync_tests::TestGateway;
use edgesync_tests::json::Conn;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_stored_whole_or_not_at_all() {
    let gw = TestGateway::start(|c| c.limits.max_inflight_publishes = 4).await;
    let url = gw.ws_url();
    let mut sub = Conn::open(&url, "reader").await;
    sub.send(json!({"t":"sub","id":2,"topic":"b.>"})).await;
    assert_eq!(sub.next_of("subscribed").await["id"], 2);
    let mut p = Conn::open(&url, "writer").await;
    // One invalid message (a reserved topic) refuses the batch, naming it.
    p.send(json!({"t":"pub_batch","id":3,"msgs":[
        {"topic":"b.x","data":"1"},{"topic":"$sys.x","data":"2"}]}))
        .await;
    let e = p.next_of("error").await;
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_str()),
        (Some(3), Some("forbidden")),
        "{e}"
    );
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .starts_with("message 1"),
        "{e}"
    );
    // Empty, and over the bound: bad_request.
    for (id, msgs) in [
        (4, json!([])),
        (5, json!(vec![json!({"topic":"b.x","data":"1"}); 5])),
    ] {
        p.send(json!({"t":"pub_batch","id":id,"msgs":msgs})).await;
        let e = p.next_of("error").await;
        assert_eq!(
            (e["id"].as_u64(), e["code"].as_str()),
            (Some(id), Some("bad_request")),
            "{e}"
        );
    }
    // A good one: acks in order, and the subscriber gets exactly these, seq 1 first
    // (nothing of the refused batch was stored).
    p.send(json!({"t":"pub_batch","id":6,"msgs":[
        {"topic":"b.x","data":"a"},{"topic":"b.y","data":"b","headers":{"k":"v"}},{"topic":"b.x","data":"c"}]}))
        .await;
    let a = p.next_of("batch_ack").await;
    assert_eq!(a["id"], 6);
    let acks = a["acks"].as_array().expect("acks");
    assert_eq!(
        acks.iter()
            .map(|x| (
                x["topic"].as_str().unwrap_or_default(),
                x["seq"].as_u64().unwrap_or(0)
            ))
            .collect::<Vec<_>>(),
        [("b.x", 1), ("b.y", 1), ("b.x", 2)]
    );
    assert!(!a["cursor"].as_str().unwrap_or_default().is_empty());
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = sub.next_of("msg").await;
        got.push((
            m["topic"].as_str().unwrap_or_default().to_string(),
            m["data"].as_str().unwrap_or_default().to_string(),
        ));
    }
    assert_eq!(
        got,
        [
            ("b.x".into(), "a".into()),
            ("b.y".into(), "b".into()),
            ("b.x".into(), "c".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_publishes_a_batch_over_quic_in_messagepack() {
    use edgesync_client::{Client, ClientError, ClientOptions, ErrorCode, Headers};
    let gw = TestGateway::start(|c| {
        c.listen.quic =
            edgesync::config::ListenAddr(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))));
    })
    .await;
    let mut o = ClientOptions::new(gw.quic_url());
    o.ca = Some(gw.ca());
    o.reconnect = false;
    let c = Client::connect(o).await.expect("quic client");
    let msg = |t: &str, d: &'static str| (t.to_string(), bytes::Bytes::from(d), Headers::default());
    let acks = c
        .publish_batch(vec![msg("q.a", "1"), msg("q.b", "2"), msg("q.a", "3")])
        .await
        .expect("batch");
    let got: Vec<(&str, u64)> = acks.iter().map(|a| (a.topic.as_str(), a.seq)).collect();
    assert_eq!(got, [("q.a", 1), ("q.b", 1), ("q.a", 2)]);
    match c
        .publish_batch(vec![msg("q.a", "4"), msg("bad topic", "5")])
        .await
    {
        Err(ClientError::Server { code, message, .. }) => {
            assert_eq!(code, ErrorCode::TopicInvalid, "{message}");
            assert!(message.starts_with("message 1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let h = c
        .history("q.a", edgesync_client::Start::Earliest, None)
        .await
        .expect("history");
    assert_eq!(h.msgs.len(), 2, "the refused batch stored nothing");
}
