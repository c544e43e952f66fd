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
    // One frame: its commands are validated at one instant, so the bucket cannot
    // refill between them however slow the machine is (a frame per publish made the
    // outcome depend on how fast six sends went).
    let burst: Vec<String> = (100..110u64)
        .map(|id| json!({"t":"pub","id":id,"topic":"rate","data":"x","ack":false}).to_string())
        .collect();
    ws.send(Message::text(burst.join("\n")))
        .await
        .expect("send");
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
        // The ping interval must be below the idle timeout; the client below does not
        // read until the gateway has closed it, so it never answers the ping.
        c.limits.ping_interval_ms = 399;
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
            // Now stay silent (and read nothing, so no pong goes out): the idle
            // timeout fires.
            let closed = |gw: &TestGateway| {
                gw.gateway()
                    .metrics
                    .connections_closed
                    .with_label_values(&["idle_timeout"])
                    .get()
            };
            assert!(
                edgesync_tests::eventually(500, || closed(&gw) > 0).await,
                "closed for idleness"
            );
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

/// Messages that are well-formed in their encoding but not valid commands, and the
/// `id` their `bad_request` carries (the protocol crate's codec test has the same table).
fn invalid_commands() -> Vec<(Value, Option<u64>)> {
    vec![
        (json!({"t":"connect","id":1,"token":5}), Some(1)),
        (json!({"t":"connect","id":2,"client_id":7}), Some(2)),
        (json!({"t":"connect","id":3,"cursor":[]}), Some(3)),
        (json!({"t":"sub","id":4}), Some(4)),
        (json!({"t":"sub","id":5,"topic":1}), Some(5)),
        (
            json!({"t":"sub","id":6,"topic":"a","start":"bogus"}),
            Some(6),
        ),
        (
            json!({"t":"sub","id":7,"topic":"a","start":{"last":"x"}}),
            Some(7),
        ),
        (json!({"t":"unsub","id":8}), Some(8)),
        (json!({"t":"pub","id":9,"topic":"a"}), Some(9)),
        (json!({"t":"pub","id":10,"data":"x"}), Some(10)),
        (
            json!({"t":"pub","id":11,"topic":"a","data":"x","headers":{"h":1}}),
            Some(11),
        ),
        (
            json!({"t":"pub","id":12,"topic":"a","data":"x","mid":5}),
            Some(12),
        ),
        (
            json!({"t":"pub","id":13,"topic":"a","data":"x","ack":"yes"}),
            Some(13),
        ),
        (
            json!({"t":"pub","id":14,"topic":"a","data":{"b64":"!!"}}),
            Some(14),
        ),
        (json!({"t":"history","id":15}), Some(15)),
        (
            json!({"t":"history","id":16,"topic":"a","limit":-1}),
            Some(16),
        ),
        (
            json!({"t":"history","id":17,"topic":"a","start":5}),
            Some(17),
        ),
        (json!({"t":"nope","id":18}), Some(18)),
        (json!({"id":19}), Some(19)),
        (json!({"t":"ping"}), None),
        (json!({"t":"ping","id":"20"}), None),
        (
            json!({"t":"ack","id":22,"queue":"g","topic":"a","origin":"n","epoch":1}),
            Some(22),
        ),
        (
            json!({"t":"sub","id":23,"topic":"a","queue":"g","ordering":"random"}),
            Some(23),
        ),
        (
            json!({"t":"nak","id":24,"queue":"g","topic":"a","origin":"n","epoch":1,"seq":1,"delay_ms":"soon"}),
            Some(24),
        ),
        // Decodes, but the session refuses it: a group name is one topic segment.
        (
            json!({"t":"sub","id":25,"topic":"a","queue":"a.b"}),
            Some(25),
        ),
    ]
}

/// Every message of every frame until `n` have arrived, decoded with `enc`.
async fn replies(ws: &mut Ws, enc: edgesync_protocol::Encoding, n: usize) -> Vec<ServerFrame> {
    let mut got = Vec::new();
    while got.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timely")
            .expect("open")
            .expect("frame");
        let bytes = match msg {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            _ => continue,
        };
        got.extend(enc.decode_all::<ServerFrame>(&bytes).expect("decodes"));
    }
    got
}

use edgesync_protocol::ServerFrame;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_missing_or_mistyped_fields_gets_bad_request_with_its_id() {
    use edgesync_protocol::Encoding;
    let gw = TestGateway::start(|_| {}).await;
    for enc in [Encoding::Json, Encoding::MsgPack] {
        let mut req = gw.ws_url().into_client_request().expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            enc.subprotocol().parse().expect("header"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        let encode = |v: &Value| match enc {
            Encoding::Json => serde_json::to_vec(v).expect("json"),
            Encoding::MsgPack => rmp_serde::to_vec_named(v).expect("msgpack"),
        };
        let frame_of = |values: &[Value]| {
            let mut frame = Vec::new();
            for v in values {
                frame.extend_from_slice(&encode(v));
                frame.extend_from_slice(enc.separator());
            }
            match enc {
                Encoding::Json => Message::text(String::from_utf8(frame).expect("utf8")),
                Encoding::MsgPack => Message::binary(frame),
            }
        };
        ws.send(frame_of(&[json!({"t":"connect","id":100})]))
            .await
            .expect("send");
        let connected = replies(&mut ws, enc, 1).await;
        assert!(matches!(connected[0], ServerFrame::Connected { .. }));
        // All of them in one frame, between two pings: each is answered in its place and
        // its neighbours still run.
        let table = invalid_commands();
        let mut values = vec![json!({"t":"ping","id":101})];
        values.extend(table.iter().map(|(v, _)| v.clone()));
        values.push(json!({"t":"ping","id":102}));
        ws.send(frame_of(&values)).await.expect("send");
        let got = replies(&mut ws, enc, table.len() + 2).await;
        assert_eq!(got[0], ServerFrame::Pong { id: 101 }, "{enc:?}");
        for ((sent, id), reply) in table.iter().zip(&got[1..]) {
            match reply {
                ServerFrame::Error {
                    id: got_id,
                    code,
                    msg,
                    retry,
                } => {
                    assert_eq!(
                        (got_id, *code, *retry),
                        (id, edgesync_protocol::ErrorCode::BadRequest, false),
                        "{enc:?} {sent}: {msg}"
                    );
                    assert!(!msg.is_empty());
                }
                other => panic!("{enc:?} {sent}: expected bad_request, got {other:?}"),
            }
        }
        assert_eq!(
            got[table.len() + 1],
            ServerFrame::Pong { id: 102 },
            "{enc:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_cursor_string_is_cursor_invalid() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut ws, mut p) = connected(&gw.ws_url()).await;
    send(
        &mut ws,
        json!({"t":"sub","id":2,"topic":"a","start":{"cursor":""}}),
    )
    .await;
    assert_eq!(error_code(&mut ws, &mut p, Some(2)).await, "cursor_invalid");
    send(
        &mut ws,
        json!({"t":"history","id":3,"topic":"a","start":{"cursor":""}}),
    )
    .await;
    assert_eq!(error_code(&mut ws, &mut p, Some(3)).await, "cursor_invalid");
    let mut ws = raw(&gw.ws_url()).await;
    let mut p = Vec::new();
    send(&mut ws, json!({"t":"connect","id":4,"cursor":""})).await;
    assert_eq!(error_code(&mut ws, &mut p, Some(4)).await, "cursor_invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_websocket_port_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(|_| {}).await;
    let addr = gw.ws_url().trim_start_matches("ws://").to_string();
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n"[..], "HTTP/1.1 426"),
        (&b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..], "HTTP/1.1 400"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
        tcp.write_all(request).await.expect("write");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response))
            .await
            .expect("answered, then closed")
            .expect("read");
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with(status), "{status}: {text}");
        assert!(
            text.contains("edgesync"),
            "the body says what the port is: {text}"
        );
    }
    // A WebSocket client on the same port is unaffected.
    let _ = connected(&gw.ws_url()).await;
}
