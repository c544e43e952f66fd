//! Shared helpers for edgesync's end-to-end tests: start a real gateway on
//! 127.0.0.1 with ephemeral ports and a temporary data directory, and connect
//! real clients to it. Nothing here mocks a component.

pub mod chaos;
pub mod cluster;
pub mod fault_proxy;
pub mod json;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgesync::config::{Config, ListenAddr};
use edgesync::server::{self, Running};
use edgesync_client::{Client, ClientOptions, Encoding};

/// A gateway running in this process.
pub struct TestGateway {
    pub running: Option<Running>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

fn loopback0() -> ListenAddr {
    ListenAddr(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
}

/// A config for tests: data in `dir`, ws + wss on ephemeral ports, no QUIC/admin unless asked.
pub fn test_config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        listen: edgesync::config::ListenConfig {
            ws: loopback0(),
            wss: loopback0(),
            quic: ListenAddr(None),
            admin: ListenAddr(None),
            ..edgesync::config::ListenConfig::default()
        },
        ..Config::default()
    }
}

impl TestGateway {
    /// Start with the default test config, adjusted by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut g = TestGateway::start_in(&dir, tweak).await;
        g._tmp = Some(tmp);
        g
    }

    /// Start on an existing data directory (restart tests).
    pub async fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let mut c = test_config(dir);
        tweak(&mut c);
        let settings = c.build().expect("valid test config");
        let running = server::start(settings).await.expect("gateway starts");
        TestGateway {
            running: Some(running),
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    fn bound(&self) -> &server::Bound {
        &self.running.as_ref().expect("running").bound
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.bound().ws.expect("ws bound"))
    }

    /// The plain WebSocket listener's address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.bound().ws.expect("ws bound")
    }

    pub fn wss_url(&self) -> String {
        format!(
            "wss://localhost:{}",
            self.bound().wss.expect("wss bound").port()
        )
    }

    /// The QUIC listener's URL (start with `listen.quic` set, e.g. 127.0.0.1:0).
    pub fn quic_url(&self) -> String {
        format!(
            "quic://localhost:{}",
            self.bound().quic.expect("quic bound").port()
        )
    }

    pub fn ca(&self) -> PathBuf {
        self.bound().dev_ca.clone().expect("dev ca")
    }

    pub fn gateway(&self) -> &std::sync::Arc<server::Gateway> {
        &self.running.as_ref().expect("running").gateway
    }

    /// A client (MessagePack unless `enc` says otherwise) with reconnect off.
    pub async fn client(&self, enc: Encoding) -> Client {
        let mut o = ClientOptions::new(self.ws_url());
        o.encoding = enc;
        o.reconnect = false;
        o.request_timeout = Duration::from_secs(20);
        Client::connect(o).await.expect("client connects")
    }

    /// Graceful stop; keeps the data directory.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop(Duration::from_secs(10)).await;
        }
    }
}

/// Poll `f` every 20 ms until it returns true, at most `tries` times.
pub async fn eventually(tries: u32, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A free TCP port on 127.0.0.1 (for gateways run as a separate process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Run the gateway as its own process (ws on `port` only) on `dir`, so a test can
/// SIGKILL it. `exe` is `env!("CARGO_BIN_EXE_edgesync-test-gateway")` of the test.
pub fn spawn_gateway_process(exe: &str, dir: &Path, port: u16) -> std::process::Child {
    std::process::Command::new(exe)
        .args([
            "serve",
            "--ws",
            &format!("127.0.0.1:{port}"),
            "--wss",
            "off",
            "--quic",
            "off",
            "--admin",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn gateway")
}

/// Connect (reconnect off) once the gateway at `url` answers; at most 1200 tries 25 ms
/// apart (30 s: a restart replaying its journal on a loaded 2-core machine took over 5 s).
pub async fn connect_retry(url: &str) -> Client {
    for _ in 0..1200 {
        let mut o = ClientOptions::new(url);
        o.reconnect = false;
        o.request_timeout = Duration::from_secs(5);
        if let Ok(c) = Client::connect(o).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway at {url} did not come up");
}

/// `GET path` on an admin listener at 127.0.0.1:`port`: (status, body). Bounded (20 s).
pub async fn admin_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        std::io::Result::Ok(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("admin answers within 20 s")
        .expect("admin exchange");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}
