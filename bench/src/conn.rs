//! The load generator's connections: WebSocket (plain or TLS) or QUIC behind one type,
//! so every scenario and scanner runs unchanged over any transport.
//!
//! Scenarios see frames — the same MessagePack (or NATS text) bytes on every
//! transport — and never the transport. QUIC follows docs/protocol-quic.md: ALPN
//! `edgesync/2` (or `edgesync/1` with `--quic-v1`), the session on the first
//! bidirectional stream, a server-opened stream per subscription with `edgesync/2`,
//! `u32` big-endian length-prefixed frames ([`LengthPrefixed`]) on each. Every QUIC connection of a run goes
//! through one client [`quinn::Endpoint`] held by the [`Dialer`]: one UDP socket and
//! one endpoint driver for all of them, as a real client fleet behind one address
//! would not have, but as a load generator must (15 000 endpoints would be 15 000
//! sockets and drivers on the bench's core, measuring the bench instead of the
//! gateway).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use edgesync_protocol::codec::LengthPrefixed;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::wire::Proto;
use edgesync::transport::tls;

/// A byte stream a WebSocket runs over: TCP, or TLS over TCP.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// Handshakes (WebSocket upgrade, QUIC + TLS, opening the stream) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame accepted from the server, bytes (the gateway batches up to 256 KiB).
const MAX_FRAME: usize = 64 << 20;
/// Largest read from a QUIC stream at once, bytes.
const READ_CHUNK: usize = 64 << 10;
/// Time a closing connection waits for the peer to take its last bytes.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Time the endpoint gets at the end of a run to send its CONNECTION_CLOSE frames.
const ENDPOINT_DRAIN: Duration = Duration::from_secs(2);

/// Which transport the bench speaks to edgesync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// WebSocket (`ws://`), the only one nats-server offers.
    Ws,
    /// WebSocket over TLS 1.3 (`wss://`): the like-for-like comparison for QUIC.
    Wss,
    /// QUIC (`quic://`), one shared client endpoint.
    Quic,
}

impl Transport {
    /// The transport a URL names by its scheme.
    ///
    /// # Errors
    /// Any scheme but `ws://`, `wss://` and `quic://`.
    pub fn of_url(url: &str) -> Result<Self> {
        match url.split_once("://").map(|(s, _)| s) {
            Some("ws") => Ok(Transport::Ws),
            Some("wss") => Ok(Transport::Wss),
            Some("quic") => Ok(Transport::Quic),
            _ => bail!("bad url {url}: the bench speaks ws://, wss:// and quic://"),
        }
    }
}

/// Opens connections to one server; for QUIC, all through one shared endpoint.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub proto: Proto,
    pub transport: Transport,
    url: String,
    quic: Option<QuicDialer>,
    /// For `wss://`: TLS 1.3 trusting the given CA, ALPN `http/1.1`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, Clone)]
struct QuicDialer {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: String,
}

impl Dialer {
    /// A dialer for `url` (`ws://host:port` or `quic://host:port`). QUIC verifies the
    /// server against the PEM CA `ca` and binds the shared endpoint now, so this must
    /// run inside the bench's tokio runtime; `quic_v1` offers only `edgesync/1`.
    ///
    /// # Errors
    /// A bad URL, a QUIC URL without a CA, an unreadable CA, or the UDP bind failing.
    pub fn new(proto: Proto, url: &str, ca: Option<&Path>, quic_v1: bool) -> Result<Self> {
        let transport = Transport::of_url(url)?;
        if transport != Transport::Ws && proto != Proto::Edgesync {
            bail!("the bench speaks only ws:// to nats");
        }
        let quic = match transport {
            Transport::Quic => Some(QuicDialer::new(url, ca, quic_v1)?),
            Transport::Ws | Transport::Wss => None,
        };
        let tls = match transport {
            Transport::Wss => {
                let ca = ca.context("a wss:// url needs --ca FILE")?;
                Some(Arc::new(tls_client(ca, &[b"http/1.1"])?))
            }
            Transport::Ws | Transport::Quic => None,
        };
        Ok(Dialer {
            proto,
            transport,
            url: url.to_string(),
            quic,
            tls,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Open one connection (no protocol handshake: see `wire::handshake`).
    ///
    /// # Errors
    /// Refused, timed out, or a failed WebSocket/TLS handshake.
    pub async fn connect(&self) -> Result<Conn> {
        let open = async {
            match &self.quic {
                None => connect_ws(&self.url, self.proto, self.tls.as_ref()).await,
                Some(q) => q.connect().await,
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .with_context(|| format!("connect {} timed out", self.url))?
    }

    /// Let the shared endpoint flush the close frames of every connection (bounded).
    pub async fn shutdown(&self) {
        if let Some(q) = &self.quic {
            let _ = tokio::time::timeout(ENDPOINT_DRAIN, q.endpoint.wait_idle()).await;
        }
    }
}

impl QuicDialer {
    fn new(url: &str, ca: Option<&Path>, v1: bool) -> Result<Self> {
        let authority = url
            .strip_prefix("quic://")
            .and_then(|r| r.split('/').next())
            .with_context(|| format!("bad url {url}"))?;
        let addr = authority
            .to_socket_addrs()
            .with_context(|| format!("resolve {authority}"))?
            .next()
            .with_context(|| format!("{authority}: no address"))?;
        let server_name = authority
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(authority)
            .to_string();
        let ca = ca.context(
            "a quic:// url needs --ca FILE (the bench's own gateway passes its development CA)",
        )?;
        let alpn: &[&[u8]] = if v1 {
            &[edgesync_protocol::ALPN_QUIC]
        } else {
            &[
                edgesync_protocol::ALPN_QUIC_V2,
                edgesync_protocol::ALPN_QUIC,
            ]
        };
        let crypto = tls_client(ca, alpn)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .context("TLS config for QUIC")?;
        let mut transport = quinn::TransportConfig::default();
        // No idle timeout of our own (the gateway's applies) and no keep-alives: idle
        // connections must cost the gateway nothing it would not pay for a quiet client.
        transport
            .max_idle_timeout(None)
            .keep_alive_interval(None)
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(1024));
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        let bind = if addr.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0u8; 4], 0))
        };
        // The same large kernel buffers as the gateway's socket: with the default, the
        // one socket of 1 000 connections drops datagrams whenever the bench is descheduled.
        let socket =
            edgesync::transport::quic::bind_udp(bind).context("bind the bench's UDP socket")?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .context("create the bench's QUIC endpoint")?;
        Ok(QuicDialer {
            endpoint,
            config,
            addr,
            server_name,
        })
    }

    async fn connect(&self) -> Result<Conn> {
        let connection = self
            .endpoint
            .connect_with(self.config.clone(), self.addr, &self.server_name)?
            .await
            .with_context(|| format!("QUIC handshake with {}", self.addr))?;
        let (send, recv) = connection
            .open_bi()
            .await
            .context("open the session stream")?;
        Ok(Conn::Quic(Box::new(QuicConn {
            connection,
            send,
            recv,
            buf: BytesMut::new(),
            framing: LengthPrefixed::new(MAX_FRAME),
            lanes: Vec::new(),
            scratch: Vec::new(),
            accepting: true,
        })))
    }
}

/// TLS 1.3 client settings trusting the PEM CA `ca`, offering `alpn` (preferred first).
fn tls_client(ca: &Path, alpn: &[&[u8]]) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tls::read_certs(ca)? {
        roots.add(cert)?;
    }
    let mut c = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(c)
}

async fn connect_ws(
    url: &str,
    proto: Proto,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Conn> {
    let mut req = url
        .into_client_request()
        .with_context(|| format!("bad url {url}"))?;
    let host = req.uri().host().context("url without host")?.to_string();
    let port = req
        .uri()
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .with_context(|| format!("connect {url}"))?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match tls {
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .with_context(|| format!("server name {host}"))?;
            let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {url}"))?;
            Box::new(stream)
        }
        None => Box::new(tcp),
    };
    if proto == Proto::Edgesync {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static(edgesync_protocol::SUBPROTOCOL_MSGPACK),
        );
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(64 << 10)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(Conn::Ws(Box::new(ws)))
}

/// One bench connection.
pub enum Conn {
    Ws(Box<Ws>),
    Quic(Box<QuicConn>),
}

/// A QUIC connection, its session stream and (`edgesync/2`) its subscription streams.
pub struct QuicConn {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Bytes read but not yet split into frames.
    buf: BytesMut,
    framing: LengthPrefixed,
    /// Subscription streams the server opened, each with its unsplit bytes.
    lanes: Vec<(quinn::RecvStream, BytesMut)>,
    /// Read buffer for the subscription streams (empty until one exists).
    scratch: Vec<u8>,
    /// False once the connection refused to hand over more streams (it ended).
    accepting: bool,
}

/// What woke a QUIC connection's reader.
enum Readable {
    Session(Result<Option<quinn::Chunk>, quinn::ReadError>),
    Lane(usize, Result<usize, quinn::ReadError>),
    Opened(Result<quinn::RecvStream, quinn::ConnectionError>),
}

impl Conn {
    /// Send one frame (a WebSocket binary message, or one length-prefixed QUIC frame).
    ///
    /// # Errors
    /// The connection is gone.
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        match self {
            Conn::Ws(ws) => Ok(ws.send(Message::binary(frame)).await?),
            Conn::Quic(q) => {
                let mut prefix = Vec::with_capacity(4);
                LengthPrefixed::put_prefix(&mut prefix, frame.len());
                let mut chunks = [Bytes::from(prefix), Bytes::from(frame)];
                Ok(q.send.write_all_chunks(&mut chunks).await?)
            }
        }
    }

    /// The next frame; `None` when the server closed the connection. Cancel-safe (a
    /// partial QUIC frame stays buffered), so it can race a stop signal in `select!`.
    pub async fn next(&mut self) -> Option<Result<Bytes>> {
        match self {
            Conn::Ws(ws) => loop {
                return match ws.next().await? {
                    Ok(Message::Binary(b)) => Some(Ok(b)),
                    Ok(Message::Text(t)) => Some(Ok(Bytes::copy_from_slice(t.as_bytes()))),
                    Ok(Message::Close(_)) => None,
                    Ok(_) => continue,
                    Err(e) => Some(Err(e.into())),
                };
            },
            Conn::Quic(q) => q.next().await,
        }
    }

    /// Close politely; bounded so a stuck peer cannot hold the bench.
    pub async fn close(self) {
        match self {
            Conn::Ws(mut ws) => {
                let _ = tokio::time::timeout(CLOSE_LINGER, ws.as_mut().close(None)).await;
            }
            Conn::Quic(mut q) => {
                // Finishing the stream ends the session; closing at once would discard it.
                let _ = q.send.finish();
                let _ = tokio::time::timeout(CLOSE_LINGER, q.send.stopped()).await;
                q.connection
                    .close(quinn::VarInt::from_u32(0), b"bench done");
            }
        }
    }
}

impl QuicConn {
    async fn next(&mut self) -> Option<Result<Bytes>> {
        // Bounded: each round either returns or appends a non-empty chunk to a buffer,
        // whose growth the frame limit caps, or takes a new stream.
        loop {
            for buf in std::iter::once(&mut self.buf).chain(self.lanes.iter_mut().map(|l| &mut l.1))
            {
                match self.framing.next_frame(buf) {
                    Ok(Some(frame)) => return Some(Ok(frame)),
                    Ok(None) => {}
                    Err(e) => return Some(Err(anyhow::anyhow!("bad frame from server: {e}"))),
                }
            }
            let QuicConn {
                connection,
                recv,
                lanes,
                scratch,
                accepting,
                ..
            } = self;
            let event = tokio::select! {
                chunk = recv.read_chunk(READ_CHUNK, true) => Readable::Session(chunk),
                (i, n) = read_lanes(lanes, scratch), if !lanes.is_empty() => Readable::Lane(i, n),
                s = connection.accept_uni(), if *accepting => Readable::Opened(s),
            };
            match event {
                Readable::Session(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk.bytes),
                Readable::Session(Ok(None)) => return None,
                Readable::Session(Err(quinn::ReadError::ConnectionLost(
                    quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::LocallyClosed,
                ))) => return None,
                Readable::Session(Err(e)) => return Some(Err(e.into())),
                Readable::Lane(i, Ok(0)) | Readable::Lane(i, Err(_)) => {
                    // Ended (after `unsubscribed`) or reset: its frames are all taken.
                    self.lanes.swap_remove(i);
                }
                Readable::Lane(i, Ok(n)) => self.lanes[i].1.extend_from_slice(&self.scratch[..n]),
                Readable::Opened(Ok(s)) => {
                    self.scratch.resize(READ_CHUNK, 0);
                    self.lanes.push((s, BytesMut::new()));
                }
                // The session stream reports how the connection ended.
                Readable::Opened(Err(_)) => self.accepting = false,
            }
        }
    }
}

/// The first subscription stream with bytes (or an end) to read, into `scratch`.
async fn read_lanes(
    lanes: &mut [(quinn::RecvStream, BytesMut)],
    scratch: &mut [u8],
) -> (usize, Result<usize, quinn::ReadError>) {
    std::future::poll_fn(|cx| {
        for (i, (s, _)) in lanes.iter_mut().enumerate() {
            if let std::task::Poll::Ready(r) = s.poll_read(cx, scratch) {
                return std::task::Poll::Ready((i, r));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_follows_the_scheme() {
        assert_eq!(
            Transport::of_url("ws://127.0.0.1:1").ok(),
            Some(Transport::Ws)
        );
        assert_eq!(
            Transport::of_url("quic://127.0.0.1:1").ok(),
            Some(Transport::Quic)
        );
        assert_eq!(
            Transport::of_url("wss://127.0.0.1:1").ok(),
            Some(Transport::Wss)
        );
        assert!(Transport::of_url("http://127.0.0.1:1").is_err());
        assert!(Dialer::new(Proto::Nats, "quic://127.0.0.1:1", None, false).is_err());
        assert!(Dialer::new(Proto::Nats, "wss://127.0.0.1:1", None, false).is_err());
        // wss verifies the gateway: without a CA there is nothing to trust.
        let no_ca = Dialer::new(Proto::Edgesync, "wss://127.0.0.1:1", None, false)
            .expect_err("wss needs a CA")
            .to_string();
        assert!(no_ca.contains("--ca"), "{no_ca}");
    }
}
