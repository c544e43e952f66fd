//! Test plugin: auth hooks only. Allows every client as principal =
//! client id, publish/subscribe under `<client-id>.>` and `public.>`;
//! denies client ids starting with `banned`; traps on client ids starting
//! with `crash` (a failing auth plugin); denies subscriptions to
//! `secret.>`. Exports no message hooks, so the host must never call it
//! for messages.

use edgesync_plugin::{
    ConnInfo, ConnRef, ConnectVerdict, Permissions, Plugin, Principal, SubscribeVerdict,
};

struct AuthOnly;

#[edgesync_plugin::export]
impl Plugin for AuthOnly {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(AuthOnly)
    }

    fn on_connect(&self, conn: &ConnInfo) -> ConnectVerdict {
        if conn.client_id.starts_with("crash") {
            panic!("auth-only: asked to crash");
        }
        if conn.client_id.starts_with("banned") {
            return ConnectVerdict::Deny(format!("client `{}` is banned", conn.client_id));
        }
        let own = format!("{}.>", conn.client_id);
        ConnectVerdict::Allow(Principal {
            id: conn.client_id.clone(),
            permissions: Permissions {
                publish: vec![own.clone(), "public.>".into()],
                subscribe: vec![own, "public.>".into()],
            },
            attributes: vec![("remote".into(), conn.remote_addr.clone())],
        })
    }

    fn on_subscribe(&self, _conn: &ConnRef, pattern: &str) -> SubscribeVerdict {
        if edgesync_plugin::topic_matches("secret.>", pattern) || pattern.starts_with("secret.") {
            return SubscribeVerdict::Deny("secret topics are not for you".into());
        }
        SubscribeVerdict::Allow
    }

    fn on_disconnect(&self, conn: &ConnRef) {
        edgesync_plugin::log::info(&format!("bye {}", conn.client_id));
    }
}
