//! Admission: how many client connections the gateway holds, in total and per remote
//! IP (`limits.max_connections`, `limits.max_connections_per_ip`), and how many
//! handshakes it runs at once (`limits.max_handshakes`, `limits.max_handshakes_per_ip`).
//!
//! Nothing is held before admission without a slot (security finding 6): a transport
//! takes a handshake slot ([`Admission::begin_handshake`]) as soon as a peer appears (TCP
//! accept, QUIC Initial) and holds the [`HandshakeGuard`] through TLS and the WebSocket
//! upgrade, then takes a connection slot ([`Admission::admit`]) before it starts a
//! session and holds the [`AdmitGuard`] for the connection's life. Dropping a guard frees
//! its slot. So the file descriptors and memory of unfinished handshakes are bounded like
//! those of connections, and one address cannot take every handshake slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use edgesync_protocol::ErrorCode;
use parking_lot::Mutex;

use crate::config::Limits;
use crate::model::Refusal;

/// Descriptors kept for everything but client connections: the store's files, the
/// listeners, the admin API, plugin caches, logs.
pub const FD_RESERVE: u64 = 512;

/// The open-file limit cannot hold what the configuration asks for.
#[derive(Debug, thiserror::Error)]
#[error(
    "limits.max_connections ({connections}) + limits.max_handshakes ({handshakes}) need {needed} \
     open files, but the process may open at most {hard} (RLIMIT_NOFILE hard limit); lower the \
     limits or raise the hard limit (ulimit -Hn, LimitNOFILE=)"
)]
pub struct FdLimitError {
    pub connections: usize,
    pub handshakes: usize,
    pub needed: u64,
    pub hard: u64,
}

/// Raise the process's open-file soft limit so it holds every slot `limits` allows
/// (never lowering it, never above the hard limit). Returns the soft limit in force.
///
/// # Errors
/// [`FdLimitError`] when the hard limit is too low: the gateway refuses to start rather
/// than promise connections it would fail to accept (security finding 6).
pub fn raise_fd_limit(limits: &Limits) -> Result<u64, FdLimitError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = Admission::descriptors_needed(limits);
    let current = getrlimit(Resource::Nofile);
    let (soft, hard) = (
        current.current.unwrap_or(u64::MAX),
        current.maximum.unwrap_or(u64::MAX),
    );
    if needed > hard {
        return Err(FdLimitError {
            connections: limits.max_connections,
            handshakes: limits.max_handshakes,
            needed,
            hard,
        });
    }
    if soft >= needed {
        return Ok(soft);
    }
    let raised = Rlimit {
        current: Some(needed),
        maximum: current.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = soft, to = needed, "raised the open-file soft limit");
            Ok(needed)
        }
        Err(e) => {
            tracing::warn!(error = %e, soft, needed, "cannot raise the open-file soft limit");
            Err(FdLimitError {
                connections: limits.max_connections,
                handshakes: limits.max_handshakes,
                needed,
                hard: soft,
            })
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    handshakes: usize,
    handshakes_per_ip: HashMap<IpAddr, usize>,
}

/// Connection and handshake slots, in total and per IP.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    max_handshakes: usize,
    max_handshakes_per_ip: usize,
    counts: Mutex<Counts>,
}

/// One handshake's slot; released on drop.
#[derive(Debug)]
pub struct HandshakeGuard {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        c.handshakes = c.handshakes.saturating_sub(1);
        release(&mut c.handshakes_per_ip, self.ip);
    }
}

fn release(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = per_ip.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per_ip.remove(&ip);
        }
    }
}

/// One admitted connection's slot; released on drop.
#[derive(Debug)]
pub struct AdmitGuard {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for AdmitGuard {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        c.total = c.total.saturating_sub(1);
        release(&mut c.per_ip, self.ip);
    }
}

impl Admission {
    /// Slots from the limits: connections in total and per IP, handshakes in total and
    /// per IP.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Admission {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            max_handshakes: limits.max_handshakes,
            max_handshakes_per_ip: limits.max_handshakes_per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Take a handshake slot for a peer at `ip` that has just appeared.
    ///
    /// # Errors
    /// `too_many_connections`, saying which handshake limit was reached.
    pub fn begin_handshake(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakeGuard, Refusal> {
        let mut c = self.counts.lock();
        if c.handshakes >= self.max_handshakes {
            return Err(Refusal::new(
                ErrorCode::TooManyConnections,
                format!(
                    "the gateway runs its limit of {} handshakes",
                    self.max_handshakes
                ),
            ));
        }
        let n = c.handshakes_per_ip.entry(ip).or_insert(0);
        if *n >= self.max_handshakes_per_ip {
            return Err(Refusal::new(
                ErrorCode::TooManyConnections,
                format!(
                    "limit of {} handshakes per IP reached",
                    self.max_handshakes_per_ip
                ),
            ));
        }
        *n += 1;
        c.handshakes += 1;
        Ok(HandshakeGuard {
            admission: self.clone(),
            ip,
        })
    }

    /// True when at least half the handshake slots are taken: QUIC then validates
    /// addresses (Retry) before spending a handshake on a peer.
    pub fn under_handshake_pressure(&self) -> bool {
        self.counts.lock().handshakes * 2 >= self.max_handshakes
    }

    /// Handshakes in progress.
    pub fn handshakes(&self) -> usize {
        self.counts.lock().handshakes
    }

    /// Take a connection slot for a peer at `ip`.
    ///
    /// # Errors
    /// `too_many_connections`, saying which limit was reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<AdmitGuard, Refusal> {
        let mut c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(Refusal::new(
                ErrorCode::TooManyConnections,
                format!(
                    "the gateway holds its limit of {} connections",
                    self.max_total
                ),
            ));
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::new(
                ErrorCode::TooManyConnections,
                format!("limit of {} connections per IP reached", self.max_per_ip),
            ));
        }
        *n += 1;
        c.total += 1;
        Ok(AdmitGuard {
            admission: self.clone(),
            ip,
        })
    }

    /// Descriptors the process needs to honour these limits: every connection and every
    /// handshake slot, plus [`FD_RESERVE`] for the store, listeners and plugins.
    pub fn descriptors_needed(limits: &Limits) -> u64 {
        (limits.max_connections + limits.max_handshakes) as u64 + FD_RESERVE
    }

    /// Connections currently admitted.
    pub fn admitted(&self) -> usize {
        self.counts.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: usize, per_ip: usize) -> Arc<Admission> {
        Admission::new(&Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            max_handshakes: total,
            max_handshakes_per_ip: per_ip,
            ..Limits::default()
        })
    }

    #[test]
    fn handshakes_are_bounded_in_total_and_per_ip_and_freed_on_drop() {
        let a = admission(3, 2);
        let ip1: IpAddr = "127.0.0.1".parse().expect("ip");
        let ip2: IpAddr = "127.0.0.2".parse().expect("ip");
        let h1 = a.begin_handshake(ip1).expect("first");
        let _h2 = a.begin_handshake(ip1).expect("second");
        assert!(a.under_handshake_pressure());
        let e = a.begin_handshake(ip1).expect_err("per-IP limit");
        assert!(e.message.contains("handshakes per IP"), "{e}");
        let _h3 = a.begin_handshake(ip2).expect("other IP");
        let e = a.begin_handshake(ip2).expect_err("total limit");
        assert!(e.message.contains("limit of 3 handshakes"), "{e}");
        // Handshakes and connections are counted apart.
        let _c = a.admit(ip1).expect("a connection slot");
        drop(h1);
        assert_eq!(a.handshakes(), 2);
        a.begin_handshake(ip1).expect("a freed slot is reusable");
    }

    #[test]
    fn slots_are_bounded_in_total_and_per_ip_and_freed_on_drop() {
        let a = admission(3, 2);
        let ip1: IpAddr = "127.0.0.1".parse().expect("ip");
        let ip2: IpAddr = "127.0.0.2".parse().expect("ip");
        let g1 = a.admit(ip1).expect("first");
        let _g2 = a.admit(ip1).expect("second");
        let e = a.admit(ip1).expect_err("per-IP limit");
        assert_eq!(e.code, ErrorCode::TooManyConnections);
        assert!(e.message.contains("per IP"), "{e}");
        let _g3 = a.admit(ip2).expect("other IP");
        let e = a.admit(ip2).expect_err("total limit");
        assert!(e.message.contains("limit of 3"), "{e}");
        drop(g1);
        assert_eq!(a.admitted(), 2);
        a.admit(ip2).expect("a freed slot is reusable");
    }

    #[test]
    fn a_limit_the_hard_file_limit_cannot_hold_is_refused() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .maximum
            .unwrap_or(u64::MAX);
        if hard == u64::MAX {
            return; // unlimited: nothing to refuse
        }
        let limits = Limits {
            max_connections: hard as usize,
            ..Limits::default()
        };
        let e = raise_fd_limit(&limits).expect_err("more than the hard limit");
        assert!(e.to_string().contains("limits.max_connections"), "{e}");
        let fine = raise_fd_limit(&Limits::default()).expect("the defaults fit");
        assert!(fine >= Admission::descriptors_needed(&Limits::default()));
    }
}
