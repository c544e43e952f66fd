//! Every hook family through real components built from `plugins/`.

mod common;

use std::time::Duration;

use common::*;
use edgesync_plugin_host::{
    BatchBuilder, ConnectVerdict, ErrorKind, Family, Header, HeadersRef, Hook, MessageRef,
    MessageVerdict, PluginError, SenderRef, SubscribeVerdict, WriteVerdict,
};

#[tokio::test]
async fn auth_hooks_allow_deny_and_permissions() {
    let h = host();
    let auth = h.load(config("auth", "auth-only")).await;
    assert_eq!(
        auth.exports().iter().collect::<Vec<_>>(),
        vec![Family::Lifecycle, Family::Auth]
    );

    let ConnectVerdict::Allow(p) = auth
        .on_connect(&conn_info("alice", None))
        .await
        .expect("call")
    else {
        panic!("alice must be allowed");
    };
    assert_eq!(p.id, "alice");
    assert_eq!(
        p.permissions.publish,
        vec!["alice.>".to_string(), "public.>".to_string()]
    );
    assert_eq!(
        p.attributes,
        vec![("remote".to_string(), "127.0.0.1:5000".to_string())]
    );

    let denied = auth
        .on_connect(&conn_info("banned-bob", None))
        .await
        .expect("call");
    assert_eq!(
        denied,
        ConnectVerdict::Deny("client `banned-bob` is banned".into())
    );

    let sub = auth
        .on_subscribe(&conn("alice"), "secret.plans")
        .await
        .expect("call");
    assert!(matches!(sub, SubscribeVerdict::Deny(_)));
    let sub = auth
        .on_subscribe(&conn("alice"), "public.news")
        .await
        .expect("call");
    assert_eq!(sub, SubscribeVerdict::Allow);
    auth.on_disconnect(&conn("alice"))
        .await
        .expect("disconnect");
}

#[tokio::test]
async fn an_auth_only_plugin_is_never_called_for_messages() {
    let h = host();
    let auth = h.load(config("auth", "auth-only")).await;
    let created = h.metric(
        "edgesync_plugin_instances_total",
        &[("plugin", "auth"), ("event", "created")],
    );

    for hook in [Hook::OnMessage, Hook::OnBatch, Hook::OnWrite, Hook::OnTimer] {
        assert!(!auth.has(hook));
    }
    let err = auth
        .on_message(&conn("alice"), &msg("public.x", b"hi"))
        .await
        .err();
    assert!(
        matches!(
            err,
            Some(PluginError::NotExported {
                hook: Hook::OnMessage,
                ..
            })
        ),
        "{err:?}"
    );
    let batch = BatchBuilder::from_messages(&[msg("public.x", b"hi")]).expect("batch");
    let err = auth
        .on_batch(&conn("alice"), &batch)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotExported));
    let err = auth
        .on_write(&conn("alice"), &msg("public.x", b"hi"))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotExported));

    // The host did not even try: no instance was created or checked out,
    // and no call was counted for a message hook.
    assert_eq!(
        h.metric(
            "edgesync_plugin_instances_total",
            &[("plugin", "auth"), ("event", "created")]
        ),
        created
    );
    assert_eq!(
        h.metric(
            "edgesync_plugin_calls_total",
            &[
                ("plugin", "auth"),
                ("hook", "on-message"),
                ("outcome", "ok")
            ]
        ),
        Some(0.0)
    );
    assert_eq!(auth.idle_instances(), 1);

    // And the reverse: a message-only plugin has no auth hooks.
    let pass = h.load(config("pass", "pass")).await;
    let err = pass
        .on_connect(&conn_info("a", None))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotExported));
}

#[tokio::test]
async fn message_hooks_pass_replace_and_batch() {
    let h = host();
    let pass = h.load(config("pass", "pass")).await;
    assert_eq!(
        pass.on_message(&conn("a"), &msg("t.a", b"x"))
            .await
            .expect("call"),
        MessageVerdict::Pass
    );

    let upper = h.load(config("upper", "trap")).await;
    let v = upper
        .on_message(&conn("a"), &msg("t.a", b"shout"))
        .await
        .expect("call");
    assert_eq!(v, MessageVerdict::Replace(msg("t.a", b"SHOUT")));

    // Borrowed views in the gateway's header form: headers (empty values,
    // non-ASCII, repeated names) survive packing, unpacking and the replace.
    let pairs = [
        ("h1".to_string(), "v1".to_string()),
        ("h1".to_string(), String::new()),
        ("ünï".to_string(), "çødé".to_string()),
    ];
    let sender = SenderRef {
        conn_id: 9,
        client_id: "c",
        principal: "",
    };
    let view = MessageRef {
        topic: "t.h",
        headers: HeadersRef::Pairs(&pairs),
        payload: b"abc",
    };
    let v = upper.on_message_ref(sender, view).await.expect("call");
    let mut want = msg("t.h", b"ABC");
    want.headers = pairs
        .iter()
        .map(|(name, value)| Header {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    assert_eq!(v, MessageVerdict::Replace(want));

    // on-batch: derived from on-message by the SDK; one verdict each.
    let mut b = BatchBuilder::default();
    for p in [&b"a"[..], b"bb", b""] {
        b.push("t.b", &[], p).expect("push");
    }
    let verdicts = upper
        .on_batch(&conn("a"), &b.finish())
        .await
        .expect("batch");
    assert_eq!(
        verdicts.into_vec(),
        vec![
            MessageVerdict::Replace(msg("t.b", b"A")),
            MessageVerdict::Replace(msg("t.b", b"BB")),
            MessageVerdict::Replace(msg("t.b", b"")),
        ]
    );
    let verdicts = pass
        .on_batch(&conn("a"), &BatchBuilder::default().finish())
        .await
        .expect("empty");
    assert!(verdicts.is_empty());

    // Trimmed idle instances are re-created on demand.
    pass.trim_idle(0);
    assert_eq!(pass.idle_instances(), 0);
    assert_eq!(
        pass.on_message(&conn("a"), &msg("t.a", b"x"))
            .await
            .expect("call"),
        MessageVerdict::Pass
    );
    assert_eq!(pass.idle_instances(), 1);
}

#[tokio::test]
async fn storage_hook_skips_ephemeral_and_hints_retention() {
    let h = host();
    let retention = h
        .load(config_json(
            "retention",
            "retention",
            serde_json::json!({
                "ephemeral": ["presence.>"],
                "rules": [{"topics": "chat.>", "max_age_ms": 60000, "max_count": 100}]
            }),
        ))
        .await;
    assert_eq!(
        retention.exports().iter().collect::<Vec<_>>(),
        vec![Family::Lifecycle, Family::Storage]
    );
    let v = retention
        .on_write(&conn("a"), &msg("presence.alice", b"{}"))
        .await
        .expect("call");
    assert_eq!(v, WriteVerdict::Skip);
    let v = retention
        .on_write(&conn("a"), &msg("chat.room1", b"{}"))
        .await
        .expect("call");
    let WriteVerdict::AcceptWith(changes) = v else {
        panic!("expected accept-with, got {v:?}")
    };
    let hint = changes.retention.expect("hint");
    assert_eq!(
        (hint.max_age_ms, hint.max_count, hint.max_bytes),
        (Some(60000), Some(100), None)
    );
    assert_eq!(changes.payload, None);
    let v = retention
        .on_write(&conn("a"), &msg("other.x", b"{}"))
        .await
        .expect("call");
    assert_eq!(v, WriteVerdict::Accept);
}

#[tokio::test]
async fn ticker_publishes_on_schedule() {
    let h = host();
    let mut c = config_json(
        "ticker",
        "ticker",
        serde_json::json!({"topic": "time.tick", "interval_ms": 20, "node": "edge-1"}),
    );
    c.limits.pool_size = 2; // two instances run init: still one timer
    c.grants.pubsub = true;
    let ticker = h.load(c).await;
    assert_eq!(ticker.timers(), vec!["tick".to_string()]);
    // Paused time (after the load: compiling waits on a blocking thread, and paused time
    // would jump over its deadlines): 230 ms pass exactly, however loaded the machine.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_millis(230)).await;
    let published = h.services.published();
    // Due every 20 ms from the load: 11 in 230 ms (12 if the load straddled a tick).
    assert!(
        (11..=12).contains(&published.len()),
        "{} ticks in 230 ms of a 20 ms timer (twice as many: set twice?)",
        published.len()
    );
    let mut last_seq = 0;
    for p in &published {
        assert_eq!(
            (p.plugin.as_str(), p.topic.as_str()),
            ("ticker", "time.tick")
        );
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
        assert_eq!(v["node"], "edge-1");
        let seq = v["seq"].as_i64().expect("seq");
        assert!(seq > last_seq, "seq must increase");
        last_seq = seq;
    }
}

#[tokio::test]
async fn ungranted_capability_fails_the_load() {
    let h = host();
    let c = config_json("ticker", "ticker", serde_json::json!({"topic": "t.x"}));
    // grants.pubsub defaults to false.
    let err = h.host.load(c).await.expect_err("load must fail");
    assert_eq!(err.kind(), ErrorKind::Load);
    assert!(err.to_string().contains("grants.pubsub"), "{err}");
}

#[tokio::test]
async fn init_errors_fail_the_load() {
    let h = host();
    let c = config_json("schema", "schema", serde_json::json!({"rules": "nope"}));
    let err = h.host.load(c).await.expect_err("load must fail");
    assert_eq!(err.kind(), ErrorKind::Init);
    assert!(err.to_string().contains("schema config"), "{err}");
}

#[tokio::test]
async fn instances_retire_after_a_randomised_call_budget() {
    let h = host();
    let mut c = config("pass", "pass");
    c.limits.retire_after_calls = 4; // each instance draws from [2, 6]
    let p = h.load(c).await;
    for _ in 0..40 {
        assert_eq!(
            p.on_message(&conn("a"), &msg("t.x", b"y"))
                .await
                .expect("call"),
            MessageVerdict::Pass
        );
    }
    let retired = h.metric(
        "edgesync_plugin_instances_total",
        &[("plugin", "pass"), ("event", "retired")],
    );
    let retired = retired.unwrap_or(0.0);
    assert!(
        (6.0..=20.0).contains(&retired),
        "retired {retired} instances in 40 calls"
    );
}

#[tokio::test]
async fn on_demand_allocation_works_when_pooling_is_off() {
    let h = host_with(edgesync_plugin_host::HostConfig {
        pooling: false,
        ..Default::default()
    });
    assert_eq!(
        h.host.allocator(),
        edgesync_plugin_host::Allocator::OnDemand
    );
    let p = h.load(config("pass", "pass")).await;
    assert_eq!(
        p.on_message(&conn("a"), &msg("t.x", b"y"))
            .await
            .expect("call"),
        MessageVerdict::Pass
    );
    // The default engine pools (or fell back, with a warning, where the
    // address space could not be reserved).
    let pooled = host();
    println!("default allocator: {:?}", pooled.host.allocator());
}

/// The gateway calls hooks from spawned tasks: every hook future is `Send`.
#[allow(dead_code)]
fn hook_futures_are_send(p: &edgesync_plugin_host::Plugin) {
    fn send<T: Send>(_: T) {}
    let (c, m) = (conn("a"), msg("t", b""));
    let info = conn_info("a", None);
    let batch = BatchBuilder::default().finish();
    send(p.on_connect(&info));
    send(p.on_subscribe(&c, "t"));
    send(p.on_disconnect(&c));
    send(p.on_message(&c, &m));
    send(p.on_batch(&c, &batch));
    send(p.on_write(&c, &m));
    send(p.on_timer("t"));
    send(p.init());
    send(p.reload(config("x", "pass")));
}
