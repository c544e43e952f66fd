//! A full disk, with a real gateway process on a tiny tmpfs it fills: no publish is
//! acknowledged that was not made durable, the refusal names the full disk, every
//! open connection is told, `/readyz` says 503 with the cause while `/healthz`
//! stays 200, SIGTERM ends the process within its grace, and after the disk is
//! given room every acknowledged message is there. Under both fsync policies.
//!
//! Needs root to mount the tmpfs; without it the test says so and passes vacuously.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgesync_client::Start;
use edgesync_tests::{connect_retry, free_port};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Size of the filesystem the gateway fills.
const DISK_MB: u32 = 8;
/// Bytes per publish: about 120 of them fill the disk.
const PAYLOAD_BYTES: usize = 64 * 1024;

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mb: u32) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().expect("tmp");
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs {
            dir,
            _parent: parent,
        })
    }

    fn resize(&self, mb: u32) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmpfs remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Start the gateway on `dir`; `fsync` (`always` / `interval`) goes in a config
/// file next to the mount point, not on the small disk.
fn spawn(dir: &Path, port: u16, admin: u16, fsync: &str) -> Child {
    let config = dir.with_extension("toml");
    std::fs::write(&config, format!("[store]\nfsync = \"{fsync}\"\n")).expect("config");
    Command::new(env!("CARGO_BIN_EXE_edgesync-test-gateway"))
        .args(["serve", "--ws", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(&config)
        .args(["--wss", "off", "--quic", "off"])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway")
}

async fn raw(url: &str) -> Ws {
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "edgesync.json.v1".parse().expect("header"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake")
        .0
}

/// The next JSON frame, within 30 s; `None` once closed.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the gateway answers in time")?;
        match m {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("json")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn command(ws: &mut Ws, v: Value) -> Value {
    ws.send(Message::text(v.to_string())).await.expect("send");
    next(ws).await.expect("a reply")
}

/// `GET path` on the admin port: (status, body).
async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_tells_everyone_and_stops_in_time() {
    fill_then_stop("always").await;
}

/// The same under `fsync = interval`: the write to the OS fails before any fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_fsync_interval_acknowledges_nothing_it_lost() {
    fill_then_stop("interval").await;
}

async fn fill_then_stop(fsync: &str) {
    let Some(disk) = Tmpfs::mount(DISK_MB) else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    };
    let (port, admin) = (free_port(), free_port());
    let mut child = spawn(&disk.dir, port, admin, fsync);
    let url = format!("ws://127.0.0.1:{port}");
    drop(connect_retry(&url).await);

    let mut sub = raw(&url).await;
    let v = command(
        &mut sub,
        json!({"t":"connect","id":1,"client_id":"watcher"}),
    )
    .await;
    assert_eq!(v["t"], "connected", "{v}");
    let v = command(&mut sub, json!({"t":"sub","id":2,"topic":"other"})).await;
    assert_eq!(v["t"], "subscribed", "{v}");

    let mut publisher = raw(&url).await;
    let v = command(
        &mut publisher,
        json!({"t":"connect","id":1,"client_id":"filler"}),
    )
    .await;
    assert_eq!(v["t"], "connected", "{v}");
    let data = "x".repeat(PAYLOAD_BYTES);
    let mut acked = Vec::new();
    let mut refusal = None;
    // Bounded: the disk holds about DISK_MB MiB / PAYLOAD_BYTES publishes.
    for id in 10..10 + 4 * (DISK_MB as u64) * (1 << 20) / PAYLOAD_BYTES as u64 {
        let mid = format!("m{id}");
        let v = command(
            &mut publisher,
            json!({"t":"pub","id":id,"topic":"fill","data":data,"mid":mid}),
        )
        .await;
        match v["t"].as_str() {
            Some("puback") => acked.push(v["seq"].as_u64().expect("seq")),
            Some("error") => {
                refusal = Some(v);
                break;
            }
            other => panic!("unexpected reply {other:?}: {v}"),
        }
    }
    let refusal = refusal.expect("the disk filled up and a publish was refused");
    assert_eq!(refusal["code"], "storage_unavailable", "{refusal}");
    let msg = refusal["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("the disk is full"), "names the cause: {msg}");
    assert!(
        !acked.is_empty(),
        "some publishes fit before the disk filled"
    );

    // Every connection is told, without an `id` (a subscriber that never publishes too).
    let told = next(&mut sub).await.expect("the subscriber is told");
    assert_eq!(told["t"], "error", "{told}");
    assert!(told.get("id").is_none(), "{told}");
    assert_eq!(told["code"], "storage_unavailable", "{told}");
    assert!(
        told["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("the disk is full"),
        "{told}"
    );
    // Later publishes are refused with the same cause, at once.
    let v = command(
        &mut publisher,
        json!({"t":"pub","id":1,"topic":"fill","data":"y"}),
    )
    .await;
    assert_eq!(v["code"], "storage_unavailable", "{v}");

    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "not ready with a poisoned store: {body}");
    assert!(body.contains("the disk is full"), "{body}");
    let (status, _) = http_get(admin, "/healthz").await;
    assert_eq!(status, 200, "alive: the process serves reads and answers");

    // SIGTERM: the process ends within its grace (10 s drain + bounded store close).
    let started = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM");
    let mut exited = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().expect("wait") {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the gateway did not exit within 30 s of SIGTERM on a full disk");
    }
    eprintln!("exited {:?} after {:?}", exited, started.elapsed());
    assert!(
        exited.is_some_and(|s| !s.success()),
        "a stop with refused writes exits non-zero: {exited:?}"
    );
    let mut log = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut log);
    }
    assert!(
        log.contains("the disk is full"),
        "the log names the cause:\n{log}"
    );

    // Room again: everything acknowledged is there, exactly once.
    disk.resize(64);
    let port = free_port();
    let mut child = spawn(&disk.dir, port, free_port(), fsync);
    let reader = connect_retry(&format!("ws://127.0.0.1:{port}")).await;
    let mut stored = HashSet::new();
    let mut start = Start::Earliest;
    for _ in 0..1000 {
        let page = reader.history("fill", start, None).await.expect("history");
        for m in &page.msgs {
            assert!(stored.insert(m.seq), "seq {} stored once", m.seq);
        }
        start = Start::Cursor(page.cursor);
        if !page.more {
            break;
        }
    }
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged seq {seq} survived");
    }
    let _ = child.kill();
    let _ = child.wait();
}
