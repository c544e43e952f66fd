//! WebSocket listeners (`ws` and `wss`).
//!
//! Accepts TCP, optionally completes TLS, negotiates the subprotocol
//! (`edgesync.json.v1` or `edgesync.msgpack.v1`; none offered means JSON, only
//! unknown ones offered is refused with HTTP 400), applies the connection
//! limits, then runs the session driver. Frame size limits are enforced by
//! tungstenite before a frame is buffered whole. On wss with `[tls] client_ca`,
//! a verified client certificate's identity becomes [`ConnInfo::tls_identity`]
//! exactly as on QUIC. A request that is not a WebSocket upgrade (plain HTTP, a
//! browser opening the URL) is answered `426 Upgrade Required`, a request that is not
//! HTTP `400 Bad Request`, instead of a silently dropped connection.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use edgesync_protocol::{Encoding, ErrorCode, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::admission::{Admission, AdmitGuard, HandshakeGuard};
use super::origin::OriginPolicy;
use crate::model::{ConnInfo, Transport};
use crate::session::driver::{self, Conn, ConnError, SessionCtx};

/// Per-connection read buffer (tungstenite keeps it for the connection's life and reads
/// at most this much per syscall). 2 KiB holds several typical publishes per read and is
/// a quarter of the idle-connection memory budget; larger frames grow the buffer as
/// they arrive.
const READ_BUFFER_BYTES: usize = 2048;
/// Longest HTTP request head read before the upgrade (request line and headers).
const MAX_REQUEST_HEAD_BYTES: usize = 8 << 10;
/// Most request headers parsed.
const MAX_REQUEST_HEADERS: usize = 64;

/// Accept WebSocket connections until shutdown. `tls`: wss when present; `origins`:
/// which browser pages may connect.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<SessionCtx>,
    admission: Arc<Admission>,
    origins: Arc<OriginPolicy>,
) {
    let transport = if tls.is_some() {
        Transport::Wss
    } else {
        Transport::Ws
    };
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, transport = transport.as_str(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A handshake slot first: unfinished handshakes hold descriptors too.
        let handshake = match admission.begin_handshake(remote.ip()) {
            Ok(h) => h,
            Err(r) => {
                refuse_handshake(&ctx, stream, tls.is_none(), &r.message);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let accept = Accept {
            ctx: ctx.clone(),
            admission: admission.clone(),
            origins: origins.clone(),
            deadline: tokio::time::Instant::now()
                + Duration::from_millis(ctx.limits.handshake_timeout_ms),
            handshake,
        };
        // One task type per listener kind: a plain connection's task is not sized for
        // the TLS state a wss connection carries.
        match &tls {
            None => {
                ctx.tasks
                    .spawn(handle(stream, remote, transport, None, accept));
            }
            Some(acceptor) => {
                ctx.tasks
                    .spawn(handle_tls(acceptor.clone(), stream, remote, accept));
            }
        }
    }
}

/// Turn away a peer beyond the handshake limits: on plain ws an HTTP 503 if the socket
/// takes it at once (never waiting), then close.
fn refuse_handshake(ctx: &SessionCtx, stream: TcpStream, plain: bool, why: &str) {
    ctx.metrics
        .connections_refused
        .with_label_values(&["too_many_handshakes"])
        .inc();
    tracing::debug!(reason = why, "handshake refused");
    if plain {
        let _ = stream.try_write(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
}

/// What a connection task needs from its listener.
struct Accept {
    ctx: Arc<SessionCtx>,
    admission: Arc<Admission>,
    origins: Arc<OriginPolicy>,
    /// When TLS and the WebSocket upgrade must be done (`limits.handshake_timeout_ms`
    /// after the TCP accept).
    deadline: tokio::time::Instant,
    /// This connection's handshake slot, freed once the session starts or is refused.
    handshake: HandshakeGuard,
}

impl Accept {
    fn refused(&self, reason: &str) {
        self.ctx
            .metrics
            .connections_refused
            .with_label_values(&[reason])
            .inc();
    }
}

/// TLS handshake (bounded by the handshake timeout), then [`handle`].
async fn handle_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    accept: Accept,
) {
    match tokio::time::timeout_at(accept.deadline, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let identity = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| super::tls::certificate_identity(c));
            handle(s, remote, Transport::Wss, identity, accept).await
        }
        Ok(Err(e)) => {
            accept.refused("tls_handshake");
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
        }
        Err(_) => accept.refused("handshake_timeout"),
    }
}

/// Bind a listener for `addr`.
///
/// # Errors
/// The bind error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn handle<S>(
    stream: S,
    remote: SocketAddr,
    transport: Transport,
    tls_identity: Option<String>,
    accept: Accept,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The handshake and admission run in their own allocation, freed before the
    // session starts: an idle connection's task holds only the session's state.
    let Some((conn, _admission)) = Box::pin(open(stream, remote, &accept)).await else {
        return;
    };
    let Accept { ctx, handshake, .. } = accept;
    drop(handshake);
    ctx.metrics
        .connections_accepted
        .with_label_values(&[transport.as_str()])
        .inc();
    let open = ctx
        .metrics
        .connections_open
        .with_label_values(&[transport.as_str()]);
    open.inc();
    let info = ConnInfo {
        remote,
        transport,
        tls_identity,
        encoding: conn.encoding,
    };
    driver::run(conn, ctx, info).await;
    open.dec();
}

/// WebSocket handshake (subprotocol → encoding) and admission; `None` when refused.
async fn open<S>(
    stream: S,
    remote: SocketAddr,
    accept: &Accept,
) -> Option<(WsConn<Replay<S>>, AdmitGuard)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = match tokio::time::timeout_at(accept.deadline, upgrade_request(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(why)) => {
            accept.refused("ws_handshake");
            tracing::debug!(%remote, why, "not a WebSocket upgrade; answered");
            return None;
        }
        Err(_) => {
            accept.refused("handshake_timeout");
            return None;
        }
    };
    let stream = Counted {
        inner: stream,
        read: 0,
    };
    let limits = &accept.ctx.limits;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        // One message is buffered at a time (write_buffer_size 0 flushes every send); what a
        // message may hold is bounded upstream by the outbox and `limits.max_history`.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let chosen = Arc::new(Mutex::new(Encoding::Json));
    let chosen2 = chosen.clone();
    let origins = accept.origins.clone();
    let origin_refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin_refused2 = origin_refused.clone();
    // The error type is tungstenite's handshake response; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let origin = req
            .headers()
            .get("origin")
            .map(|v| v.to_str().unwrap_or("?"));
        if let Err(why) = origins.check(origin) {
            origin_refused2.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut r = ErrorResponse::new(Some(why));
            *r.status_mut() = http::StatusCode::FORBIDDEN;
            return Err(r);
        }
        let offered: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect();
        if offered.is_empty() {
            return Ok(resp);
        }
        match offered.iter().find_map(|p| Encoding::from_subprotocol(p)) {
            Some(enc) => {
                if let Ok(mut c) = chosen2.lock() {
                    *c = enc;
                }
                if let Ok(v) = http::HeaderValue::from_str(enc.subprotocol()) {
                    resp.headers_mut().insert("sec-websocket-protocol", v);
                }
                Ok(resp)
            }
            None => {
                let mut r = ErrorResponse::new(Some(format!(
                    "unsupported subprotocol; offer {} or {}",
                    edgesync_protocol::SUBPROTOCOL_JSON,
                    edgesync_protocol::SUBPROTOCOL_MSGPACK
                )));
                *r.status_mut() = http::StatusCode::BAD_REQUEST;
                Err(r)
            }
        }
    };
    let ws = match tokio::time::timeout_at(
        accept.deadline,
        // Boxed: the handshake's state is freed once it completes instead of staying in
        // the size of every idle connection's task.
        Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(config),
        )),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            if origin_refused.load(std::sync::atomic::Ordering::Relaxed) {
                accept.refused("origin");
            } else {
                accept.refused("ws_handshake");
            }
            tracing::debug!(%remote, error = %e, "WebSocket handshake failed");
            return None;
        }
        Err(_) => {
            accept.refused("handshake_timeout");
            return None;
        }
    };
    let encoding = chosen.lock().map(|c| *c).unwrap_or(Encoding::Json);
    // Progress counts from the end of the handshake.
    let progress = ws.get_ref().read;
    let mut conn = WsConn {
        ws,
        encoding,
        progress,
    };
    let admission = match accept.admission.admit(remote.ip()) {
        Ok(guard) => guard,
        Err(r) => {
            accept.refused("too_many_connections");
            let f = ServerFrame::error(None, r.code, r.message.clone());
            // Bounded: a refused peer that does not read must not hold the task.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.send(encoding.encode(&f))).await;
            conn.close(Some(r.code), &r.message).await;
            return None;
        }
    };
    Some((conn, admission))
}

/// Read the HTTP request head and check it asks for a WebSocket upgrade; answer it
/// (`426`, or `400` for something that is not an HTTP request) when it does not. The
/// head is handed on, unread, to the WebSocket handshake.
async fn upgrade_request<S>(mut stream: S) -> Result<Replay<S>, &'static str>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let verdict = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let upgrade = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && String::from_utf8_lossy(h.value)
                            .split(',')
                            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
                });
                break if upgrade { Ok(()) } else { Err(426) };
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_REQUEST_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) | Err(_) => break Err(400),
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err("connection closed before the request head"),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    };
    let (status, why) = match verdict {
        Ok(()) => {
            return Ok(Replay {
                head,
                at: 0,
                stream,
            });
        }
        Err(426) => ("426 Upgrade Required", "not a WebSocket upgrade"),
        Err(_) => ("400 Bad Request", "not an HTTP request"),
    };
    let body = "This port speaks the edgesync protocol over WebSocket (subprotocols edgesync.json.v1, edgesync.msgpack.v1); see PROTOCOL.md.\n";
    let response = format!(
        "HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    Err(why)
}

/// A stream whose first bytes (the request head, already read) are read again first.
pub struct Replay<S> {
    head: Vec<u8>,
    /// How much of `head` was read again.
    at: usize,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.at);
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                // Replayed: an idle connection keeps no copy of its request.
                this.head = Vec::new();
                this.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A session's view of a WebSocket.
pub struct WsConn<S> {
    ws: WebSocketStream<Counted<S>>,
    encoding: Encoding,
    /// Bytes read from the peer up to the end of the last thing that proved progress (a
    /// whole message, or a control frame read while no message was unfinished).
    progress: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// Whether a control frame with a `payload`-byte body, just read, arrived while no
    /// data message was unfinished: nothing but the frame itself (2 header bytes, 4 mask
    /// bytes, ≤ 125 payload bytes) was read since the last progress. Bytes of a following
    /// frame read in the same syscall make this false too — harmless: that frame's
    /// message proves progress when it completes.
    fn control_is_progress(&mut self, payload: usize) -> bool {
        let read = self.ws.get_ref().read;
        let clean = read.saturating_sub(self.progress) <= 6 + payload as u64;
        if clean {
            self.progress = read;
        }
        clean
    }

    fn message_is_progress(&mut self) {
        self.progress = self.ws.get_ref().read;
    }
}

impl<S> Conn for WsConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn recv(&mut self) -> Option<Result<Bytes, ConnError>> {
        loop {
            return match self.ws.next().await? {
                Ok(Message::Binary(b)) => {
                    self.message_is_progress();
                    Some(Ok(b))
                }
                Ok(Message::Text(t)) => {
                    self.message_is_progress();
                    Some(Ok(Bytes::from(t)))
                }
                // A pong (or the peer's own ping) proves the peer alive — reported as an
                // empty frame — unless it arrives between the fragments of an unfinished
                // message: answering pings must not keep a half-sent message (and its
                // buffer) forever (security finding 9). Then only the idle timer runs.
                Ok(Message::Pong(p) | Message::Ping(p)) => {
                    if self.control_is_progress(p.len()) {
                        Some(Ok(Bytes::new()))
                    } else {
                        continue;
                    }
                }
                Ok(Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => None,
                Err(WsError::Capacity(e)) => Some(Err(ConnError::TooLarge(e.to_string()))),
                Err(WsError::Protocol(e)) => Some(Err(ConnError::Protocol(e.to_string()))),
                Err(WsError::Utf8(e)) => Some(Err(ConnError::Protocol(e.to_string()))),
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => None,
                Err(e) => Some(Err(ConnError::Io(e.to_string()))),
            };
        }
    }

    async fn send(&mut self, frame: Vec<u8>) -> Result<(), ConnError> {
        let msg = if self.encoding.is_text() {
            match String::from_utf8(frame) {
                Ok(s) => Message::text(s),
                Err(e) => Message::binary(e.into_bytes()),
            }
        } else {
            Message::binary(frame)
        };
        self.ws
            .send(msg)
            .await
            .map_err(|e| ConnError::Io(e.to_string()))
    }

    async fn ping(&mut self) -> Result<(), ConnError> {
        self.ws
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(|e| ConnError::Io(e.to_string()))
    }

    async fn close(&mut self, code: Option<ErrorCode>, reason: &str) {
        let code = match code {
            None => CloseCode::Normal,
            Some(ErrorCode::FrameTooLarge) => CloseCode::Size,
            Some(ErrorCode::ShuttingDown) => CloseCode::Away,
            Some(
                ErrorCode::TooManyConnections | ErrorCode::RateLimited | ErrorCode::SlowConsumer,
            ) => CloseCode::Again,
            Some(ErrorCode::Internal | ErrorCode::StorageUnavailable) => CloseCode::Error,
            Some(ErrorCode::BadFrame) => CloseCode::Protocol,
            Some(_) => CloseCode::Policy,
        };
        // Close reasons are limited to 123 bytes by the WebSocket spec.
        let mut reason = reason.to_string();
        while reason.len() > 120 {
            reason.pop();
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.ws.close(Some(frame)).await;
            // Wait briefly for the peer's close so the TCP connection ends cleanly.
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// A stream that counts the bytes read through it. It wraps the TLS stream on wss, so it
/// counts WebSocket bytes; [`WsConn`] uses the count to tell a keepalive from a control
/// frame sent in the middle of a fragmented message.
pub struct Counted<S> {
    inner: S,
    /// Bytes read so far.
    read: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.read += (buf.filled().len() - before) as u64;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
