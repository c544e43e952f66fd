//! The JetStream bridge (issue 17) against a real `nats-server -js` on 127.0.0.1,
//! started by each test on a free port with its own store directory
//! (`scripts/test.sh` installs nats-server when it is missing).
//!
//! - export, read back with async-nats: identity headers, payloads, order;
//! - a gateway killed with SIGKILL mid-export and restarted: each record exactly
//!   once in the stream — with a duplicate window shorter than the downtime, so the
//!   restart relies on the stream reconcile, not on JetStream's de-duplication;
//! - nats-server killed mid-export and restarted: publishers unaffected, nothing
//!   lost, nothing doubled;
//! - import with the gateway killed mid-batch: each message exactly once in the store;
//! - direction `both`: no record goes round;
//! - imports run the route's plugins (a transform rewrites, a schema rejects);
//! - user/password credentials reach the server, and a refused login shows as `down`
//!   with the server's reason in `/v1/bridges`;
//! - mutual TLS: a bridge with a client certificate exports, one without is refused;
//! - the lag alert rules (examples/monitoring/bridge-alerts.yml) pass `promtool
//!   check rules` and their `promtool test rules` cases.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream;
use edgesync_client::{Encoding, Start};
use edgesync_tests::{TestGateway, connect_retry, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A nats-server with JetStream on 127.0.0.1, killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Extra server flags (`--user`, `--pass`, …).
    extra: Vec<String>,
}

fn nats_binary() -> String {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    "nats-server".to_string()
}

impl Nats {
    async fn start(dir: &Path) -> Nats {
        Nats::start_with(dir, &[]).await
    }

    async fn start_with(dir: &Path, extra: &[&str]) -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        n.restart().await;
        n
    }

    /// (Re)start on the same port and store directory; returns once it accepts.
    async fn restart(&mut self) {
        let child = Command::new(nats_binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not come up on {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn js(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url()).await.expect("connect");
        jetstream::new(client)
    }

    async fn js_as(&self, user: &str, pass: &str) -> jetstream::Context {
        let client = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
            .connect(self.url())
            .await
            .expect("connect");
        jetstream::new(client)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Messages in `stream` now (0 while it does not exist or the server is down).
async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Poll `stream_len` until it is `want` (at most ~`secs`).
async fn wait_stream_len(js: &jetstream::Context, stream: &str, want: u64, secs: u64) -> u64 {
    let mut n = 0;
    for _ in 0..secs * 20 {
        n = stream_len(js, stream).await;
        if n == want {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n
}

/// One stream message: subject, identity headers, payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exported {
    subject: String,
    node: String,
    epoch: u64,
    seq: u64,
    msg_id: String,
    payload: Vec<u8>,
}

/// Every message of `stream`, in stream order (direct reads by sequence).
async fn read_stream(js: &jetstream::Context, stream: &str) -> Result<Vec<Exported>> {
    let mut s = js.get_stream(stream).await?;
    let state = s.info().await?.state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let m = s.get_raw_message(seq).await?;
        let h = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string());
        out.push(Exported {
            subject: m.subject.to_string(),
            node: h("Edgesync-Origin").context("origin header")?,
            epoch: h("Edgesync-Epoch").context("epoch")?.parse()?,
            seq: h("Edgesync-Seq").context("seq")?.parse()?,
            msg_id: h("Nats-Msg-Id").context("msg id")?,
            payload: m.payload.to_vec(),
        });
    }
    Ok(out)
}

/// The stream holds each (topic, origin, epoch) stream exactly once, dense from 1 and in
/// order; returns the highest seq per (topic, "node/epoch").
fn assert_exactly_once(msgs: &[Exported]) -> BTreeMap<(String, String), u64> {
    let mut seen = HashSet::new();
    let mut next: BTreeMap<(String, String), u64> = BTreeMap::new();
    for m in msgs {
        assert!(
            seen.insert((m.subject.clone(), m.node.clone(), m.epoch, m.seq)),
            "duplicate in the stream: {m:?}"
        );
        let at = next
            .entry((m.subject.clone(), format!("{}/{}", m.node, m.epoch)))
            .or_insert(0);
        assert_eq!(m.seq, *at + 1, "per-origin order with no hole: {m:?}");
        *at = m.seq;
    }
    next
}

fn bridge_toml(url: &str, direction: &str, topics: &str, stream: &str, extra: &str) -> String {
    format!(
        "[[bridge]]\nkind = \"jetstream\"\nurl = \"{url}\"\ndirection = \"{direction}\"\ntopics = [{topics}]\nstream = \"{stream}\"\nretry_max_ms = 200\n{extra}"
    )
}

/// Apply a `[[bridge]]` TOML snippet to a test config.
fn with_bridge(c: &mut edgesync::config::Config, toml: &str) {
    let parsed = edgesync::config::Config::from_toml(toml).expect("bridge toml");
    c.bridges = parsed.bridges;
}

const ADMIN_TOKEN: &str = "bridge-test-token";

/// A gateway process (ws + admin on loopback) with `config`, so a test can SIGKILL it.
struct GatewayProc {
    child: Child,
    ws: u16,
    admin: u16,
}

impl GatewayProc {
    fn spawn(dir: &Path, config: &str, ws: u16, admin: u16) -> GatewayProc {
        let file = dir.join("gateway.toml");
        std::fs::create_dir_all(dir).expect("dir");
        // The admin API (read back `/v1/topics`) needs a token.
        std::fs::write(
            &file,
            format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n{config}"),
        )
        .expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_edgesync-test-gateway"))
            .args(["serve", "--wss", "off", "--quic", "off"])
            .arg("--ws")
            .arg(format!("127.0.0.1:{ws}"))
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway");
        GatewayProc { child, ws, admin }
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws)
    }

    /// `GET path` on the admin listener, as JSON (None while it does not answer).
    async fn get(&self, path: &str) -> Option<serde_json::Value> {
        admin_get(SocketAddr::from(([127, 0, 0, 1], self.admin)), path).await
    }

    /// Records of `topic` per "node/epoch" the gateway holds (empty while down).
    async fn heads(&self, topic: &str) -> BTreeMap<String, u64> {
        let Some(v) = self.get("/v1/topics").await else {
            return BTreeMap::new();
        };
        v["topics"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["topic"] == topic)
            .and_then(|t| serde_json::from_value(t["heads"].clone()).ok())
            .unwrap_or_default()
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// `GET path` with the test token on the admin listener at `addr`, as JSON (None
/// while it does not answer).
async fn admin_get(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Records of `topic` in the gateway at `url`, read back through history.
async fn history(url: &str, topic: &str) -> Vec<edgesync_protocol::Msg> {
    let c = connect_retry(url).await;
    let mut out = Vec::new();
    let mut start = Start::Earliest;
    for _ in 0..1000 {
        let page = c.history(topic, start, Some(500)).await.expect("history");
        out.extend(page.msgs);
        if !page.more {
            break;
        }
        start = Start::Cursor(page.cursor);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_publishes_every_record_with_its_identity() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let nats = Nats::start(&tmp.path().join("nats")).await;
    let toml = bridge_toml(
        &nats.url(),
        "export",
        "\"sensors.>\"",
        "EDGE",
        "batch = 64\n",
    );
    let gw = TestGateway::start(|c| with_bridge(c, &toml)).await;
    let client = gw.client(Encoding::MsgPack).await;
    let n = 300u64;
    for i in 0..n {
        let topic = if i.is_multiple_of(2) {
            "sensors.a"
        } else {
            "sensors.b"
        };
        client.publish(topic, format!("v{i}").into_bytes()).await?;
    }
    client.publish("other.x", b"not bridged".to_vec()).await?;
    let js = nats.js().await;
    assert_eq!(
        wait_stream_len(&js, "EDGE", n, 20).await,
        n,
        "every record exported"
    );
    let msgs = read_stream(&js, "EDGE").await?;
    let heads = assert_exactly_once(&msgs);
    let node = gw.gateway().store.node().to_string();
    let epoch = gw.gateway().store.epoch();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for topic in ["sensors.a", "sensors.b"] {
        assert_eq!(
            heads[&(topic.to_string(), format!("{node}/{epoch}"))],
            n / 2
        );
    }
    for m in &msgs {
        assert_eq!(
            m.msg_id,
            format!("{}:{}:{}:{}", m.node, m.epoch, m.seq, m.subject)
        );
        let i: u64 = std::str::from_utf8(&m.payload)?[1..].parse()?;
        assert_eq!(
            m.subject,
            if i.is_multiple_of(2) {
                "sensors.a"
            } else {
                "sensors.b"
            }
        );
        assert_eq!(m.seq, i / 2 + 1, "payload and seq agree");
    }
    // Status and metrics agree, and lag drains to 0.
    let ok = edgesync_tests::eventually(250, || {
        let s = &gw.gateway().bridges.status()[0];
        s.acked == n && s.export_lag == 0 && s.export_state == Some("up")
    })
    .await;
    assert!(ok, "{:?}", gw.gateway().bridges.status());
    let text = gw.gateway().metrics.render();
    assert!(
        text.contains(&format!(
            "edgesync_bridge_acked_total{{bridge=\"EDGE\"}} {n}"
        )),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_export_then_restart_sends_each_record_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut nats = Nats::start(&tmp.path().join("nats")).await;
    // A duplicate window far shorter than the downtime: after the restart, JetStream
    // no longer remembers the ids, so only the reconcile keeps records from doubling.
    let toml = bridge_toml(
        &nats.url(),
        "export",
        "\"crash.>\"",
        "CRASH",
        "batch = 32\nduplicate_window_ms = 200\n",
    );
    let dir = tmp.path().join("gw");
    let (ws, admin) = (free_port(), free_port());
    // JetStream is down while the records are published, so the export has a
    // backlog when it starts; the SIGKILL lands in the middle of it.
    nats.kill();
    let mut gw = GatewayProc::spawn(&dir, &toml, ws, admin);
    let client = connect_retry(&gw.ws_url()).await;
    let published = 4000u64;
    for i in 0..published {
        let topic = if i.is_multiple_of(3) {
            "crash.a"
        } else {
            "crash.b"
        };
        client.publish(topic, vec![b'x'; 256]).await?;
    }
    nats.restart().await;
    let js = nats.js().await;
    let mut killed_at = 0;
    for _ in 0..3000 {
        killed_at = stream_len(&js, "CRASH").await;
        if killed_at >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.sigkill();
    assert!(
        killed_at > 0 && killed_at < published,
        "killed mid-export ({killed_at} of {published})"
    );
    drop(client);
    // Outlive the duplicate window, then restart on the same data.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let gw = GatewayProc::spawn(&dir, &toml, ws, admin);
    let mut want = 0;
    for _ in 0..400 {
        let heads: u64 = gw.heads("crash.a").await.values().sum::<u64>()
            + gw.heads("crash.b").await.values().sum::<u64>();
        if heads >= published && stream_len(&js, "CRASH").await == heads {
            want = heads;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        want >= published,
        "the stream caught up with the store ({want} vs {published} acked)"
    );
    // Settled: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msgs = read_stream(&js, "CRASH").await?;
    assert_eq!(
        msgs.len() as u64,
        want,
        "each stored record once (killed at {killed_at})"
    );
    let heads = assert_exactly_once(&msgs);
    let mut stored = BTreeMap::new();
    for topic in ["crash.a", "crash.b"] {
        for (origin, high) in gw.heads(topic).await {
            stored.insert((topic.to_string(), origin), high);
        }
    }
    assert_eq!(
        heads, stored,
        "the stream holds exactly what the store holds"
    );
    eprintln!("killed with {killed_at} of {published} records exported");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_mid_export_loses_nothing_and_doubles_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut nats = Nats::start(&tmp.path().join("nats")).await;
    let toml = bridge_toml(
        &nats.url(),
        "export",
        "\"down.>\"",
        "DOWN",
        "batch = 32\nack_timeout_ms = 500\n",
    );
    let gw = TestGateway::start(|c| with_bridge(c, &toml)).await;
    let client = gw.client(Encoding::MsgPack).await;
    let js = nats.js().await;
    let mut published = 0u64;
    for _ in 0..400 {
        for _ in 0..20 {
            client.publish("down.t", vec![b'y'; 256]).await?;
            published += 1;
        }
        if stream_len(&js, "DOWN").await > 100 {
            break;
        }
    }
    nats.kill();
    // Publishers are unaffected while JetStream is down; the bridge waits and counts.
    for _ in 0..500 {
        client.publish("down.t", vec![b'z'; 256]).await?;
        published += 1;
    }
    let down = edgesync_tests::eventually(250, || {
        let s = &gw.gateway().bridges.status()[0];
        s.export_state == Some("down") && s.export_lag > 0
    })
    .await;
    assert!(down, "{:?}", gw.gateway().bridges.status());
    nats.restart().await;
    let js = nats.js().await;
    assert_eq!(wait_stream_len(&js, "DOWN", published, 30).await, published);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msgs = read_stream(&js, "DOWN").await?;
    assert_eq!(
        msgs.len() as u64,
        published,
        "nothing lost, nothing doubled"
    );
    let heads = assert_exactly_once(&msgs);
    assert_eq!(heads.values().sum::<u64>(), published);
    assert!(
        gw.gateway().bridges.status()[0].errors > 0,
        "the outage was counted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_with_the_gateway_killed_mid_batch_stores_each_message_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let nats = Nats::start(&tmp.path().join("nats")).await;
    let js = nats.js().await;
    js.create_stream(jetstream::stream::Config {
        name: "IN".into(),
        subjects: vec!["in.>".into()],
        ..Default::default()
    })
    .await?;
    let n = 3000u64;
    let mut acks = Vec::new();
    for i in 0..n {
        let mut h = async_nats::HeaderMap::new();
        h.insert("unit", "C");
        acks.push(
            js.publish_with_headers("in.t", h, format!("m{i}").into())
                .await?,
        );
    }
    for a in acks {
        a.await?;
    }
    let toml = bridge_toml(&nats.url(), "import", "\"in.>\"", "IN", "batch = 50\n");
    let dir = tmp.path().join("gw");
    let (ws, admin) = (free_port(), free_port());
    let mut gw = GatewayProc::spawn(&dir, &toml, ws, admin);
    let mut killed_at = 0;
    for _ in 0..2000 {
        killed_at = gw.heads("in.t").await.values().sum::<u64>();
        if killed_at > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.sigkill();
    assert!(
        killed_at > 0 && killed_at < n,
        "killed mid-import ({killed_at})"
    );
    let gw = GatewayProc::spawn(&dir, &toml, ws, admin);
    let mut held = 0;
    for _ in 0..600 {
        held = gw.heads("in.t").await.values().sum::<u64>();
        if held >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msgs = history(&gw.ws_url(), "in.t").await;
    let mut count: HashMap<String, u32> = HashMap::new();
    for m in &msgs {
        *count
            .entry(String::from_utf8_lossy(&m.data.0).into_owned())
            .or_default() += 1;
        assert!(m.client.starts_with("$bridge."), "{m:?}");
        assert!(
            m.headers.0.iter().any(|(k, v)| k == "unit" && v == "C"),
            "{m:?}"
        );
    }
    let doubled: Vec<_> = count.iter().filter(|(_, c)| **c > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    assert_eq!(
        count.len() as u64,
        n,
        "every message imported (held {held}, killed at {killed_at})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_make_no_loop() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let nats = Nats::start(&tmp.path().join("nats")).await;
    let toml = bridge_toml(&nats.url(), "both", "\"loop.>\"", "LOOP", "");
    let gw = TestGateway::start(|c| with_bridge(c, &toml)).await;
    let client = gw.client(Encoding::Json).await;
    for i in 0..50 {
        client
            .publish("loop.a", format!("a{i}").into_bytes())
            .await?;
    }
    let js = nats.js().await;
    assert_eq!(wait_stream_len(&js, "LOOP", 50, 20).await, 50);
    // The import saw our own 50 and knew them.
    let m = gw.gateway().metrics.clone();
    let known = || m.bridge.skipped.with_label_values(&["LOOP", "known"]).get();
    assert!(
        edgesync_tests::eventually(500, || known() == 50).await,
        "{}",
        known()
    );
    // From JetStream: imported once, never exported back.
    for i in 0..30 {
        js.publish("loop.b", format!("b{i}").into()).await?.await?;
    }
    let back = || {
        m.bridge
            .skipped
            .with_label_values(&["LOOP", "imported"])
            .get()
    };
    assert!(
        edgesync_tests::eventually(500, || back() == 30).await,
        "{}",
        back()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_len(&js, "LOOP").await, 80, "nothing went round");
    let store = &gw.gateway().store;
    assert_eq!(
        store.head("loop.a").values().sum::<u64>(),
        50,
        "no copy of our own"
    );
    assert_eq!(store.head("loop.b").values().sum::<u64>(), 30);
    assert_eq!(m.bridge.imported.with_label_values(&["LOOP"]).get(), 30);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_run_the_routes_plugins() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let nats = Nats::start(&tmp.path().join("nats")).await;
    let js = nats.js().await;
    js.create_stream(jetstream::stream::Config {
        name: "PLUG".into(),
        subjects: vec!["plug.>".into()],
        ..Default::default()
    })
    .await?;
    for body in [
        r#"{"id":1,"password":"hunter2"}"#,
        r#"{"password":"no id"}"#,
        r#"{"id":2}"#,
    ] {
        js.publish("plug.t", body.into()).await?.await?;
    }
    let plugins = format!(
        r#"
[[plugin]]
name = "transform"
path = "{transform}"
[plugin.config]
redact = ["password"]

[[plugin]]
name = "schema"
path = "{schema}"
[[plugin.config.rules]]
topics = "plug.>"
required = ["id"]

[[route]]
topics = "plug.>"
plugins = ["transform", "schema"]
"#,
        transform = edgesync_plugin_host::built::TRANSFORM,
        schema = edgesync_plugin_host::built::SCHEMA,
    );
    let parsed = edgesync::config::Config::from_toml(&plugins).expect("plugin toml");
    let toml = bridge_toml(&nats.url(), "import", "\"plug.>\"", "PLUG", "");
    let gw = TestGateway::start(|c| {
        with_bridge(c, &toml);
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
    })
    .await;
    let m = gw.gateway().metrics.clone();
    let handled = || {
        m.bridge.imported.with_label_values(&["PLUG"]).get()
            + m.bridge
                .skipped
                .with_label_values(&["PLUG", "rejected"])
                .get()
    };
    assert!(
        edgesync_tests::eventually(500, || handled() == 3).await,
        "{}",
        handled()
    );
    assert_eq!(
        m.bridge
            .skipped
            .with_label_values(&["PLUG", "rejected"])
            .get(),
        1,
        "schema rejected one"
    );
    let stored = history(&gw.ws_url(), "plug.t").await;
    let bodies: Vec<String> = stored
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data.0).into_owned())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies[0].contains("\"id\":1") && !bodies[0].contains("hunter2"),
        "the transform ran on the import: {bodies:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_a_refusal_is_reported() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let nats = Nats::start_with(
        &tmp.path().join("nats"),
        &["--user", "edge", "--pass", "s3cret"],
    )
    .await;
    let good = bridge_toml(
        &nats.url(),
        "export",
        "\"auth.>\"",
        "AUTH",
        "user = \"edge\"\npassword = \"s3cret\"\n",
    );
    let bad = bridge_toml(
        &nats.url(),
        "export",
        "\"auth.>\"",
        "AUTH",
        "name = \"wrong\"\nuser = \"edge\"\npassword = \"guess\"\n",
    );
    let gw = TestGateway::start(|c| {
        with_bridge(c, &format!("{good}\n{bad}"));
    })
    .await;
    let client = gw.client(Encoding::MsgPack).await;
    for i in 0..20 {
        client
            .publish("auth.t", format!("{i}").into_bytes())
            .await?;
    }
    let js = nats.js_as("edge", "s3cret").await;
    assert_eq!(wait_stream_len(&js, "AUTH", 20, 20).await, 20);
    let refused = edgesync_tests::eventually(250, || {
        let s = &gw.gateway().bridges.status()[1];
        s.export_state == Some("down")
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains("auth"))
    })
    .await;
    assert!(refused, "{:?}", gw.gateway().bridges.status());
    assert_eq!(gw.gateway().bridges.status()[0].acked, 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate() -> Result<()> {
    use edgesync::transport::tls;
    let tmp = tempfile::tempdir()?;
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki)?;
    let (ca, ca_key) = tls::generate_ca(&pki, "bridge test CA")?;
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let (server_cert, server_key) = tls::generate_leaf(&ca, &ca_key, &names, &pki, "server")?;
    let (cert, key) = tls::generate_client(&ca, &ca_key, "edge-1", &pki, "edge-1")?;
    let p = |x: &Path| x.display().to_string();
    let nats = Nats::start_with(
        &tmp.path().join("nats"),
        &[
            "--tls",
            "--tlscert",
            &p(&server_cert),
            "--tlskey",
            &p(&server_key),
            "--tlscacert",
            &p(&ca),
            "--tlsverify",
        ],
    )
    .await;
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let tls_keys = format!(
        "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        p(&ca),
        p(&cert),
        p(&key)
    );
    let good = bridge_toml(&url, "export", "\"mtls.>\"", "MTLS", &tls_keys);
    let no_cert = bridge_toml(
        &url,
        "export",
        "\"mtls.>\"",
        "MTLS",
        &format!("name = \"nocert\"\ntls_ca = \"{}\"\n", p(&ca)),
    );
    let gw = TestGateway::start(|c| with_bridge(c, &format!("{good}\n{no_cert}"))).await;
    let client = gw.client(Encoding::MsgPack).await;
    for i in 0..10 {
        client
            .publish("mtls.t", format!("{i}").into_bytes())
            .await?;
    }
    let reader = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .add_client_certificate(cert.clone(), key.clone())
        .require_tls(true)
        .connect(url.as_str())
        .await?;
    let js = jetstream::new(reader);
    assert_eq!(
        wait_stream_len(&js, "MTLS", 10, 20).await,
        10,
        "exported over mTLS"
    );
    let refused = edgesync_tests::eventually(250, || {
        let s = &gw.gateway().bridges.status()[1];
        s.export_state == Some("down") && s.last_error.is_some()
    })
    .await;
    assert!(
        refused,
        "no client certificate, no link: {:?}",
        gw.gateway().bridges.status()
    );
    Ok(())
}

#[test]
fn lag_alert_rules_pass_promtool() -> Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/monitoring");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-prometheus.sh");
    let out = Command::new("sh").arg(&script).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ensure-prometheus.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let promtool = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("promtool");
    for args in [
        ["check", "rules", "bridge-alerts.yml"],
        ["test", "rules", "bridge-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()?;
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
