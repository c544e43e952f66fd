//! Listeners. A transport accepts connections, completes its handshake, takes an
//! admission slot, and hands a [`crate::session::driver::Conn`] to the session
//! driver; it never interprets protocol messages.
//!
//! - [`admission`]: connection and handshake slots, in total and per remote IP; the
//!   open-file limit.
//! - [`origin`]: which web pages may open a WebSocket (`listen.allowed_origins`).
//! - [`tls`]: certificates (user PEM or generated development CA + leaf) and rustls configs.
//! - [`ws`]: WebSocket over TCP (`ws`) and over TLS (`wss`).
//! - [`quic`]: QUIC (quinn, ALPN `edgesync/2` then `edgesync/1`): the session on the first
//!   bidirectional stream, length-prefixed; with `edgesync/2` a stream per subscription;
//!   datagrams for ephemeral publishes.

pub mod admission;
pub mod origin;
pub mod quic;
pub mod tls;
pub mod ws;
