//! Every limit answers with its documented error code, over a raw WebSocket
//! speaking the JSON encoding (what a client in another language would see).

use std::time::Duration;

use edgesync_tests::TestGateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(url: &str) -> Ws {
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "edgesync.json.v1".parse().expect("header"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("edgesync.json.v1")
    );
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Next JSON message (frames may carry several, one per line); `None` on close.
async fn recv(ws: &mut Ws, pending: &mut Vec<Value>) -> Option<Value> {
    loop {
        if !pending.is_empty() {
            return Some(pending.remove(0));
        }
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timely")?;
        match msg {
            Ok(Message::Text(t)) => {
                for line in t.lines().filter(|l| !l.trim().is_empty()) {
                    pending.push(serde_json::from_str(line).expect("json"));
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Read until an error with `id` (or without id when `id` is None) arrives; return its code.
async fn error_code(ws: &mut Ws, pending: &mut Vec<Value>, id: Option<u64>) -> String {
    while let Some(v) = recv(ws, pending).await {
        if v["t"] == "error" && v.get("id").and_then(Value::as_u64) == id {
            assert!(
                v["msg"].as_str().is_some_and(|m| !m.is_empty()),
                "error carries a message: {v}"
            );
            assert!(v["retry"].is_boolean(), "error carries retry: {v}");
            return v["code"].as_str().unwrap_or_default().to_string();
        }
    }
    panic!("connection closed before error for id {id:?}");
}

async fn connected(url: &str) -> (Ws, Vec<Value>) {
    let mut ws = raw(url).await;
    let mut pending = Vec::new();
    send(&mut ws, json!({"t":"connect","id":1,"client_id":"lim"})).await;
    let v = recv(&mut ws, &mut pending).await.expect("connected");
    assert_eq!(v["t"], "connected", "{v}");
    (ws, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_has_its_error_code() {
    let gw = TestGateway::start(|c| {
        c.limits.max_frame_bytes = 4096;
        c.limits.max_topic_bytes = 16;
        c.limits.max_headers = 2;
        c.limits.max_subscriptions = 2;
        c.limits.publish_rate_per_sec = 5;
    })
    .await;
    let url = gw.ws_url();

    let mut ws = raw(&url).await;
    let mut p = Vec::new();
    send(&mut ws, json!({"t":"pub","id":9,"topic":"a","data":"x"})).await;
    assert_eq!(error_code(&mut ws, &mut p, Some(9)).await, "not_connected");
    ws.send(Message::text("{not json")).await.expect("send");
    assert_eq!(error_code(&mut ws, &mut p, None).await, "bad_frame");

    let (mut ws, mut p) = connected(&url).await;
    send(&mut ws, json!({"t":"connect","id":2})).await;
    assert_eq!(
        error_code(&mut ws, &mut p, Some(2)).await,
        "already_connected"
    );
    send(
        &mut ws,
        json!({"t":"pub","id":3,"topic":"a.very.long.topic.name","data":"x"}),
    )
    .await;
    assert_eq!(error_code(&mut ws, &mut p, Some(3)).await, "topic_too_long");
    send(&mut ws, json!({"t":"pub","id":4,"topic":"a..b","data":"x"})).await;
    assert_eq!(error_code(&mut ws, &mut p, Some(4)).await, "topic_invalid");
    send(
        &mut ws,
        json!({"t":"pub","id":5,"topic":"a","data":"x","headers":{"a":"1","b":"2","c":"3"}}),
    )
    .await;
    assert_eq!(
        error_code(&mut ws, &mut p, Some(5)).await,
        "headers_too_large"
    );
    send(&mut ws, json!({"t":"sub","id":6,"topic":"s.1"})).await;
    send(&mut ws, json!({"t":"sub","id":7,"topic":"s.1"})).await;
    assert_eq!(
        error_code(&mut ws, &mut p, Some(7)).await,
        "already_subscribed"
    );
    send(&mut ws, json!({"t":"sub","id":8,"topic":"s.2"})).await;
    send(&mut ws, json!({"t":"sub","id":10,"topic":"s.3"})).await;
    assert_eq!(
        error_code(&mut ws, &mut p, Some(10)).await,
        "too_many_subscriptions"
    );
    send(&mut ws, json!({"t":"unsub","id":11,"topic":"zz"})).await;
    assert_eq!(
        error_code(&mut ws, &mut p, Some(11)).await,
        "not_subscribed"
    );
    send(
        &mut ws,
        json!({"t":"sub","id":12,"topic":"q","start":{"cursor":"%%%"}}),
    )
    .await;
    assert_eq!(
        error_code(&mut ws, &mut p, Some(12)).await,
        "cursor_invalid"
    );
    send(
        &mut ws,
        json!({"t":"pub","id":13,"topic":"$sys.x","data":"x"}),
    )
    .await;
    assert_eq!(error_code(&mut ws, &mut p, Some(13)).await, "forbidden");
    for id in 100..110u64 {
        send(
            &mut ws,
            json!({"t":"pub","id":id,"topic":"rate","data":"x","ack":false}),
        )
        .await;
    }
    assert_eq!(
        error_code(&mut ws, &mut p, Some(105)).await,
        "rate_limited",
        "burst of 5 then refused"
    );
    let big = "x".repeat(5000);
    send(&mut ws, json!({"t":"pub","id":14,"topic":"a","data":big})).await;
    assert_eq!(error_code(&mut ws, &mut p, None).await, "frame_too_large");
    assert!(
        recv(&mut ws, &mut p).await.is_none(),
        "oversized frame closes the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_and_idle_timeout() {
    let gw = TestGateway::start(|c| {
        c.limits.max_connections_per_ip = 2;
        c.limits.idle_timeout_ms = 400;
        // No ping before the idle timeout, so a silent client really is idle
        // (a pong counts as liveness).
        c.limits.ping_interval_ms = 60_000;
    })
    .await;
    let url = gw.ws_url();
    let (_a, _) = connected(&url).await;
    let (_b, _) = connected(&url).await;
    let mut third = raw(&url).await;
    let mut p = Vec::new();
    assert_eq!(
        error_code(&mut third, &mut p, None).await,
        "too_many_connections"
    );
    drop(third);
    drop(_a);
    drop(_b);
    // Slots free up once the sessions end.
    let mut ok = false;
    for _ in 0..100 {
        let mut ws = raw(&url).await;
        let mut p = Vec::new();
        send(&mut ws, json!({"t":"connect","id":1})).await;
        if recv(&mut ws, &mut p)
            .await
            .is_some_and(|v| v["t"] == "connected")
        {
            // Now stay silent: the idle timeout fires.
            assert_eq!(error_code(&mut ws, &mut p, None).await, "idle_timeout");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot became free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_subprotocol_is_refused_and_none_means_json() {
    let gw = TestGateway::start(|_| {}).await;
    let mut req = gw.ws_url().into_client_request().expect("req");
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("h"));
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url())
        .await
        .expect("plain");
    send(&mut ws, json!({"t":"ping","id":5})).await;
    let mut p = Vec::new();
    assert_eq!(recv(&mut ws, &mut p).await.expect("pong")["t"], "pong");
}
