//! `crypto`: JWT verification (HS256, RS256, EdDSA), HMAC-SHA256 and
//! SHA-256, done by the host so guests need not ship crypto code.
//!
//! Parsed verification keys are cached per plugin (a PEM parse costs more
//! than a verification); the cache is bounded by [`MAX_CACHED_KEYS`].

use std::collections::{HashMap, HashSet};

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::crypto::{self, JwtAlg, JwtKey};
use crate::state::HostState;

use super::host_time;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;
/// Most keys per verification.
pub const MAX_KEYS: usize = 8;
/// Parsed keys kept per plugin.
pub const MAX_CACHED_KEYS: usize = 32;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    crypto::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// Parsed decoding keys by (alg, key text).
#[derive(Default)]
pub(crate) struct KeyCache {
    keys: Mutex<HashMap<(u8, String), DecodingKey>>,
}

impl KeyCache {
    fn key(&self, k: &JwtKey) -> Result<DecodingKey, String> {
        let id = (k.alg as u8, k.key.clone());
        if let Some(key) = self.keys.lock().get(&id) {
            return Ok(key.clone());
        }
        let parsed = match k.alg {
            JwtAlg::Hs256 => DecodingKey::from_secret(k.key.as_bytes()),
            JwtAlg::Rs256 => DecodingKey::from_rsa_pem(k.key.as_bytes())
                .map_err(|e| format!("RS256 key: {e}"))?,
            JwtAlg::Eddsa => {
                DecodingKey::from_ed_pem(k.key.as_bytes()).map_err(|e| format!("EdDSA key: {e}"))?
            }
        };
        let mut keys = self.keys.lock();
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(id, parsed.clone());
        Ok(parsed)
    }
}

fn algorithm(alg: JwtAlg) -> Algorithm {
    match alg {
        JwtAlg::Hs256 => Algorithm::HS256,
        JwtAlg::Rs256 => Algorithm::RS256,
        JwtAlg::Eddsa => Algorithm::EdDSA,
    }
}

/// Verifies `token` with the first key whose algorithm matches its header.
pub(crate) fn verify(
    cache: &KeyCache,
    token: &str,
    keys: &[JwtKey],
    leeway_s: u32,
) -> Result<String, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("token over {MAX_TOKEN_BYTES} bytes"));
    }
    if keys.len() > MAX_KEYS {
        return Err(format!("at most {MAX_KEYS} keys"));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
    let Some(k) = keys.iter().find(|k| algorithm(k.alg) == header.alg) else {
        return Err(format!("no key for algorithm {:?}", header.alg));
    };
    let key = cache.key(k)?;
    let mut v = Validation::new(header.alg);
    v.leeway = u64::from(leeway_s);
    v.validate_aud = false;
    v.validate_nbf = true;
    v.required_spec_claims = HashSet::new();
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map_err(|e| format!("invalid token: {e}"))?;
    Ok(data.claims.to_string())
}

impl crypto::Host for HostState {
    fn verify_jwt(
        &mut self,
        token: String,
        keys: Vec<JwtKey>,
        leeway_s: u32,
    ) -> Result<String, String> {
        host_time(self, |s| verify(&s.plugin.crypto, &token, &keys, leeway_s))
    }

    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        host_time(self, |_| match Hmac::<Sha256>::new_from_slice(&key) {
            Ok(mut mac) => {
                mac.update(&data);
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC accepts keys of any length; unreachable in practice.
            Err(_) => Vec::new(),
        })
    }

    fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        host_time(self, |_| Sha256::digest(&data).to_vec())
    }
}
