//! Presence (the chat online list) and direct messages (`sendToUid`) end to end over
//! real sockets: JSON over WebSocket as another language would speak it, and the Rust
//! client over QUIC.

use std::time::Duration;

use edgesync_client::{Client, ClientOptions, Event, PublishOptions, Start};
use edgesync_tests::TestGateway;
use edgesync_tests::json::Conn;
use serde_json::{Value, json};

async fn present(c: &mut Conn, id: u64, topic: &str) {
    c.send(json!({"t":"sub","id":id,"topic":topic,"presence":true}))
        .await;
    assert_eq!(c.next_of("subscribed").await["id"], id);
}

/// The next `join`/`leave` as (type, client).
async fn event(c: &mut Conn) -> (String, String) {
    for _ in 0..1000 {
        let v = c.next().await;
        let t = v["t"].as_str().unwrap_or_default();
        if t == "join" || t == "leave" {
            return (
                t.to_string(),
                v["client"].as_str().unwrap_or_default().to_string(),
            );
        }
    }
    panic!("no presence event");
}

async fn query(c: &mut Conn, id: u64, topic: &str) -> Value {
    c.send(json!({"t":"presence","id":id,"topic":topic})).await;
    let v = c.next_of("presence").await;
    assert_eq!(v["id"], id, "{v}");
    v
}

/// Nothing but what is asked for arrives on `c` for a moment (a push that should not
/// exist would be on its way; a slow machine can hide one, never invent one).
async fn quiet(c: &mut Conn) {
    if let Ok(v) = tokio::time::timeout(Duration::from_millis(300), c.next()).await {
        panic!("unexpected {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_one_member_and_joins_and_leaves_are_pushed_in_order() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.ws_url();
    let mut bob = Conn::open(&url, "bob").await;
    present(&mut bob, 2, "chat.room1").await;
    assert_eq!(
        event(&mut bob).await,
        ("join".into(), "bob".into()),
        "one's own join"
    );
    let mut alice1 = Conn::open(&url, "alice").await;
    present(&mut alice1, 2, "chat.room1").await;
    assert_eq!(event(&mut bob).await, ("join".into(), "alice".into()));
    // A second connection of the same client: no new member, no push.
    let mut alice2 = Conn::open(&url, "alice").await;
    present(&mut alice2, 2, "chat.room1").await;
    let v = query(&mut bob, 3, "chat.room1").await;
    assert_eq!(
        (v["count"].as_u64(), v["truncated"].as_bool()),
        (Some(2), Some(false)),
        "{v}"
    );
    assert_eq!(v["members"][0]["client"], "alice");
    assert_eq!(v["members"][0]["connections"], 2);
    assert!(v["members"][0]["since"].as_u64().unwrap_or(0) > 0);
    quiet(&mut bob).await;
    // Alice's first connection goes: she is still there.
    drop(alice1);
    let mut connections = Value::Null;
    for i in 0..200 {
        // The gateway notices the close a moment later (bounded wait).
        connections =
            query(&mut bob, 100 + i, "chat.room1").await["members"][0]["connections"].clone();
        if connections == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(connections, 1);
    quiet(&mut bob).await;
    // Her last one unsubscribes: she leaves.
    alice2
        .send(json!({"t":"unsub","id":5,"topic":"chat.room1"}))
        .await;
    assert_eq!(alice2.next_of("unsubscribed").await["id"], 5);
    assert_eq!(event(&mut bob).await, ("leave".into(), "alice".into()));
    assert_eq!(query(&mut bob, 6, "chat.room1").await["count"], 1);
    // Another room is another list; a plain subscription is not presence.
    let mut carol = Conn::open(&url, "carol").await;
    carol
        .send(json!({"t":"sub","id":2,"topic":"chat.room1"}))
        .await;
    assert_eq!(carol.next_of("subscribed").await["id"], 2);
    assert_eq!(query(&mut carol, 3, "chat.room2").await["count"], 0);
    assert_eq!(query(&mut carol, 4, "chat.room1").await["count"], 1);
    // presence with queue is refused.
    carol
        .send(json!({"t":"sub","id":9,"topic":"jobs.x","queue":"g","presence":true}))
        .await;
    let e = carol.next_of("error").await;
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_str()),
        (Some(9), Some("bad_request")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_room_answers_with_a_count_and_a_truncated_list() {
    let gw = TestGateway::start(|c| c.limits.max_presence_members = 3).await;
    let url = gw.ws_url();
    let mut conns = Vec::new();
    for i in 0..5 {
        let mut c = Conn::open(&url, &format!("m{i}")).await;
        present(&mut c, 2, "big").await;
        conns.push(c);
    }
    let v = query(&mut conns[0], 3, "big").await;
    assert_eq!(v["count"], 5, "{v}");
    assert_eq!(v["truncated"], true);
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_every_connection_and_wait_in_the_inbox_while_offline() {
    let gw = TestGateway::start(|c| {
        c.listen.quic =
            edgesync::config::ListenAddr(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))));
    })
    .await;
    let client = |url: String, id: &str| {
        let mut o = ClientOptions::new(url);
        o.ca = Some(gw.ca());
        o.client_id = Some(id.to_string());
        o.reconnect = false;
        o.request_timeout = Duration::from_secs(20);
        async move { Client::connect(o).await.expect("client connects") }
    };
    let sender = client(gw.ws_url(), "sender").await;
    // Dave is offline: the message waits in his inbox.
    let ack = sender
        .send_to_client("dave", "while you were out", PublishOptions::default())
        .await
        .expect("send");
    assert_eq!(ack.topic, "$inbox.dave");
    // Dave on two connections (QUIC and WebSocket): the first reads from earliest,
    // both get the next one live.
    let dave_q = client(gw.quic_url(), "dave").await;
    let dave_w = client(gw.ws_url(), "dave").await;
    let mut in_q = dave_q.inbox(Start::Earliest).await.expect("inbox");
    let mut in_w = dave_w.inbox(Start::Latest).await.expect("inbox");
    let first = in_q.next_timeout(Duration::from_secs(10)).await;
    assert!(
        matches!(&first, Some(Event::Msg(m)) if &m.data.0[..] == b"while you were out"),
        "{first:?}"
    );
    sender
        .send_to_client("dave", "hello both", PublishOptions::default())
        .await
        .expect("send");
    for sub in [&mut in_q, &mut in_w] {
        match sub.next_timeout(Duration::from_secs(10)).await {
            Some(Event::Msg(m)) => {
                assert_eq!(&m.data.0[..], b"hello both");
                assert_eq!(m.client, "sender", "the sender's client id comes along");
            }
            other => panic!("{other:?}"),
        }
    }
    // Nobody else may read Dave's inbox, nor all inboxes at once.
    for topic in ["$inbox.dave", "$inbox.>", "$inbox.*"] {
        match sender.subscribe(topic, Start::Earliest).await {
            Err(edgesync_client::ClientError::Server { code, .. }) => {
                assert_eq!(code, edgesync_client::ErrorCode::Forbidden, "{topic}")
            }
            other => panic!("{topic}: {other:?}"),
        }
    }
    match sender.history("$inbox.dave", Start::Earliest, None).await {
        Err(edgesync_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, edgesync_client::ErrorCode::Forbidden)
        }
        other => panic!("{other:?}"),
    }
    // A direct message needs exactly one target; `@` names principals, not clients.
    match sender
        .send_to_client("@eve", "x", PublishOptions::default())
        .await
    {
        Err(edgesync_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, edgesync_client::ErrorCode::BadRequest)
        }
        other => panic!("{other:?}"),
    }
    // Presence through the Rust client over QUIC.
    let mut room = dave_q
        .subscribe_present("chat.lobby", Start::Latest)
        .await
        .expect("present");
    match room.next_timeout(Duration::from_secs(10)).await {
        Some(Event::Join { client, topic, .. }) => {
            assert_eq!((client.as_str(), topic.as_str()), ("dave", "chat.lobby"))
        }
        other => panic!("{other:?}"),
    }
    let list = sender.presence("chat.lobby").await.expect("presence");
    assert_eq!((list.count, list.members[0].client.as_str()), (1, "dave"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_is_idled_out_and_leaves() {
    let gw = TestGateway::start(|c| {
        c.limits.idle_timeout_ms = 600;
        c.limits.ping_interval_ms = 200;
    })
    .await;
    let url = gw.ws_url();
    let mut bob = Conn::open(&url, "bob").await;
    present(&mut bob, 2, "room").await;
    assert_eq!(event(&mut bob).await, ("join".into(), "bob".into()));
    let mut eve = Conn::open(&url, "eve").await;
    present(&mut eve, 2, "room").await;
    assert_eq!(event(&mut bob).await, ("join".into(), "eve".into()));
    // Eve's process hangs: her socket stays open but nothing reads it, so the
    // gateway's pings go unanswered. Bob keeps reading (his client answers pings).
    let leave = event(&mut bob).await;
    assert_eq!(leave, ("leave".into(), "eve".into()));
    assert_eq!(query(&mut bob, 3, "room").await["count"], 1);
    drop(eve);
}
