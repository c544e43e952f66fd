//! A userspace UDP fault proxy for QUIC peer links (`tc netem` does not work here).
//!
//! One proxy sits between one dialing gateway and the QUIC listener it dials: the
//! dialer is given the proxy's port instead of the listener's. Per direction it drops
//! datagrams with a seeded probability and delays them by a fixed time; a partition
//! switch black-holes both directions. QUIC sees loss, delay and reordering (delayed
//! datagrams are sent by their own timers) and, under a partition, silence: its idle
//! timeout ends the link and the dialer redials through the same proxy.
//!
//! What it does not do: duplicate datagrams, or serve more than one dialer at a time
//! (the last address heard from is the one answered; a restarted dialer takes over).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::net::UdpSocket;

/// The faults applied to one direction of the path.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Probability (0.0..=1.0) that a datagram is dropped.
    pub loss: f64,
    /// Added one-way delay.
    pub delay: Duration,
}

/// What the proxy does now: both directions and the partition switch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Setting {
    /// Dialer → listener.
    pub forward: Faults,
    /// Listener → dialer.
    pub backward: Faults,
    /// Drop everything, both ways.
    pub partitioned: bool,
}

/// Datagrams seen, per fate (for the run's summary).
#[derive(Debug, Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running proxy; dropping it stops it.
pub struct FaultProxy {
    /// The port dialers use instead of the listener's.
    pub port: u16,
    setting: Arc<Mutex<Setting>>,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

/// Largest datagram relayed (QUIC keeps well below).
const DATAGRAM_MAX: usize = 65_536;

impl FaultProxy {
    /// Listen on 127.0.0.1 (ephemeral port) and relay to `127.0.0.1:server`. `seed`
    /// drives the loss decisions.
    ///
    /// # Errors
    /// Binding or connecting the UDP sockets.
    pub async fn start(server: u16, seed: u64) -> std::io::Result<FaultProxy> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(("127.0.0.1", server)).await?;
        let port = front.local_addr()?.port();
        let setting = Arc::new(Mutex::new(Setting::default()));
        let counters = Arc::new(Counters::default());
        let relay = Relay {
            front,
            back,
            setting: setting.clone(),
            counters: counters.clone(),
            rng: StdRng::seed_from_u64(seed),
        };
        let task = tokio::spawn(relay.run());
        Ok(FaultProxy {
            port,
            setting,
            counters,
            task,
        })
    }

    /// Replace the faults.
    pub fn set(&self, s: Setting) {
        *self.setting.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Cut or restore the path (keeps loss and delay).
    pub fn set_partitioned(&self, cut: bool) {
        self.setting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .partitioned = cut;
    }

    /// No faults at all.
    pub fn heal(&self) {
        self.set(Setting::default());
    }

    pub fn setting(&self) -> Setting {
        *self.setting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The relay task's state.
struct Relay {
    front: Arc<UdpSocket>,
    back: Arc<UdpSocket>,
    setting: Arc<Mutex<Setting>>,
    counters: Arc<Counters>,
    rng: StdRng,
}

impl Relay {
    async fn run(mut self) {
        let (mut a, mut b) = (vec![0u8; DATAGRAM_MAX], vec![0u8; DATAGRAM_MAX]);
        let mut dialer: Option<SocketAddr> = None;
        loop {
            tokio::select! {
                r = self.front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { continue };
                    dialer = Some(from);
                    match self.fate(true) {
                        // A failed send is a lost datagram: QUIC retransmits.
                        Some(d) if d.is_zero() => { let _ = self.back.send(&a[..n]).await; }
                        Some(d) => send_later(self.back.clone(), a[..n].to_vec(), None, d),
                        None => {}
                    }
                }
                r = self.back.recv(&mut b) => {
                    let Ok(n) = r else { continue };
                    let Some(to) = dialer else { continue };
                    match self.fate(false) {
                        Some(d) if d.is_zero() => { let _ = self.front.send_to(&b[..n], to).await; }
                        Some(d) => send_later(self.front.clone(), b[..n].to_vec(), Some(to), d),
                        None => {}
                    }
                }
            }
        }
    }

    /// `None`: drop the datagram; `Some(delay)`: send it after `delay`.
    fn fate(&mut self, forward: bool) -> Option<Duration> {
        let s = *self.setting.lock().unwrap_or_else(|e| e.into_inner());
        let f = if forward { s.forward } else { s.backward };
        let drop = s.partitioned || (f.loss > 0.0 && self.rng.random_bool(f.loss.min(1.0)));
        let c = if drop {
            &self.counters.dropped
        } else {
            &self.counters.forwarded
        };
        c.fetch_add(1, Ordering::Relaxed);
        (!drop).then_some(f.delay)
    }
}

/// Send from a timer task after `delay` (so later datagrams may overtake).
fn send_later(sock: Arc<UdpSocket>, data: Vec<u8>, to: Option<SocketAddr>, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        // A failed send is a lost datagram: QUIC retransmits.
        let _ = match to {
            Some(addr) => sock.send_to(&data, addr).await,
            None => sock.send(&data).await,
        };
    });
}
