//! A raw JSON WebSocket connection, as a client in another language would speak
//! PROTOCOL.md: send objects, read them back one by one (several per frame allowed).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One raw JSON connection and the messages read but not yet taken.
pub struct Conn {
    ws: Ws,
    pub pending: Vec<Value>,
}

impl Conn {
    pub async fn open(url: &str, client_id: &str) -> Conn {
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "edgesync.json.v1".parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        let mut c = Conn {
            ws,
            pending: Vec::new(),
        };
        c.send(json!({"t":"connect","id":1,"client_id":client_id}))
            .await;
        assert_eq!(c.next().await["t"], "connected");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// The next message; panics on close or after 10 s of silence.
    pub async fn next(&mut self) -> Value {
        loop {
            if !self.pending.is_empty() {
                return self.pending.remove(0);
            }
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a message within 10 s")
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = msg {
                for line in t.lines().filter(|l| !l.trim().is_empty()) {
                    self.pending.push(serde_json::from_str(line).expect("json"));
                }
            }
        }
    }

    /// The next message of type `t` (others are skipped).
    pub async fn next_of(&mut self, t: &str) -> Value {
        for _ in 0..10_000 {
            let v = self.next().await;
            if v["t"] == t {
                return v;
            }
        }
        panic!("no {t}");
    }

    /// Join `group` on `pattern` with extra `sub` fields; wait for `subscribed`.
    pub async fn join(&mut self, id: u64, pattern: &str, group: &str, extra: Value) {
        let mut sub = json!({"t":"sub","id":id,"topic":pattern,"queue":group});
        if let (Some(m), Some(e)) = (sub.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        self.send(sub).await;
        let v = self.next().await;
        assert_eq!(
            (v["t"].as_str(), v["id"].as_u64()),
            (Some("subscribed"), Some(id)),
            "{v}"
        );
    }

    /// Answer the delivery `msg` with `t` (`ack`, `nak`, …) and wait for `ok`.
    pub async fn answer(&mut self, id: u64, t: &str, msg: &Value, extra: Value) -> Value {
        let mut a = json!({
            "t": t, "id": id, "queue": msg["queue"], "topic": msg["topic"],
            "origin": msg["origin"], "epoch": msg["epoch"], "seq": msg["seq"],
        });
        if let (Some(m), Some(e)) = (a.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        self.send(a).await;
        let mut kept = Vec::new();
        for _ in 0..10_000 {
            let v = self.next().await;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                // Deliveries that arrived first stay first.
                kept.append(&mut self.pending);
                self.pending = kept;
                return v;
            }
            kept.push(v);
        }
        panic!("no answer to {id}");
    }
}
