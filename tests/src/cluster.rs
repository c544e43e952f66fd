//! Clusters of real gateway processes for the replication tests and the chaos
//! command: certificates made with the CLI (`edgesync cert …`), one `Node` per
//! process with its `[cluster]` / `[[peer]]` config, data directory and ports, and
//! the signals a test sends it (SIGKILL, SIGSTOP, SIGCONT).
//!
//! `exe` is the gateway binary: `env!("CARGO_BIN_EXE_edgesync-test-gateway")` in a
//! test, the chaos binary itself (which runs the CLI) in `edgesync-chaos`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgesync_client::Client;

use crate::{connect_retry, free_port};

/// The admin token every node of a test cluster is given.
pub const TOKEN: &str = "repl-test-token";

/// Run the CLI (`edgesync cert …`), panicking with its stderr on failure.
pub fn cli(exe: &Path, args: &[&str]) {
    let out = Command::new(exe).args(args).output().expect("run cli");
    assert!(
        out.status.success(),
        "edgesync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster CA in `dir` and a node certificate per name, made with the CLI.
pub fn make_certs(exe: &Path, dir: &Path, nodes: &[&str]) -> PathBuf {
    let d = dir.to_str().expect("utf-8 path");
    cli(exe, &["cert", "ca", "--out", d]);
    for n in nodes {
        cli(exe, &["cert", "node", n, "--ca-dir", d, "--out", d]);
    }
    dir.to_path_buf()
}

/// One gateway process with its config and data directory.
pub struct Node {
    pub name: String,
    pub exe: PathBuf,
    /// Holds the config (and the data, unless `data` points elsewhere).
    pub dir: PathBuf,
    /// The store's directory (default `<dir>/data`; a tmpfs for a disk-full node).
    pub data: PathBuf,
    pub ws: u16,
    pub quic: u16,
    pub admin: u16,
    pub child: Option<Child>,
    /// Appended to the config (`[[topic]]` entries, cluster keys).
    pub extra: String,
    /// The `topics` of every `[[peer]]` entry.
    pub peer_topics: Vec<String>,
    /// Where the process's stderr goes (appended); inherited when `None`.
    pub log: Option<PathBuf>,
}

impl Node {
    /// A node whose certificate is `<certs>/<name>.pem`, in `cluster`, dialing `peers`
    /// (QUIC ports) with the topics `sensors.>` and `orders.>`.
    pub fn new(
        exe: &Path,
        root: &Path,
        name: &str,
        certs: &Path,
        cluster: &str,
        peers: &[u16],
    ) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let node = Node {
            name: name.into(),
            exe: exe.to_path_buf(),
            data: dir.join("data"),
            dir,
            ws: free_port(),
            quic: free_port(),
            admin: free_port(),
            child: None,
            extra: String::new(),
            peer_topics: vec!["sensors.>".into(), "orders.>".into()],
            log: None,
        };
        node.write_config(certs, cluster, peers);
        node
    }

    /// (Re)write `<dir>/edgesync.toml`: this node's listeners, certificate and cluster,
    /// `extra`, and one `[[peer]]` dialing `127.0.0.1:<port>` per entry of `peers`.
    pub fn write_config(&self, certs: &Path, cluster: &str, peers: &[u16]) {
        let (c, n) = (certs.display(), &self.name);
        let mut text = format!(
            r#"data_dir = "{data}"
[listen]
ws = "127.0.0.1:{ws}"
wss = "off"
quic = "127.0.0.1:{quic}"
admin = "127.0.0.1:{admin}"
[admin]
token = "{TOKEN}"
[tls]
cert = "{c}/{n}.pem"
key = "{c}/{n}.key"
[cluster]
id = "{cluster}"
ca = "{c}/ca.pem"
redial_min_ms = 50
redial_max_ms = 300
keep_alive_ms = 300
ack_timeout_ms = 1500
"#,
            data = self.data.display(),
            ws = self.ws,
            quic = self.quic,
            admin = self.admin,
        );
        text.push_str(&self.extra);
        let topics: Vec<String> = self.peer_topics.iter().map(|t| format!("{t:?}")).collect();
        for p in peers {
            text.push_str(&format!(
                "[[peer]]\nurl = \"quic://127.0.0.1:{p}\"\ntopics = [{}]\n",
                topics.join(", ")
            ));
        }
        std::fs::write(self.dir.join("edgesync.toml"), text).expect("config");
    }

    /// Start the process (`serve --config <dir>/edgesync.toml`).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let stderr = match &self.log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .expect("log file"),
            None => Stdio::inherit(),
        };
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("edgesync.toml"))
            .env(
                "RUST_LOG",
                std::env::var("REPL_TEST_LOG")
                    .unwrap_or_else(|_| "warn,edgesync::peers=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn gateway");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush. A stopped (SIGSTOP) process dies too.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process was started and not killed.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Send `signal` (`STOP`, `CONT`, …) with kill(1); false when not running or it failed.
    pub fn signal(&self, signal: &str) -> bool {
        let Some(c) = &self.child else { return false };
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(c.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws)
    }

    /// The QUIC listener's URL for clients (the node certificate names 127.0.0.1).
    pub fn quic_url(&self) -> String {
        format!("quic://127.0.0.1:{}", self.quic)
    }

    /// A WebSocket client (reconnect off) once the node answers.
    pub async fn client(&self) -> Client {
        connect_retry(&self.url()).await
    }

    /// `GET path` on the admin listener with the token; the whole response (empty
    /// when the node does not answer within 5 s).
    pub async fn admin_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.admin)).await else {
            return String::new();
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            return String::new();
        }
        let mut body = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body)).await;
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The value of one metric sample (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The number of this node's peer links that are up.
    pub async fn links_up(&self) -> usize {
        self.admin_get("/v1/peers")
            .await
            .matches("\"state\":\"up\"")
            .count()
    }

    /// Wait until exactly `n` peer links of this node are up (duplicates closed).
    pub async fn wait_links_up(&self, n: usize) {
        let mut last = String::new();
        for _ in 0..200 {
            last = self.admin_get("/v1/peers").await;
            if last.matches("\"state\":\"up\"").count() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{}: not {n} links up: {last}", self.name);
    }

    /// Wait until a peer link of this node is up.
    pub async fn wait_link_up(&self) {
        for _ in 0..200 {
            if self
                .admin_get("/v1/peers")
                .await
                .contains("\"state\":\"up\"")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{}: no peer link came up: {}",
            self.name,
            self.admin_get("/v1/peers").await
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Every file under `dir` (recursively; unreadable directories are skipped).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A tmpfs of `mb` MiB mounted at `dir` (created), unmounted (lazily) when dropped.
/// `None` when mounting is not allowed (not root).
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, mb: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
