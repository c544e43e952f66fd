//! rustls client configurations: a given CA, the platform-independent
//! "insecure" development mode, or no extra roots (then only a CA file works,
//! since the client ships no public root store: gateways at the edge use their
//! own CA). Optionally with a client certificate for gateways that verify one
//! (`[tls] client_ca`, mTLS).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::ClientError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client certificate chain and its key, from PEM files.
pub(crate) struct ClientCert {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientCert {
    /// Read `cert` (PEM chain, leaf first) and `key` (PEM private key).
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let bad =
            |p: &Path, e: &dyn std::fmt::Display| ClientError::Tls(format!("{}: {e}", p.display()));
        let data = std::fs::read(cert).map_err(|e| bad(cert, &e))?;
        let certs = rustls_pemfile::certs(&mut data.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, &e))?;
        if certs.is_empty() {
            return Err(bad(cert, &"no certificate in PEM"));
        }
        let data = std::fs::read(key).map_err(|e| bad(key, &e))?;
        let key_der = rustls_pemfile::private_key(&mut data.as_slice())
            .map_err(|e| bad(key, &e))?
            .ok_or_else(|| bad(key, &"no private key in PEM"))?;
        Ok(ClientCert {
            certs,
            key: key_der,
        })
    }
}

/// Build a client config trusting `ca` (PEM), or nothing at all when `insecure`,
/// presenting `cert` when the gateway asks for a client certificate.
pub(crate) fn client_config(
    ca: Option<&Path>,
    insecure: bool,
    cert: Option<ClientCert>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, ClientError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = ca {
            let data = std::fs::read(path)
                .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut data.as_slice()) {
                let cert =
                    cert.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(ClientError::Tls(
                "no CA to trust: pass --ca FILE (or --insecure for development)".into(),
            ));
        }
        builder.with_root_certificates(roots)
    };
    let mut cfg = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(c.certs, c.key)
            .map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?,
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
