//! Test plugin: mutual TLS as the only credential. Allows a connection only
//! when the gateway verified a client certificate (`conn-info.tls-identity`
//! is set), makes that identity the principal id, and grants publish and
//! subscribe on `user.<identity>.>` only. Denies every other connection with
//! the reason `a client certificate is required`, and an identity that is not one
//! plain topic segment (`.`, `*`, `>`, whitespace, control, leading `$`): identities
//! are data, never patterns.

use edgesync_plugin::{
    ConnInfo, ConnRef, ConnectVerdict, Permissions, Plugin, Principal, SubscribeVerdict,
};

struct MtlsAuth;

#[edgesync_plugin::export]
impl Plugin for MtlsAuth {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(MtlsAuth)
    }

    fn on_connect(&self, conn: &ConnInfo) -> ConnectVerdict {
        let Some(id) = conn.tls_identity.clone() else {
            return ConnectVerdict::Deny("a client certificate is required".into());
        };
        if id.is_empty()
            || id.starts_with('$')
            || id
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
        {
            return ConnectVerdict::Deny(format!(
                "identity {id:?} cannot stand in a topic pattern"
            ));
        }
        let own = format!("user.{id}.>");
        ConnectVerdict::Allow(Principal {
            id,
            permissions: Permissions {
                publish: vec![own.clone()],
                subscribe: vec![own],
            },
            attributes: vec![("remote".into(), conn.remote_addr.clone())],
        })
    }

    fn on_subscribe(&self, _conn: &ConnRef, _pattern: &str) -> SubscribeVerdict {
        SubscribeVerdict::Allow
    }

    fn on_disconnect(&self, _conn: &ConnRef) {}
}
