//! Writes the fuzz seed corpora (`fuzz/corpus/<target>/`) from real values: frames
//! encoded by the protocol crate, records encoded by the store, a journal written by
//! the storage engine, and the default config. Rerun after a format change:
//!
//! ```text
//! cargo run -p edgesync --example fuzz_seeds -- fuzz/corpus
//! ```
//!
//! Each seed's name says what it is; libFuzzer adds what it finds under hashed names.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bytes::Bytes;
use edgesync::config::Config;
use edgesync::model::Publish;
use edgesync::store::{Record, Store, StoreOptions};
use edgesync_protocol::codec::LengthPrefixed;
use edgesync_protocol::frame::{GapReason, LimitsInfo};
use edgesync_protocol::{
    ClientFrame, Cursor, Encoding, ErrorCode, Headers, Msg, Origin, Payload, ServerFrame, Start,
};

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let mut seeds = Seeds { root, written: 0 };
    client_frames(&mut seeds)?;
    server_frames(&mut seeds)?;
    quic_framing(&mut seeds)?;
    cursors(&mut seeds)?;
    records(&mut seeds)?;
    journals(&mut seeds)?;
    configs(&mut seeds)?;
    println!(
        "{} seeds written under {}",
        seeds.written,
        seeds.root.display()
    );
    Ok(())
}

struct Seeds {
    root: PathBuf,
    written: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        std::fs::write(dir.join(name), bytes)?;
        self.written += 1;
        Ok(())
    }
}

fn headers() -> Headers {
    Headers(vec![
        ("content-type".into(), "application/json".into()),
        ("trace".into(), "00-ab".into()),
    ])
}

fn client_commands() -> Vec<(&'static str, ClientFrame)> {
    let cursor = cursor().encode();
    vec![
        (
            "connect",
            ClientFrame::Connect {
                id: 1,
                token: None,
                client_id: None,
                cursor: None,
            },
        ),
        (
            "connect-full",
            ClientFrame::Connect {
                id: 1,
                token: Some("eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
                client_id: Some("sensor-7".into()),
                cursor: Some(cursor.clone()),
            },
        ),
        (
            "sub",
            ClientFrame::Sub {
                id: 2,
                topic: "room.1".into(),
                start: None,
                queue: None,
                max_unacked: None,
                ack_wait_ms: None,
                max_deliveries: None,
                ordering: None,
                presence: false,
            },
        ),
        (
            "sub-pattern",
            ClientFrame::Sub {
                id: 3,
                topic: "room.*.>".into(),
                start: Some(Start::Earliest),
                queue: None,
                max_unacked: None,
                ack_wait_ms: None,
                max_deliveries: None,
                ordering: None,
                presence: false,
            },
        ),
        (
            "sub-last",
            ClientFrame::Sub {
                id: 4,
                topic: "a".into(),
                start: Some(Start::Last(5)),
                queue: None,
                max_unacked: None,
                ack_wait_ms: None,
                max_deliveries: None,
                ordering: None,
                presence: false,
            },
        ),
        (
            "sub-cursor",
            ClientFrame::Sub {
                id: 5,
                topic: "a.b".into(),
                start: Some(Start::Cursor(cursor.clone())),
                queue: None,
                max_unacked: None,
                ack_wait_ms: None,
                max_deliveries: None,
                ordering: None,
                presence: false,
            },
        ),
        (
            "unsub",
            ClientFrame::Unsub {
                id: 6,
                topic: "room.1".into(),
            },
        ),
        (
            "pub",
            ClientFrame::Pub {
                id: 7,
                topic: "room.1".into(),
                data: Payload::from("hello"),
                headers: Headers::default(),
                mid: None,
                ack: true,
            },
        ),
        (
            "pub-full",
            ClientFrame::Pub {
                id: 8,
                topic: "room.1".into(),
                data: Payload::from(vec![0, 159, 146, 150, 255]),
                headers: headers(),
                mid: Some("m-1".into()),
                ack: false,
            },
        ),
        (
            "history",
            ClientFrame::History {
                id: 9,
                topic: "a".into(),
                start: Some(Start::Latest),
                limit: Some(100),
            },
        ),
        ("ping", ClientFrame::Ping { id: 10 }),
    ]
}

/// Well-formed messages that are not valid commands (answered with `bad_request`).
fn invalid_commands() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    vec![
        ("bad-token", json!({"t":"connect","id":1,"token":5})),
        (
            "bad-start",
            json!({"t":"sub","id":6,"topic":"a","start":"bogus"}),
        ),
        (
            "bad-headers",
            json!({"t":"pub","id":11,"topic":"a","data":"x","headers":{"h":1}}),
        ),
        (
            "bad-b64",
            json!({"t":"pub","id":14,"topic":"a","data":{"b64":"!!"}}),
        ),
        (
            "bad-limit",
            json!({"t":"history","id":16,"topic":"a","limit":-1}),
        ),
        ("unknown-t", json!({"t":"nope","id":18})),
        ("no-t", json!({"id":19})),
    ]
}

fn encode_value(enc: Encoding, v: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
    Ok(match enc {
        Encoding::Json => serde_json::to_vec(v)?,
        Encoding::MsgPack => rmp_serde::to_vec_named(v)?,
    })
}

fn batch<T: serde::Serialize>(enc: Encoding, items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(enc.separator());
        }
        enc.encode_into(item, &mut out);
    }
    out
}

fn client_frames(s: &mut Seeds) -> anyhow::Result<()> {
    for (enc, target) in [
        (Encoding::Json, "client_json"),
        (Encoding::MsgPack, "client_msgpack"),
    ] {
        let commands = client_commands();
        for (name, f) in &commands {
            s.put(target, name, &enc.encode(f))?;
        }
        let all: Vec<&ClientFrame> = commands.iter().map(|(_, f)| f).collect();
        s.put(target, "batch-all", &batch(enc, &all))?;
        for (name, v) in invalid_commands() {
            // Between two valid pings, as a client batching commands sends it.
            let mut frame = enc.encode(&ClientFrame::Ping { id: 100 });
            frame.extend_from_slice(enc.separator());
            frame.extend_from_slice(&encode_value(enc, &v)?);
            frame.extend_from_slice(enc.separator());
            frame.extend(enc.encode(&ClientFrame::Ping { id: 101 }));
            s.put(target, &format!("invalid-{name}"), &frame)?;
        }
    }
    s.put(
        "client_json",
        "crlf-batch",
        b"{\"t\":\"ping\",\"id\":1}\r\n{\"t\":\"ping\",\"id\":2}\r\n",
    )?;
    s.put(
        "client_json",
        "broken",
        b"{\"t\":\"ping\",\"id\":1} {not json",
    )?;
    s.put("client_msgpack", "broken", &[0x81, 0xa1, b't'])?;
    Ok(())
}

fn msg(seq: u64) -> Msg {
    Msg {
        topic: "room.1".into(),
        origin: "n1".into(),
        epoch: 3,
        seq,
        hlc: (1_764_900_000_000 << 16) | seq,
        client: "sensor-7".into(),
        mid: seq.is_multiple_of(2).then(|| format!("m-{seq}")),
        queue: None,
        delivery: None,
        headers: if seq.is_multiple_of(3) {
            headers()
        } else {
            Headers::default()
        },
        data: if seq.is_multiple_of(2) {
            Payload::from("text")
        } else {
            Payload::from(vec![0xff, 0, 1])
        },
        sub: (seq % 4 == 1).then_some(2),
    }
}

fn server_replies() -> Vec<(&'static str, ServerFrame)> {
    let cursor = cursor().encode();
    vec![
        (
            "connected",
            ServerFrame::Connected {
                id: 1,
                client_id: "sensor-7".into(),
                conn_id: 42,
                node: "n1".into(),
                epoch: 3,
                version: edgesync_protocol::PROTOCOL_VERSION,
                limits: LimitsInfo {
                    max_frame_bytes: 1 << 20,
                    max_topic_bytes: 256,
                    max_headers: 16,
                    max_subscriptions: 64,
                    publish_rate_per_sec: 1000,
                    idle_timeout_ms: 60_000,
                },
            },
        ),
        (
            "subscribed",
            ServerFrame::Subscribed {
                id: 2,
                topic: "room.*".into(),
                cursor: cursor.clone(),
            },
        ),
        (
            "unsubscribed",
            ServerFrame::Unsubscribed {
                id: 6,
                topic: "room.*".into(),
            },
        ),
        (
            "puback",
            ServerFrame::Puback {
                id: 7,
                topic: "room.1".into(),
                origin: "n1".into(),
                epoch: 3,
                seq: 12,
                hlc: 1 << 40,
                cursor: cursor.clone(),
                dup: true,
            },
        ),
        (
            "history",
            ServerFrame::History {
                id: 9,
                topic: "room.1".into(),
                msgs: (1..=3).map(msg).collect(),
                cursor: cursor.clone(),
                more: true,
            },
        ),
        ("pong", ServerFrame::Pong { id: 10 }),
        (
            "error",
            ServerFrame::error(Some(7), ErrorCode::RateLimited, "slow down"),
        ),
        (
            "error-conn",
            ServerFrame::error(None, ErrorCode::BadFrame, "invalid JSON"),
        ),
        ("msg", ServerFrame::Msg(msg(4))),
        ("msg-tagged", ServerFrame::Msg(msg(5))),
        (
            "live",
            ServerFrame::Live {
                sub: 2,
                topic: "room.*".into(),
            },
        ),
        (
            "gap",
            ServerFrame::Gap {
                topic: "room.1".into(),
                origin: "n1".into(),
                epoch: 3,
                from: 5,
                to: 9,
                reason: GapReason::Corrupt,
                cursor,
                sub: Some(2),
            },
        ),
    ]
}

fn server_frames(s: &mut Seeds) -> anyhow::Result<()> {
    for (enc, pick) in [(Encoding::Json, 0u8), (Encoding::MsgPack, 1u8)] {
        let replies = server_replies();
        let tag = if pick == 0 { "json" } else { "msgpack" };
        for (name, f) in &replies {
            s.put(
                "server_frames",
                &format!("{tag}-{name}"),
                &[&[pick][..], &enc.encode(f)].concat(),
            )?;
        }
        let pushes: Vec<ServerFrame> = (1..=4).map(|i| ServerFrame::Msg(msg(i))).collect();
        s.put(
            "server_frames",
            &format!("{tag}-batch"),
            &[&[pick][..], &batch(enc, &pushes)].concat(),
        )?;
    }
    Ok(())
}

fn quic_framing(s: &mut Seeds) -> anyhow::Result<()> {
    let commands = client_commands();
    let mut stream = Vec::new();
    for (_, f) in &commands {
        let body = Encoding::MsgPack.encode(f);
        LengthPrefixed::put_prefix(&mut stream, body.len());
        stream.extend_from_slice(&body);
    }
    // Limit byte 16 (257 bytes per frame), chunks of 1, 7 and 256 bytes.
    for chunk in [0u8, 6, 255] {
        s.put(
            "quic_framing",
            &format!("session-chunk{}", u16::from(chunk) + 1),
            &[&[16, chunk][..], &stream].concat(),
        )?;
    }
    s.put("quic_framing", "oversized", &[0, 255, 0, 0, 1, 0, 0x81])?;
    s.put("quic_framing", "empty-frame", &[16, 255, 0, 0, 0, 0])?;
    Ok(())
}

fn cursor() -> Cursor {
    let mut c = Cursor::new();
    c.observe("room.1", &Origin::new("n1", 3), 12);
    c.observe("room.1", &Origin::new("n2", 1), 4);
    c.observe("a.b", &Origin::new("n1", 3), 1);
    c
}

fn cursors(s: &mut Seeds) -> anyhow::Result<()> {
    s.put("cursor", "empty-cursor", Cursor::new().encode().as_bytes())?;
    s.put("cursor", "three-origins", cursor().encode().as_bytes())?;
    // PROTOCOL.md §5's example.
    s.put("cursor", "documented", b"AZGSoWGRk6JuMQED")?;
    s.put(
        "cursor",
        "padded",
        format!("{}==", cursor().encode()).as_bytes(),
    )?;
    Ok(())
}

fn record(seq: u64) -> Record {
    let m = msg(seq);
    Record {
        topic: m.topic,
        origin: Origin::new(m.origin, m.epoch),
        seq,
        hlc: m.hlc,
        client: m.client,
        mid: m.mid,
        publish_key: None,
        headers: m.headers,
        payload: m.data.0,
    }
}

fn records(s: &mut Seeds) -> anyhow::Result<()> {
    for seq in 1..=4 {
        let bytes = record(seq).encode()?;
        // Mode 0: as stored (checksum checked); mode 1: checksum recomputed by the target.
        s.put(
            "record",
            &format!("stored-{seq}"),
            &[&[0u8][..], &bytes].concat(),
        )?;
        let mut flipped = bytes.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x10;
        s.put(
            "record",
            &format!("flipped-{seq}"),
            &[&[1u8][..], &flipped].concat(),
        )?;
    }
    Ok(())
}

/// A journal written by the real storage engine (through the store), while open.
fn journals(s: &mut Seeds) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let files = rt.block_on(async {
        let (store, _committed) = Store::open(StoreOptions::new(tmp.path()))?;
        for i in 0..6u8 {
            let publish = Publish {
                topic: format!("room.{}", i % 2),
                client: "sensor-7".into(),
                principal: None,
                mid: (i % 2 == 0).then(|| format!("m-{i}")),
                headers: if i == 3 {
                    headers()
                } else {
                    Headers::default()
                },
                payload: Bytes::from(vec![b'a' + i; 8 + usize::from(i)]),
            };
            store.append(publish).await?;
        }
        let files = read_journals(tmp.path())?;
        store.shutdown().await;
        anyhow::Ok(files)
    })?;
    anyhow::ensure!(
        !files.is_empty(),
        "the engine wrote no journal under {}",
        tmp.path().display()
    );
    for (i, bytes) in files.iter().enumerate() {
        // Trim the preallocated zeros, keeping a few so the scanner sees the padding.
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let journal = &bytes[..(end + 32).min(bytes.len())];
        s.put("salvage", &format!("journal-{i}"), journal)?;
        let mut flipped = journal.to_vec();
        flipped[end / 2] ^= 0x04;
        s.put("salvage", &format!("journal-{i}-flipped"), &flipped)?;
        s.put(
            "salvage",
            &format!("journal-{i}-torn"),
            &journal[..end.saturating_sub(7)],
        )?;
        // Damage before valid batches: the scanner must resynchronise on the next one.
        let garbage = [&[0x01, 0xff, 0xff, 0xff, 0x7f][..], &journal[..end]].concat();
        s.put("salvage", &format!("journal-{i}-garbage-first"), &garbage)?;
        let doubled = [&journal[..end], &flipped[..end], &journal[..end]].concat();
        s.put("salvage", &format!("journal-{i}-damaged-between"), &doubled)?;
    }
    Ok(())
}

fn read_journals(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(read_journals(&path)?);
        } else if path.extension().is_some_and(|x| x == "jnl") {
            out.push(std::fs::read(&path)?);
        }
    }
    Ok(out)
}

fn configs(s: &mut Seeds) -> anyhow::Result<()> {
    s.put("config", "empty", b"")?;
    s.put(
        "config",
        "default",
        toml::to_string(&Config::default())?.as_bytes(),
    )?;
    // Every TOML block of the docs, as operators copy them.
    for doc in [
        "README.md",
        "docs/plugins.md",
        "docs/store-engine-measurements.md",
    ] {
        let text = std::fs::read_to_string(doc).unwrap_or_default();
        for (i, block) in text.split("```toml\n").skip(1).enumerate() {
            let body = block.split("```").next().unwrap_or_default();
            let name = doc.trim_end_matches(".md").replace('/', "-");
            s.put("config", &format!("{name}-{i}"), body.as_bytes())?;
        }
    }
    s.put(
        "config",
        "out-of-range",
        b"[limits]\nidle_timeout_ms = 0\nping_interval_ms = 5\n",
    )?;
    Ok(())
}
