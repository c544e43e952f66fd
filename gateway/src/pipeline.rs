//! Ingest: the one path every message takes into the gateway.
//!
//! ```text
//! session pub / batch ─┐
//! QUIC datagram ───────┤                ┌─ Store ──▶ store.append (group commit) ──▶ fan-out
//! admin publish ───────┼─▶ message hooks ┼─ LiveOnly ─▶ broker: live subscribers only
//! plugin publish ──────┘   storage hooks └─ Dropped ──▶ acknowledged, nothing kept
//!                          (dead letters)
//! ```
//!
//! [`Pipeline::ingest`] (and [`Pipeline::ingest_batch`] for the publishes of one client
//! frame) runs the topic's route of plugins through the [`MessageHooks`] seam the plugin
//! layer implements, stores every message a plugin failed on in `$dlq.<plugin>`,
//! applies a storage hook's retention hint, and delivers a `skip`ped message live.
//! [`Pipeline::append`] makes a stored message durable; the session queues those
//! futures so its acks go out in order, while [`Pipeline::publish`] does both steps for
//! callers that wait for one message (admin API, plugin publishes). Committed records
//! reach the broker from the store's commit channel (wired in `server`), so local and
//! replicated records fan out the same way.
//!
//! What it does not do: validation of client input (that is `session`), and anything
//! after the store (fan-out is the broker's).

pub mod acks;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use edgesync_protocol::{ErrorCode, Headers, Msg, Payload, ServerFrame};

use crate::broker::{Broker, ConnOut};
use crate::clock::SharedClock;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::model::{HookOutcome, Publish, Refusal, Sender};
use crate::store::{Ack, Retention, Store, StoreError};

/// A boxed future borrowing its arguments (trait methods below are called through `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the hooks of one message decided, with what the pipeline must do around it.
#[derive(Debug)]
pub struct HookResult {
    pub outcome: Result<HookOutcome, Refusal>,
    /// Plugins that failed on the message, with their error: each gets a dead letter.
    pub dead: Vec<DeadLetter>,
    /// A storage hook's retention hint (applied only if the message is stored).
    pub hint: Option<Retention>,
}

impl HookResult {
    /// No hooks ran: store the message as it is.
    pub fn store() -> Self {
        HookResult {
            outcome: Ok(HookOutcome::Store),
            dead: Vec::new(),
            hint: None,
        }
    }
}

/// A plugin failed on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub plugin: String,
    /// The error without a backtrace: the `edgesync-dlq-error` header, which whoever
    /// may read `$dlq.<plugin>` sees.
    pub error: String,
    /// The full error (a trap's wasm backtrace included), for the operator's log only.
    pub detail: String,
}

/// The message and storage hooks, as the plugin layer provides them. Hooks may change
/// `headers` and `payload` in place (never the topic: permissions were checked for it).
pub trait MessageHooks: Send + Sync {
    /// Hooks of one message.
    fn ingest<'a>(&'a self, sender: &'a Sender, req: &'a mut Publish) -> BoxFuture<'a, HookResult>;

    /// Hooks of several messages from one sender, in order (one result each): plugins may
    /// see them in one batch call.
    fn ingest_batch<'a>(
        &'a self,
        sender: &'a Sender,
        reqs: &'a mut [Publish],
    ) -> BoxFuture<'a, Vec<HookResult>>;
}

/// The result of [`Pipeline::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Durable, with its ack.
    Stored(Ack),
    /// A hook dropped it or delivered it live only: acknowledged, not stored.
    NotStored(HookOutcome),
}

/// The ingest pipeline. Shared by sessions, the admin API and plugin services.
pub struct Pipeline {
    store: Store,
    broker: Arc<Broker>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    /// Installed once plugins are loaded (they need the pipeline to publish, so they are
    /// built after it); none means no hooks run.
    hooks: OnceLock<Arc<dyn MessageHooks>>,
    /// What a message a plugin rewrote (`replace`, `accept-with`) must still fit: the
    /// bounds a client's own publish was checked against.
    limits: Limits,
    /// `replicated(k)` acks, installed when replication is on.
    replicas: OnceLock<Replicas>,
}

/// How `replicated(k)` publishes wait: the peers' acks, the `k` of a topic (0 = `local`),
/// and how long to wait.
#[derive(Clone)]
pub struct Replicas {
    pub acks: Arc<acks::ReplicaAcks>,
    pub k_of: Arc<dyn Fn(&str) -> usize + Send + Sync>,
    pub timeout: Duration,
}

/// Why a publish that passed its hooks was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Durable here, but fewer than `k` peers reported it durable in time.
    #[error(
        "stored here, but durable on only {got} of the {k} peers the topic's ack mode needs within {timeout_ms} ms; publish again with the same mid"
    )]
    NotReplicated {
        k: usize,
        got: usize,
        timeout_ms: u64,
    },
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("hooks", &self.hooks.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub fn new(
        store: Store,
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Pipeline {
            store,
            broker,
            metrics,
            clock,
            hooks: OnceLock::new(),
            limits,
            replicas: OnceLock::new(),
        })
    }

    /// Install `replicated(k)` acks (once, when replication starts). A second call is ignored.
    pub fn set_replicas(&self, replicas: Replicas) {
        if self.replicas.set(replicas).is_err() {
            tracing::warn!("replica acks were already installed; ignored");
        }
    }

    /// Install the hooks (once, at startup). A second call is ignored.
    pub fn set_hooks(&self, hooks: Arc<dyn MessageHooks>) {
        if self.hooks.set(hooks).is_err() {
            tracing::warn!("message hooks were already installed; ignored");
        }
    }

    /// Hooks for one publish that will be stored if they pass (counted in
    /// `edgesync_messages_in_total`). `LiveOnly` was already delivered.
    ///
    /// # Errors
    /// The refusal for the client (a plugin rejected it, or failed closed).
    pub async fn ingest(&self, sender: &Sender, req: &mut Publish) -> Result<HookOutcome, Refusal> {
        self.metrics.messages_in.inc();
        self.hooks_of(sender, req).await
    }

    /// [`Pipeline::ingest`] for the publishes of one client frame, in order: the route's
    /// message plugins see them in one `on-batch` call each when they share a chain.
    pub async fn ingest_batch(
        &self,
        sender: &Sender,
        reqs: &mut [Publish],
    ) -> Vec<Result<HookOutcome, Refusal>> {
        self.metrics.messages_in.inc_by(reqs.len() as u64);
        let Some(hooks) = self.hooks.get() else {
            return reqs.iter().map(|_| Ok(HookOutcome::Store)).collect();
        };
        let originals: Vec<_> = reqs
            .iter()
            .map(|r| (r.headers.clone(), r.payload.clone()))
            .collect();
        let results = hooks.ingest_batch(sender, reqs).await;
        let mut out = Vec::with_capacity(results.len());
        for ((result, req), original) in results.into_iter().zip(reqs.iter()).zip(originals) {
            out.push(self.settle(sender, req, original, result).await);
        }
        out
    }

    /// An ephemeral publish (a QUIC datagram): the same hooks, then delivered live
    /// (`seq` 0, never stored), counted in `edgesync_ephemeral_messages_in_total`.
    ///
    /// # Errors
    /// The refusal (a datagram is never answered; the caller counts it).
    pub async fn ingest_ephemeral(
        &self,
        sender: &Sender,
        mut req: Publish,
    ) -> Result<HookOutcome, Refusal> {
        self.metrics.ephemeral_messages_in.inc();
        let outcome = self.hooks_of(sender, &mut req).await?;
        if outcome == HookOutcome::Store {
            self.deliver_live(&req);
        }
        Ok(outcome)
    }

    /// Make a message that passed its hooks durable. The future owns what it needs, so
    /// a session can queue it and collect acks in order.
    /// On a topic with ack mode `replicated:K` the future also waits until `K` peers
    /// report the record durable (never earlier), or fails with
    /// [`AppendError::NotReplicated`] after the timeout.
    pub fn append(
        &self,
        req: Publish,
    ) -> impl Future<Output = Result<Ack, AppendError>> + Send + 'static {
        let store = self.store.clone();
        let wait = self.replicas.get().and_then(|r| {
            let k = (r.k_of)(&req.topic);
            (k > 0).then(|| (r.acks.clone(), k, r.timeout))
        });
        let topic = req.topic.clone();
        async move {
            let ack = store.append(req).await?;
            // A resend answered with another gateway's record (`dup`, cross-gateway
            // dedupe) came here from a peer: it is not this node's seq to wait for.
            let local = ack.origin == *store.local_origin();
            if let Some((acks, k, timeout)) = wait.filter(|_| local) {
                acks.wait(&topic, ack.seq, k, timeout)
                    .await
                    .map_err(|got| AppendError::NotReplicated {
                        k,
                        got,
                        timeout_ms: timeout.as_millis() as u64,
                    })?;
            }
            Ok(ack)
        }
    }

    /// [`Pipeline::append`] for an atomic batch: one commit, all stored or none; then,
    /// for topics with ack mode `replicated:K`, the same wait for each record.
    pub fn append_all(
        &self,
        reqs: Vec<Publish>,
    ) -> impl Future<Output = Result<Vec<Ack>, AppendError>> + Send + 'static {
        let store = self.store.clone();
        let waits: Vec<_> = reqs
            .iter()
            .map(|req| {
                self.replicas.get().and_then(|r| {
                    let k = (r.k_of)(&req.topic);
                    (k > 0).then(|| (r.acks.clone(), k, r.timeout, req.topic.clone()))
                })
            })
            .collect();
        async move {
            let acks = store.append_all(reqs).await?;
            for (ack, wait) in acks.iter().zip(waits) {
                if ack.origin != *store.local_origin() {
                    continue; // a dup of a replicated record (see `append`)
                }
                if let Some((acks, k, timeout, topic)) = wait {
                    acks.wait(&topic, ack.seq, k, timeout)
                        .await
                        .map_err(|got| AppendError::NotReplicated {
                            k,
                            got,
                            timeout_ms: timeout.as_millis() as u64,
                        })?;
                }
            }
            Ok(acks)
        }
    }

    /// Hooks then store, for one message whose caller waits for the result (admin API,
    /// plugin publishes).
    ///
    /// # Errors
    /// The refusal: hooks refused it, or the store could not make it durable.
    pub async fn publish(&self, sender: &Sender, mut req: Publish) -> Result<Published, Refusal> {
        match self.ingest(sender, &mut req).await? {
            HookOutcome::Store => self
                .append(req)
                .await
                .map(Published::Stored)
                .map_err(|e| append_refusal(&e)),
            other => Ok(Published::NotStored(other)),
        }
    }

    /// Deliver a message straight to one connection (plugin `send`): not stored, `seq` 0,
    /// dropped when the outbox is full.
    pub fn deliver_direct(&self, out: &ConnOut, topic: &str, payload: &[u8]) {
        let msg = self.ephemeral_msg(Publish {
            topic: topic.to_string(),
            client: String::new(),
            principal: None,
            mid: None,
            headers: Headers::default(),
            payload: Bytes::copy_from_slice(payload),
        });
        let frame = Bytes::from(out.outbox.encoding().encode(&ServerFrame::Msg(msg)));
        out.outbox.try_push_ephemeral(&frame);
    }

    /// Message then storage hooks of one message, settled.
    async fn hooks_of(&self, sender: &Sender, req: &mut Publish) -> Result<HookOutcome, Refusal> {
        let Some(hooks) = self.hooks.get() else {
            return Ok(HookOutcome::Store);
        };
        let original = (req.headers.clone(), req.payload.clone());
        let result = hooks.ingest(sender, req).await;
        self.settle(sender, req, original, result).await
    }

    /// After the hooks: dead letters, the retention hint of a stored message, the live
    /// delivery of a skipped one.
    async fn settle(
        &self,
        sender: &Sender,
        req: &Publish,
        original: (Headers, Bytes),
        result: HookResult,
    ) -> Result<HookOutcome, Refusal> {
        for dead in &result.dead {
            self.dead_letter(dead, sender, &req.topic, &original.0, &original.1)
                .await;
        }
        let outcome = result.outcome?;
        if outcome != HookOutcome::Dropped {
            check_rewritten(&self.limits, req)?;
        }
        match outcome {
            HookOutcome::Store => {
                // Only a record that is written carries its hint: a later plugin's
                // reject, drop or skip leaves the topic's retention as it was.
                if let Some(r) = result.hint {
                    self.store.set_retention_override(&req.topic, r);
                }
            }
            HookOutcome::LiveOnly => self.deliver_live(req),
            HookOutcome::Dropped => {}
        }
        Ok(outcome)
    }

    /// Store a message a plugin failed on in `$dlq.<plugin>`, with the original topic and
    /// the error in headers. Never retried; if even this fails, the loss is logged as an error.
    async fn dead_letter(
        &self,
        dead: &DeadLetter,
        sender: &Sender,
        topic: &str,
        headers: &Headers,
        payload: &Bytes,
    ) {
        let mut h = headers.clone();
        h.0.push(("edgesync-dlq-topic".into(), topic.to_string()));
        h.0.push((
            "edgesync-dlq-error".into(),
            dead.error.chars().take(512).collect(),
        ));
        let req = Publish {
            topic: format!("$dlq.{}", dead.plugin),
            client: sender.client_id.clone(),
            principal: None,
            mid: None,
            headers: h,
            payload: payload.clone(),
        };
        match self.store.append(req).await {
            Ok(ack) => tracing::warn!(
                plugin = %dead.plugin,
                topic,
                dlq_seq = ack.seq,
                error = %dead.detail,
                "plugin failed on a message; dead-lettered"
            ),
            Err(e) => {
                tracing::error!(plugin = %dead.plugin, topic, error = %e, "dead-lettering failed; the message is lost")
            }
        }
    }

    /// Fan a message out to live subscribers without storing it.
    fn deliver_live(&self, req: &Publish) {
        let msg = self.ephemeral_msg(req.clone());
        self.broker.fanout_ephemeral(&msg);
    }

    /// A message that is delivered but never stored: `seq` 0, the HLC of now, not in cursors.
    fn ephemeral_msg(&self, req: Publish) -> Msg {
        Msg {
            topic: req.topic,
            origin: self.store.node().to_string(),
            epoch: self.store.epoch(),
            seq: 0,
            hlc: self.clock.unix_ms() << 16,
            client: req.client,
            mid: req.mid,
            headers: req.headers,
            data: Payload(req.payload),
            sub: None,
            queue: None,
            delivery: None,
        }
    }
}

/// A message after its hooks must still fit the bounds a client's publish is held to: a
/// plugin's `replace` or `accept-with` may have grown it. Refused as `rejected` (the
/// client's retry would meet the same plugin), never left to fail in the store, where it
/// would be `storage_unavailable` with `retry: true` — a retry loop for the client.
///
/// # Errors
/// `rejected`, naming the bound.
pub fn check_rewritten(limits: &Limits, req: &Publish) -> Result<(), Refusal> {
    let headers = &req.headers;
    let why = if headers.len() > limits.max_headers {
        format!("{} headers, limit {}", headers.len(), limits.max_headers)
    } else if headers.byte_len() > limits.max_header_bytes {
        format!(
            "{} header bytes, limit {}",
            headers.byte_len(),
            limits.max_header_bytes
        )
    } else if headers.0.iter().any(|(k, _)| k.is_empty()) {
        "an empty header name".to_string()
    } else if req.payload.len() > limits.max_frame_bytes {
        format!(
            "a {}-byte payload, limit {} (max_frame_bytes)",
            req.payload.len(),
            limits.max_frame_bytes
        )
    } else {
        return Ok(());
    };
    Err(Refusal::new(
        ErrorCode::Rejected,
        format!("a plugin's rewrite of the message has {why}"),
    ))
}

/// The refusal a client gets when its message was not acknowledged after its hooks.
pub fn append_refusal(e: &AppendError) -> Refusal {
    match e {
        AppendError::Store(e) => store_refusal(e),
        AppendError::NotReplicated { .. } => {
            Refusal::new(ErrorCode::ReplicationTimeout, e.to_string())
        }
    }
}

/// The refusal a client gets when the store could not make its message durable.
pub fn store_refusal(e: &StoreError) -> Refusal {
    let code = match e {
        StoreError::Closed => ErrorCode::ShuttingDown,
        _ => ErrorCode::StorageUnavailable,
    };
    Refusal::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(headers: Vec<(&str, &str)>, payload: usize) -> Publish {
        Publish {
            topic: "t".into(),
            client: "c".into(),
            principal: None,
            mid: None,
            headers: Headers(
                headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            payload: Bytes::from(vec![b'x'; payload]),
        }
    }

    #[test]
    fn a_rewrite_beyond_the_client_bounds_is_rejected_not_retried() {
        let limits = Limits {
            max_headers: 1,
            max_header_bytes: 8,
            max_frame_bytes: 16,
            ..Limits::default()
        };
        assert!(check_rewritten(&limits, &publish(vec![("a", "b")], 16)).is_ok());
        for bad in [
            publish(vec![("a", "b"), ("c", "d")], 1),
            publish(vec![("name", "value")], 1),
            publish(vec![("", "v")], 1),
            publish(vec![], 17),
        ] {
            let r = check_rewritten(&limits, &bad).expect_err("over a bound");
            assert_eq!(r.code, ErrorCode::Rejected, "{}", r.message);
            assert!(!r.code.retryable());
        }
    }
}
