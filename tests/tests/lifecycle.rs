//! The gateway's life cycle end to end: a start that fails part-way releases what it
//! had bound.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

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
    running.stop(std::time::Duration::from_secs(5)).await;
}
