//! Mutual TLS between cluster nodes: the dialer's QUIC client configuration and the
//! check of a peer's certificate.
//!
//! Both sides present their node certificate (`[tls] cert`), both verify the other's
//! against `[cluster] ca`, and the identity of a node is its certificate's subject CN
//! (`edgesync cert node NAME` writes NAME there). The dialer does not check the
//! certificate's names against the address it dialed: peers are often reached by IP
//! or through NAT, and what matters is that the CA signed the node and, when the
//! `[[peer]]` entry names a `node_id`, that the certificate says that node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::transport::tls::{self, Identity, TlsError};

/// Most concurrent unidirectional streams a peer may open (data lanes; the core uses at
/// most `wire::MAX_LANES`).
pub const MAX_PEER_UNI_STREAMS: u32 = edgesync_replication::wire::MAX_LANES as u32;

/// The cluster's trust: its CA and this node's identity.
pub struct PeerTls {
    roots: Arc<RootCertStore>,
    verifier: Arc<dyn ClientCertVerifier>,
    identity: Identity,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Load the cluster CA.
    ///
    /// # Errors
    /// [`TlsError`] naming the file.
    pub fn new(ca: &Path, identity: Identity) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in tls::read_certs(ca)? {
            roots.add(c)?;
        }
        Ok(PeerTls {
            roots: Arc::new(roots),
            verifier: tls::client_verifier(ca)?,
            identity,
        })
    }

    /// The node id a connected peer's certificate names, after checking that the
    /// cluster CA signed it for client authentication.
    ///
    /// # Errors
    /// Why the certificate is not a cluster node's.
    pub fn verify_peer(&self, certs: Option<&[CertificateDer<'static>]>) -> Result<String, String> {
        let Some(certs) = certs.filter(|c| !c.is_empty()) else {
            return Err("the peer presented no certificate".into());
        };
        let now = UnixTime::now();
        self.verifier
            .verify_client_cert(&certs[0], &certs[1..], now)
            .map_err(|e| format!("certificate not issued by the cluster CA: {e}"))?;
        // A node certificate serves too (`edgesync cert node`); a device's client
        // certificate from the same CA (`edgesync cert client`) does not, so a device
        // cannot join the cluster as a peer.
        let parsed = rustls::server::ParsedCertificate::try_from(&certs[0])
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            &certs[1..],
            now,
            tls::provider().signature_verification_algorithms.all,
        )
        .map_err(|e| format!("not a node certificate (server and client usage): {e}"))?;
        tls::certificate_identity(&certs[0])
            .ok_or_else(|| "the certificate names no node id".to_string())
    }

    /// The QUIC client configuration for dialing peers: our node certificate as client
    /// certificate, the peer's verified against the cluster CA, ALPN `edgesync-peer/1`.
    ///
    /// # Errors
    /// [`TlsError`] for an unusable key.
    pub fn client_config(&self, keep_alive: Duration) -> Result<quinn::ClientConfig, TlsError> {
        let verifier = Arc::new(ClusterServerVerifier {
            roots: self.roots.clone(),
            provider: tls::provider(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.identity.certs.clone(), self.identity.key.clone_key())?;
        cfg.alpn_protocols = vec![edgesync_replication::wire::ALPN_PEER.to_vec()];
        let crypto = QuicClientConfig::try_from(cfg)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport(keep_alive)));
        Ok(config)
    }
}

/// Transport settings of a peer link: keep-alive, an idle timeout of three keep-alives
/// (failure detection), lanes as unidirectional streams, no bidirectional stream
/// beyond the dialer's control stream.
pub fn transport(keep_alive: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(quinn::IdleTimeout::try_from(keep_alive * 3).ok())
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_PEER_UNI_STREAMS))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    t
}

/// Verifies a peer's server certificate against the cluster CA without a name check
/// (see the module docs); signatures are checked as usual.
#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &Path, base: &str) -> (Identity, Vec<CertificateDer<'static>>) {
        let certs = tls::read_certs(&dir.join(format!("{base}.pem"))).expect("cert");
        let id = Identity {
            certs: certs.clone(),
            key: tls::read_key(&dir.join(format!("{base}.key"))).expect("key"),
            dev_ca: None,
        };
        (id, certs)
    }

    /// Node certificates of the cluster CA pass and name their node; a node of another
    /// CA, a device's client certificate of the same CA and no certificate do not.
    #[test]
    fn only_node_certificates_of_the_cluster_ca_are_peers() {
        let d = tempfile::tempdir().expect("tempdir");
        let (cluster, other) = (d.path().join("cluster"), d.path().join("other"));
        let (ca, ca_key) = tls::generate_ca(&cluster, "cluster").expect("ca");
        let (oca, oca_key) = tls::generate_ca(&other, "other").expect("other ca");
        let names = vec!["127.0.0.1".to_string()];
        tls::generate_leaf(&ca, &ca_key, &names, &cluster, "node-a").expect("node");
        tls::generate_leaf(&oca, &oca_key, &names, &other, "node-x").expect("rogue");
        tls::generate_client(&ca, &ca_key, "device-1", &cluster, "device-1").expect("client");
        let (id, node) = identity(&cluster, "node-a");
        let peers = PeerTls::new(&ca, id).expect("peer tls");
        assert_eq!(peers.verify_peer(Some(&node)), Ok("node-a".to_string()));
        let (_, rogue) = identity(&other, "node-x");
        let err = peers.verify_peer(Some(&rogue)).expect_err("other CA");
        assert!(err.contains("cluster CA"), "{err}");
        let (_, device) = identity(&cluster, "device-1");
        let err = peers.verify_peer(Some(&device)).expect_err("client cert");
        assert!(err.contains("not a node certificate"), "{err}");
        assert!(peers.verify_peer(None).is_err());
        assert!(peers.verify_peer(Some(&[])).is_err());
        peers
            .client_config(Duration::from_secs(1))
            .expect("client config");
    }
}
