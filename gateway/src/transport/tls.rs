//! Certificates and rustls configurations.
//!
//! With no `[tls]` config, the gateway generates a development CA and a leaf
//! certificate for `localhost`, `127.0.0.1` and `::1` under `<data_dir>/tls/`
//! on first start and reuses them afterwards; clients trust it with
//! `--ca <data_dir>/tls/ca.pem` (or skip verification with `--insecure`).
//! `edgesync cert` uses the same functions to make a cluster CA and node certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Certificate problems; they stop startup with the file named.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no {what} found in PEM")]
    Empty { path: PathBuf, what: &'static str },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The CA that signed a generated development certificate.
    pub dev_ca: Option<PathBuf>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            dev_ca: self.dev_ca.clone(),
        }
    }
}

/// The crypto provider every rustls config here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Load the configured PEM files, or create/reuse the development certificate.
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn load_or_create(cfg: &TlsConfig, data_dir: &Path) -> Result<Identity, TlsError> {
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        return Ok(Identity {
            certs: read_certs(cert)?,
            key: read_key(key)?,
            dev_ca: None,
        });
    }
    let dir = data_dir.join("tls");
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    if !cert.exists() || !key.exists() || !ca.exists() {
        let (ca_cert, ca_key) = generate_ca(&dir, "edgesync development CA")?;
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        generate_leaf(&ca_cert, &ca_key, &names, &dir, "server")?;
        tracing::info!(ca = %ca.display(), "generated a development TLS certificate");
    }
    Ok(Identity {
        certs: read_certs(&cert)?,
        key: read_key(&key)?,
        dev_ca: Some(ca),
    })
}

/// Create a CA (`ca.pem`, `ca.key`) in `dir`. Returns their paths.
///
/// # Errors
/// [`TlsError`] on generation or write failure.
pub fn generate_ca(dir: &Path, common_name: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let (cp, kp) = (dir.join("ca.pem"), dir.join("ca.key"));
    write(dir, &cp, cert.pem().as_bytes())?;
    write_private(dir, &kp, key.serialize_pem().as_bytes())?;
    Ok((cp, kp))
}

/// Create a leaf certificate `<base>.pem` / `<base>.key` in `dir`, signed by the CA,
/// valid for `names` (DNS names or IP addresses) as server and client (for mTLS).
///
/// # Errors
/// [`TlsError`] on read, generation or write failure.
pub fn generate_leaf(
    ca_cert: &Path,
    ca_key: &Path,
    names: &[String],
    dir: &Path,
    base: &str,
) -> Result<(PathBuf, PathBuf), TlsError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
    let issuer = load_issuer(ca_cert, ca_key)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| base.to_string()),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    sign_and_write(&params, &issuer, dir, base)
}

/// Create a client certificate `<base>.pem` / `<base>.key` in `dir`, signed by the CA, with
/// subject CN `name` and no subject alternative names: the identity a gateway with
/// `[tls] client_ca` gives the connection (`tls-identity` of the auth hooks' `conn-info`).
/// Usable for client authentication only.
///
/// # Errors
/// [`TlsError`] on read, generation or write failure.
pub fn generate_client(
    ca_cert: &Path,
    ca_key: &Path,
    name: &str,
    dir: &Path,
    base: &str,
) -> Result<(PathBuf, PathBuf), TlsError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
    let issuer = load_issuer(ca_cert, ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign_and_write(&params, &issuer, dir, base)
}

/// A fresh key pair, `params` signed by `issuer`, written as `<base>.pem` / `<base>.key`
/// (the key private to its owner) in `dir`.
fn sign_and_write(
    params: &rcgen::CertificateParams,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    dir: &Path,
    base: &str,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let (cp, kp) = (
        dir.join(format!("{base}.pem")),
        dir.join(format!("{base}.key")),
    );
    write(dir, &cp, cert.pem().as_bytes())?;
    write_private(dir, &kp, key.serialize_pem().as_bytes())?;
    Ok((cp, kp))
}

/// The CA in `ca_cert` / `ca_key` (PEM) as an rcgen issuer.
fn load_issuer(
    ca_cert: &Path,
    ca_key: &Path,
) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, TlsError> {
    let ca_pem = std::fs::read_to_string(ca_cert).map_err(|source| TlsError::Io {
        path: ca_cert.into(),
        source,
    })?;
    let ca_key_pem = std::fs::read_to_string(ca_key).map_err(|source| TlsError::Io {
        path: ca_key.into(),
        source,
    })?;
    let ca_kp = rcgen::KeyPair::from_pem(&ca_key_pem)?;
    Ok(rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_kp)?)
}

fn write(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.into(),
        source,
    })?;
    std::fs::write(path, bytes).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write(dir, path, bytes)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        TlsError::Io {
            path: path.into(),
            source,
        }
    })
}

/// Read every certificate in a PEM file.
///
/// # Errors
/// [`TlsError`] when unreadable or empty.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Io {
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Read the first private key in a PEM file.
///
/// # Errors
/// [`TlsError`] when unreadable or empty.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|source| TlsError::Io {
            path: path.into(),
            source,
        })?
        .ok_or(TlsError::Empty {
            path: path.into(),
            what: "private key",
        })
}

/// A server config for `identity` with the given ALPN protocols; client certificates are
/// requested but optional when `client_ca` is given (their identity, see
/// [`certificate_identity`], reaches auth hooks). A presented certificate that does not
/// chain to `client_ca` fails the handshake.
///
/// # Errors
/// [`TlsError::Rustls`] for an unusable key or CA.
pub fn server_config(
    identity: &Identity,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Subject CN, else the first DNS / email / URI SAN, of a DER certificate.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
            Some((*s).to_string())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_cn_then_san() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p =
            rcgen::CertificateParams::new(vec!["device-7.example".to_string()]).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(
            certificate_identity(cert.der()).as_deref(),
            Some("device-7.example")
        );
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "sensor-42");
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(
            certificate_identity(cert.der()).as_deref(),
            Some("sensor-42")
        );
        assert_eq!(certificate_identity(b"garbage"), None);
    }

    #[test]
    fn client_certificates_carry_their_name_as_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, ca_key) = generate_ca(dir.path(), "test CA").expect("ca");
        let (cert, key) =
            generate_client(&ca, &ca_key, "device 7", dir.path(), "device_7").expect("client");
        let der = read_certs(&cert).expect("cert").remove(0);
        assert_eq!(certificate_identity(&der).as_deref(), Some("device 7"));
        read_key(&key).expect("key");
        // The CA verifies it as a client certificate (what `[tls] client_ca` does).
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(read_certs(&ca).expect("ca").remove(0))
            .expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_client_cert(&der, &[], now)
            .expect("signed by the CA, usable for client auth");
    }
}
