//! `jwt-auth`: authenticates connections with a JWT passed as the connect
//! token. Signatures (HS256, RS256, EdDSA) and `exp`/`nbf` are verified by
//! the host's `crypto` capability; claims map to the principal and its
//! topic permissions.
//!
//! ```toml
//! [[plugin]]
//! name = "jwt-auth"
//! path = "jwt_auth.wasm"
//! [plugin.config]
//! keys = [{ alg = "HS256", key = "s3cret" }]     # or RS256 / EdDSA with a PEM public key
//! leeway_s = 30                                  # clock skew allowed on exp/nbf
//! issuer = "https://auth.example"                # optional: required `iss`
//! audience = "edgesync"                          # optional: required in `aud`
//! principal_claim = "sub"                        # principal id
//! publish_claim = "publish"                      # array of topic patterns
//! subscribe_claim = "subscribe"
//! default_publish = []                           # when the claim is absent
//! default_subscribe = ["public.>"]
//! attributes = ["role", "tenant"]                # claims copied to the principal
//! allow_anonymous = false                        # connect without a token
//! anonymous_subscribe = ["public.>"]
//! require_exp = true                             # refuse tokens without `exp` (default)
//! ```
//!
//! Patterns may contain `{principal}`, replaced by the principal id (e.g.
//! `"users.{principal}.>"`). The id is data, never a pattern: when a template uses it,
//! a principal that is not one plain topic segment (it holds `.`, `*`, `>`, whitespace
//! or a control character, or starts with `$`) is refused — `sub: "*"` must not turn
//! `users.{principal}.>` into `users.*.>`, nor `sub: "bob.x"` reach into `users.bob`.
//!
//! A token without `exp` never expires; it is refused unless `require_exp = false`.

use edgesync_plugin::crypto::{self, JwtAlg, JwtKey};
use edgesync_plugin::{ConnInfo, ConnectVerdict, Permissions, Plugin, Principal};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    alg: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    keys: Vec<KeyConfig>,
    #[serde(default = "default_leeway")]
    leeway_s: u32,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default = "default_principal_claim")]
    principal_claim: String,
    #[serde(default = "default_publish_claim")]
    publish_claim: String,
    #[serde(default = "default_subscribe_claim")]
    subscribe_claim: String,
    #[serde(default)]
    default_publish: Vec<String>,
    #[serde(default)]
    default_subscribe: Vec<String>,
    #[serde(default)]
    attributes: Vec<String>,
    #[serde(default)]
    allow_anonymous: bool,
    #[serde(default)]
    anonymous_publish: Vec<String>,
    #[serde(default)]
    anonymous_subscribe: Vec<String>,
    #[serde(default = "default_require_exp")]
    require_exp: bool,
}

fn default_require_exp() -> bool {
    true
}

fn default_leeway() -> u32 {
    30
}
fn default_principal_claim() -> String {
    "sub".into()
}
fn default_publish_claim() -> String {
    "publish".into()
}
fn default_subscribe_claim() -> String {
    "subscribe".into()
}

struct JwtAuth {
    config: Config,
    keys: Vec<JwtKey>,
}

fn parse_alg(alg: &str) -> Result<JwtAlg, String> {
    match alg.to_ascii_uppercase().as_str() {
        "HS256" => Ok(JwtAlg::Hs256),
        "RS256" => Ok(JwtAlg::Rs256),
        "EDDSA" | "ED25519" => Ok(JwtAlg::Eddsa),
        other => Err(format!(
            "keys: unsupported alg `{other}` (HS256, RS256, EdDSA)"
        )),
    }
}

/// A claim as a list of strings (a single string counts as one).
fn string_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

/// Why `id` cannot stand for `{principal}` in a topic pattern, if it cannot: it must be
/// exactly one topic segment with no wildcard, and not a system (`$`) segment.
fn unsafe_in_pattern(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("it is empty".into());
    }
    if id.starts_with('$') {
        return Some("it starts with '$'".into());
    }
    id.chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
        .map(|c| format!("it holds {c:?}"))
}

fn expand(patterns: &[String], principal: &str) -> Vec<String> {
    patterns
        .iter()
        .map(|p| p.replace("{principal}", principal))
        .collect()
}

impl JwtAuth {
    fn check(&self, claims: &Value) -> Result<Principal, String> {
        let c = &self.config;
        if let Some(iss) = &c.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
        {
            return Err("token issuer not accepted".into());
        }
        if let Some(aud) = &c.audience {
            let auds = string_list(claims.get("aud")).unwrap_or_default();
            if !auds.iter().any(|a| a == aud) {
                return Err("token audience not accepted".into());
            }
        }
        let id = match claims.get(&c.principal_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(format!("token lacks the `{}` claim", c.principal_claim)),
        };
        if c.require_exp && claims.get("exp").is_none() {
            return Err("token has no `exp` claim (set require_exp = false to allow)".into());
        }
        let publish =
            string_list(claims.get(&c.publish_claim)).unwrap_or_else(|| c.default_publish.clone());
        let subscribe = string_list(claims.get(&c.subscribe_claim))
            .unwrap_or_else(|| c.default_subscribe.clone());
        let templated = publish
            .iter()
            .chain(&subscribe)
            .any(|p| p.contains("{principal}"));
        if templated && let Some(why) = unsafe_in_pattern(&id) {
            return Err(format!(
                "principal {id:?} cannot stand in a topic pattern: {why}"
            ));
        }
        let attributes = c
            .attributes
            .iter()
            .filter_map(|name| {
                let v = claims.get(name)?;
                Some((
                    name.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                ))
            })
            .collect();
        Ok(Principal {
            permissions: Permissions {
                publish: expand(&publish, &id),
                subscribe: expand(&subscribe, &id),
            },
            id,
            attributes,
        })
    }
}

#[edgesync_plugin::export]
impl Plugin for JwtAuth {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("jwt-auth config: {e}"))?;
        if config.keys.is_empty() {
            return Err("jwt-auth config: `keys` must list at least one key".into());
        }
        let keys = config
            .keys
            .iter()
            .map(|k| {
                Ok(JwtKey {
                    alg: parse_alg(&k.alg)?,
                    key: k.key.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(JwtAuth { config, keys })
    }

    fn on_connect(&self, conn: &ConnInfo) -> ConnectVerdict {
        let Some(token) = conn.token.as_deref().filter(|t| !t.is_empty()) else {
            if self.config.allow_anonymous {
                return ConnectVerdict::Allow(Principal {
                    id: String::new(),
                    permissions: Permissions {
                        publish: self.config.anonymous_publish.clone(),
                        subscribe: self.config.anonymous_subscribe.clone(),
                    },
                    attributes: Vec::new(),
                });
            }
            return ConnectVerdict::Deny("a token is required".into());
        };
        let claims = match crypto::verify_jwt(token, &self.keys, self.config.leeway_s) {
            Ok(json) => json,
            Err(reason) => return ConnectVerdict::Deny(reason),
        };
        let claims: Value = match serde_json::from_str(&claims) {
            Ok(v) => v,
            Err(_) => return ConnectVerdict::Deny("token claims are not JSON".into()),
        };
        match self.check(&claims) {
            Ok(p) => ConnectVerdict::Allow(p),
            Err(reason) => ConnectVerdict::Deny(reason),
        }
    }
}
