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
