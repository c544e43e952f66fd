//! Plugins on the live message path of a real gateway, over real sockets, with
//! plugins compiled from source (`plugins/`) by the plugin host's build:
//! JWT auth with permissions enforced on publish and subscribe, a JSON
//! transform (redaction) whose result is what gets stored, a schema plugin
//! rejecting with a reason, a trapping plugin whose messages are
//! dead-lettered to `$dlq.<plugin>` while the next message works, and plugin
//! metrics in the gateway's registry.

use std::time::Duration;

use base64::Engine as _;
use edgesync_client::{Client, ClientError, ClientOptions, Encoding, ErrorCode, Event, Start};
use edgesync_plugin_host::built;
use edgesync_tests::TestGateway;
use hmac::Mac as _;

const SECRET: &str = "test-secret";

fn jwt(claims: serde_json::Value) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64(&mac.finalize().into_bytes()))
}

fn plugin_config() -> String {
    format!(
        r#"
[[plugin]]
name = "jwt-auth"
path = "{jwt}"
[plugin.config]
keys = [{{ alg = "HS256", key = "{SECRET}" }}]

[[plugin]]
name = "transform"
path = "{transform}"
[plugin.config]
redact = ["password"]

[[plugin]]
name = "schema"
path = "{schema}"
[[plugin.config.rules]]
topics = "sensors.>"
required = ["id"]

[[plugin]]
name = "trap"
path = "{trap}"
# Once open (5 faults), the breaker stays open for the rest of a test.
[plugin.breaker]
backoff_ms = 60000
# Its verdict is optional (it only upper-cases): a fault passes the message on.
[plugin.failure]
on_message = "open"

[[route]]
topics = "chat.>"
plugins = ["transform"]

[[route]]
topics = "sensors.>"
plugins = ["schema"]

[[route]]
topics = "fragile.>"
plugins = ["trap"]
"#,
        jwt = built::JWT_AUTH,
        transform = built::TRANSFORM,
        schema = built::SCHEMA,
        trap = built::TRAP,
    )
}

async fn start() -> TestGateway {
    let parsed =
        edgesync::config::Config::from_toml(&plugin_config()).expect("plugin config parses");
    TestGateway::start(move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
    })
    .await
}

async fn connect(gw: &TestGateway, token: Option<String>) -> Result<Client, ClientError> {
    let mut o = ClientOptions::new(gw.ws_url());
    o.token = token;
    o.reconnect = false;
    o.encoding = Encoding::Json;
    Client::connect(o).await
}

fn exp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_transform_schema_and_dead_letters_through_a_real_gateway() {
    let gw = start().await;
    // Auth: no token, a forged token, then a good one.
    let no_token = connect(&gw, None).await.expect_err("anonymous refused");
    assert_eq!(no_token.code(), Some(ErrorCode::Unauthorized));
    let forged = jwt(serde_json::json!({"sub":"u1","exp":exp()})).replace('.', ".x");
    assert_eq!(
        connect(&gw, Some(forged)).await.expect_err("forged").code(),
        Some(ErrorCode::Unauthorized)
    );
    let token = jwt(serde_json::json!({
        "sub": "u1",
        "exp": exp(),
        "publish": ["chat.u1.>", "sensors.>", "fragile.>"],
        "subscribe": ["chat.>", "fragile.>", "$dlq.>"],
    }));
    let c = connect(&gw, Some(token))
        .await
        .expect("valid token connects");

    // Permissions from the claims, enforced on every publish and subscribe.
    assert_eq!(
        c.publish("chat.u2.x", "hi")
            .await
            .expect_err("not mine")
            .code(),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        c.subscribe("sensors.>", Start::Latest)
            .await
            .expect_err("no sub perm")
            .code(),
        Some(ErrorCode::Forbidden)
    );

    // Transform: the stored (and delivered) message is the redacted one.
    let mut sub = c
        .subscribe("chat.>", Start::Latest)
        .await
        .expect("sub chat");
    c.publish("chat.u1.room", r#"{"msg":"hi","password":"hunter2"}"#)
        .await
        .expect("publish");
    let delivered = match sub.next_timeout(Duration::from_secs(10)).await {
        Some(Event::Msg(m)) => String::from_utf8_lossy(&m.data.0).into_owned(),
        other => panic!("expected the message, got {other:?}"),
    };
    assert!(
        !delivered.contains("hunter2"),
        "redacted before delivery: {delivered}"
    );
    let redacted = stored(&c, "chat.u1.room").await.remove(0);
    assert!(
        !redacted.contains("hunter2") && redacted.contains("\"msg\":\"hi\""),
        "stored redacted: {redacted}"
    );

    // Schema: rejected with a reason naming the field; nothing stored.
    let err = c
        .publish("sensors.t1", r#"{"value":1}"#)
        .await
        .expect_err("schema rejects");
    assert_eq!(err.code(), Some(ErrorCode::Rejected));
    assert!(
        err.to_string().contains("id"),
        "reason names the field: {err}"
    );
    c.publish("sensors.t1", r#"{"id":"a","value":1}"#)
        .await
        .expect("valid passes");

    // A plugin that traps: the message is dead-lettered (never lost), the next works.
    let mut dlq = c
        .subscribe("$dlq.>", Start::Earliest)
        .await
        .expect("sub dlq");
    c.publish("fragile.x", "please TRAP now")
        .await
        .expect("fail-open: accepted");
    match dlq.next_timeout(Duration::from_secs(10)).await {
        Some(Event::Msg(m)) => {
            assert_eq!(m.topic, "$dlq.trap");
            assert_eq!(m.headers.get("edgesync-dlq-topic"), Some("fragile.x"));
            assert_eq!(m.data.0.as_ref(), b"please TRAP now");
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
    c.publish("fragile.x", "fine")
        .await
        .expect("next call works");
    assert_eq!(
        stored(&c, "fragile.x").await,
        vec!["please TRAP now".to_string(), "FINE".to_string()],
        "fail-open stored the original; the plugin ran again after the trap"
    );

    // Plugin calls are in the gateway's registry.
    let metrics = gw.gateway().metrics.render();
    assert!(
        metrics.contains("plugin=\"transform\""),
        "plugin metrics registered"
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw JSON WebSocket session, connected with `token`: frames are built by hand so
/// one frame can carry several publishes.
async fn raw_session(gw: &TestGateway, token: &str) -> (Ws, Vec<serde_json::Value>) {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = gw.ws_url().into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "edgesync.json.v1".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let hello =
        serde_json::json!({"t": "connect", "id": 1, "client_id": "batcher", "token": token});
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        hello.to_string(),
    ))
    .await
    .expect("send");
    let mut pending = Vec::new();
    let first = recv(&mut ws, &mut pending).await;
    assert_eq!(first["t"], "connected", "{first}");
    (ws, pending)
}

/// Next JSON message (frames carry one per line).
async fn recv(ws: &mut Ws, pending: &mut Vec<serde_json::Value>) -> serde_json::Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        if !pending.is_empty() {
            return pending.remove(0);
        }
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timely")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            for line in t.lines().filter(|l| !l.trim().is_empty()) {
                pending.push(serde_json::from_str(line).expect("json"));
            }
        }
    }
}

/// Sends `pubs` (id, topic, data) as one frame; returns each id's reply (`puback`
/// or `error`) once all have arrived.
async fn publish_frame(
    ws: &mut Ws,
    pending: &mut Vec<serde_json::Value>,
    pubs: &[(u64, &str, &str)],
) -> std::collections::BTreeMap<u64, serde_json::Value> {
    use futures_util::SinkExt as _;
    let frame: Vec<String> = pubs
        .iter()
        .map(|(id, topic, data)| {
            serde_json::json!({"t": "pub", "id": id, "topic": topic, "data": data}).to_string()
        })
        .collect();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        frame.join("\n"),
    ))
    .await
    .expect("send");
    let mut replies = std::collections::BTreeMap::new();
    let mut acked = Vec::new();
    while replies.len() < pubs.len() {
        let v = recv(ws, pending).await;
        if let Some(id) = v["id"].as_u64() {
            if v["t"] == "puback" {
                acked.push(id);
            }
            replies.insert(id, v);
        }
    }
    let mut in_order = acked.clone();
    in_order.sort_unstable();
    assert_eq!(acked, in_order, "acks arrive in publish order");
    replies
}

/// The payloads stored on `topic`, oldest first, as text.
async fn stored(c: &Client, topic: &str) -> Vec<String> {
    let h = c
        .history(topic, Start::Earliest, None)
        .await
        .expect("history");
    h.msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data.0).into_owned())
        .collect()
}

/// The value of `edgesync_plugin_calls_total` for (plugin, hook, outcome).
fn calls(gw: &TestGateway, plugin: &str, hook: &str, outcome: &str) -> f64 {
    let text = gw.gateway().metrics.render();
    text.lines()
        .filter(|l| l.starts_with("edgesync_plugin_calls_total{"))
        .filter(|l| {
            l.contains(&format!("plugin=\"{plugin}\""))
                && l.contains(&format!("hook=\"{hook}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The publishes of one client frame reach each plugin in one `on-batch` call, and
/// still get one verdict each: a schema rejection refuses only its message, and a
/// trap in the batch call falls back to `on-message` per message, so only the poison
/// message is dead-lettered while its neighbours are transformed and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_of_one_frame_go_through_plugins_as_one_batch_with_verdicts_each() {
    let gw = start().await;
    let token = jwt(serde_json::json!({
        "sub": "u1",
        "exp": exp(),
        "publish": ["sensors.>", "fragile.>"],
        "subscribe": ["sensors.>", "fragile.>", "$dlq.>"],
    }));
    let (mut ws, mut pending) = raw_session(&gw, &token).await;

    // Schema: the middle message lacks `id`.
    let replies = publish_frame(
        &mut ws,
        &mut pending,
        &[
            (11, "sensors.a", r#"{"id":1}"#),
            (12, "sensors.a", r#"{"x":1}"#),
            (13, "sensors.a", r#"{"id":2}"#),
        ],
    )
    .await;
    assert_eq!(replies[&11]["t"], "puback", "{}", replies[&11]);
    assert_eq!(replies[&12]["t"], "error", "{}", replies[&12]);
    assert_eq!(replies[&12]["code"], "rejected", "{}", replies[&12]);
    assert_eq!(replies[&13]["t"], "puback", "{}", replies[&13]);
    assert!(
        calls(&gw, "schema", "on-batch", "ok") >= 1.0,
        "the schema plugin saw the frame as one batch"
    );
    assert_eq!(calls(&gw, "schema", "on-message", "ok"), 0.0);

    // Trap: the batch call fails; per-message fallback isolates the poison message.
    let replies = publish_frame(
        &mut ws,
        &mut pending,
        &[
            (21, "fragile.b", "one"),
            (22, "fragile.b", "please TRAP"),
            (23, "fragile.b", "three"),
        ],
    )
    .await;
    for id in [21, 22, 23] {
        assert_eq!(replies[&id]["t"], "puback", "fail-open: {}", replies[&id]);
    }
    assert_eq!(calls(&gw, "trap", "on-batch", "trap"), 1.0);
    assert_eq!(calls(&gw, "trap", "on-message", "trap"), 1.0);
    assert_eq!(calls(&gw, "trap", "on-message", "ok"), 2.0);

    // Publishes whose routes differ take one `on-message` each, with the same results.
    let replies = publish_frame(
        &mut ws,
        &mut pending,
        &[
            (31, "sensors.a", r#"{"id":3}"#),
            (32, "fragile.b", "four"),
            (33, "sensors.a", r#"{"y":1}"#),
        ],
    )
    .await;
    assert_eq!(replies[&31]["t"], "puback", "{}", replies[&31]);
    assert_eq!(replies[&32]["t"], "puback", "{}", replies[&32]);
    assert_eq!(replies[&33]["code"], "rejected", "{}", replies[&33]);
    assert_eq!(calls(&gw, "schema", "on-message", "ok"), 2.0);
    assert_eq!(calls(&gw, "trap", "on-message", "ok"), 3.0);

    let c = connect(&gw, Some(token)).await.expect("connects");
    assert_eq!(
        stored(&c, "fragile.b").await,
        ["ONE", "please TRAP", "THREE", "FOUR"]
    );
    assert_eq!(
        stored(&c, "sensors.a").await,
        [r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#]
    );
    assert_eq!(
        stored(&c, "$dlq.trap").await,
        ["please TRAP"],
        "only the poison message is dead-lettered"
    );
}

/// When the batch call fails for a reason a retry cannot change — here the crash-loop
/// breaker, opened by a frame of poison messages — the whole batch is refused at once,
/// without one `on-message` call per message: a plugin switched off by its breaker
/// fails closed even when its policy is `open`, so one client's poison messages never
/// let everyone's messages skip the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_fails_a_batch_at_once() {
    let gw = start().await;
    let token = jwt(serde_json::json!({
        "sub": "u1",
        "exp": exp(),
        "publish": ["fragile.>"],
        "subscribe": ["fragile.>", "$dlq.>"],
    }));
    let (mut ws, mut pending) = raw_session(&gw, &token).await;
    // One batch fault plus four per-message faults: the breaker's 5 in its window.
    let poison: Vec<(u64, &str, &str)> = (41..45).map(|id| (id, "fragile.c", "TRAP")).collect();
    publish_frame(&mut ws, &mut pending, &poison).await;
    assert_eq!(calls(&gw, "trap", "on-message", "trap"), 4.0);
    let replies = publish_frame(
        &mut ws,
        &mut pending,
        &[
            (51, "fragile.d", "a"),
            (52, "fragile.d", "b"),
            (53, "fragile.d", "c"),
        ],
    )
    .await;
    for id in [51, 52, 53] {
        assert_eq!(
            replies[&id]["code"], "rejected",
            "breaker open: refused, not passed unchecked: {}",
            replies[&id]
        );
    }
    assert_eq!(calls(&gw, "trap", "on-batch", "disabled"), 1.0);
    assert_eq!(
        calls(&gw, "trap", "on-message", "disabled"),
        0.0,
        "no per-message retry against an open breaker"
    );
    let c = connect(&gw, Some(token)).await.expect("connects");
    assert!(
        stored(&c, "fragile.d").await.is_empty(),
        "nothing stored without the plugin's verdict"
    );
    let dlq = c
        .history("$dlq.trap", Start::Earliest, None)
        .await
        .expect("history");
    let dead_d = dlq
        .msgs
        .iter()
        .filter(|m| m.headers.get("edgesync-dlq-topic") == Some("fragile.d"))
        .count();
    assert_eq!(
        dead_d, 3,
        "each message of the failed batch is dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_that_breaks_the_limits_is_rejected_not_retried() {
    // `transform` adds a 3000-byte field: a small message becomes larger than a client
    // may send (max_frame_bytes 2048).
    let config = format!(
        r#"
[[plugin]]
name = "transform"
path = "{transform}"
[plugin.config]
enrich = {{ pad = "{pad}" }}

[[route]]
topics = "grow.>"
plugins = ["transform"]
"#,
        transform = built::TRANSFORM,
        pad = "x".repeat(3000),
    );
    let parsed = edgesync::config::Config::from_toml(&config).expect("plugin config parses");
    let gw = TestGateway::start(move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
        c.limits.max_frame_bytes = 2048;
    })
    .await;
    let c = connect(&gw, None).await.expect("connects");
    let err = c
        .publish("grow.x", r#"{"a":1}"#)
        .await
        .expect_err("the rewrite is over the frame limit");
    assert_eq!(err.code(), Some(ErrorCode::Rejected), "{err}");
    match &err {
        ClientError::Server { retry, message, .. } => {
            assert!(!retry, "a client must not retry it");
            assert!(message.contains("max_frame_bytes"), "{message}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(stored(&c, "grow.x").await.is_empty(), "nothing stored");
    c.publish("other.x", "fine")
        .await
        .expect("other topics are unaffected");
}

/// `pub_batch`: the route's plugin sees the batch, and one rejected message refuses
/// the whole batch — nothing of it is stored (the next batch's records start at seq 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_rejected_message_stores_nothing() {
    use futures_util::SinkExt as _;
    let gw = start().await;
    let token = jwt(serde_json::json!({
        "sub": "u1",
        "exp": exp(),
        "publish": ["sensors.>"],
        "subscribe": ["sensors.>"],
    }));
    let (mut ws, mut pending) = raw_session(&gw, &token).await;
    let batch = |id: u64, msgs: serde_json::Value| {
        let frame = serde_json::json!({"t": "pub_batch", "id": id, "msgs": msgs});
        tokio_tungstenite::tungstenite::Message::text(frame.to_string())
    };
    let bad = batch(
        5,
        serde_json::json!([
            {"topic": "sensors.batch", "data": r#"{"id":1}"#},
            {"topic": "sensors.batch", "data": r#"{"x":1}"#},
            {"topic": "sensors.other", "data": r#"{"id":3}"#},
        ]),
    );
    ws.send(bad).await.expect("send");
    let e = recv(&mut ws, &mut pending).await;
    assert_eq!(
        (e["t"].as_str(), e["id"].as_u64()),
        (Some("error"), Some(5)),
        "{e}"
    );
    assert_eq!(e["code"], "rejected", "{e}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .starts_with("message 1"),
        "{e}"
    );
    let good = batch(
        6,
        serde_json::json!([
            {"topic": "sensors.batch", "data": r#"{"id":1}"#},
            {"topic": "sensors.other", "data": r#"{"id":2}"#},
            {"topic": "sensors.batch", "data": r#"{"id":3}"#, "mid": "m-3"},
        ]),
    );
    ws.send(good).await.expect("send");
    let a = recv(&mut ws, &mut pending).await;
    assert_eq!(
        (a["t"].as_str(), a["id"].as_u64()),
        (Some("batch_ack"), Some(6)),
        "{a}"
    );
    let seqs: Vec<(String, u64)> = a["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .map(|x| {
            (
                x["topic"].as_str().unwrap_or_default().to_string(),
                x["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        seqs,
        [
            ("sensors.batch".to_string(), 1),
            ("sensors.other".to_string(), 1),
            ("sensors.batch".to_string(), 2)
        ],
        "in order; the refused batch left nothing behind"
    );
    // The same batch again: the mid'd message is a duplicate, the others are new.
    let again = batch(
        7,
        serde_json::json!([{"topic": "sensors.batch", "data": r#"{"id":3}"#, "mid": "m-3"}]),
    );
    ws.send(again).await.expect("send");
    let d = recv(&mut ws, &mut pending).await;
    assert_eq!(
        (d["acks"][0]["seq"].as_u64(), d["acks"][0]["dup"].as_bool()),
        (Some(2), Some(true)),
        "{d}"
    );
    assert!(
        calls(&gw, "schema", "on-batch", "ok") >= 2.0,
        "the plugin saw each batch once"
    );
}
