//! Hostile clients against the read paths, identities and plugins of a real gateway
//! (issue 11, findings 1-5, 10, 15, 18, 20, 23, 24 of the 2026-12 security review):
//! real sockets on 127.0.0.1, the real store on disk, plugins built from source.
//!
//! - every path that returns stored messages authorizes like `sub` (grants, `$` topics,
//!   `on-subscribe`); a failed auth plugin with `on_connect = "open"` means no
//!   permissions, never none checked;
//! - plugins fail safe: hooks fail closed by default, a message past a plugin's CPU
//!   budget is refused (not stored unchecked), an open breaker refuses rather than
//!   skips, plugin publishes to `$` topics need a grant, dead letters carry no
//!   backtrace.
//!
//! Every wait is a bounded loop; nothing asserts on wall-clock time.

use std::time::Duration;

use edgesync::config::Config;
use edgesync_client::{Client, ClientOptions, Encoding, ErrorCode, Start};
use edgesync_plugin_host::built;
use edgesync_tests::TestGateway;

/// Bound on waiting for one reply or one eventual condition.
const WAIT: Duration = Duration::from_secs(20);

async fn start_with(toml: &str) -> TestGateway {
    let parsed = Config::from_toml(toml).unwrap_or_else(|e| panic!("config parses: {e}\n{toml}"));
    TestGateway::start(move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
    })
    .await
}

async fn try_client(
    gw: &TestGateway,
    client_id: &str,
) -> Result<Client, edgesync_client::ClientError> {
    let mut o = ClientOptions::new(gw.ws_url());
    o.client_id = Some(client_id.to_string());
    o.reconnect = false;
    o.encoding = Encoding::Json;
    o.request_timeout = WAIT;
    Client::connect(o).await
}

async fn client(gw: &TestGateway, client_id: &str) -> Client {
    try_client(gw, client_id).await.expect("client connects")
}

/// The error code a refused request got (panics when it was not refused).
fn refused<T: std::fmt::Debug>(r: Result<T, edgesync_client::ClientError>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not a server error: {e}")),
    }
}

async fn payloads(c: &Client, topic: &str) -> Vec<String> {
    let page = c
        .history(topic, Start::Earliest, None)
        .await
        .expect("history");
    page.msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data.0).into_owned())
        .collect()
}

/// `auth-only` grants each client `<client id>.>` and `public.>`, and its `on-subscribe`
/// denies `secret.>`; `trap` runs on `public.fragile.>` so a dead letter exists.
fn auth_config(on_connect: &str) -> String {
    format!(
        r#"
[[plugin]]
name = "auth-only"
path = "{auth}"
[plugin.failure]
on_connect = "{on_connect}"

[[plugin]]
name = "trap"
path = "{trap}"

[[route]]
topics = "public.fragile.>"
plugins = ["trap"]
"#,
        auth = built::AUTH_ONLY,
        trap = built::TRAP,
    )
}

/// Finding 1: `history` authorizes exactly like `sub` — principal grants, reserved `$`
/// topics (a dead letter holds another client's message and its original topic), and
/// the `on-subscribe` hook — while the owner still reads its own topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_authorized_like_sub() {
    let gw = start_with(&auth_config("closed")).await;
    let alice = client(&gw, "alice").await;
    alice
        .publish("alice.private", "for alice only")
        .await
        .expect("alice publishes to her own topic");
    refused(alice.publish("public.fragile.x", "TRAP").await);
    // `secret` is granted `secret.>` but `on-subscribe` denies it.
    let secret = client(&gw, "secret").await;
    secret
        .publish("secret.plans", "classified")
        .await
        .expect("publish is not a read");

    let mallory = client(&gw, "mallory").await;
    for topic in ["alice.private", "$dlq.trap"] {
        assert_eq!(
            refused(mallory.history(topic, Start::Earliest, None).await),
            ErrorCode::Forbidden,
            "history of {topic} without a grant"
        );
        assert_eq!(
            refused(mallory.subscribe(topic, Start::Earliest).await),
            ErrorCode::Forbidden,
            "sub of {topic} without a grant"
        );
    }
    for start in [Start::Earliest, Start::Last(10), Start::Latest] {
        assert_eq!(
            refused(secret.history("secret.plans", start.clone(), None).await),
            ErrorCode::Forbidden,
            "on-subscribe denies history from {start:?}"
        );
    }
    assert_eq!(
        refused(secret.subscribe("secret.plans", Start::Earliest).await),
        ErrorCode::Forbidden
    );
    // The owner is still served.
    assert_eq!(payloads(&alice, "alice.private").await, ["for alice only"]);
}

/// Finding 23: an auth plugin that fails with `on_connect = "open"` admits the client
/// with the default permissions — none — not as an unrestricted session. With the
/// default policy (closed) the same failure refuses the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_auth_plugin_never_leaves_a_session_unrestricted() {
    let open = start_with(&auth_config("open")).await;
    let owner = client(&open, "bob").await;
    owner.publish("bob.mail", "hello bob").await.expect("bob");
    let crashed = client(&open, "crash-1").await;
    assert_eq!(
        refused(crashed.history("bob.mail", Start::Earliest, None).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(crashed.subscribe("public.>", Start::Earliest).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(crashed.publish("crash-1.x", "mine?").await),
        ErrorCode::Forbidden
    );
    assert_eq!(payloads(&owner, "bob.mail").await, ["hello bob"]);

    let closed = start_with(&auth_config("closed")).await;
    let err = try_client(&closed, "crash-2")
        .await
        .expect_err("fail-closed refuses");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
}

fn value_of_calls(gw: &TestGateway, plugin: &str, hook: &str, outcome: &str) -> f64 {
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

/// Findings 5 and 24: with the default policy a message the plugin could not judge —
/// past its CPU budget, or a trap — is refused, dead-lettered without a backtrace, and
/// never stored unchecked; once one client's poison messages open the breaker, another
/// client's message is refused (retry later), not stored past the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_fail_closed_and_one_client_cannot_switch_them_off() {
    let gw = start_with(&format!(
        r#"
[[plugin]]
name = "spin"
path = "{spin}"
[plugin.limits]
deadline_ms = 10

[[plugin]]
name = "trap"
path = "{trap}"
[plugin.breaker]
backoff_ms = 60000
# Even a plugin whose faults pass messages on refuses while its breaker is open.
[plugin.failure]
on_message = "open"

[[route]]
topics = "checked.>"
plugins = ["spin"]

[[route]]
topics = "upper.>"
plugins = ["trap"]
"#,
        spin = built::INFINITE_LOOP,
        trap = built::TRAP,
    ))
    .await;
    let attacker = client(&gw, "attacker").await;
    let victim = client(&gw, "victim").await;

    // Past the CPU budget: refused and dead-lettered, never stored unchecked.
    assert_eq!(
        refused(attacker.publish("checked.x", "loop").await),
        ErrorCode::Rejected
    );
    victim.publish("checked.x", "fine").await.expect("checked");
    assert_eq!(payloads(&victim, "checked.x").await, ["fine"]);
    assert_eq!(payloads(&victim, "$dlq.spin").await, ["loop"]);

    // A trap: the dead letter names the error, not the guest's stack.
    attacker
        .publish("upper.x", "TRAP")
        .await
        .expect("fail-open forgives one fault");
    let dead = victim
        .history("$dlq.trap", Start::Earliest, None)
        .await
        .expect("dead letters");
    let error = dead.msgs[0]
        .headers
        .get("edgesync-dlq-error")
        .expect("error header")
        .to_string();
    assert!(error.contains("trapped"), "{error}");
    assert!(
        !error.contains("backtrace") && !error.contains("0x"),
        "no backtrace in a dead letter: {error}"
    );

    // Four more poison messages: 5 faults open the breaker.
    for _ in 0..4 {
        attacker.publish("upper.x", "TRAP").await.expect("forgiven");
    }
    assert_eq!(value_of_calls(&gw, "trap", "on-message", "trap"), 5.0);
    assert_eq!(
        refused(victim.publish("upper.v", "skip me past the plugin").await),
        ErrorCode::Rejected,
        "the breaker is open: refused, never passed unchecked"
    );
    assert!(payloads(&victim, "upper.v").await.is_empty());
}

/// Finding 20: a plugin with `pubsub` may not write reserved `$` topics unless
/// `grants.system_topics` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_publishes_to_dollar_topics_need_an_explicit_grant() {
    let gw = start_with(&format!(
        r#"
[[plugin]]
name = "forger"
path = "{ticker}"
[plugin.config]
topic = "$dlq.auth"
interval_ms = 20
[plugin.grants]
pubsub = true

[[plugin]]
name = "granted"
path = "{ticker}"
[plugin.config]
topic = "$sys.tick"
interval_ms = 20
[plugin.grants]
pubsub = true
system_topics = true
"#,
        ticker = built::TICKER,
    ))
    .await;
    let c = client(&gw, "reader").await;
    let mut granted = 0;
    for _ in 0..500 {
        granted = payloads(&c, "$sys.tick").await.len();
        if granted >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(granted >= 3, "the granted plugin writes its `$` topic");
    assert!(
        payloads(&c, "$dlq.auth").await.is_empty(),
        "the ungranted plugin wrote nothing"
    );
}

const JWT_SECRET: &str = "hostile-reads-secret";

/// An HS256 token for `jwt-auth` with `sub`, an hour of validity and `grants` as both
/// publish and subscribe permissions.
fn jwt(sub: &str, grants: &[&str]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let claims =
        serde_json::json!({"sub": sub, "exp": exp, "publish": grants, "subscribe": grants});
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()).expect("hmac key");
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64(&mac.finalize().into_bytes()))
}

async fn client_with_token(gw: &TestGateway, client_id: &str, token: String) -> Client {
    let mut o = ClientOptions::new(gw.ws_url());
    o.client_id = Some(client_id.to_string());
    o.token = Some(token);
    o.reconnect = false;
    o.encoding = Encoding::MsgPack;
    o.request_timeout = WAIT;
    Client::connect(o).await.expect("client connects")
}

async fn publish_mid(c: &Client, topic: &str, data: &str, mid: &str) -> edgesync_client::PubAck {
    c.publish_with(
        topic,
        data.to_string(),
        edgesync_client::PublishOptions {
            mid: Some(mid.to_string()),
            ..Default::default()
        },
    )
    .await
    .expect("publish")
}

/// Finding 4: a spy that borrows a victim's client id and next `mid` cannot make the
/// victim's publish a duplicate — not on another topic (no auth), not even on the same
/// topic as another principal (auth on). A genuine retry is still deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_client_id_cannot_suppress_another_clients_publish() {
    // No auth: the topic is part of the key.
    let gw = TestGateway::start(|_| {}).await;
    let spy = client(&gw, "victim").await;
    let spied = publish_mid(&spy, "spy.own", "decoy", "m-7").await;
    assert!(!spied.dup);
    let victim = client(&gw, "victim").await;
    let real = publish_mid(&victim, "victim.inbox", "the real one", "m-7").await;
    assert!(
        !real.dup,
        "another topic's publish does not suppress it: {real:?}"
    );
    let retry = publish_mid(&victim, "victim.inbox", "the real one", "m-7").await;
    assert!(
        retry.dup && retry.seq == real.seq,
        "a retry is deduplicated: {retry:?}"
    );
    assert_eq!(payloads(&victim, "victim.inbox").await, ["the real one"]);

    // Auth on: the principal is part of the key, even on a shared topic.
    let gw = start_with(&format!(
        r#"
[[plugin]]
name = "jwt-auth"
path = "{jwt}"
[plugin.config]
keys = [{{ alg = "HS256", key = "{JWT_SECRET}" }}]
"#,
        jwt = built::JWT_AUTH,
    ))
    .await;
    let spy = client_with_token(&gw, "phone-1", jwt("mallory", &["room.>"])).await;
    assert!(!publish_mid(&spy, "room.1", "decoy", "m-1").await.dup);
    let victim = client_with_token(&gw, "phone-1", jwt("alice", &["room.>"])).await;
    let real = publish_mid(&victim, "room.1", "alice speaks", "m-1").await;
    assert!(
        !real.dup,
        "another principal's publish does not suppress it: {real:?}"
    );
    assert_eq!(payloads(&victim, "room.1").await, ["decoy", "alice speaks"]);
}

/// Finding 18: client ids are checked — charset, no control characters, no `$`, no
/// look-alike Unicode, length — with a `bad_request` naming the offending byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_are_validated_with_a_precise_error() {
    let gw = TestGateway::start(|_| {}).await;
    for bad in [
        "a\u{0}b",
        "$plugin.jwt-auth",
        "line\nbreak",
        "esc\u{1b}[2J",
        "sp ace",
        "\u{ff04}lookalike",
        "",
        &"x".repeat(129),
    ] {
        let err = try_client(&gw, bad).await.expect_err("refused");
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{bad:?}: {err}");
        assert!(err.to_string().contains("client_id"), "{bad:?}: {err}");
    }
    for good in ["sensor-7", "user@example.org", "c-00ff", "a.b:c_d+e/f=g~h"] {
        let c = client(&gw, good).await;
        assert_eq!(c.session().client_id, good);
    }
}

// ---------------------------------------------------------------------------------------
// Amplification: a real gateway process, its RSS read from /proc while a raw WebSocket
// client that never reads attacks it.

mod raw {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::Value;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    pub type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// A JSON-encoding WebSocket session, connected as `client_id`.
    pub async fn connect(url: &str, client_id: &str) -> Ws {
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "edgesync.json.v1".parse().expect("header"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        send_lines(
            &mut ws,
            &[serde_json::json!({"t":"connect","id":0,"client_id":client_id})],
        )
        .await;
        let first = next(&mut ws).await.expect("connected");
        assert_eq!(first[0]["t"], "connected", "{first:?}");
        ws
    }

    /// One WebSocket frame holding `cmds`, one JSON message per line.
    pub async fn send_lines(ws: &mut Ws, cmds: &[Value]) {
        let text: Vec<String> = cmds.iter().map(Value::to_string).collect();
        ws.send(Message::text(text.join("\n"))).await.expect("send");
    }

    /// The messages of the next text frame; `None` on close.
    pub async fn next(ws: &mut Ws) -> Option<Vec<Value>> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("timely frame")?;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(
                        t.lines()
                            .filter(|l| !l.trim().is_empty())
                            .map(|l| serde_json::from_str(l).expect("json"))
                            .collect(),
                    );
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A gateway process of the test binary, killed on drop.
struct GatewayProcess {
    child: std::process::Child,
    url: String,
    /// Config and data (`data/tls/ca.pem` is the generated development CA).
    dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Start `serve` with a ws listener only and `config` as its TOML file.
    async fn spawn(config: &str) -> GatewayProcess {
        GatewayProcess::spawn_with(config, None).await
    }

    /// [`GatewayProcess::spawn`], plus QUIC on `quic_port` when given.
    async fn spawn_with(config: &str, quic_port: Option<u16>) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_edgesync-test-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--ws", &format!("127.0.0.1:{port}")])
            .args(["--wss", "off", "--admin", "off"])
            .args([
                "--quic",
                &quic_port.map_or("off".to_string(), |p| format!("127.0.0.1:{p}")),
            ])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn gateway");
        let g = GatewayProcess {
            child,
            url: format!("ws://127.0.0.1:{port}"),
            dir,
        };
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return g;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway process did not listen");
    }

    /// Resident memory of the gateway process, MiB.
    fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("gateway process alive");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib / 1024
    }

    async fn client(&self) -> Client {
        let mut o = ClientOptions::new(self.url.clone());
        o.reconnect = false;
        o.request_timeout = WAIT;
        Client::connect(o).await.expect("client connects")
    }

    /// The highest RSS over `samples` samples 20 ms apart, checking meanwhile that a
    /// normal client is served (a publish acknowledged and read back).
    async fn peak_rss_while_serving(&self, samples: u32) -> u64 {
        let normal = self.client().await;
        let mut peak = 0;
        for i in 0..samples {
            peak = peak.max(self.rss_mib());
            if i % 10 == 0 {
                let topic = format!("normal.{i}");
                normal
                    .publish(&topic, "still served")
                    .await
                    .expect("served");
                assert_eq!(payloads(&normal, &topic).await, ["still served"]);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 40 stored messages of 900 kB on `big.t` (36 MB).
async fn store_big_messages(g: &GatewayProcess) {
    let c = g.client().await;
    for i in 0..40u8 {
        c.publish("big.t", vec![b'a' + i % 26; 900_000])
            .await
            .expect("big publish");
    }
}

/// Finding 2: one frame of 200 `history` commands on 40 × 900 kB, never read. Before,
/// each reply held up to `max_history` messages whatever their size and the whole frame
/// ran before anything was written (GBs); now a page stops at `max_history_bytes` and
/// the session runs commands only while its outbox has room for their replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_history_commands_does_not_amplify_memory() {
    let g = GatewayProcess::spawn("").await;
    store_big_messages(&g).await;
    let base = g.rss_mib();
    let mut attacker = raw::connect(&g.url, "attacker").await;
    let cmds: Vec<serde_json::Value> = (1..=200)
        .map(|id| serde_json::json!({"t":"history","id":id,"topic":"big.t"}))
        .collect();
    raw::send_lines(&mut attacker, &cmds).await;
    let peak = g.peak_rss_while_serving(150).await;
    eprintln!("gateway RSS {base} MiB before the attack, {peak} MiB at most during it");
    assert!(
        peak < base + 64,
        "RSS {base} → {peak} MiB under a frame of history commands"
    );
    // The attacker is served too, page by page, once it reads.
    let mut pages = 0;
    while pages < 5 {
        for v in raw::next(&mut attacker).await.expect("replies") {
            if v["t"] == "history" {
                assert!(
                    v["more"] == true,
                    "a page of 40 × 400 kB is partial: {}",
                    v["more"]
                );
                assert!(v["msgs"].as_array().is_some_and(|m| m.len() <= 3));
                pages += 1;
            }
        }
    }
}

/// Finding 10: 30 subscribers catching up from `earliest` that never read. Before, each
/// catch-up step queued up to 256 records whatever their size (every subscriber held
/// the whole topic, 36 MB, against a 1 MiB `outbox_bytes`); now a step queues at most a
/// quarter of the outbox and runs only while it is under half full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_reads_are_bounded_by_the_outbox() {
    let g = GatewayProcess::spawn("[limits]\noutbox_bytes = 1048576\n").await;
    store_big_messages(&g).await;
    let base = g.rss_mib();
    let mut stalled = Vec::new();
    for i in 0..30 {
        let mut ws = raw::connect(&g.url, &format!("stalled-{i}")).await;
        raw::send_lines(
            &mut ws,
            &[serde_json::json!({"t":"sub","id":1,"topic":"big.>","start":"earliest"})],
        )
        .await;
        stalled.push(ws);
    }
    let peak = g.peak_rss_while_serving(150).await;
    eprintln!("gateway RSS {base} MiB before the attack, {peak} MiB at most during it");
    assert!(
        peak < base + 128,
        "RSS {base} → {peak} MiB with 30 stalled catch-ups"
    );
}

/// Finding 3: a wildcard `sub` answers with a cursor of the matching topics, and one
/// frame may repeat `sub >` / `unsub >`. Before, every reply of the frame was queued
/// before anything was written (and named empty topics too); now commands run only while
/// the outbox has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_wildcard_subscriptions_does_not_amplify_memory() {
    let g = GatewayProcess::spawn("").await;
    store_many_topics(&g).await;
    let base = g.rss_mib();
    let mut attacker = raw::connect(&g.url, "attacker").await;
    let cmds: Vec<serde_json::Value> = (0..1000)
        .flat_map(|i| {
            [
                serde_json::json!({"t":"sub","id":2 * i,"topic":">"}),
                serde_json::json!({"t":"unsub","id":2 * i + 1,"topic":">"}),
            ]
        })
        .collect();
    raw::send_lines(&mut attacker, &cmds).await;
    let peak = g.peak_rss_while_serving(150).await;
    eprintln!("gateway RSS {base} MiB before the attack, {peak} MiB at most during it");
    // Measured: +12 MiB with the fix (at most half an outbox of ~1.5 MB replies, and the
    // encoder's buffers); +59 MiB and climbing without it within the same window.
    assert!(
        peak < base + 32,
        "RSS {base} → {peak} MiB under a frame of wildcard subscriptions"
    );
}

/// 5000 topics with 200-byte names, one message each: a `subscribed` cursor naming them
/// all is ~1.5 MB.
async fn store_many_topics(g: &GatewayProcess) {
    let mut writer = raw::connect(&g.url, "writer").await;
    for chunk in 0..5 {
        let pubs: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                // Long names: each `subscribed` cursor naming all 5000 is ~1.5 MB.
                let topic = format!("many.{}.t{chunk}-{i}", "n".repeat(200));
                serde_json::json!({"t":"pub","id":i,"topic":topic,"data":"x"})
            })
            .collect();
        raw::send_lines(&mut writer, &pubs).await;
        let mut acked = 0;
        while acked < 1000 {
            acked += raw::next(&mut writer)
                .await
                .expect("acks")
                .iter()
                .filter(|v| v["t"] == "puback")
                .count();
        }
    }
}

/// Finding 3 over QUIC `edgesync/2`, where each `subscribed` opens a stream of its own
/// (a lane): the lanes' replies count against the connection's lane budget, so a frame
/// of `sub >`/`unsub >` pairs whose streams the client never reads stops running once
/// the budget is used instead of leaving a 1.5 MB reply in every finished lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_over_quic_lanes_do_not_amplify_memory() {
    let quic_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port");
    let g = GatewayProcess::spawn_with("", Some(quic_port)).await;
    store_many_topics(&g).await;
    let base = g.rss_mib();
    let quic = quic_session(&g.dir.path().join("data/tls/ca.pem"), quic_port).await;
    let mut frame = Vec::new();
    for i in 0..1000u64 {
        for f in [
            edgesync_protocol::ClientFrame::sub(10 + 2 * i, ">".into(), None),
            edgesync_protocol::ClientFrame::Unsub {
                id: 11 + 2 * i,
                topic: ">".into(),
            },
        ] {
            frame.extend(edgesync_protocol::Encoding::MsgPack.encode(&f));
        }
    }
    let (mut send, _recv, _conn, _endpoint) = quic;
    let mut wire = (frame.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&frame);
    send.write_all(&wire).await.expect("write the frame");
    let peak = g.peak_rss_while_serving(150).await;
    eprintln!("gateway RSS {base} MiB before the attack, {peak} MiB at most during it");
    assert!(
        peak < base + 32,
        "RSS {base} → {peak} MiB under a frame of wildcard subscriptions over QUIC"
    );
}

/// A QUIC `edgesync/2` session stream, connected (per-stream receive window 16 KiB);
/// the gateway's subscription streams are never accepted.
async fn quic_session(
    ca: &std::path::Path,
    port: u16,
) -> (
    quinn::SendStream,
    quinn::RecvStream,
    quinn::Connection,
    quinn::Endpoint,
) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in edgesync::transport::tls::read_certs(ca).expect("dev ca") {
        roots.add(cert).expect("root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(edgesync::transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![edgesync_protocol::ALPN_QUIC_V2.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(16 << 10));
    config.transport_config(std::sync::Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let conn = endpoint
        .connect_with(config, addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("session stream");
    let connect =
        edgesync_protocol::Encoding::MsgPack.encode(&edgesync_protocol::ClientFrame::Connect {
            id: 1,
            token: None,
            client_id: Some("quic-attacker".into()),
            cursor: None,
        });
    let mut wire = (connect.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&connect);
    send.write_all(&wire).await.expect("connect");
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, recv.read_exact(&mut len))
        .await
        .expect("connected in time")
        .expect("connected");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await.expect("connected body");
    (send, recv, conn, endpoint)
}

/// Finding 15 (and the empty half of 3): an exact `sub` creates a broker topic; `unsub`
/// now releases it when no subscription and no message is left, so a client looping
/// over new names does not grow the broker, and a wildcard's cursor never names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_empty_topics_are_released() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let mut ws = raw::connect(&url, "looper").await;
    let before = gw.gateway().broker.topic_count();
    let cmds: Vec<serde_json::Value> = (0..2000)
        .flat_map(|i| {
            [
                serde_json::json!({"t":"sub","id":2 * i,"topic":format!("empty.n{i}")}),
                serde_json::json!({"t":"unsub","id":2 * i + 1,"topic":format!("empty.n{i}")}),
            ]
        })
        .collect();
    raw::send_lines(&mut ws, &cmds).await;
    let mut replies = 0;
    while replies < 4000 {
        replies += raw::next(&mut ws).await.expect("replies").len();
    }
    assert_eq!(
        gw.gateway().broker.topic_count(),
        before,
        "no topic left behind"
    );
    raw::send_lines(
        &mut ws,
        &[serde_json::json!({"t":"sub","id":9000,"topic":"empty.>"})],
    )
    .await;
    let reply = raw::next(&mut ws).await.expect("subscribed");
    assert_eq!(reply[0]["t"], "subscribed");
    let cursor = reply[0]["cursor"].as_str().unwrap_or_default();
    assert!(cursor.len() < 16, "no empty topic in the cursor: {cursor}");
}
