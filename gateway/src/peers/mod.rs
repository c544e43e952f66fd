//! Replication between gateways: the driver of the I/O-free core
//! (`edgesync-replication`) on the gateway's QUIC endpoint.
//!
//! Owns: the cluster's mutual TLS ([`tls`]), one task per peer connection owning a
//! [`edgesync_replication::Link`] ([`link`]), dialing and redialing `[[peer]]` entries
//! with jittered backoff, accepting peers that dial us (the QUIC listener hands their
//! connections over through [`crate::transport::quic::PeerLinks`]), the status of every
//! link (admin `GET /v1/peers`) and the per-peer metrics.
//!
//! Does not own: what is said on a link (the core), how records are stored (`Store::apply`,
//! `Store::read_range`, `LocalView`), fan-out to subscribers (applied records leave the
//! store on the same committed channel as local ones; the server forwards every
//! committed batch here too, with [`Peers::committed`]).
//!
//! Two links to one peer (both sides dial, as in the two-gateway example) are allowed to
//! come up, then one is closed: the one dialed by the node with the larger node id, the
//! same choice on both sides. A dialer skips dialing while a link to that peer is up.

pub mod link;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use quinn::{Connection, Endpoint};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ClusterConfig, PeerConfig, PeerDirection, parse_peer_url};
use crate::metrics::Metrics;
use crate::pipeline::acks::ReplicaAcks;
use crate::presence::Presence;
use crate::store::{Committed, Store};
use crate::transport::quic::PeerLinks;

pub use tls::PeerTls;

/// Committed batches buffered per link before a slow link is dropped and resyncs by
/// reconnecting (summary, diff, stream: nothing is lost, only redone).
const COMMITTED_BUFFER: usize = 4096;
/// Corrupt-record notices buffered per link; past it a link misses some, and its
/// reconnect or next digest round pulls them (the store's corrupt list is durable).
const CORRUPT_BUFFER: usize = 1024;

/// The replication driver of one gateway.
pub struct Peers {
    store: Store,
    /// Presence replicates over the links too (LWW namespace `presence`).
    presence: Arc<Presence>,
    /// Where peers' acks of this node's records go (`replicated(k)` publishes wait there).
    acks: Arc<ReplicaAcks>,
    metrics: Arc<Metrics>,
    cluster: ClusterConfig,
    entries: Vec<PeerConfig>,
    node_id: String,
    tls: PeerTls,
    client: quinn::ClientConfig,
    committed: broadcast::Sender<Committed>,
    /// Records a link's read found corrupt: every link asks its peer for them.
    corrupt: broadcast::Sender<(String, edgesync_protocol::Origin, u64)>,
    links: Mutex<BTreeMap<u64, LinkStatus>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    endpoint: Endpoint,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// One live peer connection, as `GET /v1/peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub id: u64,
    /// The peer's node id (from its certificate).
    pub peer: String,
    pub remote: SocketAddr,
    /// This node dialed.
    pub dialed: bool,
    /// `handshake` until both hellos were accepted, then `up`.
    pub state: &'static str,
    /// This node sends records on the link / receives them.
    pub sends: bool,
    pub receives: bool,
    /// Unix ms when the connection was established.
    pub since_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Records received from the peer and stored.
    pub records_in: u64,
    /// Records held here (of the topics this side carries; not the peer's own) that the
    /// peer has neither acked as durable nor sent us. Refreshed every second.
    pub lag_records: u64,
    /// Messages waiting for the peer's credit.
    pub backlog_messages: u64,
    #[serde(skip)]
    close: CancellationToken,
    /// Closed because another link to the same peer is kept.
    #[serde(skip)]
    duplicate: bool,
}

impl Peers {
    /// The driver; starts nothing until [`Peers::start`].
    ///
    /// # Errors
    /// [`crate::transport::tls::TlsError`] for an unusable key.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        presence: Arc<Presence>,
        acks: Arc<ReplicaAcks>,
        metrics: Arc<Metrics>,
        cluster: ClusterConfig,
        entries: Vec<PeerConfig>,
        tls: PeerTls,
        endpoint: Endpoint,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Arc<Self>, crate::transport::tls::TlsError> {
        let client = tls.client_config(Duration::from_millis(cluster.keep_alive_ms))?;
        let (committed, _) = broadcast::channel(COMMITTED_BUFFER);
        let (corrupt, _) = broadcast::channel(CORRUPT_BUFFER);
        presence.replicate();
        Ok(Arc::new(Peers {
            node_id: store.node().to_string(),
            store,
            presence,
            acks,
            metrics,
            cluster,
            entries,
            tls,
            client,
            committed,
            corrupt,
            links: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            shutdown,
            tasks,
            endpoint,
        }))
    }

    /// Start a dial loop per `[[peer]]` entry with `dial = true`.
    pub fn start(self: &Arc<Self>) {
        for (i, e) in self.entries.iter().enumerate() {
            if e.dial {
                self.tasks.spawn(self.clone().dial_loop(i));
            }
        }
    }

    /// A batch the store committed (local or applied): every link gets it. Never blocks.
    pub fn committed(&self, batch: &Committed) {
        let _ = self.committed.send(batch.clone());
    }

    /// Every live link.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.links.lock().values().cloned().collect()
    }

    /// This node's id (its certificate's).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster.id
    }

    /// Dial entry `i` until shutdown; redial with jittered exponential backoff.
    async fn dial_loop(self: Arc<Self>, i: usize) {
        let entry = self.entries[i].clone();
        let url = entry.url.clone().unwrap_or_default();
        let min = Duration::from_millis(self.cluster.redial_min_ms);
        let max = Duration::from_millis(self.cluster.redial_max_ms);
        let mut delay = min;
        let mut known_peer = entry.node_id.clone();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let up_elsewhere = known_peer.as_deref().is_some_and(|p| self.has_link(p));
            let result = if up_elsewhere {
                Err("a link to this peer is up".to_string())
            } else {
                self.dial_once(&entry, &url, &mut known_peer).await
            };
            match result {
                Ok(lasted) if lasted > Duration::from_secs(10) => delay = min,
                Ok(_) => {}
                Err(e) if up_elsewhere => tracing::trace!(%url, "{e}"),
                Err(e) => tracing::warn!(%url, error = %e, "peer link failed"),
            }
            let wait = jitter(delay);
            delay = (delay * 2).min(max);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One connection attempt and, when it succeeds, the link until it ends.
    async fn dial_once(
        self: &Arc<Self>,
        entry: &PeerConfig,
        url: &str,
        known_peer: &mut Option<String>,
    ) -> Result<Duration, String> {
        let (host, port) = parse_peer_url(url)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, "edgesync-peer")
            .map_err(|e| format!("cannot dial {addr}: {e}"))?;
        let timeout = Duration::from_millis(self.cluster.keep_alive_ms * 5);
        let connection = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                if is_certificate_error(&e) {
                    self.refused("certificate");
                }
                return Err(format!("handshake with {addr}: {e}"));
            }
            Err(_) => return Err(format!("handshake with {addr} timed out")),
        };
        let started = std::time::Instant::now();
        let settings = link::LinkSettings {
            direction: entry.direction,
            topics: entry.topics.clone(),
            expect_node: entry.node_id.clone(),
        };
        let peer = link::run(self.clone(), connection, true, settings).await?;
        *known_peer = Some(peer);
        Ok(started.elapsed())
    }

    /// True while a link to `peer` is up.
    fn has_link(&self, peer: &str) -> bool {
        self.links
            .lock()
            .values()
            .any(|l| l.peer == peer && l.state == "up")
    }

    fn refused(&self, reason: &str) {
        self.metrics.peer_refused.with_label_values(&[reason]).inc();
    }

    /// Settings of an inbound link from `peer`: its `[[peer]]` entry, else the cluster's.
    fn inbound_settings(&self, peer: &str) -> link::LinkSettings {
        match self
            .entries
            .iter()
            .find(|e| e.node_id.as_deref() == Some(peer))
        {
            Some(e) => link::LinkSettings {
                direction: e.direction,
                topics: e.topics.clone(),
                expect_node: None,
            },
            None => link::LinkSettings {
                direction: PeerDirection::Both,
                topics: self.cluster.topics.clone(),
                expect_node: None,
            },
        }
    }

    /// Register a new connection's status; returns its id and close token.
    fn register(&self, peer: &str, remote: SocketAddr, dialed: bool) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = self.shutdown.child_token();
        let since_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.links.lock().insert(
            id,
            LinkStatus {
                id,
                peer: peer.to_string(),
                remote,
                dialed,
                state: "handshake",
                sends: false,
                receives: false,
                since_ms,
                bytes_in: 0,
                bytes_out: 0,
                records_in: 0,
                lag_records: 0,
                backlog_messages: 0,
                close: close.clone(),
                duplicate: false,
            },
        );
        (id, close)
    }

    /// Link `id` is up. When another link to the same peer is up too, the one dialed by
    /// the node with the larger id is closed (both sides choose the same one).
    fn link_up(&self, id: u64, sends: bool, receives: bool) {
        let mut links = self.links.lock();
        let Some(me) = links.get_mut(&id) else {
            return;
        };
        me.state = "up";
        me.sends = sends;
        me.receives = receives;
        let (peer, dialed) = (me.peer.clone(), me.dialed);
        self.presence.peer_up(&peer);
        let keep_dialed_by_me = self.node_id.as_str() < peer.as_str();
        let mut loser_id = None;
        for l in links.values() {
            if l.id == id || l.peer != peer || l.state != "up" {
                continue;
            }
            // Two links to `peer` are up. Dialed the same way: the old one is stale (the
            // peer restarted and dialed again); else keep the one dialed by the smaller
            // node id, as the peer does.
            let loser = if l.dialed == dialed || dialed == keep_dialed_by_me {
                l
            } else {
                &links[&id]
            };
            tracing::info!(%peer, "two links to one peer; closing the duplicate");
            loser_id = Some(loser.id);
            break;
        }
        if let Some(l) = loser_id.and_then(|l| links.get_mut(&l)) {
            l.duplicate = true;
            l.close.cancel();
        }
        self.metrics
            .peer_link_up
            .with_label_values(&[peer.as_str()])
            .set(1);
    }

    fn unregister(&self, id: u64) {
        let mut links = self.links.lock();
        let Some(gone) = links.remove(&id) else {
            return;
        };
        if !links
            .values()
            .any(|l| l.peer == gone.peer && l.state == "up")
        {
            self.metrics
                .peer_link_up
                .with_label_values(&[gone.peer.as_str()])
                .set(0);
            self.presence.peer_down(&gone.peer);
            self.metrics
                .peer_lag_records
                .with_label_values(&[gone.peer.as_str()])
                .set(0);
        }
    }

    /// True when link `id` was closed as a duplicate.
    fn is_duplicate(&self, id: u64) -> bool {
        self.links.lock().get(&id).is_some_and(|l| l.duplicate)
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut LinkStatus)) {
        if let Some(l) = self.links.lock().get_mut(&id) {
            f(l);
        }
    }
}

/// The QUIC listener's handle on the driver: peer connections go to [`Peers`].
#[derive(Debug, Clone)]
pub struct Acceptor(pub Arc<Peers>);

impl PeerLinks for Acceptor {
    fn accept(&self, connection: Connection) {
        let me = self.0.clone();
        if !me.cluster.accept {
            me.refused("not_accepting");
            tracing::warn!(remote = %connection.remote_address(), "peer link refused: [cluster] accept = false");
            connection.close(
                link::CLOSE_REFUSED.into(),
                b"this node does not accept peer links",
            );
            return;
        }
        let tasks = me.tasks.clone();
        tasks.spawn(async move {
            let remote = connection.remote_address();
            let certs = crate::transport::quic::presented_certs(&connection);
            let peer = match me.tls.verify_peer(certs.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    me.refused("certificate");
                    tracing::warn!(%remote, error = %e, "peer link refused");
                    connection.close(link::CLOSE_REFUSED.into(), e.as_bytes());
                    return;
                }
            };
            let settings = me.inbound_settings(&peer);
            if let Err(e) = link::run(me.clone(), connection, false, settings).await {
                tracing::warn!(%remote, %peer, error = %e, "inbound peer link ended");
            }
        });
    }

    fn refused(&self, remote: SocketAddr, error: String) {
        self.0.refused("certificate");
        tracing::warn!(%remote, %error, "peer link refused at the TLS handshake (a certificate not issued by the cluster CA?)");
    }
}

/// ±50 % of `d`.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.5..1.5);
    d.mul_f64(f)
}

/// The handshake failed on a certificate (ours refused by the peer, or theirs by us).
fn is_certificate_error(e: &quinn::ConnectionError) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    s.contains("certificate") || s.contains("unknownissuer") || s.contains("unknown ca")
}
