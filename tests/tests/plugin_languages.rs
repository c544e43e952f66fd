//! Plugins in every language edgesync supports, end to end: for each
//! language the test does what a newcomer types — `edgesync plugin new
//! redact --lang L` then `edgesync plugin build` (the same library
//! functions the CLI runs, so the toolchain installs and the embedded
//! templates are the shipped ones) — and runs the component in a real
//! gateway over a real socket with real clients.
//!
//! Every template is the reference plugin "redact" (docs/plugins.md, "The
//! reference plugin"), so every language is held to the same literal
//! expectations below: the same stored payloads and headers, the same
//! rejections with the same reason, the same kv count and the same metric
//! value, through both `on-message` (single publishes) and `on-batch` (a
//! frame of several publishes).
//!
//! A missing toolchain is installed by the build (`scripts/test.sh` runs
//! `scripts/guest-toolchains.sh` first, so the CI log shows those costs
//! apart); one that cannot be installed fails the test with the missing
//! piece. Projects and the compile cache live under the target directory
//! and are reused by the next run (installed npm packages, Rust's target
//! directory, compiled components). Figures (build time, size, load time)
//! are printed for the READMEs, never asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgesync::cli::plugin::{self as cli, Lang};
use edgesync::config::Config;
use edgesync_client::{ClientError, ClientOptions, Encoding, ErrorCode, PublishOptions, Start};
use edgesync_protocol::Headers;
use edgesync_tests::TestGateway;

/// Bound on one request or one frame's replies.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_in_rust() {
    redact_in(Lang::Rust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_in_javascript() {
    redact_in(Lang::Js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_in_typescript() {
    redact_in(Lang::Ts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_in_python() {
    redact_in(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_in_c() {
    redact_in(Lang::C).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_in_go() {
    redact_in(Lang::Go).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_in_zig() {
    redact_in(Lang::Zig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_in_assemblyscript() {
    redact_in(Lang::AssemblyScript).await;
}

/// Single publishes (`on-message`) on `<lang>.t`: (payload, what is stored
/// — `None` for a rejection — and the `x-redacted` count).
const SINGLE: &[(&str, Option<&str>, Option<u32>)] = &[
    (
        r#"{"user":"ann","password":"hunter2","profile":{"ssn":"123-45-6789","tags":["a"]}}"#,
        Some(r#"{"user":"ann","password":"***","profile":{"ssn":"***","tags":["a"]}}"#),
        Some(2),
    ),
    (
        r#"{"note":"nothing secret"}"#,
        Some(r#"{"note":"nothing secret"}"#),
        None,
    ),
    ("not json", None, None),
    // A masked value is masked whole (its inner fields are not counted);
    // keys are compared as raw bytes; strings that look like keys are data.
    (
        r#"{"password":{"nested":{"password":1}},"list":[{"ssn":null}],"x":"\"password\"","\u0070assword":true}"#,
        Some(
            r#"{"password":"***","list":[{"ssn":"***"}],"x":"\"password\"","\u0070assword":true}"#,
        ),
        Some(2),
    ),
    (r#"{"a":1,}"#, None, None),
    ("", None, None),
    ("-01", None, None),
    (r#""\x""#, None, None),
    ("[1.]", None, None),
    ("tru", None, None),
    (
        " {\"password\" : 12.5e-3 }\n",
        Some(" {\"password\" : \"***\" }\n"),
        Some(1),
    ),
    (
        "{\"name\":\"zoë\",\"ssn\":\"x\"}",
        Some("{\"name\":\"zoë\",\"ssn\":\"***\"}"),
        Some(1),
    ),
];

/// One frame of publishes on `<lang>.b` (`on-batch`), same shape.
const BATCH: &[(&str, Option<&str>, Option<u32>)] = &[
    (r#"{"ssn":1}"#, Some(r#"{"ssn":"***"}"#), Some(1)),
    ("nope", None, None),
    ("{}", Some("{}"), None),
];

/// Publishes in a row on `<lang>.s`, each through `on-message`.
const SUSTAINED_CALLS: usize = 1500;

/// Nesting: 64 levels pass, 65 are rejected.
const MAX_DEPTH: usize = 64;

async fn redact_in(lang: Lang) {
    let wasm = build(lang);
    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    let name = format!("redact-{}", lang.name());
    let started = Instant::now();
    let gw = gateway(&name, lang, &wasm).await;
    eprintln!(
        "plugin_languages {}: component {} KiB, gateway start with the plugin loaded {:.1?}",
        lang.name(),
        size / 1024,
        started.elapsed()
    );

    let c = client(&gw).await;
    let topic = format!("{}.t", lang.name());
    let mut expected_stored = Vec::new();
    for (payload, stored, count) in SINGLE {
        let opts = PublishOptions {
            headers: Headers(vec![("from".into(), "test".into())]),
            ..PublishOptions::default()
        };
        let result = c
            .publish_with(&topic, payload.as_bytes().to_vec(), opts)
            .await;
        match stored {
            Some(s) => {
                result.unwrap_or_else(|e| panic!("{name}: {payload:?} was refused: {e}"));
                expected_stored.push((s.to_string(), headers(*count)));
            }
            None => assert_rejected(&name, payload, result.map(|_| ())),
        }
    }
    for (depth, ok) in [(MAX_DEPTH, true), (MAX_DEPTH + 1, false)] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let result = c.publish(&topic, nested.clone().into_bytes()).await;
        if ok {
            result.unwrap_or_else(|e| panic!("{name}: {depth} levels were refused: {e}"));
            expected_stored.push((nested, Vec::new()));
        } else {
            assert_rejected(&name, &nested, result.map(|_| ()));
        }
    }
    assert_eq!(
        stored(&c, &topic).await,
        expected_stored,
        "{name}: stored payloads and headers of {topic}"
    );

    // Sustained calls: the plugin keeps answering (Go's garbage collector once ran
    // inside `cabi_realloc` and trapped after a few hundred calls).
    let sustained_topic = format!("{}.s", lang.name());
    for i in 0..SUSTAINED_CALLS {
        let payload = format!(
            r#"{{"n":{i},"password":"p{i}","pad":"{}"}}"#,
            "x".repeat(i % 300)
        );
        c.publish(&sustained_topic, payload.into_bytes())
            .await
            .unwrap_or_else(|e| panic!("{name}: call {i} of {SUSTAINED_CALLS} failed: {e}"));
    }

    let batch_topic = format!("{}.b", lang.name());
    let replies = publish_frame(&gw, &batch_topic, BATCH).await;
    let mut expected_batch = Vec::new();
    for ((payload, stored, count), reply) in BATCH.iter().zip(&replies) {
        match stored {
            Some(s) => {
                assert_eq!(
                    reply["t"], "puback",
                    "{name}: {payload:?} in a batch: {reply}"
                );
                let mut h = headers(*count);
                h.retain(|(k, _)| k != "from");
                expected_batch.push((s.to_string(), h));
            }
            None => {
                assert_eq!(
                    reply["t"], "error",
                    "{name}: {payload:?} in a batch: {reply}"
                );
                assert_eq!(reply["code"], "rejected", "{name}: {reply}");
                let message = reply["msg"].as_str().unwrap_or_default();
                assert!(
                    message.contains("payload is not JSON"),
                    "{name}: the reason reaches the publisher: {reply}"
                );
            }
        }
    }
    assert_eq!(
        stored(&c, &batch_topic).await,
        expected_batch,
        "{name}: stored payloads and headers of {batch_topic}"
    );
    let text = gw.gateway().metrics.render();
    assert!(
        sample(
            &text,
            "edgesync_plugin_calls_total",
            &[&name, "on-batch", "ok"]
        ) >= 1.0,
        "{name}: the frame went through on-batch"
    );

    // Messages redacted: 4 single publishes, every sustained one, and 1 in the
    // batch; fields masked: 2 + 2 + 1 + 1, one per sustained publish, and 1.
    let kv = gw
        .gateway()
        .store
        .plugin_kv_get(format!("p{name}\0redacted").as_bytes())
        .expect("kv read");
    let count = kv.as_deref().and_then(|v| v.get(16..)).map(<[u8]>::to_vec);
    assert_eq!(
        count.as_deref(),
        Some((5 + SUSTAINED_CALLS).to_string().as_bytes()),
        "{name}: the kv counter `redacted`"
    );
    let metric = format!(
        "edgesync_plugin_{}_fields_redacted_total",
        name.replace('-', "_")
    );
    assert_eq!(
        sample(&text, &metric, &[]),
        7.0 + SUSTAINED_CALLS as f64,
        "{name}: {metric} in\n{text}"
    );
    c.close().await;
}

/// The headers a stored message carries: the publisher's and `x-redacted`.
fn headers(count: Option<u32>) -> Vec<(String, String)> {
    let mut h = vec![("from".to_string(), "test".to_string())];
    if let Some(n) = count {
        h.push(("x-redacted".into(), n.to_string()));
    }
    h
}

fn assert_rejected(name: &str, payload: &str, result: Result<(), ClientError>) {
    match result {
        Err(ClientError::Server { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Rejected, "{name}: {payload:?}: {message}");
            assert!(
                message.contains("payload is not JSON"),
                "{name}: {payload:?}: the reason reaches the publisher: {message}"
            );
        }
        other => panic!("{name}: {payload:?} should be rejected, got {other:?}"),
    }
}

/// `edgesync plugin new redact --lang L` into `<target tmp>/plugin-langs/L`
/// (keeping what an earlier run installed or built there), then
/// `edgesync plugin build`. One build at a time: they compete for two
/// cores, and the printed times mean more alone.
fn build(lang: Lang) -> PathBuf {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-langs");
    let dir = root.join(lang.name());
    let kept = root.join(format!("{}.kept", lang.name()));
    let _ = std::fs::remove_dir_all(&kept);
    std::fs::create_dir_all(&kept).expect("create the kept directory");
    for reused in ["node_modules", "target"] {
        let _ = std::fs::rename(dir.join(reused), kept.join(reused));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/rust");
    cli::new("redact", lang, Some(dir.clone()), &sdk)
        .unwrap_or_else(|e| panic!("plugin new --lang {}: {e}", lang.name()));
    for reused in ["node_modules", "target"] {
        let _ = std::fs::rename(kept.join(reused), dir.join(reused));
    }
    let started = Instant::now();
    let wasm =
        cli::build(&dir, true).unwrap_or_else(|e| panic!("plugin build ({}): {e}", lang.name()));
    eprintln!(
        "plugin_languages {}: `edgesync plugin build` took {:.1?}",
        lang.name(),
        started.elapsed()
    );
    wasm
}

/// A gateway with the plugin routed on `<lang>.>`, compiling into a cache
/// kept across runs (the host keys it by the component's SHA-256).
async fn gateway(name: &str, lang: Lang, wasm: &Path) -> TestGateway {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-langs/compile-cache");
    let toml = format!(
        r#"
[plugin_host]
cache_dir = {cache:?}
# The JS and Python engines are megabytes of code: Cranelift takes tens of
# seconds for them on a loaded 2-core machine.
compile_timeout_ms = 600000

[[plugin]]
name = "{name}"
path = {wasm:?}
[plugin.config]
fields = "password,ssn"
[plugin.limits]
# Generous for a shared CI machine; Python's start-up needs the most.
init_deadline_ms = 2000
deadline_ms = 1000
timeout_ms = 5000

[[route]]
topics = "{lang}.>"
plugins = ["{name}"]
"#,
        cache = cache.display().to_string(),
        wasm = wasm.display().to_string(),
        lang = lang.name(),
    );
    let parsed = Config::from_toml(&toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    TestGateway::start(move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
        c.plugin_host = parsed.plugin_host;
    })
    .await
}

async fn client(gw: &TestGateway) -> edgesync_client::Client {
    let mut o = ClientOptions::new(gw.ws_url());
    o.reconnect = false;
    o.encoding = Encoding::Json;
    o.request_timeout = WAIT;
    edgesync_client::Client::connect(o)
        .await
        .expect("client connects")
}

/// (payload, headers) of every message stored on `topic`, oldest first.
async fn stored(c: &edgesync_client::Client, topic: &str) -> Vec<(String, Vec<(String, String)>)> {
    let page = c
        .history(topic, Start::Earliest, None)
        .await
        .expect("history");
    assert!(!page.more, "history of {topic} fits one page");
    page.msgs
        .into_iter()
        .map(|m| (String::from_utf8_lossy(&m.data.0).into_owned(), m.headers.0))
        .collect()
}

/// The value of `metric` on the line whose labels contain each of
/// `labels` (as `="value"`), summed; 0 when there is none.
fn sample(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|v| l.contains(&format!("=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Publishes `pubs` on `topic` in one WebSocket frame (JSON protocol), so
/// the gateway hands them to the plugin as one `on-batch`; returns the
/// reply to each, in order.
async fn publish_frame(
    gw: &TestGateway,
    topic: &str,
    pubs: &[(&str, Option<&str>, Option<u32>)],
) -> Vec<serde_json::Value> {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = gw.ws_url().into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "edgesync.json.v1".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let hello = serde_json::json!({"t": "connect", "id": 1, "client_id": "batcher"});
    ws.send(Message::text(hello.to_string()))
        .await
        .expect("send");
    let mut pending = Vec::new();
    let first = recv(&mut ws, &mut pending).await;
    assert_eq!(first["t"], "connected", "{first}");
    let frame: Vec<String> = pubs
        .iter()
        .enumerate()
        .map(|(i, (data, _, _))| {
            serde_json::json!({"t": "pub", "id": 10 + i, "topic": topic, "data": data}).to_string()
        })
        .collect();
    ws.send(Message::text(frame.join("\n")))
        .await
        .expect("send");
    let mut replies = vec![serde_json::Value::Null; pubs.len()];
    let mut missing = pubs.len();
    // Bounded: each reply is awaited at most WAIT, and other frames are few.
    for _ in 0..100 {
        if missing == 0 {
            break;
        }
        let v = recv(&mut ws, &mut pending).await;
        let Some(i) = v["id"].as_u64().and_then(|id| id.checked_sub(10)) else {
            continue;
        };
        if let Some(slot) = replies.get_mut(i as usize) {
            if slot.is_null() {
                missing -= 1;
            }
            *slot = v;
        }
    }
    assert_eq!(
        missing, 0,
        "every publish of the frame got a reply: {replies:?}"
    );
    replies
}

/// The next JSON message (a frame carries one per line).
async fn recv(ws: &mut Ws, pending: &mut Vec<serde_json::Value>) -> serde_json::Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    for _ in 0..100 {
        if !pending.is_empty() {
            return pending.remove(0);
        }
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            for line in t.lines().filter(|l| !l.trim().is_empty()) {
                pending.push(serde_json::from_str(line).expect("json"));
            }
        }
    }
    panic!("no JSON message in 100 frames");
}
