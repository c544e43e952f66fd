//! The admin HTTP listener (`listen.admin`, default `127.0.0.1:7480`): metrics,
//! health and a JSON API for operators.
//!
//! | route                              | auth                         | what |
//! |------------------------------------|------------------------------|------|
//! | `GET /metrics`                     | token if `protect_metrics`   | Prometheus text format |
//! | `GET /healthz`                     | none                         | 200 while the process serves HTTP (also on a poisoned store: a restart frees no disk) |
//! | `GET /readyz`                      | token when one is configured | 200 when store open, listeners bound, plugins loaded; 503 before, while shutting down, and on a poisoned store (`store_poison_cause` says why) |
//! | `POST /v1/publish`                 | token                        | publish through the client ingest path; returns the durable ack |
//! | `GET /v1/topics`                   | token                        | topics with counts, bytes, heads, retention |
//! | `GET /v1/history?topic=&from=&limit=` | token                     | stored messages of one topic |
//! | `GET /v1/connections`              | token                        | current client connections |
//! | `GET /v1/peers`                    | token                        | replication links: peer, state, bytes, records, lag |
//! | `GET /v1/config`                   | token                        | effective configuration, secrets redacted |
//! | `GET /v1/plugins`                  | token                        | loaded plugins |
//! | `POST /v1/plugins/{name}/reload`   | token                        | reload one plugin |
//!
//! Auth is `Authorization: Bearer <[admin] token>`. With no token configured
//! the `/v1` API is disabled (403 with a message saying how to enable it) and
//! `/readyz` is open, so a probe works on a default install. Errors are JSON
//! `{"code": "...", "message": "..."}` with a fitting HTTP status.
//!
//! This module owns HTTP only: a publish is validated by the same rules as a
//! client's (`session::validate_publish`; the per-connection publish rate does not
//! apply — the admin API has no connection) and goes through the one ingest
//! [`Pipeline`]; plugins are reached through the [`PluginAdmin`] seam.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgesync_protocol::topic::validate_topic;
use edgesync_protocol::{Cursor, ErrorCode, Headers, Msg, Payload};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::PolicyFn;
use crate::config::{AdminConfig, Limits};
use crate::conns::ConnRegistry;
use crate::metrics::Metrics;
use crate::model::{Publish, Sender};
use crate::pipeline::{Pipeline, Published};
use crate::plugin::{PluginAdmin, PluginAdminError, PluginInfo};
use crate::session::validate_publish;
use crate::store::Store;

/// Client id recorded on messages published through the admin API.
pub const ADMIN_CLIENT_ID: &str = "admin";
/// Most topics one `GET /v1/topics` returns.
const MAX_TOPICS_PAGE: usize = 10_000;

/// Whether the gateway serves: set once every listener is bound, false again when
/// shutdown starts.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    shutdown: CancellationToken,
}

impl Readiness {
    /// Not ready until [`Readiness::set_ready`]; never ready once `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Readiness {
            ready: AtomicBool::new(false),
            shutdown,
        })
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// True once ready and until shutdown starts.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.shutdown.is_cancelled()
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// What the admin API reaches.
pub struct AdminCtx {
    pub admin: AdminConfig,
    pub limits: Limits,
    /// The effective configuration as TOML, secrets redacted (`GET /v1/config`).
    pub config_toml: String,
    pub slow_consumer: PolicyFn,
    pub pipeline: Arc<Pipeline>,
    pub store: Store,
    pub conns: Arc<ConnRegistry>,
    pub queues: Arc<crate::queues::Queues>,
    pub presence: Arc<crate::presence::Presence>,
    /// `None` when no plugin is configured.
    pub plugins: Option<Arc<dyn PluginAdmin>>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// The replication driver, once the QUIC listener is bound (empty without `[cluster]`).
    pub peers: Arc<std::sync::OnceLock<Arc<crate::peers::Peers>>>,
    /// The JetStream bridges (`GET /v1/bridges`).
    pub bridges: Arc<crate::bridge::Bridges>,
}

impl std::fmt::Debug for AdminCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCtx").finish_non_exhaustive()
    }
}

type Ctx = State<Arc<AdminCtx>>;

/// Bind the admin listener.
///
/// # Errors
/// The bind error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Time a client has to send a request's headers (each request on a kept-alive
/// connection too): an unfinished request holds nothing longer (security finding 16).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's body, once its headers arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections open at once; more are closed at accept. Operators and scrapers
/// need a handful; the bound keeps a flood of them from taking descriptors.
pub const MAX_CONNECTIONS: usize = 64;

/// Serve the admin API on `listener` until `stop` is cancelled.
///
/// `stop` is separate from the gateway's shutdown token on purpose: while the
/// gateway drains, `/readyz` must keep answering 503 so load balancers move away.
///
/// HTTP/1.1 only, at most [`MAX_CONNECTIONS`] at once, headers within
/// [`HEADER_TIMEOUT`] and bodies within [`BODY_TIMEOUT`] (408 otherwise).
pub async fn serve(listener: TcpListener, gw: Arc<AdminCtx>, stop: CancellationToken) {
    let app = router(gw);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "admin connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%remote, error = %e, "admin connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Read the whole body within [`BODY_TIMEOUT`] (and the body limit) before the handler
/// runs, so a client trickling a body cannot hold a handler; 408 when it is too slow.
async fn body_deadline(
    State(limit): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "frame_too_large",
                format!("request body: {e}"),
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    Ok(next.run(req).await)
}

/// The admin routes (also usable without a listener, e.g. in tests).
pub fn router(gw: Arc<AdminCtx>) -> Router {
    let body_limit = gw
        .limits
        .max_frame_bytes
        .saturating_mul(2)
        .saturating_add(64 << 10);
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/publish", post(publish))
        .route("/v1/topics", get(topics))
        .route("/v1/history", get(history))
        .route("/v1/connections", get(connections))
        .route("/v1/peers", get(peers))
        .route("/v1/config", get(config))
        .route("/v1/plugins", get(plugins))
        .route("/v1/queues", get(queues))
        .route("/v1/presence", get(presence))
        .route("/v1/bridges", get(bridges))
        .route("/v1/plugins/{name}/reload", post(reload_plugin))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin route")
        })
        .layer(axum::middleware::from_fn_with_state(
            body_limit,
            body_deadline,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(gw)
}

/// An error answer: HTTP status plus JSON `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The answer for a protocol error code (same code names as client errors).
    fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        use ErrorCode::*;
        let status = match code {
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited | TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            FrameTooLarge | HeadersTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            StorageUnavailable | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, code.as_str(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
        }
        let mut resp = (
            self.status,
            Json(Body {
                code: self.code,
                message: &self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(e.status(), "bad_request", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request(e.body_text())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Which routes need the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// `/v1/*`: always; disabled when no token is configured.
    Api,
    /// `/readyz`, and `/metrics` with `protect_metrics`: only when a token is configured.
    IfConfigured,
}

/// Check the bearer token.
///
/// # Errors
/// 403 `admin_disabled` (API without a configured token), 401 `unauthorized` (missing or wrong token).
fn authorize(gw: &AdminCtx, headers: &HeaderMap, guard: Guard) -> Result<(), ApiError> {
    let Some(expected) = gw.admin.token.as_deref() else {
        return match guard {
            Guard::IfConfigured => Ok(()),
            Guard::Api => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "the admin API is disabled: set `token` in the [admin] section of the config to enable it",
            )),
        };
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <token>`",
        )),
        Some(t) if !same_secret(t, expected) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong admin token",
        )),
        Some(_) => Ok(()),
    }
}

/// Compare secrets without an early exit on the first differing byte (hashing
/// first also hides the length).
fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

async fn metrics(State(gw): Ctx, headers: HeaderMap) -> Response {
    if gw.admin.protect_metrics
        && let Err(e) = authorize(&gw, &headers, Guard::IfConfigured)
    {
        return e.into_response();
    }
    gw.queues.sample();
    let body = gw.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness and the checks behind it.
#[derive(Debug, Serialize)]
struct ReadyBody {
    /// Store open, listeners bound, plugins loaded, not shutting down, store not poisoned.
    ready: bool,
    shutting_down: bool,
    store_poisoned: bool,
    /// Why the store stopped accepting writes (a full disk says so); absent while it accepts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    store_poison_cause: Option<String>,
}

async fn readyz(State(gw): Ctx, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw, &headers, Guard::IfConfigured) {
        return e.into_response();
    }
    let shutting_down = gw.readiness.shutting_down();
    let store_poison_cause = gw.store.poison_cause();
    let store_poisoned = gw.store.is_poisoned();
    let ready = gw.readiness.is_ready() && !store_poisoned;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(ReadyBody {
            ready,
            shutting_down,
            store_poisoned,
            store_poison_cause,
        }),
    )
        .into_response()
}

/// `POST /v1/publish` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    /// A UTF-8 string, or `{"b64": "..."}` for binary payloads.
    data: Payload,
    #[serde(default)]
    headers: Headers,
    /// Idempotency key: a retry with the same `mid` within the dedupe window gets the original ack.
    #[serde(default)]
    mid: Option<String>,
}

/// The durable ack of an admin publish.
#[derive(Debug, Serialize)]
struct PublishAck {
    topic: String,
    /// False when a plugin dropped the message on purpose (acknowledged, not stored).
    stored: bool,
    origin: String,
    epoch: u64,
    seq: u64,
    hlc: u64,
    /// Cursor positioned just after this message.
    cursor: String,
    dup: bool,
}

async fn publish(
    State(gw): Ctx,
    headers: HeaderMap,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> ApiResult<PublishAck> {
    authorize(&gw, &headers, Guard::Api)?;
    let Json(body) = body?;
    let result = publish_inner(&gw, body).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    gw.metrics
        .commands
        .with_label_values(&["admin_pub", label])
        .inc();
    result.map(Json)
}

async fn publish_inner(gw: &AdminCtx, body: PublishBody) -> Result<PublishAck, ApiError> {
    let l = &gw.limits;
    validate_publish(l, &body.topic, &body.headers, body.mid.as_deref())
        .map_err(|r| ApiError::from_code(r.code, r.message))?;
    if body.data.0.len() > l.max_frame_bytes {
        return Err(ApiError::from_code(
            ErrorCode::FrameTooLarge,
            format!("payload exceeds {} bytes", l.max_frame_bytes),
        ));
    }
    let topic = body.topic.clone();
    let req = Publish {
        topic: body.topic,
        client: ADMIN_CLIENT_ID.to_string(),
        principal: None,
        mid: body.mid,
        headers: body.headers,
        payload: body.data.0,
    };
    let sender = Sender {
        client_id: ADMIN_CLIENT_ID.to_string(),
        ..Sender::default()
    };
    let ack = match gw.pipeline.publish(&sender, req).await {
        Ok(Published::Stored(ack)) => ack,
        Ok(Published::NotStored(_)) => {
            return Ok(PublishAck {
                topic,
                stored: false,
                origin: String::new(),
                epoch: 0,
                seq: 0,
                hlc: 0,
                cursor: String::new(),
                dup: false,
            });
        }
        Err(r) => return Err(ApiError::from_code(r.code, r.message)),
    };
    let mut cursor = Cursor::new();
    cursor.set_topic(&topic, ack.vv.clone());
    Ok(PublishAck {
        topic,
        stored: true,
        origin: ack.origin.node,
        epoch: ack.origin.epoch,
        seq: ack.seq,
        hlc: ack.hlc,
        cursor: cursor.encode(),
        dup: ack.dup,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsQuery {
    /// Only topics sorting after this name (paging).
    #[serde(default)]
    after: Option<String>,
    /// Most topics to return. Default and maximum 10000.
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct TopicEntry {
    topic: String,
    messages: u64,
    bytes: u64,
    heads: BTreeMap<String, u64>,
    retention: RetentionView,
    slow_consumer: crate::outbox::SlowConsumerPolicy,
}

/// Retention of a topic; `null` means unlimited.
#[derive(Debug, Serialize)]
struct RetentionView {
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    max_age_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
struct TopicsPage {
    topics: Vec<TopicEntry>,
    /// True when more topics follow; ask again with `after` = the last topic.
    more: bool,
}

async fn topics(
    State(gw): Ctx,
    headers: HeaderMap,
    q: Result<Query<TopicsQuery>, QueryRejection>,
) -> ApiResult<TopicsPage> {
    authorize(&gw, &headers, Guard::Api)?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(MAX_TOPICS_PAGE).clamp(1, MAX_TOPICS_PAGE);
    let policy = &gw.slow_consumer;
    let mut all = gw.store.topics();
    if let Some(after) = &q.after {
        all.retain(|t| t.topic.as_str() > after.as_str());
    }
    let more = all.len() > limit;
    let topics = all
        .into_iter()
        .take(limit)
        .map(|t| {
            let r = gw.store.retention_for(&t.topic);
            TopicEntry {
                retention: RetentionView {
                    max_messages: r.max_messages,
                    max_bytes: r.max_bytes,
                    max_age_secs: r.max_age.map(|d| d.as_secs()),
                },
                slow_consumer: policy(&t.topic),
                topic: t.topic,
                messages: t.messages,
                bytes: t.bytes,
                heads: t.heads,
            }
        })
        .collect();
    Ok(Json(TopicsPage { topics, more }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    topic: String,
    /// `earliest` (default), `latest`, `last:N`, or a cursor (from a puback or a previous page).
    #[serde(default)]
    from: Option<String>,
    /// Most messages; default and maximum `limits.max_history`. A page also ends before
    /// its stored bytes pass `limits.max_history_bytes` (`more` is then true).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct GapView {
    origin: String,
    epoch: u64,
    from: u64,
    to: u64,
    /// `retention` or `corrupt`.
    reason: &'static str,
}

#[derive(Debug, Serialize)]
struct HistoryPage {
    topic: String,
    msgs: Vec<Msg>,
    /// Ranges that cannot be read (removed by retention or failed their checksum).
    gaps: Vec<GapView>,
    /// Pass as `from` to read the next page.
    cursor: String,
    more: bool,
}

async fn history(
    State(gw): Ctx,
    headers: HeaderMap,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<HistoryPage> {
    authorize(&gw, &headers, Guard::Api)?;
    let Query(q) = q?;
    let l = &gw.limits;
    validate_topic(&q.topic, l.max_topic_bytes)
        .map_err(|e| ApiError::from_code(e.code(), e.to_string()))?;
    let limit = q
        .limit
        .unwrap_or(l.max_history)
        .clamp(1, l.max_history.max(1)) as usize;
    let after = match q.from.as_deref().unwrap_or("earliest") {
        "earliest" | "" => BTreeMap::new(),
        "latest" => gw.store.head(&q.topic),
        s if s.starts_with("last:") => {
            let n: u64 = s[5..]
                .parse()
                .map_err(|_| ApiError::bad_request(format!("`from={s}`: last:N needs a number")))?;
            gw.store.last_n_positions(&q.topic, n)
        }
        s => Cursor::decode(s, l.max_cursor_bytes)
            .map_err(|e| ApiError::from_code(ErrorCode::CursorInvalid, e.to_string()))?
            .topic(&q.topic)
            .cloned()
            .unwrap_or_default(),
    };
    let batch = gw
        .store
        .read_bounded(&q.topic, &after, None, limit, l.max_history_bytes)
        .map_err(|e| ApiError::from_code(ErrorCode::StorageUnavailable, e.to_string()))?;
    let gaps = batch
        .missing
        .iter()
        .map(|m| GapView {
            origin: m.origin.node.clone(),
            epoch: m.origin.epoch,
            from: m.from,
            to: m.to,
            reason: if m.corrupt { "corrupt" } else { "retention" },
        })
        .collect();
    let mut cursor = Cursor::new();
    cursor.set_topic(&q.topic, batch.positions.clone());
    Ok(Json(HistoryPage {
        msgs: batch.records.iter().map(|r| r.to_msg()).collect(),
        gaps,
        cursor: cursor.encode(),
        more: batch.more,
        topic: q.topic,
    }))
}

async fn connections(State(gw): Ctx, headers: HeaderMap) -> ApiResult<serde_json::Value> {
    authorize(&gw, &headers, Guard::Api)?;
    Ok(Json(serde_json::json!({ "connections": gw.conns.list() })))
}

async fn peers(State(gw): Ctx, headers: HeaderMap) -> ApiResult<serde_json::Value> {
    authorize(&gw, &headers, Guard::Api)?;
    let Some(p) = gw.peers.get() else {
        return Ok(Json(serde_json::json!({ "cluster": null, "links": [] })));
    };
    Ok(Json(serde_json::json!({
        "cluster": p.cluster_id(),
        "node": p.node_id(),
        "links": p.status(),
    })))
}

async fn config(State(gw): Ctx, headers: HeaderMap) -> ApiResult<serde_json::Value> {
    authorize(&gw, &headers, Guard::Api)?;
    // Redaction lives in one place (`Settings::redacted_toml`); convert its output.
    let table: toml::Table = toml::from_str(&gw.config_toml)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let value = serde_json::to_value(table)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(value))
}

#[derive(serde::Deserialize)]
struct PresenceQuery {
    topic: String,
}

async fn presence(
    State(gw): Ctx,
    headers: HeaderMap,
    Query(q): Query<PresenceQuery>,
) -> ApiResult<serde_json::Value> {
    authorize(&gw, &headers, Guard::Api)?;
    let listing = gw.presence.list(&q.topic);
    let value = serde_json::to_value(listing)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(value))
}

async fn queues(State(gw): Ctx, headers: HeaderMap) -> ApiResult<serde_json::Value> {
    authorize(&gw, &headers, Guard::Api)?;
    Ok(Json(serde_json::json!({ "queues": gw.queues.list() })))
}

async fn plugins(State(gw): Ctx, headers: HeaderMap) -> ApiResult<serde_json::Value> {
    authorize(&gw, &headers, Guard::Api)?;
    let list = gw.plugins.as_ref().map(|p| p.list()).unwrap_or_default();
    Ok(Json(serde_json::json!({ "plugins": list })))
}

async fn bridges(State(gw): Ctx, headers: HeaderMap) -> ApiResult<serde_json::Value> {
    authorize(&gw, &headers, Guard::Api)?;
    Ok(Json(serde_json::json!({ "bridges": gw.bridges.status() })))
}

async fn reload_plugin(
    State(gw): Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<PluginInfo> {
    authorize(&gw, &headers, Guard::Api)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such plugin: {name}"),
        )
    };
    let Some(host) = &gw.plugins else {
        return Err(not_found());
    };
    match host.reload(&name).await {
        Ok(info) => {
            tracing::info!(plugin = %name, "plugin reloaded through the admin API");
            Ok(Json(info))
        }
        Err(PluginAdminError::NotFound(_)) => Err(not_found()),
        Err(e @ PluginAdminError::Failed(_)) => {
            tracing::warn!(plugin = %name, error = %e, "plugin reload failed; previous version keeps running");
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "reload_failed",
                e.to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "x"));
    }

    #[test]
    fn protocol_codes_map_to_http_statuses() {
        assert_eq!(
            ApiError::from_code(ErrorCode::Forbidden, "").status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::from_code(ErrorCode::TopicInvalid, "").status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::from_code(ErrorCode::ShuttingDown, "").status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from_code(ErrorCode::Rejected, "x").code,
            "rejected"
        );
    }
}
