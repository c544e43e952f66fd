//! The QUIC transport end to end on 127.0.0.1: pub/sub and wildcards, resume
//! after the connection drops (closes by the gateway, automatic reconnect), a listener
//! that only receives is never idled out (the transport proves liveness), idempotent
//! retry, ephemeral datagrams reaching QUIC and WebSocket subscribers, limits
//! and malformed frames answered with their error code, cross-transport
//! delivery with identical cursors, and interoperability with Python's aioquic
//! speaking docs/protocol-quic.md (`tests/interop/quic_client.py`, `edgesync/1`).
//! `edgesync/2` (a stream per subscription) is read by hand with quinn: a
//! subscription whose stream the client stops reading does not hold back another's.
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
            ..edgesync::config::ListenConfig::default()
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

/// Issue 12.1 over QUIC: a subscriber that only receives (it sends no frame at all) is
/// alive as long as its QUIC stack answers the transport's keep-alives; the gateway
/// never closes it for idleness, however many idle timeouts go by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_listener_that_only_receives_is_never_idled_out() {
    let gw = Gw::start(|c| {
        c.limits.idle_timeout_ms = 500;
        c.limits.ping_interval_ms = 100;
    })
    .await;
    let reader = gw.quic().await;
    let mut sub = reader.subscribe("l.>", Start::Latest).await.expect("sub");
    let publisher = gw.quic().await;
    let closed = |code: &str| {
        gw.gateway()
            .metrics
            .connections_closed
            .with_label_values(&[code])
            .get()
    };
    // Ten idle timeouts' worth of messages, one every 50 ms.
    for i in 0..100u32 {
        publisher
            .publish("l.x", format!("m{i}"))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..100u32 {
        let m = next_msg(&mut sub).await;
        assert_eq!(m.data.0.as_ref(), format!("m{i}").as_bytes());
    }
    assert_eq!(closed("idle_timeout"), 0, "nobody was idled out");
    assert_eq!(gw.gateway().conns.list().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_connection_drops_has_no_gap_and_no_duplicate() {
    // The reader's connection is dropped by the gateway again and again while messages
    // keep arriving (a real close, as a plugin's or operator's `close` makes it; a
    // QUIC subscriber that only listens is not idled out: the transport's keep-alive
    // proves it alive). The client reconnects and resumes each subscription from its
    // cursor.
    let gw = Gw::start(|c| {
        c.limits.idle_timeout_ms = 600;
        c.limits.ping_interval_ms = 200;
    })
    .await;
    let mut o = gw.options(gw.quic_url());
    o.reconnect = true;
    o.max_backoff = Duration::from_millis(200);
    o.client_id = Some("resuming-reader".into());
    let reader = Client::connect(o).await.expect("reader connects");
    let mut sub = reader.subscribe("r.>", Start::Earliest).await.expect("sub");
    let publisher = gw.quic().await;
    let idle_closes = gw
        .gateway()
        .metrics
        .connections_closed
        .with_label_values(&["idle_timeout"]);
    let drop_reader = || {
        let conns = &gw.gateway().conns;
        for c in conns.list() {
            if c.client_id.as_deref() == Some("resuming-reader") {
                conns.close(c.id, ErrorCode::IdleTimeout, "dropped by the test");
            }
        }
    };
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
        if i.is_multiple_of(15) {
            drop_reader();
        }
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

/// A hand-written QUIC client (quinn) reading the wire as docs/protocol-quic.md
/// describes it: the session stream, and with `edgesync/2` the gateway's streams.
struct Raw {
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// A QUIC connection offering `alpn` with its session stream open (opened by the
/// client; the gateway sees it with the first bytes written) and nothing sent yet.
async fn raw_quic_open(gw: &Gw, alpn: &[&[u8]], window: u32) -> Raw {
    let (endpoint, connection) = quic_handshake(gw, alpn, window).await.expect("handshake");
    let (send, recv) = connection.open_bi().await.expect("session stream");
    Raw {
        _endpoint: endpoint,
        connection,
        send,
        recv,
    }
}

/// A QUIC handshake with the gateway offering `alpn`, nothing more.
async fn quic_handshake(
    gw: &Gw,
    alpn: &[&[u8]],
    window: u32,
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in edgesync::transport::tls::read_certs(&gw.ca()).expect("ca") {
        roots.add(cert).expect("root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(edgesync::transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(window));
    config.transport_config(std::sync::Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = SocketAddr::from(([127, 0, 0, 1], gw.quic_port()));
    let connection = endpoint
        .connect_with(config, addr, "localhost")
        .expect("connect")
        .await?;
    Ok((endpoint, connection))
}

/// Under handshake pressure (half the budget in progress) a new client must first
/// validate its address with a Retry; a real client does so transparently and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_handshake_pressure_clients_validate_their_address_and_are_served() {
    let gw = Gw::start(|c| {
        c.limits.max_handshakes = 4;
        c.limits.handshake_timeout_ms = 5_000;
    })
    .await;
    let alpn: &[&[u8]] = &[edgesync_protocol::ALPN_QUIC_V2];
    // Two connections that never open their stream: half of the 4 slots.
    let _held = [
        quic_handshake(&gw, alpn, 1 << 20).await.expect("first"),
        quic_handshake(&gw, alpn, 1 << 20).await.expect("second"),
    ];
    let c = gw.quic().await;
    c.publish("after.retry", "x")
        .await
        .expect("served after a Retry");
    let retries = gw
        .gateway()
        .metrics
        .connections_refused
        .with_label_values(&["quic_retry"])
        .get();
    assert_eq!(
        retries, 1,
        "the client was asked to validate its address once"
    );
}

/// Security finding 6 over QUIC: connections that finish the handshake but never open
/// their session stream hold handshake slots, at most `max_handshakes_per_ip`, until
/// the handshake timeout; one more is refused at once, and the slots come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_handshakes_in_progress_are_bounded_per_ip() {
    let gw = Gw::start(|c| {
        c.limits.max_handshakes_per_ip = 2;
        c.limits.handshake_timeout_ms = 1_500;
    })
    .await;
    let alpn: &[&[u8]] = &[edgesync_protocol::ALPN_QUIC_V2];
    let held_a = quic_handshake(&gw, alpn, 1 << 20).await.expect("first");
    let held_b = quic_handshake(&gw, alpn, 1 << 20).await.expect("second");
    let refused = quic_handshake(&gw, alpn, 1 << 20).await;
    assert!(
        refused.is_err(),
        "a third handshake from this address is refused"
    );
    let refused_total = gw
        .gateway()
        .metrics
        .connections_refused
        .with_label_values(&["too_many_handshakes"])
        .get();
    assert_eq!(refused_total, 1);
    // The held ones are closed at the handshake timeout (no stream opened) ...
    for (_, c) in [&held_a, &held_b] {
        let reason = tokio::time::timeout(WAIT, c.closed())
            .await
            .expect("closed in time");
        assert!(
            matches!(reason, quinn::ConnectionError::ApplicationClosed(ref a) if a.error_code == quinn::VarInt::from_u32(0x0c)),
            "{reason:?}"
        );
    }
    // ... and a normal client is served again.
    let c = gw.quic().await;
    c.publish("after.handshakes", "x").await.expect("served");
}

/// Connect offering `alpn`, with a per-stream receive window of `window` bytes, and
/// send `connect`.
async fn raw_quic(gw: &Gw, alpn: &[&[u8]], window: u32) -> Raw {
    let mut raw = raw_quic_open(gw, alpn, window).await;
    raw.command(edgesync_protocol::ClientFrame::Connect {
        id: 1,
        token: None,
        client_id: None,
        cursor: None,
    })
    .await;
    let connected = read_frames(&mut raw.recv).await.expect("connected");
    assert!(
        matches!(connected[0], ServerFrame::Connected { .. }),
        "{connected:?}"
    );
    raw
}

impl Raw {
    fn alpn(&self) -> Vec<u8> {
        self.connection
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol)
            .expect("alpn")
    }

    async fn command(&mut self, f: edgesync_protocol::ClientFrame) {
        let body = edgesync_protocol::Encoding::MsgPack.encode(&f);
        let mut wire = (body.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&body);
        self.send.write_all(&wire).await.expect("write");
    }

    /// The next stream the gateway opens; its first frame must be `subscribed`.
    async fn accept_subscription(&mut self) -> (String, quinn::RecvStream) {
        let mut s = tokio::time::timeout(WAIT, self.connection.accept_uni())
            .await
            .expect("a subscription stream in time")
            .expect("stream");
        let first = read_frames(&mut s).await.expect("first frame");
        match &first[..] {
            [ServerFrame::Subscribed { topic, .. }] => (topic.clone(), s),
            other => panic!("a subscription stream starts with subscribed, got {other:?}"),
        }
    }
}

use edgesync_protocol::ServerFrame;

/// One length-prefixed frame from `s` (`None` at a clean end of the stream).
async fn read_frames(s: &mut quinn::RecvStream) -> Option<Vec<ServerFrame>> {
    let mut len = [0u8; 4];
    match tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .expect("frame in time")
    {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return None,
        Err(e) => panic!("read: {e}"),
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    tokio::time::timeout(WAIT, s.read_exact(&mut body))
        .await
        .expect("frame in time")
        .expect("body");
    Some(
        edgesync_protocol::Encoding::MsgPack
            .decode_all(&body)
            .expect("msgpack frame"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscription_has_its_own_stream_and_a_stalled_one_holds_back_no_other() {
    // Lanes of at most 128 KiB each (half of outbox_bytes, which they share), and a
    // client window of 16 KiB per stream.
    let gw = Gw::start(|c| c.limits.outbox_bytes = 256 << 10).await;
    let mut raw = raw_quic(
        &gw,
        &[
            edgesync_protocol::ALPN_QUIC_V2,
            edgesync_protocol::ALPN_QUIC,
        ],
        16 << 10,
    )
    .await;
    assert_eq!(raw.alpn(), b"edgesync/2", "the gateway prefers edgesync/2");
    for (id, topic) in [(2, "bulk"), (3, "probe.>")] {
        raw.command(edgesync_protocol::ClientFrame::sub(id, topic.into(), None))
            .await;
    }
    let mut streams = std::collections::HashMap::new();
    for _ in 0..2 {
        let (topic, s) = raw.accept_subscription().await;
        streams.insert(topic, s);
    }
    let mut bulk = streams.remove("bulk").expect("bulk stream");
    let mut probe = streams.remove("probe.>").expect("probe stream");

    // The client stops reading `bulk`: 1.6 MB overflows its window and its lane.
    let publisher = gw.ws().await;
    for _ in 0..200 {
        publisher
            .publish("bulk", vec![7u8; 8 << 10])
            .await
            .expect("publish");
    }
    let drops = gw.gateway().metrics.gap_drops.clone();
    assert!(
        eventually(250, || drops.get() > 0).await,
        "the stalled subscription overflowed its own lane"
    );
    // ... yet the other subscription and the session stream are untouched.
    publisher
        .publish("probe.1", "p")
        .await
        .expect("publish probe");
    let got = read_frames(&mut probe).await.expect("probe frame");
    assert!(
        matches!(&got[..], [ServerFrame::Msg(m)] if m.topic == "probe.1" && m.data.0.as_ref() == b"p"),
        "{got:?}"
    );
    raw.command(edgesync_protocol::ClientFrame::Ping { id: 4 })
        .await;
    assert!(matches!(
        read_frames(&mut raw.recv).await.expect("pong").as_slice(),
        [ServerFrame::Pong { id: 4 }]
    ));
    // `unsub`: `unsubscribed` is the stream's last frame, then it ends.
    raw.command(edgesync_protocol::ClientFrame::Unsub {
        id: 5,
        topic: "probe.>".into(),
    })
    .await;
    assert!(matches!(
        read_frames(&mut probe)
            .await
            .expect("unsubscribed")
            .as_slice(),
        [ServerFrame::Unsubscribed { id: 5, .. }]
    ));
    assert!(read_frames(&mut probe).await.is_none(), "the stream ends");
    // Reading `bulk` again: in order, then the gap notice for what its lane dropped.
    let (mut last, mut gap) = (0, None);
    for _ in 0..400 {
        for f in read_frames(&mut bulk).await.expect("bulk frame") {
            match f {
                ServerFrame::Msg(m) => {
                    assert!(m.seq > last, "in order");
                    last = m.seq;
                }
                ServerFrame::Gap { from, to, .. } => gap = Some((from, to)),
                other => panic!("unexpected on a subscription stream: {other:?}"),
            }
        }
        if gap.is_some() {
            break;
        }
    }
    let (from, to) = gap.expect("a gap notice on the bulk stream");
    assert_eq!(from, last + 1, "the gap starts after the last delivered");
    assert!(to <= 200 && to >= from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edgesync_1_client_gets_every_push_on_the_session_stream() {
    let gw = Gw::start(|_| {}).await;
    let mut raw = raw_quic(&gw, &[edgesync_protocol::ALPN_QUIC], 1 << 20).await;
    assert_eq!(raw.alpn(), b"edgesync/1");
    raw.command(edgesync_protocol::ClientFrame::sub(2, "t".into(), None))
        .await;
    assert!(matches!(
        read_frames(&mut raw.recv)
            .await
            .expect("subscribed")
            .as_slice(),
        [ServerFrame::Subscribed { id: 2, .. }]
    ));
    gw.ws().await.publish("t", "x").await.expect("publish");
    assert!(matches!(
        read_frames(&mut raw.recv).await.expect("msg").as_slice(),
        [ServerFrame::Msg(m)] if m.topic == "t"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_subscription_catching_up_gets_everything_once_in_order() {
    // `o.>` is live; `o.b` then catches up on 16 MB of stored messages on its own
    // stream, not read until a new message has reached `o.>`'s stream. The client must
    // not hand that one to `o.b` early: it would mark everything before it as seen and
    // skip the rest of the catch-up.
    const N: u64 = 2000;
    // Lanes big enough that `o.>` never overflows while the client is held up by `o.b`.
    let gw = Gw::start(|c| c.limits.outbox_bytes = 128 << 20).await;
    let c = gw.quic().await;
    let publisher = gw.ws().await;
    let wide = c.subscribe("o.>", Start::Latest).await.expect("sub o.>");
    let reader = tokio::spawn(async move {
        let mut wide = wide;
        let mut seqs = Vec::new();
        while seqs.len() < (N + 1) as usize {
            seqs.push(next_msg(&mut wide).await.seq);
        }
        seqs
    });
    let bulk = PublishOptions {
        ack: false,
        ..PublishOptions::default()
    };
    for _ in 0..N - 1 {
        publisher
            .publish_with("o.b", vec![b'h'; 8 << 10], bulk.clone())
            .await
            .expect("publish");
    }
    publisher
        .publish("o.b", vec![b'h'; 8 << 10])
        .await
        .expect("acked: all stored");
    let mut narrow = c.subscribe("o.b", Start::Earliest).await.expect("sub o.b");
    publisher
        .publish("o.b", "last")
        .await
        .expect("publish last");
    // `last` reaches the client first: `o.>` has delivered it before `o.b` is read at
    // all (a wait on the event itself, not on a sleep that a slow machine outlasts).
    let wide_seqs = reader.await.expect("reader");
    assert_eq!(
        wide_seqs,
        (1..=N + 1).collect::<Vec<_>>(),
        "o.>: every message"
    );
    for want in 1..=N + 1 {
        let m = next_msg(&mut narrow).await;
        assert_eq!(m.seq, want, "o.b: every message once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_before_connect_is_dropped_not_held() {
    let gw = Gw::start(|_| {}).await;
    let watcher = gw.ws().await;
    let mut on_ws = watcher
        .subscribe("early.>", Start::Latest)
        .await
        .expect("sub");
    let mut raw = raw_quic_open(&gw, &[edgesync_protocol::ALPN_QUIC], 1 << 20).await;
    let datagram = |data: &str| {
        let p = edgesync_protocol::ClientFrame::Pub {
            id: 0,
            topic: "early.t".into(),
            data: data.into(),
            headers: Headers::default(),
            mid: None,
            ack: false,
        };
        bytes::Bytes::from(edgesync_protocol::Encoding::MsgPack.encode(&p))
    };
    let before = gw.count("datagram", "not_connected");
    raw.connection
        .send_datagram(datagram("before"))
        .expect("datagram sent");
    // The datagram has reached the gateway's buffer before the session stream's first
    // bytes do (loopback keeps the order of the two packets); the gateway only reads
    // datagrams once the stream has opened.
    raw.command(edgesync_protocol::ClientFrame::Connect {
        id: 1,
        token: None,
        client_id: None,
        cursor: None,
    })
    .await;
    let connected = read_frames(&mut raw.recv).await.expect("connected");
    assert!(matches!(connected[0], ServerFrame::Connected { .. }));
    assert!(
        eventually(250, || gw.count("datagram", "not_connected") > before).await,
        "the early datagram was counted as refused"
    );
    // After `connected` datagrams flow, and the first to arrive is not the early one.
    let mut got = None;
    for _ in 0..50 {
        raw.connection
            .send_datagram(datagram("after"))
            .expect("datagram sent");
        if let Some(Event::Msg(m)) = on_ws.next_timeout(Duration::from_millis(200)).await {
            got = Some(m);
            break;
        }
    }
    let m = got.expect("a datagram after connect is delivered");
    assert_eq!(m.data.0.as_ref(), b"after", "the early datagram was held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_with_the_error_message_as_reason() {
    let mut gw = Gw::start(|_| {}).await;
    let raw = raw_quic(&gw, &[edgesync_protocol::ALPN_QUIC], 1 << 20).await;
    let running = gw.running.take().expect("running");
    let stop = tokio::spawn(running.stop(Duration::from_secs(5)));
    let reason = tokio::time::timeout(WAIT, raw.connection.closed())
        .await
        .expect("closed in time");
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0x05));
            assert_eq!(
                std::str::from_utf8(&close.reason).expect("utf8"),
                "gateway is shutting down"
            );
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    stop.await.expect("stopped");
}
