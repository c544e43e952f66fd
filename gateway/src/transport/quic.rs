//! QUIC listener for clients (quinn, rustls, TLS 1.3, ALPN `edgesync/2` or
//! `edgesync/1`).
//!
//! A client opens one bidirectional stream; the session runs on it with
//! length-prefixed MessagePack frames ([`LengthPrefixed`]: `u32` big-endian
//! length, then the body). With `edgesync/2` each subscription's pushes travel on
//! a unidirectional stream the gateway opens for it ([`QuicLanes`]), drained from
//! the subscription's own outbox, so one subscription's backlog or lost packet does
//! not hold back another's. Oversized prefixes are refused before the body is
//! buffered (`frame_too_large`, then close). QUIC datagrams carry opt-in
//! ephemeral publishes, read by the session task straight from the connection
//! ([`QuicDatagrams`]); quinn's datagram receive buffer bounds what waits and
//! drops the oldest (they are best-effort). The transport applies the connection
//! limits and runs [`driver::run_with_datagrams`]; it never interprets frames.
//! `docs/protocol-quic.md` is the wire description.
//!
//! Transport settings: idle timeout `limits.idle_timeout_ms`, keep-alive every
//! `limits.ping_interval_ms` (so NAT bindings survive quiet sessions), one
//! client-opened bidirectional stream and no client-opened unidirectional streams per
//! connection (with `edgesync/2` the gateway opens one per subscription),
//! connection migration on (a phone changing networks keeps its session).
//! QUIC always negotiates TLS 1.3 (RFC 9001); with `[tls] client_ca`, a client
//! certificate is requested and, when presented and valid, its subject CN (or
//! first SAN) becomes [`ConnInfo::tls_identity`].
//!
//! Close codes (QUIC application error codes in CONNECTION_CLOSE; the reason
//! phrase is the error message): see [`close_code`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgesync_protocol::codec::LengthPrefixed;
use edgesync_protocol::{DecodeError, Encoding, ErrorCode};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};

use super::admission::Admission;
use super::tls::{self, Identity, TlsError};
use crate::broker::ConnOut;
use crate::config::Limits;
use crate::model::{ConnInfo, Transport};
use crate::session::driver::{self, Conn, ConnError, Lanes, SessionCtx};

/// Application close code: normal close (client left, or clean end of session).
pub const CLOSE_NORMAL: u32 = 0x0;
/// Application close code for an error code without its own number (see the final `error` frame).
pub const CLOSE_OTHER: u32 = 0xff;

/// Datagram receive buffer per connection, bytes (quinn drops the oldest beyond it).
const DATAGRAM_RECV_BUFFER: usize = 64 << 10;
/// Kernel receive/send buffer asked for the one UDP socket all QUIC connections share,
/// bytes. Linux's default (208 KiB) overflows within milliseconds when the gateway is
/// briefly descheduled under load, and every datagram dropped there is a QUIC loss:
/// retransmission after a probe timeout and a congestion-window cut for that connection
/// (measured: 17 % of datagrams lost at the default, seconds of added latency). Capped by
/// `net.core.rmem_max` / `wmem_max`; raise those for busy gateways.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;
/// Largest read from the stream at once.
const READ_CHUNK: usize = 64 << 10;
/// Time allowed for the peer to acknowledge the final frames before the connection closes.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// QUIC close reasons are kept short (they travel in one packet).
const MAX_REASON_BYTES: usize = 120;

/// The QUIC application error code sent when a session closes with `code`.
///
/// | code | meaning |
/// |---|---|
/// | 0x00 | normal close |
/// | 0x01 | `internal` |
/// | 0x02 | `bad_frame` |
/// | 0x03 | `frame_too_large` |
/// | 0x04 | `idle_timeout` |
/// | 0x05 | `shutting_down` |
/// | 0x06 | `too_many_connections` |
/// | 0x07 | `slow_consumer` |
/// | 0x08 | `rate_limited` |
/// | 0x09 | `storage_unavailable` |
/// | 0x0a | `unauthorized` |
/// | 0x0b | `forbidden` |
/// | 0x0c | `bad_request` (e.g. no stream opened in time) |
/// | 0xff | any other code (the final `error` frame names it) |
pub fn close_code(code: Option<ErrorCode>) -> u32 {
    match code {
        None => CLOSE_NORMAL,
        Some(ErrorCode::Internal) => 0x01,
        Some(ErrorCode::BadFrame) => 0x02,
        Some(ErrorCode::FrameTooLarge) => 0x03,
        Some(ErrorCode::IdleTimeout) => 0x04,
        Some(ErrorCode::ShuttingDown) => 0x05,
        Some(ErrorCode::TooManyConnections) => 0x06,
        Some(ErrorCode::SlowConsumer) => 0x07,
        Some(ErrorCode::RateLimited) => 0x08,
        Some(ErrorCode::StorageUnavailable) => 0x09,
        Some(ErrorCode::Unauthorized) => 0x0a,
        Some(ErrorCode::Forbidden) => 0x0b,
        Some(ErrorCode::BadRequest) => 0x0c,
        Some(_) => CLOSE_OTHER,
    }
}

/// The quinn server configuration: TLS from `identity` (ALPN `edgesync/2`, then
/// `edgesync/1`: a client offering both gets subscription streams; with `peer_ca` also
/// `edgesync-peer/1` for replication peers), optional client-certificate CAs (clients'
/// and peers'), and transport limits from `limits`.
///
/// # Errors
/// [`TlsError`] for an unusable certificate, key or CA.
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&Path>,
    peer_ca: Option<&Path>,
    limits: &Limits,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut alpn = vec![
        edgesync_protocol::ALPN_QUIC_V2,
        edgesync_protocol::ALPN_QUIC,
    ];
    if peer_ca.is_some() {
        alpn.push(edgesync_replication::wire::ALPN_PEER);
    }
    let cas: Vec<&Path> = client_ca.into_iter().chain(peer_ca).collect();
    let tls = tls::server_config_cas(identity, &alpn, &cas)?;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    transport
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok())
        .keep_alive_interval(Some(Duration::from_millis(limits.ping_interval_ms.max(1))))
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(DATAGRAM_RECV_BUFFER));
    config.transport_config(Arc::new(transport));
    config.migration(true);
    Ok(config)
}

/// Bind the UDP socket (with [`UDP_BUFFER_BYTES`] kernel buffers) and create the endpoint.
///
/// # Errors
/// The bind error.
pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> std::io::Result<Endpoint> {
    let socket = bind_udp(addr)?;
    Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A UDP socket bound to `addr` whose kernel receive and send buffers are asked to be
/// [`UDP_BUFFER_BYTES`] (the kernel caps them at `net.core.rmem_max` / `wmem_max`; a
/// failure to resize is logged, not fatal).
///
/// # Errors
/// The bind error.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    if let Err(e) = state.set_recv_buffer_size((&socket).into(), UDP_BUFFER_BYTES) {
        tracing::warn!(error = %e, "cannot resize the QUIC socket's receive buffer");
    }
    if let Err(e) = state.set_send_buffer_size((&socket).into(), UDP_BUFFER_BYTES) {
        tracing::warn!(error = %e, "cannot resize the QUIC socket's send buffer");
    }
    tracing::debug!(
        recv = ?state.recv_buffer_size((&socket).into()),
        send = ?state.send_buffer_size((&socket).into()),
        "QUIC socket buffers"
    );
    Ok(socket)
}

/// Where connections with the peer ALPN (`edgesync-peer/1`) go: the replication driver,
/// which sits above the transport (the seam keeps the transport free of replication).
pub trait PeerLinks: Send + Sync {
    /// A peer's connection, TLS done (its certificate chains to one of the listener's
    /// client CAs; the driver checks it against the cluster CA).
    fn accept(&self, connection: Connection);
    /// A handshake with the peer ALPN failed (e.g. a certificate from another CA).
    fn refused(&self, remote: SocketAddr, error: String);
}

/// What the QUIC listener needs besides sessions when replication is on.
#[derive(Clone)]
pub struct PeerRouting {
    /// Receives peer connections.
    pub links: Arc<dyn PeerLinks>,
    /// Checks client certificates against `[tls] client_ca` only (the listener's TLS
    /// verifier also trusts the cluster CA): `None` when no client CA is configured,
    /// and then a client's certificate gives no identity.
    pub client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// Accept QUIC connections until shutdown. With `peers`, connections that negotiated
/// the peer ALPN go to the replication driver.
pub async fn serve(
    endpoint: Endpoint,
    ctx: Arc<SessionCtx>,
    admission: Arc<Admission>,
    peers: Option<PeerRouting>,
) {
    loop {
        let incoming = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        ctx.tasks.spawn(handle(
            incoming,
            ctx.clone(),
            admission.clone(),
            peers.clone(),
        ));
    }
    // Refuse new handshakes; sessions close their own connections after draining.
    endpoint.set_server_config(None);
}

async fn handle(
    incoming: Incoming,
    ctx: Arc<SessionCtx>,
    admission: Arc<Admission>,
    peers: Option<PeerRouting>,
) {
    let remote = incoming.remote_address();
    let timeout = Duration::from_millis(ctx.limits.handshake_timeout_ms);
    let refused = |reason: &str| {
        ctx.metrics
            .connections_refused
            .with_label_values(&[reason])
            .inc();
    };
    // A handshake slot first (finding 6). Under pressure, a peer must first prove it
    // owns its address (Retry: one round trip, no state kept by the gateway meanwhile),
    // so spoofed Initials from many addresses cannot take the slots.
    if admission.under_handshake_pressure()
        && !incoming.remote_address_validated()
        && incoming.may_retry()
    {
        // Not a refusal: the peer comes back with a token proving its address.
        refused("quic_retry");
        let _ = incoming.retry();
        return;
    }
    let handshake = match admission.begin_handshake(remote.ip()) {
        Ok(h) => h,
        Err(r) => {
            refused("too_many_handshakes");
            tracing::debug!(%remote, reason = %r.message, "QUIC handshake refused");
            incoming.refuse();
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            refused("quic_handshake");
            tracing::debug!(%remote, error = %e, "QUIC accept failed");
            return;
        }
    };
    let mut connecting = connecting;
    // The ALPN is known once the client's hello is in, before its certificate arrives:
    // a peer's failed handshake (another CA) is reported to the replication driver.
    let peer_alpn = match tokio::time::timeout_at(deadline, connecting.handshake_data()).await {
        Ok(Ok(data)) => data
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()
            .and_then(|h| h.protocol)
            .is_some_and(|p| p == edgesync_replication::wire::ALPN_PEER),
        _ => false,
    };
    let connection = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            refused("quic_handshake");
            tracing::debug!(%remote, error = %e, "QUIC handshake failed");
            if let (true, Some(p)) = (peer_alpn, &peers) {
                p.links.refused(remote, e.to_string());
            }
            return;
        }
        Err(_) => {
            refused("handshake_timeout");
            return;
        }
    };
    if let Some(p) = &peers {
        if peer_alpn {
            drop(handshake);
            p.links.accept(connection);
            return;
        }
        // The TLS verifier also trusted the cluster CA: a client's certificate must
        // come from `[tls] client_ca` (a node certificate is no client identity).
        if let Some(certs) = presented_certs(&connection) {
            let now = rustls::pki_types::UnixTime::now();
            let ok = p
                .client_verifier
                .as_ref()
                .is_some_and(|v| v.verify_client_cert(&certs[0], &certs[1..], now).is_ok());
            if !ok {
                refused("client_certificate");
                close(
                    &connection,
                    Some(ErrorCode::Unauthorized),
                    "client certificate not issued by the configured client CA",
                );
                return;
            }
        }
    }
    let _admission = match admission.admit(remote.ip()) {
        Ok(guard) => guard,
        Err(r) => {
            refused("too_many_connections");
            close(&connection, Some(r.code), &r.message);
            return;
        }
    };
    let (send, recv) = match tokio::time::timeout_at(deadline, connection.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "QUIC connection ended before opening a stream");
            return;
        }
        Err(_) => {
            refused("handshake_timeout");
            close(
                &connection,
                Some(ErrorCode::BadRequest),
                "open a bidirectional stream after the handshake",
            );
            return;
        }
    };
    drop(handshake);
    let tls_identity = peer_identity(&connection);
    let datagrams = QuicDatagrams(connection.clone());
    let limits = &ctx.limits;
    let lanes = (negotiated_alpn(&connection).as_deref() == Some(edgesync_protocol::ALPN_QUIC_V2))
        .then(|| Arc::new(QuicLanes(connection.clone())) as Arc<dyn Lanes>);
    let conn = QuicConn {
        lanes,
        connection,
        send,
        recv,
        // Empty until the first read, then sized by what arrives: an idle session holds
        // no read buffer beyond the tail of its last chunk.
        buf: BytesMut::new(),
        framing: LengthPrefixed::new(limits.max_frame_bytes),
        eof: false,
    };
    ctx.metrics
        .connections_accepted
        .with_label_values(&["quic"])
        .inc();
    let open = ctx.metrics.connections_open.with_label_values(&["quic"]);
    open.inc();
    let info = ConnInfo {
        remote,
        transport: Transport::Quic,
        tls_identity,
        encoding: Encoding::MsgPack,
    };
    driver::run_with_datagrams(conn, ctx.clone(), info, Some(datagrams)).await;
    open.dec();
}

/// The session's datagram source: the connection itself. `read_datagram` is cancel-safe
/// (a datagram is taken from quinn's buffer only when the future completes).
pub struct QuicDatagrams(Connection);

impl driver::Datagrams for QuicDatagrams {
    async fn next(&mut self) -> Option<Bytes> {
        self.0.read_datagram().await.ok()
    }
}

fn close(connection: &Connection, code: Option<ErrorCode>, reason: &str) {
    connection.close(
        VarInt::from_u32(close_code(code)),
        truncate(reason).as_bytes(),
    );
}

fn truncate(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The ALPN protocol the handshake settled on.
fn negotiated_alpn(connection: &Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Subscription streams of an `edgesync/2` connection: one writer task per
/// subscription, each draining the subscription's lane into a unidirectional stream it
/// opens for the first frame, the `subscribed` (a connection without subscriptions
/// holds no stream and no writer).
pub struct QuicLanes(Connection);

impl Lanes for QuicLanes {
    fn open(&self, lane: Arc<ConnOut>, session: Arc<ConnOut>, ctx: &SessionCtx) {
        let connection = self.0.clone();
        let bytes_out = ctx.metrics.bytes_out.clone();
        let write_timeout = Duration::from_millis(ctx.limits.idle_timeout_ms);
        ctx.tasks.spawn(write_lane(
            connection,
            lane,
            session,
            bytes_out,
            write_timeout,
        ));
    }
}

/// The writer of one subscription stream. Frames are those of the session stream
/// (length-prefixed, several pushes per frame); the first is the subscription's
/// `subscribed`, the last (after `unsub`) its `unsubscribed`, then the stream ends.
/// Like the session's writes, opening the stream and each write wait at most
/// `write_timeout` (`limits.idle_timeout_ms`) for a client that stopped reading it, and
/// give up at once when the lane closes (`slow_consumer = "disconnect"`); either ends
/// the session.
async fn write_lane(
    connection: Connection,
    lane: Arc<ConnOut>,
    session: Arc<ConnOut>,
    bytes_out: prometheus::IntCounter,
    write_timeout: Duration,
) {
    let mut stream: Option<SendStream> = None;
    loop {
        tokio::select! {
            biased;
            () = lane.outbox.ready() => {}
            _ = connection.closed() => return,
        }
        if let Some(closed) = lane.outbox.closed() {
            // `slow_consumer` under the disconnect policy: the session ends with it.
            session.outbox.close(closed.code, &closed.message);
            return;
        }
        loop {
            let mut frame = Vec::new();
            if lane.outbox.drain_into(&mut frame, driver::MAX_BATCH_FRAME) == 0 {
                break;
            }
            // Still the connection's bytes until written: while the client withholds
            // stream credit, the lanes' budget (and so what the session may queue) says so.
            let _held = lane.outbox.hold(frame.len());
            bytes_out.inc_by(frame.len() as u64);
            let write = async {
                let send = match &mut stream {
                    Some(s) => s,
                    None => match connection.open_uni().await {
                        Ok(s) => stream.insert(s),
                        Err(e) => return Err(quinn::WriteError::ConnectionLost(e)),
                    },
                };
                write_frame(send, frame).await
            };
            let written = tokio::select! {
                r = write => r,
                () = lane.outbox.wait_closed() => {
                    if let Some(closed) = lane.outbox.closed() {
                        session.outbox.close(closed.code, &closed.message);
                    }
                    return;
                }
                () = tokio::time::sleep(write_timeout) => {
                    session.outbox.close(
                        ErrorCode::SlowConsumer,
                        "the client stopped reading a subscription stream",
                    );
                    return;
                }
            };
            match written {
                Ok(()) => {}
                Err(quinn::WriteError::Stopped(_)) => {
                    // Streams end with `unsub`, not with STOP_SENDING.
                    lane.outbox
                        .close(ErrorCode::BadRequest, "subscription stream stopped");
                    session.outbox.close(
                        ErrorCode::BadRequest,
                        "a subscription stream was stopped by the client; use unsub",
                    );
                    return;
                }
                Err(_) => return, // the connection is gone
            }
        }
        if lane.outbox.is_done() {
            if let Some(s) = &mut stream {
                let _ = s.finish();
            }
            return;
        }
    }
}

/// Write one length-prefixed frame.
async fn write_frame(send: &mut SendStream, frame: Vec<u8>) -> Result<(), quinn::WriteError> {
    let mut prefix = Vec::with_capacity(4);
    LengthPrefixed::put_prefix(&mut prefix, frame.len());
    let mut chunks = [Bytes::from(prefix), Bytes::from(frame)];
    send.write_all_chunks(&mut chunks).await
}

/// The identity in a verified client certificate: subject CN, else the first DNS, email
/// or URI subject alternative name.
fn peer_identity(connection: &Connection) -> Option<String> {
    presented_certs(connection)?
        .first()
        .and_then(|c| tls::certificate_identity(c))
}

/// The certificate chain the other side presented (leaf first), if any.
pub fn presented_certs(
    connection: &Connection,
) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let any = connection.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    (!certs.is_empty()).then_some(*certs)
}

/// A session's view of a QUIC connection: the first bidirectional stream, length-prefixed.
pub struct QuicConn {
    /// `edgesync/2`: subscriptions on streams of their own.
    lanes: Option<Arc<dyn Lanes>>,
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    /// Bytes read but not yet split into frames (at most one frame plus one chunk).
    buf: BytesMut,
    framing: LengthPrefixed,
    /// The client finished its stream.
    eof: bool,
}

impl Conn for QuicConn {
    // Cancel-safe: the driver drops this future when another event wins; state lives in
    // `self` and quinn's `read_chunk` consumes nothing unless it returns.
    async fn recv(&mut self) -> Option<Result<Bytes, ConnError>> {
        loop {
            match self.framing.next_frame(&mut self.buf) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e @ DecodeError::TooLarge { .. }) => {
                    return Some(Err(ConnError::TooLarge(e.to_string())));
                }
                Err(_) => return Some(Err(ConnError::Protocol("zero-length frame".into()))),
            }
            if self.eof {
                if self.buf.is_empty() {
                    return None;
                }
                return Some(Err(ConnError::Protocol(
                    "stream ended inside a frame".into(),
                )));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) => self.eof = true,
                Err(quinn::ReadError::ConnectionLost(
                    quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::LocallyClosed,
                )) => return None,
                Err(e) => return Some(Err(ConnError::Io(e.to_string()))),
            }
        }
    }

    async fn send(&mut self, frame: Vec<u8>) -> Result<(), ConnError> {
        write_frame(&mut self.send, frame)
            .await
            .map_err(|e| ConnError::Io(e.to_string()))
    }

    fn lanes(&self) -> Option<Arc<dyn Lanes>> {
        self.lanes.clone()
    }

    /// QUIC keep-alive packets (every `limits.ping_interval_ms`) are acknowledged by
    /// the peer's stack, and quinn closes the connection after `limits.idle_timeout_ms`
    /// without any packet from the peer: the transport proves liveness.
    fn keeps_alive(&self) -> bool {
        true
    }

    /// QUIC keep-alive (configured on the endpoint) already probes the path.
    async fn ping(&mut self) -> Result<(), ConnError> {
        match self.connection.close_reason() {
            Some(e) => Err(ConnError::Io(e.to_string())),
            None => Ok(()),
        }
    }

    async fn close(&mut self, code: Option<ErrorCode>, reason: &str) {
        // Closing the connection discards unsent stream data: finish the stream and give the
        // peer a bounded time to acknowledge the final frames (e.g. the closing `error`).
        let _ = self.send.finish();
        let _ = tokio::time::timeout(CLOSE_LINGER, self.send.stopped()).await;
        close(&self.connection, code, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_frame_bytes() {
        // docs/protocol-quic.md "Worked example": keep the two in sync.
        let body = Encoding::MsgPack.encode(&edgesync_protocol::ClientFrame::Connect {
            id: 1,
            token: None,
            client_id: None,
            cursor: None,
        });
        let mut wire = Vec::new();
        LengthPrefixed::put_prefix(&mut wire, body.len());
        wire.extend_from_slice(&body);
        let want = [
            0, 0, 0, 0x0f, 0x82, 0xa1, b't', 0xa7, b'c', b'o', b'n', b'n', b'e', b'c', b't', 0xa2,
            b'i', b'd', 1,
        ];
        assert_eq!(wire, want);
        let pong = Encoding::MsgPack.encode(&edgesync_protocol::ServerFrame::Pong { id: 1 });
        assert_eq!(
            pong,
            [
                0x82, 0xa1, b't', 0xa4, b'p', b'o', b'n', b'g', 0xa2, b'i', b'd', 1
            ]
        );
        let dg = [
            0x83, 0xa1, 0x74, 0xa3, 0x70, 0x75, 0x62, 0xa5, 0x74, 0x6f, 0x70, 0x69, 0x63, 0xa6,
            0x63, 0x75, 0x72, 0x2e, 0x75, 0x31, 0xa4, 0x64, 0x61, 0x74, 0x61, 0xc4, 0x02, 0x01,
            0x02,
        ];
        let p: Vec<crate::session::EphemeralPub> = Encoding::MsgPack
            .decode_all(&dg)
            .expect("datagram example decodes");
        assert_eq!(
            (p[0].topic.as_str(), p[0].data.0.as_ref()),
            ("cur.u1", &[1u8, 2][..])
        );
    }

    #[test]
    fn close_codes_are_stable() {
        assert_eq!(close_code(None), 0);
        assert_eq!(close_code(Some(ErrorCode::FrameTooLarge)), 3);
        assert_eq!(close_code(Some(ErrorCode::ShuttingDown)), 5);
        assert_eq!(close_code(Some(ErrorCode::CursorInvalid)), CLOSE_OTHER);
        assert_eq!(truncate(&"é".repeat(100)).len(), 120);
    }
}
