//! Behaviour of the first-party plugins in `plugins/`.

mod common;

use common::*;
use edgesync_plugin_host::{BatchBuilder, ConnectVerdict, MessageVerdict, Plugin};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const RSA_PRIVATE: &str = include_str!("fixtures/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("fixtures/rsa_public.pem");
const ED_PRIVATE: &str = include_str!("fixtures/ed25519_private.pem");
const ED_PUBLIC: &str = include_str!("fixtures/ed25519_public.pem");

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("encode token")
}

async fn jwt_plugin(h: &TestHost) -> Plugin {
    h.load(config_json(
        "jwt",
        "jwt-auth",
        json!({
            "keys": [
                {"alg": "HS256", "key": "s3cret"},
                {"alg": "RS256", "key": RSA_PUBLIC},
                {"alg": "EdDSA", "key": ED_PUBLIC},
            ],
            "leeway_s": 0,
            "issuer": "edgesync-test",
            "default_subscribe": ["public.>"],
            "attributes": ["role"],
        }),
    ))
    .await
}

async fn connect(p: &Plugin, token: Option<&str>) -> ConnectVerdict {
    p.on_connect(&conn_info("dev-1", token))
        .await
        .expect("on-connect")
}

#[tokio::test]
async fn jwt_auth_verifies_all_algorithms_and_maps_claims() {
    let h = host();
    let p = jwt_plugin(&h).await;
    let claims = json!({
        "sub": "alice", "iss": "edgesync-test", "exp": now_s() + 600, "role": "admin",
        "publish": ["users.{principal}.>", "chat.>"],
    });
    let keys = [
        (Algorithm::HS256, EncodingKey::from_secret(b"s3cret")),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key"),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed key"),
        ),
    ];
    for (alg, key) in &keys {
        let t = token(*alg, key, &claims);
        let ConnectVerdict::Allow(principal) = connect(&p, Some(&t)).await else {
            panic!("{alg:?} token must be accepted");
        };
        assert_eq!(principal.id, "alice");
        assert_eq!(
            principal.permissions.publish,
            vec!["users.alice.>".to_string(), "chat.>".to_string()]
        );
        assert_eq!(
            principal.permissions.subscribe,
            vec!["public.>".to_string()]
        );
        assert_eq!(
            principal.attributes,
            vec![("role".to_string(), "admin".to_string())]
        );
    }
}

#[tokio::test]
async fn jwt_auth_denies_bad_tokens() {
    let h = host();
    let p = jwt_plugin(&h).await;
    let hs = EncodingKey::from_secret(b"s3cret");
    let good = json!({"sub": "a", "iss": "edgesync-test", "exp": now_s() + 600});

    assert_eq!(
        connect(&p, None).await,
        ConnectVerdict::Deny("a token is required".into())
    );
    let expired = token(
        Algorithm::HS256,
        &hs,
        &json!({"sub": "a", "iss": "edgesync-test", "exp": now_s() - 60}),
    );
    assert!(
        matches!(connect(&p, Some(&expired)).await, ConnectVerdict::Deny(r) if r.contains("Expired"))
    );
    let forged = token(Algorithm::HS256, &EncodingKey::from_secret(b"wrong"), &good);
    assert!(
        matches!(connect(&p, Some(&forged)).await, ConnectVerdict::Deny(r) if r.contains("invalid token"))
    );
    let wrong_iss = token(
        Algorithm::HS256,
        &hs,
        &json!({"sub": "a", "iss": "evil", "exp": now_s() + 600}),
    );
    assert_eq!(
        connect(&p, Some(&wrong_iss)).await,
        ConnectVerdict::Deny("token issuer not accepted".into())
    );
    let no_sub = token(Algorithm::HS256, &hs, &json!({"iss": "edgesync-test"}));
    assert!(
        matches!(connect(&p, Some(&no_sub)).await, ConnectVerdict::Deny(r) if r.contains("`sub`"))
    );
    assert!(matches!(
        connect(&p, Some("not.a.jwt")).await,
        ConnectVerdict::Deny(_)
    ));
}

#[tokio::test]
async fn transform_redacts_renames_and_enriches() {
    let h = host();
    let p = h
        .load(config_json(
            "redact",
            "transform",
            json!({
                "topics": ["chat.>"],
                "redact": ["password", "card.number"],
                "redact_with": "***",
                "rename": {"temp": "temperature"},
                "enrich": {"site": "edge-1"},
                "add_principal": "sender",
                "non_json": "reject",
            }),
        ))
        .await;
    let input =
        json!({"password": "hunter2", "card": {"number": "4111", "exp": "12/30"}, "temp": 21});
    let v = p
        .on_message(
            &conn("alice"),
            &msg("chat.room", input.to_string().as_bytes()),
        )
        .await
        .expect("call");
    let MessageVerdict::Replace(out) = v else {
        panic!("expected replace, got {v:?}")
    };
    let out: Value = serde_json::from_slice(&out.payload).expect("json");
    assert_eq!(
        out,
        json!({"password": "***", "card": {"number": "***", "exp": "12/30"}, "temperature": 21,
               "site": "edge-1", "sender": "alice"})
    );
    // Other topics are untouched; non-JSON is rejected by config.
    let v = p
        .on_message(&conn("a"), &msg("other.x", b"{\"password\":1}"))
        .await
        .expect("call");
    assert_eq!(v, MessageVerdict::Pass);
    let v = p
        .on_message(&conn("a"), &msg("chat.x", b"plain text"))
        .await
        .expect("call");
    assert!(matches!(v, MessageVerdict::Reject(_)));
}

#[tokio::test]
async fn schema_rejects_with_a_clear_reason() {
    let h = host();
    let p = h
        .load(config_json(
            "schema",
            "schema",
            json!({"rules": [{
                "topics": "sensors.>", "max_bytes": 200, "required": ["id", "value"],
                "fields": {"id": "string", "value": "number", "unit": "string|null"}, "additional": false,
            }]}),
        ))
        .await;
    let check = |payload: Value| {
        let p = p.clone();
        async move {
            p.on_message(
                &conn("a"),
                &msg("sensors.t1", payload.to_string().as_bytes()),
            )
            .await
            .expect("call")
        }
    };
    assert_eq!(
        check(json!({"id": "t1", "value": 21.5, "unit": null})).await,
        MessageVerdict::Pass
    );
    assert_eq!(
        check(json!({"id": "t1", "value": "hot"})).await,
        MessageVerdict::Reject(
            "schema (sensors.>): field `value` must be number, got string".into()
        )
    );
    assert_eq!(
        check(json!({"id": "t1"})).await,
        MessageVerdict::Reject("schema (sensors.>): field `value` is required".into())
    );
    assert_eq!(
        check(json!({"id": "t1", "value": 1, "x": 1})).await,
        MessageVerdict::Reject("schema (sensors.>): field `x` is not allowed".into())
    );
    let v = p
        .on_message(&conn("a"), &msg("sensors.t1", b"[1]"))
        .await
        .expect("call");
    assert!(matches!(v, MessageVerdict::Reject(r) if r.contains("JSON object")));
    let v = p
        .on_message(&conn("a"), &msg("other", b"anything"))
        .await
        .expect("call");
    assert_eq!(v, MessageVerdict::Pass);

    // The same rules over a batch: the guest returns only the rejections,
    // by index; the host spreads them back, passes in between.
    let ok = json!({"id": "t1", "value": 1}).to_string();
    let batch = BatchBuilder::from_messages(&[
        msg("sensors.t1", ok.as_bytes()),
        msg("sensors.t1", b"[1]"),
        msg("other", b"anything"),
        msg("sensors.t1", json!({"id": "t1"}).to_string().as_bytes()),
        msg("sensors.t1", ok.as_bytes()),
    ])
    .expect("batch");
    let v = p.on_batch(&conn("a"), &batch).await.expect("batch call");
    assert_eq!(v.exceptions().len(), 2);
    let v = v.into_vec();
    assert_eq!(v.len(), 5);
    assert_eq!(v[0], MessageVerdict::Pass);
    assert!(matches!(&v[1], MessageVerdict::Reject(r) if r.contains("JSON object")));
    assert_eq!(v[2], MessageVerdict::Pass);
    assert_eq!(
        v[3],
        MessageVerdict::Reject("schema (sensors.>): field `value` is required".into())
    );
    assert_eq!(v[4], MessageVerdict::Pass);
}

#[tokio::test]
async fn rate_limit_counts_per_principal_in_kv() {
    let h = host();
    let p = h
        .load(config_json(
            "rl",
            "rate-limit",
            json!({"limit": 3, "window_ms": 60000}),
        ))
        .await;
    let m = msg("chat.x", b"hi");
    for _ in 0..3 {
        assert_eq!(
            p.on_message(&conn("alice"), &m).await.expect("call"),
            MessageVerdict::Pass
        );
    }
    let v = p.on_message(&conn("alice"), &m).await.expect("call");
    assert_eq!(
        v,
        MessageVerdict::Reject("rate limit: more than 3 messages per 60000 ms".into())
    );
    // Another principal has its own budget.
    assert_eq!(
        p.on_message(&conn("bob"), &m).await.expect("call"),
        MessageVerdict::Pass
    );
    // The counters live in the host's kv, scoped by plugin name.
    use edgesync_plugin_host::HostServices;
    let keys = h
        .services
        .kv_scan_prefix("rl", "rl:p:alice:", 10)
        .expect("scan");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].1.value, b"4");

    // Anonymous senders are keyed by connection, not by the client id they choose: a
    // client claiming a victim's id spends its own budget, not the victim's.
    let anonymous = |conn_id: u64, client: &str| edgesync_plugin_host::ConnRef {
        conn_id,
        client_id: client.into(),
        principal: String::new(),
    };
    for _ in 0..4 {
        let _ = p
            .on_message(&anonymous(100, "victim"), &m)
            .await
            .expect("call");
    }
    assert_eq!(
        p.on_message(&anonymous(101, "victim"), &m)
            .await
            .expect("call"),
        MessageVerdict::Pass,
        "the real client with that id is not locked out"
    );
}
