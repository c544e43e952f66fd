//! A connection's timers, with no I/O: when to ping, when a connection is idle, and
//! when a connection that never sent `connect` must go.
//!
//! What counts as *alive* (issue 12.1): a peer that answers pings. A subscriber that
//! only receives is therefore never idle as long as its WebSocket answers the pings
//! the gateway sends every `limits.ping_interval_ms` *since the last thing received*
//! — whatever the gateway itself is sending. On a transport that proves liveness
//! itself (QUIC: keep-alive packets every `ping_interval_ms`, acknowledged by the
//! peer's stack, and the transport's own idle timeout), the session applies no idle
//! timer of its own.
//!
//! What does *not* count (security finding 7): before `connect`, nothing extends the
//! deadline — neither pongs nor `ping` commands. A connection that has not sent
//! `connect` within `limits.handshake_timeout_ms` of its session starting is closed.
//!
//! The driver feeds events with the current time ([`Liveness::received`],
//! [`Liveness::pinged`]), sleeps until [`Liveness::deadline`] and then asks
//! [`Liveness::due`] what to do.

use std::time::{Duration, Instant};

use edgesync_protocol::ErrorCode;

use crate::config::Limits;

/// What the timer asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet (the deadline moved).
    Nothing,
    /// Send a transport ping, then report it with [`Liveness::pinged`].
    Ping,
    /// Close the connection with this error.
    Close(ErrorCode, &'static str),
}

/// One connection's liveness timers.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// Deadline for the first `connect`.
    connect_by: Instant,
    /// Last application frame or keepalive (pong, empty frame) received.
    last_rx: Instant,
    /// Last ping sent (the session's start before the first).
    last_ping: Instant,
    idle: Duration,
    ping_interval: Duration,
    /// The transport proves liveness itself (QUIC keep-alive and idle timeout).
    transport_keepalive: bool,
}

/// The close message for a connection that never sent `connect`.
pub const NO_CONNECT: &str = "no connect within the handshake timeout";
/// The close message for an idle connection.
pub const IDLE: &str = "nothing received within the idle timeout";

impl Liveness {
    /// Timers for a session starting at `now`.
    pub fn new(limits: &Limits, now: Instant, transport_keepalive: bool) -> Self {
        Liveness {
            connect_by: now + Duration::from_millis(limits.handshake_timeout_ms),
            last_rx: now,
            last_ping: now,
            idle: Duration::from_millis(limits.idle_timeout_ms),
            ping_interval: Duration::from_millis(limits.ping_interval_ms),
            transport_keepalive,
        }
    }

    /// Something arrived from the peer (a frame, a pong, an empty keepalive frame).
    pub fn received(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// A ping was sent.
    pub fn pinged(&mut self, now: Instant) {
        self.last_ping = self.last_ping.max(now);
    }

    /// When [`Liveness::due`] next has something to do; `None`: never (a connected
    /// session on a transport that keeps itself alive).
    pub fn deadline(&self, connected: bool) -> Option<Instant> {
        let connect = (!connected).then_some(self.connect_by);
        let session = (!self.transport_keepalive).then(|| {
            let idle = self.last_rx + self.idle;
            let ping = self.last_rx.max(self.last_ping) + self.ping_interval;
            idle.min(ping)
        });
        match (connect, session) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What to do at `now`.
    pub fn due(&self, now: Instant, connected: bool) -> Due {
        if !connected && now >= self.connect_by {
            return Due::Close(ErrorCode::IdleTimeout, NO_CONNECT);
        }
        if self.transport_keepalive {
            return Due::Nothing;
        }
        if now >= self.last_rx + self.idle {
            return Due::Close(ErrorCode::IdleTimeout, IDLE);
        }
        if now >= self.last_rx.max(self.last_ping) + self.ping_interval {
            return Due::Ping;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            idle_timeout_ms: 3_000,
            ping_interval_ms: 1_000,
            handshake_timeout_ms: 500,
            ..Limits::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_listener_that_answers_pings_is_never_idle_however_busy_the_gateway_is() {
        let t0 = Instant::now();
        let mut l = Liveness::new(&limits(), t0, false);
        l.received(t0); // connect
        // The gateway writes continuously; the peer only answers pings, each within
        // 100 ms. Ten minutes of that must never close the connection.
        let mut now = t0;
        for _ in 0..600 {
            let d = l.deadline(true).expect("websocket has timers");
            assert!(d > now, "the deadline moves forward");
            now = d;
            match l.due(now, true) {
                Due::Ping => {
                    l.pinged(now);
                    l.received(now + ms(100)); // the pong
                }
                other => panic!("at {:?}: {other:?}", now - t0),
            }
        }
        assert!(now - t0 >= Duration::from_secs(590));
    }

    #[test]
    fn a_peer_that_stops_answering_is_closed_at_the_idle_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(&limits(), t0, false);
        assert_eq!(l.due(t0 + ms(1_000), true), Due::Ping);
        l.pinged(t0 + ms(1_000));
        assert_eq!(l.deadline(true), Some(t0 + ms(2_000)));
        assert_eq!(l.due(t0 + ms(2_000), true), Due::Ping);
        l.pinged(t0 + ms(2_000));
        assert_eq!(l.deadline(true), Some(t0 + ms(3_000)));
        assert_eq!(
            l.due(t0 + ms(3_000), true),
            Due::Close(ErrorCode::IdleTimeout, IDLE)
        );
    }

    #[test]
    fn before_connect_nothing_extends_the_connect_deadline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(&limits(), t0, false);
        l.received(t0 + ms(400)); // a pong, or a `ping` command
        assert_eq!(l.deadline(false), Some(t0 + ms(500)));
        assert_eq!(l.due(t0 + ms(499), false), Due::Nothing);
        assert_eq!(
            l.due(t0 + ms(500), false),
            Due::Close(ErrorCode::IdleTimeout, NO_CONNECT)
        );
        // Once connected, the connect deadline no longer applies.
        assert_eq!(l.due(t0 + ms(500), true), Due::Nothing);
    }

    #[test]
    fn a_transport_with_keepalive_has_only_the_connect_deadline() {
        let t0 = Instant::now();
        let l = Liveness::new(&limits(), t0, true);
        assert_eq!(l.deadline(true), None);
        assert_eq!(l.due(t0 + Duration::from_secs(3_600), true), Due::Nothing);
        assert_eq!(l.deadline(false), Some(t0 + ms(500)));
        assert_eq!(
            l.due(t0 + ms(500), false),
            Due::Close(ErrorCode::IdleTimeout, NO_CONNECT)
        );
    }
}
