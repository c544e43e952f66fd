//! Admission: how many client connections the gateway holds, in total and per remote
//! IP (`limits.max_connections`, `limits.max_connections_per_ip`).
//!
//! A transport takes a slot ([`Admission::admit`]) before it starts a session and
//! holds the [`AdmitGuard`] for the connection's life; dropping it frees the slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use edgesync_protocol::ErrorCode;
use parking_lot::Mutex;

use crate::model::Refusal;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Connection slots, in total and per IP.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
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
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        })
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

    /// Connections currently admitted.
    pub fn admitted(&self) -> usize {
        self.counts.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_total_and_per_ip_and_freed_on_drop() {
        let a = Admission::new(3, 2);
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
}
