//! The load generator's side of the wire: the two protocols it speaks (edgesync
//! MessagePack and the NATS text protocol) over a [`Conn`] of either transport,
//! and scanners that count pushes in a frame without building a value per message.
//!
//! The scanners are the whole client-side cost per delivered message, so they
//! touch only what a scenario needs: the frame type, the payload (latency
//! timestamps live in its first 8 bytes), the command id of acks and the range
//! of gap notices. Every read is bounds-checked: a malformed frame is counted
//! as an error, never a panic.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use edgesync_protocol::{ClientFrame, Encoding, ServerFrame, frame::Payload, frame::Start};

use super::conn::Conn;

/// Handshakes and setup replies must arrive within this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest NATS line (MSG/INFO/-ERR) the scanner buffers before giving up on a connection.
const NATS_MAX_LINE: usize = 64 << 10;
/// Deepest MessagePack nesting the skipper follows (our frames nest ≤ 3).
const MAX_DEPTH: u32 = 16;

/// Which server the bench talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// edgesync, `edgesync.msgpack.v1` subprotocol.
    Edgesync,
    /// nats-server WebSocket listener, NATS text protocol.
    Nats,
}

/// Open the session: edgesync `connect`, or NATS `CONNECT` + `PING`/`PONG`.
///
/// # Errors
/// The server refused or did not answer within the setup timeout.
pub async fn handshake(ws: &mut Conn, proto: Proto) -> Result<()> {
    match proto {
        Proto::Edgesync => {
            let f = ClientFrame::Connect {
                id: 1,
                token: None,
                client_id: None,
                cursor: None,
            };
            ws.send(Encoding::MsgPack.encode(&f)).await?;
            await_reply(ws, 1).await
        }
        Proto::Nats => {
            let hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1,\"name\":\"edgesync-bench\"}\r\nPING\r\n";
            ws.send(hello.as_bytes().to_vec()).await?;
            await_pong(ws).await
        }
    }
}

/// Subscribe to `subject`; returns once the server has registered it.
///
/// # Errors
/// The server refused or did not answer within the setup timeout.
pub async fn subscribe(ws: &mut Conn, proto: Proto, subject: &str) -> Result<()> {
    match proto {
        Proto::Edgesync => {
            let f = ClientFrame::sub(2, subject.into(), Some(Start::Latest));
            ws.send(Encoding::MsgPack.encode(&f)).await?;
            await_reply(ws, 2).await
        }
        Proto::Nats => {
            ws.send(format!("SUB {subject} 1\r\nPING\r\n").into_bytes())
                .await?;
            await_pong(ws).await
        }
    }
}

/// Append one publish of `payload` to `out`. `id` is the edgesync command id; `ack` asks
/// for a durable acknowledgement, `mid` sets the client message id (edgesync only).
pub fn encode_publish(
    out: &mut Vec<u8>,
    proto: Proto,
    subject: &str,
    payload: &[u8],
    id: u64,
    ack: bool,
    mid: Option<String>,
) {
    match proto {
        Proto::Edgesync => {
            let f = ClientFrame::Pub {
                id,
                topic: subject.into(),
                data: Payload(bytes::Bytes::copy_from_slice(payload)),
                headers: Default::default(),
                mid,
                ack,
            };
            Encoding::MsgPack.encode_into(&f, out);
        }
        Proto::Nats => {
            out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// What a scanned frame held.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    pub msgs: u64,
    /// Messages announced missing by `gap` notices.
    pub gap_msgs: u64,
    pub errors: u64,
    /// The server sent a NATS `PING` that needs a `PONG`.
    pub ping: bool,
}

/// Per-connection scanner state (NATS lines may straddle WebSocket frames).
#[derive(Debug)]
pub struct Scanner {
    proto: Proto,
    carry: Vec<u8>,
}

impl Scanner {
    pub fn new(proto: Proto) -> Self {
        Scanner {
            proto,
            carry: Vec::new(),
        }
    }

    /// Scan one frame. `on_msg(payload)` runs per delivered message; `on_ack(id)` per puback.
    pub fn scan(
        &mut self,
        frame: &[u8],
        on_msg: &mut impl FnMut(&[u8]),
        on_ack: &mut impl FnMut(u64),
    ) -> Seen {
        match self.proto {
            Proto::Edgesync => scan_msgpack(frame, on_msg, on_ack),
            Proto::Nats => self.scan_nats(frame, on_msg),
        }
    }

    fn scan_nats(&mut self, frame: &[u8], on_msg: &mut impl FnMut(&[u8])) -> Seen {
        let mut seen = Seen::default();
        let owned;
        let buf: &[u8] = if self.carry.is_empty() {
            frame
        } else {
            self.carry.extend_from_slice(frame);
            owned = std::mem::take(&mut self.carry);
            &owned
        };
        let mut pos = 0;
        // Bounded: every iteration consumes at least one line.
        while pos < buf.len() {
            let Some(eol) = find_crlf(&buf[pos..]) else {
                break;
            };
            let line = &buf[pos..pos + eol];
            if line.starts_with(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let Some(n) = line.rsplit(|b| *b == b' ').next().and_then(parse_usize) else {
                    seen.errors += 1;
                    pos += eol + 2;
                    continue;
                };
                let start = pos + eol + 2;
                if buf.len() < start + n + 2 {
                    break; // payload not complete yet
                }
                on_msg(&buf[start..start + n]);
                seen.msgs += 1;
                pos = start + n + 2;
                continue;
            }
            if line == b"PING" {
                seen.ping = true;
            } else if line.starts_with(b"-ERR") {
                seen.errors += 1;
            }
            pos += eol + 2;
        }
        if pos < buf.len() {
            if buf.len() - pos > NATS_MAX_LINE + (64 << 20) {
                seen.errors += 1;
            } else {
                self.carry = buf[pos..].to_vec();
            }
        }
        seen
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    // Bounded: `from` grows every iteration.
    while let Some(i) = b.get(from..)?.iter().position(|x| *x == b'\r') {
        let at = from + i;
        if b.get(at + 1) == Some(&b'\n') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn parse_usize(b: &[u8]) -> Option<usize> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Count the MessagePack maps of one edgesync frame.
fn scan_msgpack(
    frame: &[u8],
    on_msg: &mut impl FnMut(&[u8]),
    on_ack: &mut impl FnMut(u64),
) -> Seen {
    let mut seen = Seen::default();
    let mut pos = 0;
    // Bounded: every iteration consumes at least one byte or stops.
    while pos < frame.len() {
        match scan_map(frame, pos) {
            Some((end, top)) => {
                match top.kind {
                    b"msg" => {
                        on_msg(top.data.unwrap_or(&[]));
                        seen.msgs += 1;
                    }
                    b"puback" => on_ack(top.id),
                    b"gap" => seen.gap_msgs += top.to.saturating_sub(top.from) + 1,
                    b"error" => seen.errors += 1,
                    _ => {}
                }
                pos = end;
            }
            None => {
                seen.errors += 1;
                break;
            }
        }
    }
    seen
}

#[derive(Default)]
struct Top<'a> {
    kind: &'a [u8],
    data: Option<&'a [u8]>,
    id: u64,
    from: u64,
    to: u64,
}

fn scan_map(b: &[u8], pos: usize) -> Option<(usize, Top<'_>)> {
    let (n, mut p) = map_len(b, pos)?;
    let mut top = Top::default();
    for _ in 0..n {
        let (key, q) = read_str(b, p)?;
        p = q;
        match key {
            b"t" => (top.kind, p) = read_str(b, p)?,
            b"data" => {
                let (d, q) = read_str(b, p)?;
                top.data = Some(d);
                p = q;
            }
            b"id" => (top.id, p) = read_uint(b, p)?,
            b"from" => (top.from, p) = read_uint(b, p)?,
            b"to" => (top.to, p) = read_uint(b, p)?,
            _ => p = skip(b, p, 0)?,
        }
    }
    Some((p, top))
}

fn byte(b: &[u8], p: usize) -> Option<u8> {
    b.get(p).copied()
}

fn be(b: &[u8], p: usize, n: usize) -> Option<u64> {
    let s = b.get(p..p.checked_add(n)?)?;
    Some(s.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
}

fn map_len(b: &[u8], p: usize) -> Option<(usize, usize)> {
    match byte(b, p)? {
        m @ 0x80..=0x8f => Some(((m & 0x0f) as usize, p + 1)),
        0xde => Some((be(b, p + 1, 2)? as usize, p + 3)),
        0xdf => Some((be(b, p + 1, 4)? as usize, p + 5)),
        _ => None,
    }
}

/// A str or bin value: its bytes and the position after it.
fn read_str(b: &[u8], p: usize) -> Option<(&[u8], usize)> {
    let (len, start) = match byte(b, p)? {
        m @ 0xa0..=0xbf => ((m & 0x1f) as usize, p + 1),
        0xd9 | 0xc4 => (be(b, p + 1, 1)? as usize, p + 2),
        0xda | 0xc5 => (be(b, p + 1, 2)? as usize, p + 3),
        0xdb | 0xc6 => (be(b, p + 1, 4)? as usize, p + 5),
        _ => return None,
    };
    let end = start.checked_add(len)?;
    Some((b.get(start..end)?, end))
}

fn read_uint(b: &[u8], p: usize) -> Option<(u64, usize)> {
    match byte(b, p)? {
        m @ 0x00..=0x7f => Some((u64::from(m), p + 1)),
        0xcc => Some((be(b, p + 1, 1)?, p + 2)),
        0xcd => Some((be(b, p + 1, 2)?, p + 3)),
        0xce => Some((be(b, p + 1, 4)?, p + 5)),
        0xcf => Some((be(b, p + 1, 8)?, p + 9)),
        _ => None,
    }
}

/// Skip one value of any type.
fn skip(b: &[u8], p: usize, depth: u32) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let m = byte(b, p)?;
    let sized = |hdr: usize, len: usize| {
        p.checked_add(hdr)?
            .checked_add(len)
            .filter(|e| *e <= b.len())
    };
    let items = |n: usize, start: usize| -> Option<usize> {
        let mut q = start;
        for _ in 0..n {
            q = skip(b, q, depth + 1)?;
        }
        Some(q)
    };
    match m {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(p + 1),
        0x80..=0x8f => items(2 * (m & 0x0f) as usize, p + 1),
        0x90..=0x9f => items((m & 0x0f) as usize, p + 1),
        0xa0..=0xbf => sized(1, (m & 0x1f) as usize),
        0xc4 | 0xd9 => sized(2, be(b, p + 1, 1)? as usize),
        0xc5 | 0xda => sized(3, be(b, p + 1, 2)? as usize),
        0xc6 | 0xdb => sized(5, be(b, p + 1, 4)? as usize),
        0xcc | 0xd0 => sized(2, 0),
        0xcd | 0xd1 => sized(3, 0),
        0xca | 0xce | 0xd2 => sized(5, 0),
        0xcb | 0xcf | 0xd3 => sized(9, 0),
        0xd4 => sized(3, 0),
        0xd5 => sized(4, 0),
        0xd6 => sized(6, 0),
        0xd7 => sized(10, 0),
        0xd8 => sized(18, 0),
        0xc7 => sized(3, be(b, p + 1, 1)? as usize),
        0xc8 => sized(4, be(b, p + 1, 2)? as usize),
        0xc9 => sized(6, be(b, p + 1, 4)? as usize),
        0xdc => items(be(b, p + 1, 2)? as usize, p + 3),
        0xdd => items(be(b, p + 1, 4)? as usize, p + 5),
        0xde => items(2 * be(b, p + 1, 2)? as usize, p + 3),
        0xdf => items(2 * be(b, p + 1, 4)? as usize, p + 5),
        0xc1 => None,
    }
}

/// Read replies until the one for command `id`; an `error` for it fails.
async fn await_reply(ws: &mut Conn, id: u64) -> Result<()> {
    let wait = async {
        // Bounded by SETUP_TIMEOUT around it.
        while let Some(m) = ws.next().await {
            let b = m?;
            let frames: Vec<ServerFrame> = Encoding::MsgPack
                .decode_all(&b)
                .map_err(|e| anyhow::anyhow!("bad frame from server: {e}"))?;
            for f in frames {
                match f {
                    ServerFrame::Error {
                        id: Some(i),
                        code,
                        msg,
                        ..
                    } if i == id => bail!("server refused: {code:?}: {msg}"),
                    ServerFrame::Error {
                        id: None,
                        code,
                        msg,
                        ..
                    } => bail!("server error: {code:?}: {msg}"),
                    ServerFrame::Connected { id: i, .. }
                    | ServerFrame::Subscribed { id: i, .. }
                        if i == id =>
                    {
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
        bail!("connection closed during setup")
    };
    tokio::time::timeout(SETUP_TIMEOUT, wait)
        .await
        .context("no reply from server")?
}

async fn await_pong(ws: &mut Conn) -> Result<()> {
    let wait = async {
        let mut text = Vec::new();
        // Bounded by SETUP_TIMEOUT around it and by NATS_MAX_LINE.
        while let Some(m) = ws.next().await {
            text.extend_from_slice(&m?);
            if let Some(i) = text.windows(4).position(|w| w == b"-ERR") {
                bail!(
                    "nats refused: {}",
                    String::from_utf8_lossy(&text[i..]).trim()
                );
            }
            if text.windows(6).any(|w| w == b"PONG\r\n") {
                return Ok(());
            }
            if text.len() > NATS_MAX_LINE {
                bail!("no PONG in {} bytes from nats", text.len());
            }
        }
        bail!("connection closed during setup")
    };
    tokio::time::timeout(SETUP_TIMEOUT, wait)
        .await
        .context("no PONG from nats")?
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgesync_protocol::frame::{GapReason, Msg};

    #[test]
    fn msgpack_scanner_counts_batched_pushes() {
        let msg = |seq| {
            ServerFrame::Msg(Msg {
                topic: "a".into(),
                origin: "n".into(),
                epoch: 1,
                seq,
                hlc: 7,
                client: "c".into(),
                mid: None,
                headers: Default::default(),
                data: Payload::from(vec![1, 2, 3, 4, 5, 6, 7, 8, 9]),
                sub: None,
                queue: None,
                delivery: None,
            })
        };
        let mut frame = Vec::new();
        for s in 1..=3 {
            Encoding::MsgPack.encode_into(&msg(s), &mut frame);
        }
        let gap = ServerFrame::Gap {
            topic: "a".into(),
            origin: "n".into(),
            epoch: 1,
            from: 4,
            to: 9,
            reason: GapReason::SlowConsumer,
            cursor: "c".into(),
            sub: None,
        };
        Encoding::MsgPack.encode_into(&gap, &mut frame);
        let ack = ServerFrame::Puback {
            id: 300,
            topic: "a".into(),
            origin: "n".into(),
            epoch: 1,
            seq: 1,
            hlc: 1,
            cursor: "c".into(),
            dup: false,
        };
        Encoding::MsgPack.encode_into(&ack, &mut frame);
        let (mut payloads, mut acks) = (0, Vec::new());
        let seen =
            Scanner::new(Proto::Edgesync).scan(&frame, &mut |p| payloads += p.len(), &mut |id| {
                acks.push(id)
            });
        assert_eq!(
            (seen.msgs, seen.gap_msgs, seen.errors, payloads),
            (3, 6, 0, 27)
        );
        assert_eq!(acks, vec![300]);
        // Truncation is an error, never a panic.
        for cut in 0..frame.len() {
            let _ = Scanner::new(Proto::Edgesync).scan(&frame[..cut], &mut |_| {}, &mut |_| {});
        }
    }

    #[test]
    fn nats_scanner_joins_split_frames() {
        let wire = b"INFO {}\r\nMSG a 1 5\r\nhello\r\nPING\r\nMSG a 1 3\r\nabc\r\n";
        for cut in 0..wire.len() {
            let mut s = Scanner::new(Proto::Nats);
            let mut got = Vec::new();
            let a = s.scan(&wire[..cut], &mut |p| got.push(p.to_vec()), &mut |_| {});
            let b = s.scan(&wire[cut..], &mut |p| got.push(p.to_vec()), &mut |_| {});
            assert_eq!(a.msgs + b.msgs, 2, "cut {cut}");
            assert!(a.ping || b.ping);
            assert_eq!(got, vec![b"hello".to_vec(), b"abc".to_vec()]);
        }
    }
}
