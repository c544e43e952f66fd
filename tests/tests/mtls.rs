//! Mutual TLS end to end, over QUIC and wss: a gateway with `[tls] client_ca`
//! and the `mtls-auth` test plugin (allows only connections with a verified
//! client certificate, principal = the certificate's CN, publish/subscribe on
//! `user.<CN>.>` only). A client with a certificate from that CA connects and
//! acts as its identity; one without a certificate is refused by the plugin
//! with its reason; one with a certificate from another CA is refused in the
//! TLS handshake, before any hook runs. Certificates come from the same code
//! as `edgesync cert ca|client`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgesync::transport::tls;
use edgesync_client::{Client, ClientError, ClientOptions, ErrorCode, Event, Start};
use edgesync_plugin_host::built;
use edgesync_tests::{TestGateway, eventually};

const IDENTITY: &str = "sensor-42";

/// A CA and one client certificate (CN `cn`) signed by it, under `dir`.
fn client_pki(dir: &Path, ca_name: &str, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, ca_key) = tls::generate_ca(dir, ca_name).expect("CA");
    let (cert, key) = tls::generate_client(&ca, &ca_key, cn, dir, cn).expect("client cert");
    (ca, cert, key)
}

async fn start(client_ca: PathBuf) -> TestGateway {
    let parsed = edgesync::config::Config::from_toml(&format!(
        "[[plugin]]\nname = \"mtls-auth\"\npath = {:?}\n",
        built::MTLS_AUTH
    ))
    .expect("plugin config parses");
    TestGateway::start(move |c| {
        c.listen.quic = edgesync::config::ListenAddr(Some(([127, 0, 0, 1], 0).into()));
        c.tls.client_ca = Some(client_ca);
        c.plugins = parsed.plugins;
    })
    .await
}

fn quic_url(gw: &TestGateway) -> String {
    let port = gw
        .running
        .as_ref()
        .and_then(|r| r.bound.quic)
        .expect("quic bound")
        .port();
    format!("quic://localhost:{port}")
}

fn options(gw: &TestGateway, url: &str, cert: Option<(&Path, &Path)>) -> ClientOptions {
    let mut o = ClientOptions::new(url);
    o.ca = Some(gw.ca());
    o.reconnect = false;
    o.request_timeout = Duration::from_secs(20);
    if let Some((c, k)) = cert {
        o.cert = Some(c.to_path_buf());
        o.key = Some(k.to_path_buf());
    }
    o
}

fn refused(gw: &TestGateway, reason: &str) -> u64 {
    gw.gateway()
        .metrics
        .connections_refused
        .with_label_values(&[reason])
        .get()
}

/// The three cases on one transport (`url`); `handshake_reason` is the refusal counter's
/// label for a failed TLS handshake on it.
async fn check_transport(
    gw: &TestGateway,
    url: &str,
    handshake_reason: &str,
    good: (&Path, &Path),
    rogue: (&Path, &Path),
) {
    // A certificate from the configured CA: connected as its identity.
    let client = Client::connect(options(gw, url, Some(good)))
        .await
        .unwrap_or_else(|e| panic!("{url}: a client with a valid certificate connects: {e}"));
    let own = format!("user.{IDENTITY}.readings");
    let mut sub = client
        .subscribe(&format!("user.{IDENTITY}.>"), Start::Latest)
        .await
        .expect("subscribe under its identity");
    let ack = client
        .publish(&own, "21.5")
        .await
        .expect("publish under its identity");
    assert!(ack.seq >= 1, "{url}: stored");
    match sub.next_timeout(Duration::from_secs(10)).await {
        Some(Event::Msg(m)) => assert_eq!(
            (m.topic.as_str(), m.data.0.as_ref()),
            (own.as_str(), &b"21.5"[..])
        ),
        other => panic!("{url}: expected its own message, got {other:?}"),
    }
    let err = client
        .publish("user.someone-else.readings", "x")
        .await
        .expect_err("another identity's topic");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{url}: {err}");
    client.close().await;

    // No certificate: the TLS handshake succeeds (the certificate is optional), the plugin
    // sees tls-identity = none and refuses with its reason.
    let err = Client::connect(options(gw, url, None))
        .await
        .expect_err("no certificate");
    match &err {
        ClientError::Server { code, message, .. } => {
            assert_eq!(*code, ErrorCode::Unauthorized, "{url}: {err}");
            assert!(
                message.contains("a client certificate is required"),
                "{url}: the plugin's reason reaches the client: {message}"
            );
        }
        other => panic!("{url}: expected the plugin's refusal, got {other:?}"),
    }

    // A certificate from another CA: refused by TLS, never reaching a hook.
    let before = refused(gw, handshake_reason);
    let err = Client::connect(options(gw, url, Some(rogue)))
        .await
        .expect_err("a certificate from an unknown CA");
    assert!(
        !matches!(err, ClientError::Server { .. }),
        "{url}: refused by TLS, not by the plugin: {err:?}"
    );
    assert!(
        eventually(100, || refused(gw, handshake_reason) > before).await,
        "{url}: counted as a failed {handshake_reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_become_the_principal_over_quic_and_wss() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (trusted, rogue) = (pki.path().join("trusted"), pki.path().join("rogue"));
    let (ca, cert, key) = client_pki(&trusted, "test client CA", IDENTITY);
    let (_, rogue_cert, rogue_key) = client_pki(&rogue, "rogue CA", IDENTITY);
    let gw = start(ca).await;
    let good = (cert.as_path(), key.as_path());
    let bad = (rogue_cert.as_path(), rogue_key.as_path());

    check_transport(&gw, &quic_url(&gw), "quic_handshake", good, bad).await;
    check_transport(&gw, &gw.wss_url(), "tls_handshake", good, bad).await;

    // Plain ws carries no certificate at all: the plugin refuses it.
    let err = Client::connect(options(&gw, &gw.ws_url(), None))
        .await
        .expect_err("plain ws has no identity");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
}

#[test]
fn half_a_client_certificate_is_a_configuration_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut o = ClientOptions::new("quic://127.0.0.1:9");
    o.insecure = true;
    o.reconnect = false;
    o.cert = Some("client.pem".into());
    let err = rt
        .block_on(Client::connect(o))
        .expect_err("cert without key");
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
}
