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
    let stored = c
        .history("chat.u1.room", Start::Earliest, None)
        .await
        .expect("history");
    let stored = String::from_utf8_lossy(&stored.msgs[0].data.0).into_owned();
    assert!(
        !stored.contains("hunter2") && stored.contains("\"msg\":\"hi\""),
        "stored redacted: {stored}"
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
    let h = c
        .history("fragile.x", Start::Earliest, None)
        .await
        .expect("history");
    let payloads: Vec<String> = h
        .msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data.0).into_owned())
        .collect();
    assert_eq!(
        payloads,
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
