//! Which web pages may open a WebSocket to the gateway (`listen.allowed_origins`).
//!
//! A browser lets any page open a WebSocket to any address and sends the page's origin
//! in the `Origin` header; without a check, a page on `https://evil.example` that a
//! user of the gateway happens to visit can read and publish with whatever the
//! user's network position or cookies grant (cross-site WebSocket hijacking, security
//! finding 12). Programs that are not browsers send no `Origin` and are not affected.
//!
//! The policy, in order:
//! 1. no `Origin` header: allowed (not a browser);
//! 2. `allowed_origins` contains `"*"`: every origin allowed;
//! 3. the origin is listed (scheme, host and port compared case-insensitively): allowed;
//! 4. `allowed_origins` is empty, the listener is on a loopback address and the origin's
//!    host is loopback too (`localhost`, `127.x.x.x`, `[::1]`): allowed — the development
//!    default, so a page served from `http://localhost:3000` works out of the box;
//! 5. anything else — `null` included — is refused with HTTP 403 before the upgrade.
//!
//! A listener on a non-loopback address therefore accepts browsers only from listed
//! origins. A page's origin cannot be forged by the page; a non-browser client can send
//! any header, which is why origins are not authentication (auth plugins are).

/// The origin policy of one WebSocket listener.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// Listed origins, normalised (lower case, no trailing `/`).
    allowed: Vec<String>,
    /// `"*"` was listed.
    any: bool,
    /// The development default applies (nothing listed, loopback listener).
    loopback_default: bool,
}

impl OriginPolicy {
    /// The policy for a listener on a loopback address or not, with `allowed_origins`
    /// (already validated by `config::validate_origin`).
    pub fn new(allowed: &[String], listener_is_loopback: bool) -> Self {
        OriginPolicy {
            allowed: allowed.iter().map(|o| normalise(o)).collect(),
            any: allowed.iter().any(|o| o == "*"),
            loopback_default: allowed.is_empty() && listener_is_loopback,
        }
    }

    /// Whether a handshake carrying `origin` (the `Origin` header) may proceed.
    ///
    /// # Errors
    /// The reason, for the 403 answer.
    pub fn check(&self, origin: Option<&str>) -> Result<(), String> {
        let Some(origin) = origin else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let origin = normalise(origin);
        if self.allowed.contains(&origin) {
            return Ok(());
        }
        if self.loopback_default && host(&origin).is_some_and(is_loopback_host) {
            return Ok(());
        }
        Err(format!(
            "origin {origin:?} is not in listen.allowed_origins"
        ))
    }
}

fn normalise(origin: &str) -> String {
    let o = origin.trim().to_ascii_lowercase();
    match o.strip_suffix('/') {
        Some(s) => s.to_string(),
        None => o,
    }
}

/// The host of a normalised origin (`scheme://host[:port]`), brackets kept for IPv6.
fn host(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    if rest.starts_with('[') {
        let end = rest.find(']')?;
        return Some(&rest[..=end]);
    }
    Some(rest.split(':').next().unwrap_or(rest))
}

fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") || host == "[::1]" {
        return true;
    }
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_origin_is_not_a_browser_and_always_passes() {
        assert!(OriginPolicy::new(&[], false).check(None).is_ok());
    }

    #[test]
    fn a_public_listener_refuses_unlisted_origins() {
        let p = OriginPolicy::new(&["https://app.example".into()], false);
        assert!(p.check(Some("https://APP.example")).is_ok());
        assert!(p.check(Some("https://app.example/")).is_ok());
        assert!(p.check(Some("https://evil.example")).is_err());
        assert!(
            p.check(Some("http://app.example")).is_err(),
            "scheme matters"
        );
        assert!(
            p.check(Some("https://app.example:8443")).is_err(),
            "port matters"
        );
        assert!(p.check(Some("null")).is_err());
        let p = OriginPolicy::new(&[], false);
        assert!(p.check(Some("http://localhost:3000")).is_err());
    }

    #[test]
    fn a_loopback_listener_allows_loopback_pages_by_default_and_nothing_else() {
        let p = OriginPolicy::new(&[], true);
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://[::1]:5173",
            "https://app.localhost",
        ] {
            assert!(p.check(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "null",
        ] {
            assert!(p.check(Some(bad)).is_err(), "{bad}");
        }
        // Listing origins replaces the development default.
        let p = OriginPolicy::new(&["https://app.example".into()], true);
        assert!(p.check(Some("http://localhost:3000")).is_err());
    }

    #[test]
    fn star_allows_every_origin() {
        let p = OriginPolicy::new(&["*".into()], false);
        assert!(p.check(Some("https://anything.example")).is_ok());
    }
}
