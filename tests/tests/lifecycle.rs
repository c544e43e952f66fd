//! The gateway's life cycle end to end: a start that fails part-way releases what it
//! had bound.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use edgesync::config::{Config, ListenAddr};
use edgesync::server::{self, ServerError};

fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn at(port: u16) -> ListenAddr {
    ListenAddr(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_releases_what_it_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // QUIC binds last; its port is taken, so the start fails after ws and admin bound.
    let taken = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
    let quic_port = taken.local_addr().expect("addr").port();
    let (ws_port, admin_port) = (free_tcp_port(), free_tcp_port());
    let config = |quic: ListenAddr| Config {
        data_dir: tmp.path().to_path_buf(),
        listen: edgesync::config::ListenConfig {
            ws: at(ws_port),
            wss: ListenAddr(None),
            quic,
            admin: at(admin_port),
            ..edgesync::config::ListenConfig::default()
        },
        ..Config::default()
    };
    let settings = config(at(quic_port)).build().expect("valid");
    match server::start(settings).await {
        Err(ServerError::Bind { what: "quic", .. }) => {}
        Err(other) => panic!("expected the QUIC bind to fail, got {other}"),
        Ok(_) => panic!("the QUIC port is taken; the start must fail"),
    }
    for (what, port) in [("ws", ws_port), ("admin", admin_port)] {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        assert!(l.is_ok(), "the {what} port {port} is free again: {l:?}");
    }
    // The store was closed too: the same data directory and ports start cleanly.
    let settings = config(ListenAddr(None)).build().expect("valid");
    let running = server::start(settings).await.expect("starts again");
    assert_eq!(running.bound.ws.map(|a| a.port()), Some(ws_port));
    running.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_with_publishes_in_flight_keeps_every_acknowledged_one() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use edgesync_client::{Encoding, Start};
    use edgesync_tests::{TestGateway, eventually};

    let tmp = tempfile::tempdir().expect("tempdir");
    let mut gw = TestGateway::start_in(tmp.path(), |_| {}).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let c = gw.client(Encoding::MsgPack).await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..1_000_000u64 {
                let id = format!("w{w}-{i}");
                match c.publish("stop.t", id.clone()).await {
                    Ok(_) => acked.lock().expect("lock").push(id),
                    // shutting_down, or the connection ended: not acknowledged.
                    Err(_) => return,
                }
            }
        }));
    }
    assert!(
        eventually(500, || acked.lock().expect("lock").len() >= 300).await,
        "publishes flow"
    );
    gw.stop().await; // graceful, with the writers still publishing
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("writers end when the gateway stops")
            .expect("no panic");
    }
    let acked = acked.lock().expect("lock").clone();
    let gw = TestGateway::start_in(tmp.path(), |_| {}).await;
    let reader = gw.client(Encoding::MsgPack).await;
    let mut stored: HashMap<String, u32> = HashMap::new();
    let mut start = Start::Earliest;
    loop {
        let page = reader
            .history("stop.t", start, None)
            .await
            .expect("history");
        for m in &page.msgs {
            *stored
                .entry(String::from_utf8_lossy(&m.data.0).into_owned())
                .or_default() += 1;
        }
        start = Start::Cursor(page.cursor);
        if !page.more {
            break;
        }
    }
    for id in &acked {
        assert_eq!(stored.get(id), Some(&1), "acknowledged {id} is stored once");
    }
    assert!(stored.values().all(|n| *n == 1), "nothing stored twice");
}

/// A gateway process serving ws on `ws` and QUIC on `quic` (dev certificate in `dir/tls`).
fn spawn_both(dir: &std::path::Path, ws: u16, quic: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_edgesync-test-gateway"))
        .args(["serve", "--ws", &format!("127.0.0.1:{ws}"), "--wss", "off"])
        .args(["--quic", &format!("127.0.0.1:{quic}"), "--admin", "off"])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn gateway")
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig}");
}

/// A gateway that stops answering without closing anything (SIGSTOP: the sockets stay
/// open, nothing says goodbye) is taken for dead after the client's
/// `liveness_timeout`, and the client fails over to the next URL with its publish.
/// Before the client probed, a WebSocket client waited on the open TCP connection for
/// ever and a QUIC client for quinn's default idle timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_is_left_for_the_next_url_over_ws_and_quic() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports: Vec<(u16, u16)> = (0..2)
        .map(|_| (free_tcp_port(), edgesync_tests::free_port()))
        .collect();
    let mut a = spawn_both(&tmp.path().join("a"), ports[0].0, ports[0].1);
    let mut b = spawn_both(&tmp.path().join("b"), ports[1].0, ports[1].1);
    let node_a = edgesync_tests::connect_retry(&format!("ws://127.0.0.1:{}", ports[0].0))
        .await
        .session()
        .node
        .clone();
    let node_b = edgesync_tests::connect_retry(&format!("ws://127.0.0.1:{}", ports[1].0))
        .await
        .session()
        .node
        .clone();
    assert_ne!(node_a, node_b);
    let url = |scheme: &str, (ws, quic): (u16, u16)| match scheme {
        "ws" => format!("ws://127.0.0.1:{ws}"),
        _ => format!("quic://127.0.0.1:{quic}"),
    };
    let mut clients = Vec::new();
    for scheme in ["ws", "quic"] {
        let mut o = edgesync_client::ClientOptions::new(url(scheme, ports[0]));
        o.fallback_urls = vec![url(scheme, ports[1])];
        o.liveness_timeout = Duration::from_secs(2);
        o.request_timeout = Duration::from_secs(60);
        // Both gateways made their own dev CA: trust B's through a combined bundle.
        let bundle = tmp.path().join("cas.pem");
        let mut pem = std::fs::read(tmp.path().join("a/tls/ca.pem")).expect("ca a");
        pem.extend(std::fs::read(tmp.path().join("b/tls/ca.pem")).expect("ca b"));
        std::fs::write(&bundle, pem).expect("bundle");
        o.ca = Some(bundle);
        let c = edgesync_client::Client::connect(o).await.expect("connect");
        assert_eq!(c.session().node, node_a, "{scheme} starts on A");
        clients.push((scheme, c));
    }
    signal(&a, "-STOP");
    for (scheme, c) in &clients {
        // Sent to the stopped A; answered by B once the client has given A up.
        let ack = tokio::time::timeout(
            Duration::from_secs(25),
            c.publish(&format!("silent.{scheme}"), "x"),
        )
        .await
        .unwrap_or_else(|_| panic!("{scheme}: no failover within 25 s"))
        .expect("acked");
        assert_eq!(
            ack.origin.node, node_b,
            "{scheme}: acked by B after A went silent"
        );
    }
    signal(&a, "-CONT");
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
