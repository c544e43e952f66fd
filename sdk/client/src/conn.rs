//! One transport connection of the client: WebSocket (ws/wss) or QUIC.
//!
//! QUIC (`quic://host:port`): ALPN `edgesync/2` (or `edgesync/1` with an older
//! gateway), TLS 1.3, the session on the first bidirectional stream with `u32`
//! big-endian length-prefixed MessagePack frames, and QUIC datagrams for ephemeral
//! publishes. QUIC always uses MessagePack. With `edgesync/2` the gateway opens a
//! unidirectional stream per subscription; their frames are merged with the session
//! stream's, each tagged with its subscription (named by the stream's first frame,
//! `subscribed`), so a stream's pushes reach only its own subscription.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use edgesync_protocol::Encoding;
use edgesync_protocol::codec::LengthPrefixed;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{ClientError, ClientOptions};

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected transport.
pub(crate) enum Conn {
    Ws {
        ws: Box<WebSocketStream<Box<dyn Io>>>,
        text: bool,
    },
    Quic(Box<QuicConn>),
}

/// Largest frame accepted from the gateway, bytes (same bound as WebSocket).
const MAX_FRAME: usize = 64 << 20;

/// The client side of a QUIC session.
pub(crate) struct QuicConn {
    /// Kept so the endpoint's driver lives as long as the connection.
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Bytes read but not yet split into frames.
    buf: BytesMut,
    framing: LengthPrefixed,
    /// `edgesync/2`: frames read from subscription streams, with the stream's pattern.
    lanes: Option<tokio::sync::mpsc::Receiver<Frame>>,
    /// Accepts subscription streams and owns their readers; aborted with the connection.
    lane_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for QuicConn {
    fn drop(&mut self) {
        if let Some(t) = self.lane_task.take() {
            t.abort();
        }
    }
}

/// Frames from subscription streams waiting for the session (each reader blocks, and
/// QUIC flow control holds its stream, when this is full).
const LANE_BACKLOG: usize = 64;
/// Subscription streams the gateway may have open at once (its `max_subscriptions`
/// default is 256; ended streams return their credit).
const MAX_LANES: u32 = 1024;

/// A frame from the gateway; `lane` names the subscription (its pattern) when it came
/// on that subscription's own stream (`edgesync/2`), whose pushes are for it alone.
pub(crate) struct Frame {
    pub lane: Option<Arc<str>>,
    pub bytes: Bytes,
}

/// A parsed server URL.
pub(crate) struct Target {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

pub(crate) fn parse_url(url: &str) -> Result<Target, ClientError> {
    let bad = || ClientError::Url(url.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>().map_err(|_| bad())?,
        ),
        _ => return Err(bad()),
    };
    match scheme {
        "ws" | "wss" | "quic" => Ok(Target {
            scheme: scheme.into(),
            host: host.into(),
            port,
        }),
        _ => Err(bad()),
    }
}

/// The client certificate of `opts`, read from its PEM files; both or neither.
fn client_cert(opts: &ClientOptions) -> Result<Option<crate::tls::ClientCert>, ClientError> {
    match (&opts.cert, &opts.key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => crate::tls::ClientCert::load(cert, key).map(Some),
        _ => Err(ClientError::Tls(
            "a client certificate needs both cert and key".into(),
        )),
    }
}

impl Conn {
    /// Open a transport connection to `opts.url`.
    pub(crate) async fn open(opts: &ClientOptions) -> Result<(Conn, Encoding), ClientError> {
        let t = parse_url(&opts.url)?;
        match t.scheme.as_str() {
            "ws" | "wss" => Self::open_ws(opts, &t).await,
            _ => Self::open_quic(opts, &t).await,
        }
    }

    async fn open_ws(opts: &ClientOptions, t: &Target) -> Result<(Conn, Encoding), ClientError> {
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if t.scheme == "wss" {
            let cfg = crate::tls::client_config(
                opts.ca.as_deref(),
                opts.insecure,
                client_cert(opts)?,
                &[b"http/1.1"],
            )?;
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let mut req = opts
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let proto = http::HeaderValue::from_static(opts.encoding.subprotocol());
        req.headers_mut().insert("sec-websocket-protocol", proto);
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(Encoding::from_subprotocol)
            .unwrap_or(Encoding::Json);
        Ok((
            Conn::Ws {
                ws: Box::new(ws),
                text: chosen.is_text(),
            },
            chosen,
        ))
    }

    async fn open_quic(opts: &ClientOptions, t: &Target) -> Result<(Conn, Encoding), ClientError> {
        let addr = tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .next()
            .ok_or_else(|| ClientError::Connect(format!("{}: no address", t.host)))?;
        let tls = crate::tls::client_config(
            opts.ca.as_deref(),
            opts.insecure,
            client_cert(opts)?,
            &[
                edgesync_protocol::ALPN_QUIC_V2,
                edgesync_protocol::ALPN_QUIC,
            ],
        )?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // Keep NAT bindings and the gateway's idle timer (QUIC level) fresh on quiet
        // sessions, and take a gateway silent for `liveness_timeout` for dead (quinn's
        // default would wait 30 s before the client fails over).
        transport
            .keep_alive_interval(Some(opts.liveness_timeout / 3))
            .max_idle_timeout(quinn::IdleTimeout::try_from(opts.liveness_timeout).ok())
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_LANES));
        config.transport_config(Arc::new(transport));
        let bind: std::net::SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|e: std::net::AddrParseError| ClientError::Connect(e.to_string()))?;
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect(e.to_string()))?;
        let connection = endpoint
            .connect_with(config, addr, &t.host)
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(|e| match e {
                // 0x100-0x1ff: a TLS alert (RFC 9001 §4.8), e.g. an untrusted certificate.
                quinn::ConnectionError::TransportError(te)
                    if (0x100..0x200).contains(&u64::from(te.code)) =>
                {
                    ClientError::Tls(te.to_string())
                }
                other => ClientError::Connect(other.to_string()),
            })?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let v2 = connection
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol)
            .is_some_and(|p| p == edgesync_protocol::ALPN_QUIC_V2);
        let (lanes, lane_task) = if v2 {
            let (tx, rx) = tokio::sync::mpsc::channel(LANE_BACKLOG);
            let task = tokio::spawn(accept_lanes(connection.clone(), tx));
            (Some(rx), Some(task))
        } else {
            (None, None)
        };
        let q = QuicConn {
            _endpoint: endpoint,
            connection,
            send,
            recv,
            buf: BytesMut::with_capacity(4096),
            framing: LengthPrefixed::new(MAX_FRAME),
            lanes,
            lane_task,
        };
        Ok((Conn::Quic(Box::new(q)), Encoding::MsgPack))
    }

    /// Send one QUIC datagram (ephemeral publish). Errors on WebSocket, or when the
    /// gateway does not accept datagrams or this one exceeds the path's datagram size.
    pub(crate) fn send_datagram(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        match self {
            Conn::Ws { .. } => Err(ClientError::Protocol(
                "ephemeral publishes need a quic:// connection".into(),
            )),
            Conn::Quic(q) => q
                .connection
                .send_datagram(Bytes::from(frame))
                .map_err(|e| match e {
                    quinn::SendDatagramError::ConnectionLost(_) => ClientError::ConnectionLost,
                    other => ClientError::Protocol(other.to_string()),
                }),
        }
    }

    pub(crate) async fn send(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        match self {
            Conn::Quic(q) => q.send_frame(frame).await,
            Conn::Ws { ws, text } => {
                let msg = if *text {
                    Message::text(
                        String::from_utf8(frame)
                            .map_err(|e| ClientError::Protocol(e.to_string()))?,
                    )
                } else {
                    Message::binary(frame)
                };
                ws.send(msg).await.map_err(|_| ClientError::ConnectionLost)
            }
        }
    }

    /// Send bytes exactly as given, as a binary frame (conformance tests).
    pub(crate) async fn send_raw(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        match self {
            Conn::Ws { ws, .. } => ws
                .send(Message::binary(frame))
                .await
                .map_err(|_| ClientError::ConnectionLost),
            Conn::Quic(q) => q.send_frame(frame).await,
        }
    }

    /// Next frame; `None` when the connection ended.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        let session = |bytes| Some(Frame { lane: None, bytes });
        match self {
            Conn::Quic(q) => q.recv_frame().await,
            Conn::Ws { ws, .. } => loop {
                match ws.next().await? {
                    Ok(Message::Binary(b)) => return session(b),
                    Ok(Message::Text(t)) => return session(Bytes::from(t)),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            },
        }
    }

    pub(crate) async fn close(&mut self) {
        match self {
            Conn::Ws { ws, .. } => {
                let _ = ws.as_mut().close(None).await;
            }
            Conn::Quic(q) => {
                let _ = q.send.finish();
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), q.send.stopped()).await;
                q.connection
                    .close(quinn::VarInt::from_u32(0), b"client closed");
            }
        }
    }
}

impl QuicConn {
    async fn send_frame(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        let mut prefix = Vec::with_capacity(4);
        LengthPrefixed::put_prefix(&mut prefix, frame.len());
        let mut chunks = [Bytes::from(prefix), Bytes::from(frame)];
        self.send
            .write_all_chunks(&mut chunks)
            .await
            .map_err(|_| ClientError::ConnectionLost)
    }

    /// Next frame, from the session stream or a subscription stream; `None` when the
    /// session stream or the connection ended or the gateway broke framing. Cancel-safe.
    async fn recv_frame(&mut self) -> Option<Frame> {
        loop {
            match self.framing.next_frame(&mut self.buf) {
                Ok(Some(bytes)) => return Some(Frame { lane: None, bytes }),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "bad frame from gateway");
                    return None;
                }
            }
            tokio::select! {
                chunk = self.recv.read_chunk(64 << 10, true) => match chunk {
                    Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                    Ok(None) | Err(_) => return None,
                },
                Some(frame) = next_lane_frame(&mut self.lanes) => return Some(frame),
            }
        }
    }
}

async fn next_lane_frame(lanes: &mut Option<tokio::sync::mpsc::Receiver<Frame>>) -> Option<Frame> {
    match lanes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Accept the gateway's subscription streams until the connection ends; each gets a
/// reader that splits it into frames. Dropping this task (the `JoinSet`) stops them all.
async fn accept_lanes(connection: quinn::Connection, tx: tokio::sync::mpsc::Sender<Frame>) {
    let mut readers = tokio::task::JoinSet::new();
    while let Ok(recv) = connection.accept_uni().await {
        readers.spawn(read_lane(recv, tx.clone()));
        while readers.try_join_next().is_some() {}
    }
}

/// Reads one subscription stream. Its first frame is the subscription's `subscribed`,
/// which names the pattern every later frame is tagged with.
async fn read_lane(mut recv: quinn::RecvStream, tx: tokio::sync::mpsc::Sender<Frame>) {
    let mut buf = BytesMut::new();
    let framing = LengthPrefixed::new(MAX_FRAME);
    let mut lane: Option<Arc<str>> = None;
    loop {
        match framing.next_frame(&mut buf) {
            Ok(Some(bytes)) => {
                if lane.is_none() {
                    lane = subscribed_pattern(&bytes);
                    if lane.is_none() {
                        tracing::warn!("a subscription stream must start with subscribed");
                        return;
                    }
                }
                if tx
                    .send(Frame {
                        lane: lane.clone(),
                        bytes,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "bad frame on a subscription stream");
                return;
            }
        }
        match recv.read_chunk(64 << 10, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(_) => return,
        }
    }
}

/// The pattern of the `subscribed` reply a subscription stream starts with.
fn subscribed_pattern(frame: &[u8]) -> Option<Arc<str>> {
    let frames: Vec<edgesync_protocol::ServerFrame> = Encoding::MsgPack.decode_all(frame).ok()?;
    match frames.first()? {
        edgesync_protocol::ServerFrame::Subscribed { topic, .. } => Some(Arc::from(topic.as_str())),
        _ => None,
    }
}
