//! Host capabilities through `HostServices`: kv, metrics, log, config.

mod common;

use common::*;
use edgesync_plugin_host::{HostServices, MessageVerdict, Plugin};

async fn kv(p: &Plugin, cmd: &str) -> String {
    match p
        .on_message(&conn("a"), &msg("kv.cmd", cmd.as_bytes()))
        .await
        .expect("call")
    {
        MessageVerdict::Replace(m) => String::from_utf8(m.payload).expect("utf8"),
        other => panic!("expected replace, got {other:?}"),
    }
}

#[tokio::test]
async fn kv_operations_go_through_host_services_scoped_by_plugin() {
    let h = host();
    let p = h.load(config("counter", "kv-counter")).await;
    assert_eq!(kv(&p, "incr hits").await, "1");
    assert_eq!(kv(&p, "incr hits 5").await, "6");
    assert_eq!(kv(&p, "set name alice").await, "v1");
    assert_eq!(kv(&p, "get name").await, "alice@1");
    assert_eq!(kv(&p, "cas name 1 bob").await, "v2");
    assert_eq!(kv(&p, "cas name 1 carol").await, "mismatch");
    assert_eq!(kv(&p, "cas fresh none x").await, "v1");
    assert_eq!(kv(&p, "get missing").await, "none");
    assert_eq!(kv(&p, "incr name").await, "error: KvError::NotACounter");
    assert_eq!(kv(&p, "scan h").await, "hits=6");
    assert_eq!(kv(&p, "del name").await, "true");
    assert_eq!(kv(&p, "del name").await, "false");

    // Stored by the services under the plugin's name; another plugin with
    // the same keys sees its own scope.
    assert_eq!(
        h.services
            .kv_get("counter", "hits")
            .expect("get")
            .map(|e| e.value),
        Some(b"6".to_vec())
    );
    let other = h.load(config("other", "kv-counter")).await;
    assert_eq!(kv(&other, "get hits").await, "none");
    // Keys past the bound are refused by the host before the services.
    let long = format!("get {}", "k".repeat(300));
    assert_eq!(kv(&p, &long).await, "error: KvError::TooLarge");
}

#[tokio::test]
async fn plugin_metrics_are_registered_and_recorded() {
    let h = host();
    let mut c = config("metrics-user", "metrics-user");
    c.limits.pool_size = 3; // every instance defines the same metrics
    let p = h.load(c).await;
    assert_eq!(
        p.metric_names(),
        vec![
            "edgesync_plugin_metrics_user_messages_total".to_string(),
            "edgesync_plugin_metrics_user_last_payload_bytes".to_string(),
            "edgesync_plugin_metrics_user_payload_bytes".to_string(),
        ]
    );
    for (topic, payload) in [
        ("chat.a", &b"12345"[..]),
        ("chat.b", b"1"),
        ("sensors.x", b"123"),
    ] {
        assert_eq!(
            p.on_message(&conn("a"), &msg(topic, payload))
                .await
                .expect("call"),
            MessageVerdict::Pass
        );
    }
    assert_eq!(
        h.metric(
            "edgesync_plugin_metrics_user_messages_total",
            &[("class", "chat")]
        ),
        Some(2.0)
    );
    assert_eq!(
        h.metric(
            "edgesync_plugin_metrics_user_messages_total",
            &[("class", "sensors")]
        ),
        Some(1.0)
    );
    assert_eq!(
        h.metric("edgesync_plugin_metrics_user_last_payload_bytes", &[]),
        Some(3.0)
    );
    assert_eq!(
        h.metric("edgesync_plugin_metrics_user_payload_bytes_count", &[]),
        Some(3.0)
    );
    // The host's own metrics sit on the same registry.
    assert_eq!(
        h.metric(
            "edgesync_plugin_calls_total",
            &[
                ("plugin", "metrics-user"),
                ("hook", "on-message"),
                ("outcome", "ok")
            ]
        ),
        Some(3.0)
    );
    // Unloading unregisters the plugin's metrics.
    drop(p);
    tokio::task::yield_now().await;
    assert_eq!(
        h.metric(
            "edgesync_plugin_metrics_user_messages_total",
            &[("class", "chat")]
        ),
        None
    );
}
