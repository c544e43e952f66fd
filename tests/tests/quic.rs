//! The QUIC transport end to end on 127.0.0.1: pub/sub and wildcards, resume
//! after the connection drops (idle-timeout closes, automatic reconnect), idempotent
//! retry, ephemeral datagrams reaching QUIC and WebSocket subscribers, limits
//! and malformed frames answered with their error code, cross-transport
//! delivery with identical cursors, and interoperability with Python's aioquic
//! speaking docs/protocol-quic.md (`tests/interop/quic_client.py`).
//!
//! Self-contained (its own gateway helper) so it depends on nothing but the
//! public API of `edgesync` and `edgesync-client`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgesync::config::{Config, ListenAddr};
use edgesync::server::{self, Running};
use edgesync_client::{
    Client, ClientError, ClientOptions, ErrorCode, Event, Headers, Msg, PublishOptions, Start,
};

const WAIT: Duration = Duration::from_secs(10);

struct Gw {
    running: Option<Running>,
    _tmp: tempfile::TempDir,
}

fn addr(port: u16) -> ListenAddr {
    ListenAddr(Some(SocketAddr::from(([127, 0, 0, 1], port))))
}

fn config(dir: &Path, quic_port: u16) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        listen: edgesync::config::ListenConfig {
            ws: addr(0),
            wss: ListenAddr(None),
            quic: addr(quic_port),
            admin: ListenAddr(None),
        },
        ..Config::default()
    }
}

impl Gw {
    async fn start(tweak: impl Fn(&mut Config)) -> Gw {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let running = Self::run(&dir, 0, &tweak).await;
        Gw {
            running: Some(running),
            _tmp: tmp,
        }
    }

    async fn run(dir: &Path, quic_port: u16, tweak: &dyn Fn(&mut Config)) -> Running {
        let mut c = config(dir, quic_port);
        tweak(&mut c);
        server::start(c.build().expect("valid config"))
            .await
            .expect("gateway starts")
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    fn quic_port(&self) -> u16 {
        self.running().bound.quic.expect("quic bound").port()
    }

    fn ws_url(&self) -> String {
        format!("ws://{}", self.running().bound.ws.expect("ws bound"))
    }

    fn quic_url(&self) -> String {
        format!("quic://localhost:{}", self.quic_port())
    }

    fn ca(&self) -> PathBuf {
        self.running().bound.dev_ca.clone().expect("dev ca")
    }

    fn gateway(&self) -> &std::sync::Arc<server::Gateway> {
        &self.running().gateway
    }

    fn options(&self, url: String) -> ClientOptions {
        let mut o = ClientOptions::new(url);
        o.ca = Some(self.ca());
        o.reconnect = false;
        o.request_timeout = Duration::from_secs(20);
        o
    }

    async fn quic(&self) -> Client {
        Client::connect(self.options(self.quic_url()))
            .await
            .expect("quic client connects")
    }

    async fn ws(&self) -> Client {
        Client::connect(self.options(self.ws_url()))
            .await
            .expect("ws client connects")
    }

    fn count(&self, kind: &str, result: &str) -> u64 {
        self.gateway()
            .metrics
            .commands
            .with_label_values(&[kind, result])
            .get()
    }
}

async fn next_msg(sub: &mut edgesync_client::Subscription) -> Msg {
    match sub.next_timeout(WAIT).await {
        Some(Event::Msg(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn eventually(tries: u32, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_and_wildcards() {
    let gw = Gw::start(|_| {}).await;
    let sub_client = gw.quic().await;
    let pub_client = gw.quic().await;
    let mut one = sub_client
        .subscribe("s.*.t", Start::Latest)
        .await
        .expect("sub *");
    let mut rest = sub_client
        .subscribe("s.>", Start::Latest)
        .await
        .expect("sub >");
    let mut exact = sub_client
        .subscribe("s.eu.t", Start::Latest)
        .await
        .expect("sub exact");
    for topic in ["s.eu.t", "s.us.t", "s.eu.x.t", "s.us.h"] {
        pub_client
            .publish(topic, vec![0u8, 255, b'q'])
            .await
            .expect("publish");
    }
    assert_eq!(next_msg(&mut one).await.topic, "s.eu.t");
    assert_eq!(next_msg(&mut one).await.topic, "s.us.t");
    let mut all = Vec::new();
    for _ in 0..4 {
        let m = next_msg(&mut rest).await;
        assert_eq!(
            m.data.0.as_ref(),
            &[0u8, 255, b'q'],
            "binary payload survives"
        );
        all.push(m.topic);
    }
    assert_eq!(all, ["s.eu.t", "s.us.t", "s.eu.x.t", "s.us.h"]);
    assert_eq!(next_msg(&mut exact).await.topic, "s.eu.t");
    assert!(
        exact
            .next_timeout(Duration::from_millis(200))
            .await
            .is_none(),
        "exact sub gets nothing else"
    );
    let h = pub_client
        .history("s.eu.t", Start::Earliest, None)
        .await
        .expect("history");
    assert_eq!(h.msgs.len(), 1);
    assert_eq!(
        gw.gateway()
            .metrics
            .connections_open
            .with_label_values(&["quic"])
            .get(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_connection_drops_has_no_gap_and_no_duplicate() {
    // A subscriber that sends nothing is closed by the gateway after the idle timeout:
    // a real connection drop, repeated while messages keep arriving. The client
    // reconnects and resumes each subscription from its cursor.
    let gw = Gw::start(|c| {
        c.limits.idle_timeout_ms = 600;
        c.limits.ping_interval_ms = 200;
    })
    .await;
    let mut o = gw.options(gw.quic_url());
    o.reconnect = true;
    o.max_backoff = Duration::from_millis(200);
    let reader = Client::connect(o).await.expect("reader connects");
    let mut sub = reader.subscribe("r.>", Start::Earliest).await.expect("sub");
    let publisher = gw.quic().await;
    let idle_closes = gw
        .gateway()
        .metrics
        .connections_closed
        .with_label_values(&["idle_timeout"]);
    let mut i = 0u32;
    // Publish until the reader has been dropped at least twice (bounded).
    while (idle_closes.get() < 2 || i < 40) && i < 400 {
        publisher
            .publish(
                if i.is_multiple_of(2) { "r.a" } else { "r.b" },
                format!("m{i}"),
            )
            .await
            .expect("publish");
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        idle_closes.get() >= 2,
        "the reader's connection dropped during the run"
    );
    let mut seen = Vec::new();
    while seen.len() < i as usize {
        seen.push(next_msg(&mut sub).await);
    }
    assert!(
        sub.next_timeout(Duration::from_millis(300)).await.is_none(),
        "no duplicate after resume"
    );
    for (topic, n) in [("r.a", i.div_ceil(2)), ("r.b", i / 2)] {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=u64::from(n)).collect::<Vec<u64>>(),
            "{topic}: every message once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_gets_the_original_ack() {
    let gw = Gw::start(|_| {}).await;
    let c = gw.quic().await;
    let opts = PublishOptions {
        mid: Some("retry-1".into()),
        ..PublishOptions::default()
    };
    let first = c
        .publish_with("idem.t", "once", opts.clone())
        .await
        .expect("first");
    let again = c.publish_with("idem.t", "once", opts).await.expect("retry");
    assert!(!first.dup);
    assert!(again.dup, "the retry is recognised");
    assert_eq!(
        (first.seq, first.origin.clone()),
        (again.seq, again.origin.clone())
    );
    let h = c
        .history("idem.t", Start::Earliest, None)
        .await
        .expect("history");
    assert_eq!(h.msgs.len(), 1, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_reach_quic_and_websocket_subscribers_and_are_not_stored() {
    let gw = Gw::start(|_| {}).await;
    let ws_sub = gw.ws().await;
    let quic_sub = gw.quic().await;
    let mut on_ws = ws_sub
        .subscribe("live.>", Start::Latest)
        .await
        .expect("ws sub");
    let mut on_quic = quic_sub
        .subscribe("live.*", Start::Latest)
        .await
        .expect("quic sub");
    let sender = gw.quic().await;
    let headers = Headers(vec![("kind".into(), "cursor".into())]);
    // Best-effort: resend until seen (loopback rarely loses one; bounded either way).
    let mut got = None;
    for _ in 0..50 {
        sender
            .publish_ephemeral("live.cursor", "x=3,y=4", headers.clone())
            .await
            .expect("datagram sent");
        if let Some(Event::Msg(m)) = on_ws.next_timeout(Duration::from_millis(200)).await {
            got = Some(m);
            break;
        }
    }
    let m = got.expect("a datagram reached the WebSocket subscriber");
    assert_eq!(
        (m.topic.as_str(), m.seq, m.data.0.as_ref()),
        ("live.cursor", 0, &b"x=3,y=4"[..])
    );
    assert_eq!(m.headers, headers);
    assert_eq!(m.client, sender.session().client_id);
    let q = next_msg(&mut on_quic).await;
    assert_eq!((q.topic.as_str(), q.seq), ("live.cursor", 0));
    let h = sender
        .history("live.cursor", Start::Earliest, None)
        .await
        .expect("history");
    assert!(h.msgs.is_empty(), "ephemeral messages are not stored");
    let metrics = &gw.gateway().metrics;
    assert!(
        metrics.ephemeral_messages_in.get() >= 1,
        "datagrams are counted as ephemeral input"
    );
    assert_eq!(
        metrics.messages_in.get(),
        0,
        "and not as messages to store (nothing was published on the stream)"
    );
    let c = quic_sub.cursor().await.expect("cursor");
    assert!(
        c.topic("live.cursor")
            .is_none_or(|p| p.values().all(|s| *s == 0)),
        "nor in cursors: {c:?}"
    );
    // Validated like a publish: reserved topics and bad topics are refused (counted, not answered).
    let forbidden = gw.count("datagram", "forbidden");
    let invalid = gw.count("datagram", "topic_invalid");
    for _ in 0..20 {
        sender
            .publish_ephemeral("$sys.x", "no", Headers::default())
            .await
            .expect("sent");
        sender
            .publish_ephemeral("live..bad", "no", Headers::default())
            .await
            .expect("sent");
        if gw.count("datagram", "forbidden") > forbidden
            && gw.count("datagram", "topic_invalid") > invalid
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.count("datagram", "forbidden") > forbidden);
    assert!(gw.count("datagram", "topic_invalid") > invalid);
    // Over WebSocket there is no datagram path.
    let err = ws_sub
        .publish_ephemeral("live.x", "no", Headers::default())
        .await
        .expect_err("ws has no datagrams");
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    sender
        .ping()
        .await
        .expect("the stream session is unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_malformed_frames_get_their_error_code() {
    let gw = Gw::start(|c| {
        c.limits.max_frame_bytes = 4096;
        c.limits.max_subscriptions = 2;
    })
    .await;
    let c = gw.quic().await;
    let code = |r: Result<_, ClientError>| r.err().and_then(|e| e.code());
    assert_eq!(
        code(c.publish("bad..topic", "x").await.map(|_| ())),
        Some(ErrorCode::TopicInvalid)
    );
    assert_eq!(
        code(c.publish("$sys.x", "x").await.map(|_| ())),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(c.publish(&"t".repeat(300), "x").await.map(|_| ())),
        Some(ErrorCode::TopicTooLong)
    );
    c.subscribe("a", Start::Latest).await.expect("sub 1");
    c.subscribe("b", Start::Latest).await.expect("sub 2");
    assert_eq!(
        code(c.subscribe("c", Start::Latest).await.map(|_| ())),
        Some(ErrorCode::TooManySubscriptions)
    );
    // An undecodable frame: `bad_frame`, the connection stays usable.
    let before = gw.count("frame", "bad_frame");
    c.send_raw(vec![0xc1, 0xc1, 0xc1]).await.expect("sent");
    c.ping().await.expect("still connected after a bad frame");
    assert!(eventually(100, || gw.count("frame", "bad_frame") > before).await);
    // A frame over max_frame_bytes: `frame_too_large`, then the connection closes.
    let closed = gw
        .gateway()
        .metrics
        .connections_closed
        .with_label_values(&["frame_too_large"]);
    c.send_raw(vec![0x90; 5000]).await.expect("sent");
    assert!(
        eventually(250, || closed.get() == 1).await,
        "closed with frame_too_large"
    );
    let mut lost = false;
    for _ in 0..50 {
        if c.ping().await.is_err() {
            lost = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(lost, "the client sees the connection end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_transport_same_messages_cursors_and_order() {
    let gw = Gw::start(|_| {}).await;
    let ws_sub = gw.ws().await;
    let quic_sub = gw.quic().await;
    let mut on_ws = ws_sub
        .subscribe("x.>", Start::Earliest)
        .await
        .expect("ws sub");
    let mut on_quic = quic_sub
        .subscribe("x.>", Start::Earliest)
        .await
        .expect("quic sub");
    let ws_pub = gw.ws().await;
    let quic_pub = gw.quic().await;
    for i in 0..20u32 {
        let (client, topic) = if i % 2 == 0 {
            (&quic_pub, "x.from_quic")
        } else {
            (&ws_pub, "x.from_ws")
        };
        client
            .publish(topic, format!("p{i}"))
            .await
            .expect("publish");
    }
    let key = |m: &Msg| {
        (
            m.topic.clone(),
            m.origin.clone(),
            m.epoch,
            m.seq,
            m.data.0.clone(),
        )
    };
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..20 {
        a.push(key(&next_msg(&mut on_ws).await));
        b.push(key(&next_msg(&mut on_quic).await));
    }
    let per_topic = |v: &[(String, String, u64, u64, bytes::Bytes)], t: &str| {
        v.iter().filter(|k| k.0 == t).cloned().collect::<Vec<_>>()
    };
    for t in ["x.from_quic", "x.from_ws"] {
        assert_eq!(
            per_topic(&a, t),
            per_topic(&b, t),
            "{t}: same messages in the same order"
        );
        let seqs: Vec<u64> = per_topic(&a, t).iter().map(|k| k.3).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
    }
    assert_eq!(
        ws_sub.cursor().await.expect("cursor"),
        quic_sub.cursor().await.expect("cursor"),
        "same cursor"
    );
    // A cursor from one transport resumes on the other with nothing missing or repeated.
    let cursor = ws_sub.cursor().await.expect("cursor").encode();
    quic_pub
        .publish("x.from_quic", "after")
        .await
        .expect("publish");
    let resumed = gw.quic().await;
    let mut from = resumed
        .subscribe("x.>", Start::Cursor(cursor))
        .await
        .expect("resume");
    let m = next_msg(&mut from).await;
    assert_eq!((m.topic.as_str(), m.seq), ("x.from_quic", 11));
    assert!(
        from.next_timeout(Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_aioquic() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/quic_client.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let have = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import aioquic, msgpack"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have(&python) {
        let pip = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "aioquic", "msgpack"])
            .status();
        match pip {
            Ok(s) if s.success() && have(&python) => {}
            other => {
                eprintln!(
                    "SKIPPED interop_with_aioquic: `{python} -m pip install aioquic msgpack` unavailable ({other:?})"
                );
                return;
            }
        }
    }
    let gw = Gw::start(|c| c.limits.max_frame_bytes = 4096).await;
    let ws = gw.ws().await;
    let mut from_python = ws
        .subscribe("interop.>", Start::Latest)
        .await
        .expect("ws sub");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &gw.quic_port().to_string(),
            "--ca",
        ])
        .arg(gw.ca())
        .args(["--max-frame", "4096"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("python finishes")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for step in [
        "connected",
        "subscribed",
        "puback",
        "msg",
        "bad_frame",
        "frame_too_large",
        "close_code=3",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("ok {step}"))),
            "missing step {step}\n{stdout}\n{stderr}"
        );
    }
    // What the Python client published reached a WebSocket subscriber.
    let m = next_msg(&mut from_python).await;
    assert_eq!(
        (m.topic.as_str(), m.data.0.as_ref()),
        ("interop.py", &b"hello from aioquic"[..])
    );
}
