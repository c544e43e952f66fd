//! Hostile clients at the gateway's edge (security review 2026-12, the admission,
//! timer, browser, identity and file findings; issue 12.1 liveness): raw sockets and a
//! real gateway on 127.0.0.1. Each test asserts the refusal or close, and that a
//! normal client is still served. Timers run on paused time (`start_paused`), so the
//! tests assert orderings of virtual time, never wall-clock speed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use edgesync::config::ListenAddr;
use edgesync::model::{Publish, Sender};
use edgesync_protocol::Headers;
use edgesync_tests::TestGateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Upper bound on any wait for the gateway, in (virtual) time.
const PATIENCE: Duration = Duration::from_secs(60);

fn request(
    url: &str,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "edgesync.json.v1".parse().expect("header"),
    );
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().expect("origin header"));
    }
    req
}

async fn raw(url: &str) -> Ws {
    tokio_tungstenite::connect_async(request(url, None))
        .await
        .expect("websocket handshake")
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON message (a frame may hold several, one per line); `None` once closed.
/// Reading also answers the gateway's pings (tungstenite queues the pong).
async fn next(ws: &mut Ws, pending: &mut Vec<Value>) -> Option<Value> {
    loop {
        if !pending.is_empty() {
            return Some(pending.remove(0));
        }
        match ws.next().await? {
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

/// Read until the connection ends; the last error frame seen (code, message).
async fn last_error(ws: &mut Ws, pending: &mut Vec<Value>) -> Option<(String, String)> {
    let mut last = None;
    while let Some(v) = tokio::time::timeout(PATIENCE, next(ws, pending))
        .await
        .expect("the gateway ends the connection in time")
    {
        if v["t"] == "error" && v.get("id").is_none() {
            last = Some((
                v["code"].as_str().unwrap_or_default().to_string(),
                v["msg"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    last
}

async fn connected(url: &str, client_id: &str) -> (Ws, Vec<Value>) {
    let mut ws = raw(url).await;
    let mut pending = Vec::new();
    send(&mut ws, json!({"t":"connect","id":1,"client_id":client_id})).await;
    let v = next(&mut ws, &mut pending).await.expect("connected");
    assert_eq!(v["t"], "connected", "{v}");
    (ws, pending)
}

async fn subscribe(ws: &mut Ws, pending: &mut Vec<Value>, topic: &str) {
    send(ws, json!({"t":"sub","id":2,"topic":topic})).await;
    let v = next(ws, pending).await.expect("subscribed");
    assert_eq!(v["t"], "subscribed", "{v}");
}

fn ephemeral(topic: &str, payload: Bytes) -> Publish {
    Publish {
        topic: topic.into(),
        client: "pusher".into(),
        principal: None,
        mid: None,
        headers: Headers::default(),
        payload,
    }
}

fn open_connections(gw: &TestGateway) -> usize {
    gw.gateway().conns.list().len()
}

/// Wait (virtual time) until `f` holds; false after [`PATIENCE`].
async fn within_patience(mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + PATIENCE;
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

// ---- Issue 12.1: liveness ----------------------------------------------------------

/// A subscriber that only receives, while the gateway writes to it continuously, is
/// alive as long as it answers pings. (Before: the gateway pinged only when both
/// directions were quiet, so a busy listener was closed every idle timeout.)
#[tokio::test(start_paused = true)]
async fn a_listener_that_only_receives_is_never_idled_out() {
    let gw = TestGateway::start(|c| {
        c.limits.idle_timeout_ms = 3_000;
        c.limits.ping_interval_ms = 1_000;
    })
    .await;
    let (mut ws, mut p) = connected(&gw.ws_url(), "listener").await;
    subscribe(&mut ws, &mut p, "feed").await;
    let pipeline = gw.gateway().pipeline.clone();
    const MESSAGES: usize = 60;
    let publisher = tokio::spawn(async move {
        for i in 0..MESSAGES {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pipeline
                .ingest_ephemeral(
                    &Sender::default(),
                    ephemeral("feed", Bytes::from(i.to_string())),
                )
                .await
                .expect("delivered");
        }
    });
    let started = Instant::now();
    let mut got = 0;
    while got < MESSAGES {
        match tokio::time::timeout(Duration::from_secs(5), next(&mut ws, &mut p)).await {
            Ok(Some(v)) if v["t"] == "msg" => got += 1,
            Ok(Some(v)) => panic!("after {got} messages, at {:?}: {v}", started.elapsed()),
            Ok(None) => panic!("closed after {got} messages, at {:?}", started.elapsed()),
            Err(_) => panic!("nothing for 5 s after {got} messages"),
        }
    }
    publisher.await.expect("publisher");
    // Ten idle timeouts went by; the listener is still there.
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert_eq!(open_connections(&gw), 1);
}

// ---- Finding 7: nothing before `connect` holds a slot ------------------------------

/// Pings (the command) and pongs before `connect` do not extend the deadline for the
/// first `connect`; the slots are free again afterwards.
#[tokio::test(start_paused = true)]
async fn a_connection_that_never_connects_is_closed_at_the_handshake_timeout() {
    let gw = TestGateway::start(|c| {
        c.limits.handshake_timeout_ms = 1_000;
        c.limits.idle_timeout_ms = 3_000;
        c.limits.ping_interval_ms = 300;
        c.limits.max_connections_per_ip = 2;
    })
    .await;
    let url = gw.ws_url();
    let mut holders = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        holders.push(tokio::spawn(async move {
            let mut ws = raw(&url).await;
            let started = Instant::now();
            let mut p = Vec::new();
            // Keep busy without ever connecting: a `ping` command every 200 ms.
            for id in 0u64.. {
                if ws
                    .send(Message::text(json!({"t":"ping","id":id}).to_string()))
                    .await
                    .is_err()
                {
                    break;
                }
                let tick = tokio::time::sleep(Duration::from_millis(200));
                tokio::pin!(tick);
                loop {
                    tokio::select! {
                        () = &mut tick => break,
                        v = next(&mut ws, &mut p) => match v {
                            Some(v) if v["t"] == "error" && v.get("id").is_none() => {
                                return (v, started.elapsed());
                            }
                            Some(_) => {}
                            None => panic!("closed without an error frame"),
                        },
                    }
                }
                assert!(
                    started.elapsed() < PATIENCE,
                    "still open after {PATIENCE:?}"
                );
            }
            panic!("closed without an error frame");
        }));
    }
    for h in holders {
        let (err, after) = h.await.expect("holder");
        assert_eq!(err["code"], "idle_timeout", "{err}");
        assert!(
            err["msg"].as_str().is_some_and(|m| m.contains("connect")),
            "{err}"
        );
        assert!(
            after < Duration::from_millis(1_500),
            "closed after {after:?}"
        );
    }
    // Both slots of this IP are free again: a normal client is served.
    assert!(within_patience(|| open_connections(&gw) == 0).await);
    let (mut ws, mut p) = connected(&url, "normal").await;
    send(&mut ws, json!({"t":"ping","id":9})).await;
    assert_eq!(next(&mut ws, &mut p).await.expect("pong")["t"], "pong");
}

// ---- Finding 9: an unfinished fragmented message --------------------------------------

/// Answering pings between the fragments of a message that never finishes does not
/// keep the connection (and its buffered fragment) alive past the idle timeout.
#[tokio::test(start_paused = true)]
async fn an_unfinished_fragmented_message_does_not_outlive_the_idle_timeout() {
    let gw = TestGateway::start(|c| {
        c.limits.idle_timeout_ms = 3_000;
        c.limits.ping_interval_ms = 500;
    })
    .await;
    let (mut ws, mut p) = connected(&gw.ws_url(), "fragments").await;
    let first = Frame::message(vec![b'x'; 100_000], OpCode::Data(Data::Text), false);
    ws.send(Message::Frame(first))
        .await
        .expect("first fragment");
    let started = Instant::now();
    // Keep reading: every ping is answered with a pong.
    let (code, _) = last_error(&mut ws, &mut p)
        .await
        .expect("an error frame before the close");
    assert_eq!(code, "idle_timeout");
    let after = started.elapsed();
    assert!(
        after <= Duration::from_millis(3_500),
        "closed after {after:?}"
    );
    assert!(within_patience(|| open_connections(&gw) == 0).await);
}

// ---- Finding 8: a reader that stalls ---------------------------------------------------

/// A stalled TCP reader: a small receive buffer and never read again after subscribing.
async fn stalled_subscriber(gw: &TestGateway, topic: &str) -> Ws {
    let addr = gw.ws_addr();
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("tcp");
    let (mut ws, _) = tokio_tungstenite::client_async(
        request(&gw.ws_url(), None),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("handshake");
    let mut p = Vec::new();
    send(&mut ws, json!({"t":"connect","id":1,"client_id":"stalled"})).await;
    assert_eq!(
        next(&mut ws, &mut p).await.expect("connected")["t"],
        "connected"
    );
    subscribe(&mut ws, &mut p, topic).await;
    ws
}

/// The gateway's write to a peer that stopped reading is bounded by the write timeout
/// (`limits.idle_timeout_ms`): the connection and its slot go.
#[tokio::test(start_paused = true)]
async fn a_subscriber_that_stops_reading_is_closed_at_the_write_timeout() {
    let gw = TestGateway::start(|c| {
        c.limits.idle_timeout_ms = 3_000;
        c.limits.ping_interval_ms = 1_000;
        c.limits.outbox_bytes = 1 << 20;
    })
    .await;
    let _stalled = stalled_subscriber(&gw, "bulk").await;
    let (mut normal, mut p) = connected(&gw.ws_url(), "normal").await;
    // The normal client keeps reading (and so answers pings) throughout.
    let reader = tokio::spawn(async move { while next(&mut normal, &mut p).await.is_some() {} });
    // 400 × 64 KiB: far more than the socket buffers and the outbox hold.
    let pipeline = gw.gateway().pipeline.clone();
    let chunk = Bytes::from(vec![b'y'; 64 << 10]);
    for _ in 0..400 {
        pipeline
            .ingest_ephemeral(&Sender::default(), ephemeral("bulk", chunk.clone()))
            .await
            .expect("ingest");
        tokio::task::yield_now().await;
    }
    assert!(
        within_patience(|| open_connections(&gw) == 1).await,
        "the stalled subscriber is closed; {} connections open",
        open_connections(&gw)
    );
    // The normal client was served all along.
    assert!(
        !reader.is_finished(),
        "the normal client is still connected"
    );
}

/// `slow_consumer = "disconnect"` acts on a subscriber whose socket write is stuck,
/// long before the write timeout (an hour here). Real time: the store's writer is a
/// thread, which paused time cannot wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_disconnect_acts_while_a_write_is_stuck() {
    let gw = TestGateway::start(|c| {
        c.limits.idle_timeout_ms = 3_600_000;
        c.limits.ping_interval_ms = 1_800_000;
        c.limits.outbox_bytes = 256 << 10;
        c.topics.push(edgesync::config::TopicConfig {
            pattern: "bulk.>".into(),
            max_messages: None,
            max_bytes: None,
            max_age_secs: None,
            slow_consumer: edgesync::outbox::SlowConsumerPolicy::Disconnect,
            ack: Default::default(),
        });
    })
    .await;
    let _stalled = stalled_subscriber(&gw, "bulk.>").await;
    let pipeline = gw.gateway().pipeline.clone();
    let chunk = Bytes::from(vec![b'z'; 64 << 10]);
    let sender = Sender {
        client_id: "pusher".into(),
        ..Sender::default()
    };
    for _ in 0..300 {
        let _ = pipeline
            .publish(&sender, ephemeral("bulk.x", chunk.clone()))
            .await;
        if open_connections(&gw) == 0 {
            break;
        }
    }
    assert!(
        within_patience(|| open_connections(&gw) == 0).await,
        "the slow consumer is disconnected"
    );
    let closed = gw
        .gateway()
        .metrics
        .connections_closed
        .with_label_values(&["slow_consumer"])
        .get();
    assert_eq!(closed, 1, "closed by the slow-consumer policy");
}

// ---- Finding 6: handshakes are bounded ------------------------------------------------

/// Sockets that never finish their handshake hold at most `max_handshakes_per_ip`
/// slots (and descriptors) until the handshake timeout; the rest are turned away at
/// once, and a client from another address is served meanwhile.
#[tokio::test(start_paused = true)]
async fn unfinished_handshakes_are_bounded_per_ip_and_time_out() {
    let gw = TestGateway::start(|c| {
        c.limits.max_handshakes_per_ip = 4;
        c.limits.handshake_timeout_ms = 1_000;
    })
    .await;
    let addr = gw.ws_addr();
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(addr).await.expect("tcp"));
    }
    // Another address is not affected by this one's handshakes.
    let other = TcpSocket::new_v4().expect("socket");
    other
        .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
        .expect("bind 127.0.0.2");
    let stream = other.connect(addr).await.expect("tcp");
    let (mut ws, _) = tokio_tungstenite::client_async(request(&gw.ws_url(), None), stream)
        .await
        .expect("a client from another address is served");
    ws.send(Message::text(json!({"t":"ping","id":1}).to_string()))
        .await
        .expect("ping");
    let mut refused = 0;
    let mut timed_out = 0;
    for mut s in idle {
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer))
            .await
            .expect("every idle socket is closed in time")
            .ok();
        if answer.starts_with(b"HTTP/1.1 503") {
            refused += 1;
        } else {
            timed_out += 1;
        }
    }
    assert_eq!((refused, timed_out), (6, 4));
    let refused_metric = gw
        .gateway()
        .metrics
        .connections_refused
        .with_label_values(&["too_many_handshakes"])
        .get();
    assert_eq!(refused_metric, 6);
    // Slots are free again for this address.
    let (mut ws, mut p) = connected(&gw.ws_url(), "after").await;
    send(&mut ws, json!({"t":"ping","id":2})).await;
    assert_eq!(next(&mut ws, &mut p).await.expect("pong")["t"], "pong");
}

/// A `max_connections` the process's open-file limit cannot hold is refused at start,
/// naming the key.
#[tokio::test]
async fn a_connection_limit_the_file_limit_cannot_hold_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = edgesync_tests::test_config(dir.path());
    c.limits.max_connections = 50_000_000;
    let err = edgesync::server::start(c.build().expect("valid"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("limits.max_connections"), "{err}");
}

// ---- Finding 16: the admin listener's timeouts ----------------------------------------

#[tokio::test(start_paused = true)]
async fn admin_requests_must_arrive_in_time() {
    let gw = TestGateway::start(|c| {
        c.listen.admin = ListenAddr::parse("127.0.0.1:0").expect("addr");
    })
    .await;
    let admin = gw
        .running
        .as_ref()
        .expect("running")
        .bound
        .admin
        .expect("admin");
    // Unfinished headers.
    let mut slow = TcpStream::connect(admin).await.expect("tcp");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    // An unfinished body.
    let mut trickle = TcpStream::connect(admin).await.expect("tcp");
    trickle
        .write_all(b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"topic\":")
        .await
        .expect("partial body");
    // Meanwhile the admin API answers.
    let mut ok = TcpStream::connect(admin).await.expect("tcp");
    ok.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    ok.read_to_end(&mut answer).await.expect("answer");
    assert!(
        answer.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, slow.read_to_end(&mut answer))
        .await
        .expect("a request whose headers never finish is closed")
        .ok();
    // Closed by the header timeout, not by anything much later (a liveness bound with
    // room for a loaded machine, not a timing claim).
    assert!(started.elapsed() <= edgesync::admin::HEADER_TIMEOUT * 2);
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, trickle.read_to_end(&mut answer))
        .await
        .expect("a body that never finishes is answered")
        .ok();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

// ---- Finding 12: browsers -------------------------------------------------------------

fn handshake_status(e: tokio_tungstenite::tungstenite::Error) -> u16 {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("not an HTTP refusal: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_websocket_handshakes_are_refused_unless_allowed() {
    // Development default: a loopback listener accepts loopback pages only.
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let e = tokio_tungstenite::connect_async(request(&url, Some("https://evil.example")))
        .await
        .expect_err("a foreign page is refused");
    assert_eq!(handshake_status(e), 403);
    tokio_tungstenite::connect_async(request(&url, Some("http://localhost:3000")))
        .await
        .expect("a local development page is allowed");
    tokio_tungstenite::connect_async(request(&url, None))
        .await
        .expect("a client that is not a browser is unaffected");

    // A listener on a non-loopback address accepts only the listed origins.
    let gw = TestGateway::start(|c| {
        c.listen.ws = ListenAddr::parse("0.0.0.0:0").expect("addr");
        c.listen.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let url = format!("ws://127.0.0.1:{}", gw.ws_addr().port());
    tokio_tungstenite::connect_async(request(&url, Some("https://app.example")))
        .await
        .expect("a listed origin");
    for origin in ["http://localhost:3000", "https://evil.example", "null"] {
        let e = tokio_tungstenite::connect_async(request(&url, Some(origin)))
            .await
            .expect_err(origin);
        assert_eq!(handshake_status(e), 403, "{origin}");
    }
}

// ---- Findings 21, 22: look-alike topics, private files -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_system_topics_are_refused() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut ws, mut p) = connected(&gw.ws_url(), "lookalike").await;
    for (id, topic) in [
        (10, "\u{FF04}dlq.auth"),
        (11, "\u{200B}$dlq.auth"),
        (12, "chat.\u{202E}x"),
    ] {
        send(&mut ws, json!({"t":"pub","id":id,"topic":topic,"data":"x"})).await;
        let v = next(&mut ws, &mut p).await.expect("reply");
        assert_eq!(
            (v["id"].as_u64(), v["code"].as_str()),
            (Some(id), Some("topic_invalid")),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_key_files_are_private_from_creation() {
    use std::os::unix::fs::PermissionsExt as _;
    let gw = TestGateway::start(|_| {}).await;
    let c = gw.client(edgesync_client::Encoding::Json).await;
    c.publish("private.x", "payload").await.expect("stored");
    let mut stack = vec![gw.dir.clone()];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("meta");
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        seen += 1;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    assert!(
        seen > 5,
        "walked the store, the keys and the certificates ({seen})"
    );
}

// ---- Findings 11, 14: identities are data; tokens expire ------------------------------

const JWT_SECRET: &str = "hostile-edge-secret";

fn jwt(claims: Value) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()).expect("key");
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64(&mac.finalize().into_bytes()))
}

fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600
}

/// Connect with `token`; the `connected` reply or the error's code.
async fn connect_with(url: &str, token: &str) -> Result<(Ws, Vec<Value>), String> {
    let mut ws = raw(url).await;
    let mut p = Vec::new();
    send(&mut ws, json!({"t":"connect","id":1,"token":token})).await;
    let v = next(&mut ws, &mut p).await.expect("reply");
    if v["t"] == "connected" {
        Ok((ws, p))
    } else {
        Err(v["code"].as_str().unwrap_or_default().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_is_never_a_pattern_and_tokens_must_expire() {
    let parsed = edgesync::config::Config::from_toml(&format!(
        r#"
[[plugin]]
name = "jwt-auth"
path = "{path}"
[plugin.config]
keys = [{{ alg = "HS256", key = "{JWT_SECRET}" }}]
default_publish = ["users.{{principal}}.>"]
default_subscribe = ["users.{{principal}}.>"]
"#,
        path = edgesync_plugin_host::built::JWT_AUTH,
    ))
    .expect("config");
    let gw = TestGateway::start(move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
        c.listen.admin = ListenAddr::parse("127.0.0.1:0").expect("addr");
        c.admin.token = Some("admin-token".into());
    })
    .await;
    // Finding 13: the plugin's HMAC key is not in the effective configuration.
    let admin = gw
        .running
        .as_ref()
        .expect("running")
        .bound
        .admin
        .expect("admin");
    let mut s = TcpStream::connect(admin).await.expect("tcp");
    s.write_all(b"GET /v1/config HTTP/1.0\r\nAuthorization: Bearer admin-token\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.expect("answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.contains("jwt-auth"), "{answer}");
    assert!(
        !answer.contains(JWT_SECRET),
        "the plugin secret leaked: {answer}"
    );
    assert!(!answer.contains("admin-token"), "{answer}");
    let url = gw.ws_url();
    // `sub: "*"` would turn users.{principal}.> into users.*.> — everyone's mail.
    for sub in ["*", ">", "bob.inbox", "$dlq", "a b"] {
        let token = jwt(json!({"sub": sub, "exp": in_an_hour()}));
        assert_eq!(
            connect_with(&url, &token).await.err().as_deref(),
            Some("unauthorized"),
            "principal {sub:?}"
        );
    }
    // A token without `exp` would never expire.
    let forever = jwt(json!({"sub": "bob"}));
    assert_eq!(
        connect_with(&url, &forever).await.err().as_deref(),
        Some("unauthorized")
    );
    // A plain principal gets exactly its own namespace.
    let (mut ws, mut p) = connect_with(&url, &jwt(json!({"sub": "bob", "exp": in_an_hour()})))
        .await
        .expect("bob connects");
    send(&mut ws, json!({"t":"sub","id":2,"topic":"users.bob.>"})).await;
    assert_eq!(
        next(&mut ws, &mut p).await.expect("reply")["t"],
        "subscribed"
    );
    send(&mut ws, json!({"t":"sub","id":3,"topic":"users.alice.>"})).await;
    assert_eq!(
        next(&mut ws, &mut p).await.expect("reply")["code"],
        "forbidden"
    );
}

// ---- Finding 6, in a real process: descriptors stay bounded ------------------------------

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 600 sockets from one address that never send a byte (the review's attack) hold at
/// most `max_handshakes_per_ip` descriptors of a real gateway process, and a normal
/// client is served meanwhile. (Before: one descriptor each, 14 → 614.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_hold_a_bounded_number_of_descriptors_in_a_real_gateway() {
    const PER_IP: usize = 16;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("edgesync.toml");
    std::fs::write(
        &config,
        format!("[limits]\nmax_handshakes_per_ip = {PER_IP}\nhandshake_timeout_ms = 60000\n"),
    )
    .expect("config");
    let port = edgesync_tests::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edgesync-test-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args([
            "--ws",
            &format!("127.0.0.1:{port}"),
            "--wss",
            "off",
            "--quic",
            "off",
        ])
        .args(["--admin", "off", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn gateway");
    let url = format!("ws://127.0.0.1:{port}");
    let normal = edgesync_tests::connect_retry(&url).await;
    let pid = child.id();
    let before = open_fds(pid);
    let mut idle = Vec::new();
    for _ in 0..600 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            idle.push(s);
        }
    }
    // Let the gateway accept (and turn away) all of them.
    let mut settled = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let refused = idle.len() - PER_IP;
        let mut closed = 0;
        for s in &idle {
            let mut b = [0u8; 64];
            if s.try_read(&mut b).is_ok() {
                closed += 1;
            }
        }
        if closed >= refused {
            settled = true;
            break;
        }
    }
    let during = open_fds(pid);
    // The normal client is served while the sockets are held.
    normal.publish("fd.check", "x").await.expect("served");
    let _ = child.kill();
    let _ = child.wait();
    assert!(settled, "the sockets beyond the limit are closed");
    assert!(
        during <= before + PER_IP + 4,
        "gateway descriptors {before} → {during} with 600 idle sockets (limit {PER_IP} per IP)"
    );
    eprintln!("gateway descriptors with 600 idle sockets: {before} → {during}");
}
