//! Certificates and rustls configurations.
//!
//! With no `[tls]` config, the gateway generates a development CA and a leaf
//! certificate for `localhost`, `127.0.0.1` and `::1` under `<data_dir>/tls/`
//! on first start and reuses them afterwards; clients trust it with
//! `--ca <data_dir>/tls/ca.pem` (or skip verification with `--insecure`).
//! `edgesync cert` uses the same functions to make a cluster CA and node certificates.
//!
//! The development CA is meant to be trusted on a developer's machine only, so it is
//! made harmless elsewhere (security finding 22): it is valid for
//! [`DEV_VALIDITY_DAYS`] (regenerated at start when fewer than [`DEV_RENEW_DAYS`] are
//! left), name-constrained to `localhost` and loopback addresses (a stolen `ca.key`
//! cannot sign for a real domain that browsers or clients would accept), and its server
//! leaf carries the server-auth usage only (it is not a client certificate). Private
//! keys are created 0600 before any key byte is written, in directories created 0700.

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
    #[error("{0}")]
    Name(String),
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
    if !cert.exists() || !key.exists() || !ca.exists() || dev_needs_renewal(&cert) {
        let (ca_cert, ca_key) = generate_dev_ca(&dir)?;
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        generate_leaf_for(
            &ca_cert,
            &ca_key,
            &names,
            &dir,
            "server",
            LeafUsage::Server,
            Some(dev_validity()),
        )?;
        tracing::info!(ca = %ca.display(), "generated a development TLS certificate");
    }
    Ok(Identity {
        certs: read_certs(&cert)?,
        key: read_key(&key)?,
        dev_ca: Some(ca),
    })
}

/// Days a development CA and leaf are valid.
pub const DEV_VALIDITY_DAYS: i64 = 90;
/// A development certificate with fewer days left is regenerated at start.
pub const DEV_RENEW_DAYS: i64 = 7;

/// `(not_before, not_after)` for development certificates: from an hour ago (clock
/// skew) for [`DEV_VALIDITY_DAYS`].
fn dev_validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(DEV_VALIDITY_DAYS),
    )
}

/// True when the development leaf at `cert` is unreadable or expires within
/// [`DEV_RENEW_DAYS`] (or is one of the long-lived development certificates made before).
fn dev_needs_renewal(cert: &Path) -> bool {
    let Ok(certs) = read_certs(cert) else {
        return true;
    };
    let Some(Ok((_, parsed))) = certs
        .first()
        .map(|c| x509_parser::parse_x509_certificate(c))
    else {
        return true;
    };
    let not_after = parsed.validity().not_after.timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    not_after - now < DEV_RENEW_DAYS * 86_400 || not_after - now > (DEV_VALIDITY_DAYS + 1) * 86_400
}

/// Create the development CA (`ca.pem`, `ca.key`) in `dir`: short-lived and allowed to
/// sign only for `localhost` and loopback addresses.
///
/// # Errors
/// [`TlsError`] on generation or write failure.
pub fn generate_dev_ca(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};
    let constraints = NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("localhost".into()),
            GeneralSubtree::IpAddress(CidrSubnet::V4([127, 0, 0, 0], [255, 0, 0, 0])),
            GeneralSubtree::IpAddress(CidrSubnet::V6(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                [0xff; 16],
            )),
        ],
        excluded_subtrees: Vec::new(),
    };
    make_ca(
        dir,
        "edgesync development CA",
        Some(constraints),
        Some(dev_validity()),
    )
}

/// Create a CA (`ca.pem`, `ca.key`) in `dir`. Returns their paths.
///
/// # Errors
/// [`TlsError`] on generation or write failure.
pub fn generate_ca(dir: &Path, common_name: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    make_ca(dir, common_name, None, None)
}

fn make_ca(
    dir: &Path,
    common_name: &str,
    constraints: Option<rcgen::NameConstraints>,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> Result<(PathBuf, PathBuf), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.name_constraints = constraints;
    if let Some((from, to)) = validity {
        params.not_before = from;
        params.not_after = to;
    }
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

/// What a leaf certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUsage {
    /// A server only (the development certificate): never accepted as a client's.
    Server,
    /// Server and client: a cluster node, which is both to its peers.
    ServerAndClient,
}

/// Create a leaf certificate `<base>.pem` / `<base>.key` in `dir`, signed by the CA,
/// valid for `names` (DNS names or IP addresses) as server and client (a cluster node's
/// certificate, for mTLS between nodes). Its subject CN is `base`: the node id, which
/// peers read as the node's identity ([`certificate_identity`]).
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
    generate_leaf_for(
        ca_cert,
        ca_key,
        names,
        dir,
        base,
        LeafUsage::ServerAndClient,
        None,
    )
}

fn generate_leaf_for(
    ca_cert: &Path,
    ca_key: &Path,
    names: &[String],
    dir: &Path,
    base: &str,
    usage: LeafUsage,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> Result<(PathBuf, PathBuf), TlsError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
    let issuer = load_issuer(ca_cert, ca_key)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    if let Some((from, to)) = validity {
        params.not_before = from;
        params.not_after = to;
    }
    // A cluster node's identity is its certificate's subject CN: the node id (`base`).
    let common_name = match usage {
        LeafUsage::Server => names.first().cloned().unwrap_or_else(|| base.to_string()),
        LeafUsage::ServerAndClient => base.to_string(),
    };
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match usage {
        LeafUsage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        LeafUsage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    sign_and_write(&params, &issuer, dir, base)
}

/// Why `name` cannot be a client certificate's identity, if it cannot. The identity
/// reaches auth plugins, which commonly put it into topic patterns
/// (`user.{identity}.>`): it must be one plain topic segment — no `.`, `*`, `>`,
/// whitespace or control characters, not starting with `$` — and at most 64 bytes.
pub fn client_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 {
        return Some("use 1 to 64 bytes".into());
    }
    if name.starts_with('$') {
        return Some("it must not start with '$'".into());
    }
    name.chars()
        .find(|c| matches!(c, '.' | '*' | '>' | '/') || c.is_whitespace() || c.is_control())
        .map(|c| format!("it must not contain {c:?} (an identity is one topic segment)"))
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
    if let Some(why) = client_name_problem(name) {
        return Err(TlsError::Name(format!("client name {name:?}: {why}")));
    }
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
    write_mode(dir, path, bytes, 0o644)
}

/// Write a private key: the file is 0600 before the first key byte is written (an
/// existing file is narrowed first), in a directory created 0700.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_mode(dir, path, bytes, 0o600)
}

fn write_mode(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| TlsError::Io { path: p, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    if mode & 0o077 == 0 {
        // A file that existed keeps its mode on open: narrow it before writing.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(path))?;
    }
    f.write_all(bytes).map_err(io(path))
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
    server_config_cas(identity, alpn, client_ca.as_slice())
}

/// [`server_config`] with several CAs for client certificates (the QUIC listener accepts
/// `[tls] client_ca` for clients and `[cluster] ca` for peers; each connection's
/// certificate is checked again against the CA of its ALPN once the handshake is done).
///
/// # Errors
/// [`TlsError::Rustls`] for an unusable key or CA.
pub fn server_config_cas(
    identity: &Identity,
    alpn: &[&[u8]],
    cas: &[&Path],
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match cas {
        [] => builder.with_no_client_auth(),
        cas => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                for c in read_certs(ca)? {
                    roots.add(c)?;
                }
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
    };
    let mut cfg = builder.with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A verifier of client certificates against the CA(s) in `ca` (PEM), for checking a
/// connection's certificate after the handshake.
///
/// # Errors
/// [`TlsError`] naming the file, or for an unusable CA.
pub fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c)?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))
}

/// Subject CN, else the first DNS / email / URI SAN, of a DER certificate.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    let id = raw_identity(der)?;
    // An identity is data that auth plugins put into topic patterns: one holding a
    // wildcard or a control character is never meant, so the connection gets none
    // (security finding 11).
    if id.chars().any(|c| matches!(c, '*' | '>') || c.is_control()) {
        tracing::debug!(identity = ?id, "client certificate identity ignored: it holds a wildcard or control character");
        return None;
    }
    Some(id)
}

fn raw_identity(der: &[u8]) -> Option<String> {
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
        // A wildcard identity is no identity (finding 11).
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, "*");
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(certificate_identity(cert.der()), None);
    }

    #[test]
    fn client_certificates_carry_their_name_as_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, ca_key) = generate_ca(dir.path(), "test CA").expect("ca");
        let (cert, key) =
            generate_client(&ca, &ca_key, "device-7", dir.path(), "device-7").expect("client");
        let der = read_certs(&cert).expect("cert").remove(0);
        assert_eq!(certificate_identity(&der).as_deref(), Some("device-7"));
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

    #[test]
    fn client_names_that_are_not_one_topic_segment_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, ca_key) = generate_ca(dir.path(), "test CA").expect("ca");
        for bad in ["*", ">", "a.b", "a b", "$sys", "", "a*", "x/y"] {
            let e = generate_client(&ca, &ca_key, bad, dir.path(), "c").expect_err(bad);
            assert!(e.to_string().contains("client name"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_dev_ca_is_short_lived_constrained_and_its_server_leaf_is_no_client() {
        use std::os::unix::fs::PermissionsExt as _;
        let data = tempfile::tempdir().expect("tempdir");
        let id = load_or_create(&TlsConfig::default(), data.path()).expect("dev identity");
        let dir = data.path().join("tls");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("server.key")), 0o600);
        let ca_der = read_certs(&dir.join("ca.pem")).expect("ca").remove(0);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("parse");
        let days =
            (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86_400;
        assert!(days <= DEV_VALIDITY_DAYS, "CA valid {days} days");
        assert!(
            ca.name_constraints().expect("ext").is_some(),
            "the dev CA is name-constrained"
        );
        // The server leaf is not accepted as a client certificate.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        let now = rustls::pki_types::UnixTime::now();
        assert!(
            verifier.verify_client_cert(&id.certs[0], &[], now).is_err(),
            "the server leaf must not authenticate a client"
        );
        // A CA key that leaks cannot sign for a real name: the constraint excludes it.
        let (cert, _) = generate_leaf(
            &dir.join("ca.pem"),
            &dir.join("ca.key"),
            &["bank.example".to_string()],
            data.path(),
            "evil",
        )
        .expect("rcgen signs anything");
        let leaf = read_certs(&cert).expect("leaf").remove(0);
        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new({
                let mut r = rustls::RootCertStore::empty();
                r.add(read_certs(&dir.join("ca.pem")).expect("ca").remove(0))
                    .expect("root");
                r
            }),
            provider(),
        )
        .build()
        .expect("server verifier");
        let name = rustls::pki_types::ServerName::try_from("bank.example").expect("name");
        use rustls::client::danger::ServerCertVerifier as _;
        assert!(
            server_verifier
                .verify_server_cert(&leaf, &[], &name, &[], now)
                .is_err(),
            "outside the dev CA's name constraints"
        );
        // A fresh development certificate is not renewed at the next start.
        assert!(!dev_needs_renewal(&dir.join("server.pem")));
    }
}
