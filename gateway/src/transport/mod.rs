//! Listeners. A transport accepts connections, completes its handshake, and
//! hands a [`crate::session::driver::Conn`] to the session driver; it never
//! interprets protocol messages.
//!
//! - [`tls`]: certificates (user PEM or generated development CA + leaf) and rustls configs.
//! - [`ws`]: WebSocket over TCP (`ws`) and over TLS (`wss`).
//! - [`quic`]: QUIC (quinn, ALPN `edgesync/1`): the session on the first bidirectional
//!   stream, length-prefixed; datagrams for ephemeral publishes.

pub mod quic;
pub mod tls;
pub mod ws;
