//! One transport connection of the client: WebSocket (ws/wss).

use std::sync::Arc;

use bytes::Bytes;
use edgesync_protocol::Encoding;
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
    Ws { ws: Box<WebSocketStream<Box<dyn Io>>>, text: bool },
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
        Some((h, p)) if !h.is_empty() => (h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    match scheme {
        "ws" | "wss" | "quic" => Ok(Target { scheme: scheme.into(), host: host.into(), port }),
        _ => Err(bad()),
    }
}

impl Conn {
    /// Open a transport connection to `opts.url`.
    pub(crate) async fn open(opts: &ClientOptions) -> Result<(Conn, Encoding), ClientError> {
        let t = parse_url(&opts.url)?;
        match t.scheme.as_str() {
            "ws" | "wss" => Self::open_ws(opts, &t).await,
            _ => Err(ClientError::Url(format!("{}: QUIC is not supported by this client build", opts.url))),
        }
    }

    async fn open_ws(opts: &ClientOptions, t: &Target) -> Result<(Conn, Encoding), ClientError> {
        let tcp = TcpStream::connect((t.host.as_str(), t.port)).await.map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if t.scheme == "wss" {
            let cfg = crate::tls::client_config(opts.ca.as_deref(), opts.insecure, &[b"http/1.1"])?;
            let name = rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|e| ClientError::Tls(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let mut req = opts.url.as_str().into_client_request().map_err(|e| ClientError::Url(e.to_string()))?;
        let proto = http::HeaderValue::from_static(opts.encoding.subprotocol());
        req.headers_mut().insert("sec-websocket-protocol", proto);
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20));
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(Encoding::from_subprotocol)
            .unwrap_or(Encoding::Json);
        Ok((Conn::Ws { ws: Box::new(ws), text: chosen.is_text() }, chosen))
    }

    pub(crate) async fn send(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        match self {
            Conn::Ws { ws, text } => {
                let msg = if *text {
                    Message::text(String::from_utf8(frame).map_err(|e| ClientError::Protocol(e.to_string()))?)
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
            Conn::Ws { ws, .. } => ws.send(Message::binary(frame)).await.map_err(|_| ClientError::ConnectionLost),
        }
    }

    /// Next frame; `None` when the connection ended.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        match self {
            Conn::Ws { ws, .. } => loop {
                match ws.next().await? {
                    Ok(Message::Binary(b)) => return Some(b),
                    Ok(Message::Text(t)) => return Some(Bytes::from(t)),
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
        }
    }
}
