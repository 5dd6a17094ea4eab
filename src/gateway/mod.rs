//! `blipserve gateway`: the API tier. It validates detect requests with the same code, limits
//! and errors as a worker ([`crate::http::validate`]), then forwards the body exactly as received
//! to a worker chosen from weighted pools ([`pools`]), retries on another worker when one cannot
//! take the request, and streams the answer back.
//!
//! Forwarding: the request id goes along as `x-request-id`, and what is left of the request's
//! deadline as `x-request-timeout-ms`, so a worker never works past the client's deadline.
//! Connection errors, 503 and 429 are retried on another worker (of the same pool or another)
//! within the deadline and `max_attempts`; any other answer, 4xx or 5xx, is passed through
//! unchanged. When no worker can take the request the client gets 503 `no_upstream`.

pub mod config;
pub mod metrics;
pub mod pools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::config::RequestLimits;
use crate::http::error::ApiError;
use crate::http::validate::{self, TIMEOUT_HEADER};
use crate::http::{self, openapi, RequestId};
use crate::model::preprocess::check_header;
use crate::model::ImageLimits;
use config::GatewayFile;
use metrics::GatewayMetrics;
use pools::{Attempt, Pool, Pools, Snapshot, Upstream};

/// Settings fixed for the life of the process (a reload changes only the pools).
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: RequestLimits,
    pub image_limits: ImageLimits,
    /// Bearer keys clients must present on /v1/detect; none: no authentication.
    pub api_keys: Vec<String>,
    /// Bearer key of /admin/*; none: the admin API is off.
    pub admin_key: Option<String>,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub eject: Duration,
    pub connect_timeout: Duration,
    /// Workers tried for one request, at most.
    pub max_attempts: usize,
}

pub struct Gateway {
    pub settings: Settings,
    pub pools: Arc<Pools>,
    pub metrics: GatewayMetrics,
    /// Forwards detect requests: pooled keep-alive connections to every worker.
    client: reqwest::Client,
    /// Probes /ready with the health-check timeout.
    probe_client: reqwest::Client,
    pub draining: Arc<AtomicBool>,
    /// The file SIGHUP re-reads, and what it held at start apart from the pools.
    pub config_path: Option<PathBuf>,
    started_with: GatewayFile,
}

impl Gateway {
    pub fn new(settings: Settings, file: &GatewayFile, config_path: Option<PathBuf>) -> anyhow::Result<Gateway> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()?;
        let probe_client = reqwest::Client::builder()
            .timeout(settings.health_timeout)
            .connect_timeout(settings.health_timeout)
            .pool_max_idle_per_host(2)
            .tcp_nodelay(true)
            .build()?;
        Ok(Gateway {
            settings,
            pools: Arc::new(Pools::new(&file.pools)),
            metrics: GatewayMetrics::new(),
            client,
            probe_client,
            draining: Arc::new(AtomicBool::new(false)),
            config_path,
            started_with: file.without_pools(),
        })
    }

    /// Probes every worker once (at start, before serving).
    pub async fn probe_all(&self) {
        pools::probe_all(&self.probe_client, self.pools.current().upstreams().cloned()).await;
    }

    /// Probes the workers periodically, forever.
    pub fn spawn_health_checks(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(pools::health_loop(self.pools.clone(), self.probe_client.clone(), self.settings.health_interval))
    }

    /// Re-reads the configuration file and installs its pools, once the new workers have been
    /// probed. Requests in flight finish on the pools they started with. An invalid file
    /// changes nothing.
    pub async fn reload(&self) -> anyhow::Result<Arc<Snapshot>> {
        let path = self.config_path.as_ref().ok_or_else(|| anyhow::anyhow!("no --config file to reload"))?;
        let file = GatewayFile::read(path)?;
        if file.without_pools() != self.started_with {
            eprintln!(
                "blipserve: settings other than [[pools]] changed in {}: they apply at the next start",
                path.display()
            );
        }
        let (snapshot, fresh) = self.pools.prepare(&file.pools);
        pools::probe_all(&self.probe_client, fresh).await;
        Ok(self.pools.install(snapshot))
    }

    fn describe_pools(&self, snapshot: &Snapshot) -> Value {
        let now = Instant::now();
        let pools: Vec<Value> = snapshot
            .pools
            .iter()
            .map(|pool| {
                let workers: Vec<Value> = pool
                    .upstreams
                    .iter()
                    .map(|u| {
                        let (requests, errors) = u.recent(now);
                        json!({
                            "url": u.url,
                            "healthy": u.healthy(now),
                            "ready": u.probe_ok(),
                            "ejected_ms": u.ejected_for(now).as_millis() as u64,
                            "in_flight": u.in_flight(),
                            "requests_1m": requests,
                            "errors_1m": errors,
                            "error_rate_1m": rate(errors, requests),
                        })
                    })
                    .collect();
                let (requests, errors) =
                    pool.upstreams.iter().map(|u| u.recent(now)).fold((0, 0), |(r, e), (r2, e2)| (r + r2, e + e2));
                json!({
                    "name": pool.name,
                    "backend": pool.backend.as_str(),
                    "weight": pool.weight,
                    "share": snapshot.share(pool),
                    "healthy_workers": pool.healthy_workers(now),
                    "in_flight": pool.in_flight(),
                    "requests_1m": requests,
                    "errors_1m": errors,
                    "error_rate_1m": rate(errors, requests),
                    "workers": workers,
                })
            })
            .collect();
        json!({
            "generation": snapshot.generation,
            "config": self.config_path,
            "pools": pools,
        })
    }
}

fn rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

/// The gateway's routes.
pub fn router(state: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/detect", post(detect))
        .route("/v1/behaviors", get(behaviors))
        .route("/v1/info", get(info))
        .route("/health", get(http::health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_document))
        .route("/docs", get(openapi::docs_page))
        .route("/admin/pools", get(admin_pools).put(admin_set_weights).post(admin_set_weights))
        .route("/admin/pools/{name}", axum::routing::put(admin_set_weight).post(admin_set_weight))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(http::request_id))
        .with_state(state)
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    let (ready, reason) = if gw.draining.load(Ordering::SeqCst) {
        (false, "draining")
    } else if gw.pools.current().healthy_workers() == 0 {
        (false, "no_upstream")
    } else {
        (true, "ready")
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "status": reason }))).into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    http::prometheus_text(gw.metrics.render(&gw.pools.current()))
}

async fn openapi_document(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    Json(openapi::spec(&openapi::Described { limits: gw.settings.limits, behaviors: None, gateway: true }))
}

async fn info(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let s = &gw.settings;
    let snapshot = gw.pools.current();
    let now = Instant::now();
    let pools: Vec<Value> = snapshot
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": p.name, "backend": p.backend.as_str(), "weight": p.weight,
                "workers": p.upstreams.len(), "healthy_workers": p.healthy_workers(now),
            })
        })
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "role": "gateway",
        "ready": !gw.draining.load(Ordering::SeqCst) && snapshot.healthy_workers() > 0,
        "pools": pools,
        "limits": {
            "max_body_bytes": s.limits.max_body_bytes, "max_questions": s.limits.max_questions,
            "max_question_chars": s.limits.max_question_chars,
            "request_timeout_ms": s.limits.request_timeout.as_millis() as u64,
            "max_image_side": s.image_limits.max_width, "max_image_pixels": s.image_limits.max_pixels,
        },
        "forwarding": {
            "max_attempts": s.max_attempts,
            "health_interval_ms": s.health_interval.as_millis() as u64,
            "health_timeout_ms": s.health_timeout.as_millis() as u64,
            "eject_ms": s.eject.as_millis() as u64,
            "connect_timeout_ms": s.connect_timeout.as_millis() as u64,
        },
        "auth": !s.api_keys.is_empty(),
        "admin": s.admin_key.is_some(),
    }))
}

/// The catalogue as a worker has it (the gateway has none of its own).
async fn behaviors(State(gw): State<Arc<Gateway>>) -> Response {
    let snapshot = gw.pools.current();
    let mut tried = Vec::new();
    while tried.len() < gw.settings.max_attempts {
        let Some((_, upstream)) = snapshot.pick(&tried) else { break };
        tried.push(upstream.clone());
        let url = format!("{}/v1/behaviors", upstream.url);
        let answer = async {
            let response = gw.client.get(url).timeout(Duration::from_secs(5)).send().await?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            Ok::<_, reqwest::Error>((status, content_type, response.bytes().await?))
        };
        if let Ok((status, content_type, body)) = answer.await {
            if status.is_success() {
                let mut response = (status, body).into_response();
                if let Some(ct) = content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                return response;
            }
        }
    }
    ApiError::NoUpstream.into_response()
}

/// Counts a client request: in flight until it finishes, then by outcome (`cancelled` when the
/// client hung up first).
struct Finish<'a> {
    metrics: &'a GatewayMetrics,
    started: Instant,
    outcome: Option<String>,
}

impl<'a> Finish<'a> {
    fn new(metrics: &'a GatewayMetrics, started: Instant) -> Self {
        metrics.in_flight.inc();
        Finish { metrics, started, outcome: None }
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics.request_seconds.observe(self.started.elapsed().as_secs_f64());
        self.metrics.requests.with_label_values(&[self.outcome.as_deref().unwrap_or("cancelled")]).inc();
    }
}

async fn detect(
    State(gw): State<Arc<Gateway>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let mut finish = Finish::new(&gw.metrics, started);
    match forward(&gw, &request_id, started, request).await {
        Ok((response, outcome)) => {
            finish.outcome = Some(outcome);
            response
        }
        Err(e) => {
            tracing::info!(request_id, code = e.code(), error = %e, "detect refused by the gateway");
            finish.outcome = Some(e.code().to_string());
            e.into_response()
        }
    }
}

/// The share of the remaining time the worker is given, so that its own 504 (rather than the
/// gateway's timeout) reaches the client when the deadline passes.
fn worker_budget(remaining: Duration) -> Duration {
    remaining.saturating_sub((remaining / 10).min(Duration::from_millis(50)))
}

/// Validates, then forwards until a worker answers. Returns the response and its outcome label.
async fn forward(
    gw: &Gateway,
    request_id: &str,
    started: Instant,
    request: Request,
) -> Result<(Response, String), ApiError> {
    let s = &gw.settings;
    let deadline = validate::deadline(request.headers(), started, s.limits.request_timeout);
    // As on a worker: read the body (bounded) before refusing anything.
    let (parts, body) = request.into_parts();
    let bytes =
        match tokio::time::timeout_at(deadline.into(), validate::read_limited(body, s.limits.max_body_bytes)).await {
            Err(_) => return Err(ApiError::DeadlineExceeded),
            Ok(bytes) => bytes,
        };
    http::authorize(&s.api_keys, &parts.headers)?;
    let bytes = bytes?;
    let raw = validate::parse_body(&parts.headers, bytes.clone()).await?;
    let checked = validate::check(raw, &s.limits, None)?;
    check_header(&checked.image, &s.image_limits)?;
    drop(checked);

    // The original bytes and content type go to the worker: nothing is re-encoded.
    let content_type = parts.headers.get(header::CONTENT_TYPE).cloned().expect("checked by parse_body");
    let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
    let snapshot = gw.pools.current();
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    let mut refused: Option<Relayed> = None;
    let mut previous: Option<&Pool> = None;
    while tried.len() < s.max_attempts {
        let Some((pool, upstream)) = snapshot.pick(&tried) else { break };
        if let Some(previous) = previous {
            gw.metrics.retries.with_label_values(&[previous.name.as_str(), previous.backend.as_str()]).inc();
        }
        previous = Some(pool);
        tried.push(upstream.clone());
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::DeadlineExceeded);
        }
        let labels = [pool.name.as_str(), pool.backend.as_str()];
        let record = |attempt: Attempt| {
            upstream.record(attempt);
            gw.metrics.upstream_requests.with_label_values(&[labels[0], labels[1], attempt.as_str()]).inc();
        };
        let flight = upstream.begin();
        let mut outgoing = gw
            .client
            .post(upstream.detect_url())
            .timeout(remaining)
            .header(header::CONTENT_TYPE, content_type.clone())
            .header("x-request-id", request_id)
            .header(TIMEOUT_HEADER, worker_budget(remaining).as_millis().to_string())
            .body(bytes.clone());
        if let Some(authorization) = &authorization {
            outgoing = outgoing.header(header::AUTHORIZATION, authorization.clone());
        }
        let sent = Instant::now();
        let result = outgoing.send().await;
        gw.metrics.upstream_seconds.with_label_values(&labels).observe(sent.elapsed().as_secs_f64());
        let response = match result {
            Ok(response) => response,
            Err(e) if e.is_timeout() && !e.is_connect() => {
                record(Attempt::Timeout);
                return Err(ApiError::DeadlineExceeded);
            }
            Err(e) => {
                // Refused, reset, closed mid-answer (a killed worker): detection is idempotent,
                // so another worker may answer it.
                record(Attempt::Transport);
                upstream.eject(s.eject, &error_chain(&e));
                continue;
            }
        };
        let status = response.status();
        let attempts = tried.len();
        if status == StatusCode::OK {
            record(Attempt::Ok);
            return Ok((relay_stream(response, flight, pool, attempts), "ok".into()));
        }
        // An error answer is small: read it whole, to learn its code and free the connection.
        let relayed = match Relayed::read(response, pool, attempts, deadline).await {
            Ok(relayed) => relayed,
            Err(e) => {
                record(Attempt::Transport);
                upstream.eject(s.eject, &format!("reading the answer: {e}"));
                continue;
            }
        };
        drop(flight);
        match status.as_u16() {
            429 => {
                record(Attempt::Overloaded);
                refused = Some(relayed);
            }
            503 => {
                record(Attempt::Unavailable);
                upstream.eject(s.eject, "503");
                refused = Some(relayed);
            }
            504 => {
                record(Attempt::Timeout);
                return Ok(relayed.response());
            }
            500..=599 => {
                record(Attempt::ServerError);
                upstream.eject(s.eject, &format!("status {status}"));
                return Ok(relayed.response());
            }
            _ => {
                record(Attempt::ClientError);
                return Ok(relayed.response());
            }
        }
    }
    // Every worker tried refused (429/503): the last refusal tells the client when to retry.
    if let Some(refused) = refused {
        return Ok(refused.response());
    }
    if Instant::now() >= deadline {
        return Err(ApiError::DeadlineExceeded);
    }
    Err(ApiError::NoUpstream)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Headers that belong to one connection, not to the message.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, pool: &Pool, attempts: usize) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&pool.name) {
        to.insert("x-blipserve-pool", v);
    }
    to.insert("x-blipserve-backend", HeaderValue::from_static(pool.backend.as_str()));
    to.insert("x-blipserve-attempts", HeaderValue::from(attempts));
}

/// The worker's answer, streamed to the client as it arrives.
fn relay_stream(response: reqwest::Response, flight: pools::InFlight, pool: &Pool, attempts: usize) -> Response {
    let status = response.status();
    let mut headers = HeaderMap::new();
    copy_headers(response.headers(), &mut headers, pool, attempts);
    // The worker stays counted in flight until its body has been relayed.
    let body = Body::from_stream(response.bytes_stream().map(move |chunk| {
        let _ = &flight;
        chunk
    }));
    let mut relayed = Response::new(body);
    *relayed.status_mut() = status;
    *relayed.headers_mut() = headers;
    relayed
}

/// A worker's error answer, read whole.
struct Relayed {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The worker's error code, the outcome label.
    code: String,
}

impl Relayed {
    const LIMIT: usize = 1 << 20;

    async fn read(
        response: reqwest::Response,
        pool: &Pool,
        attempts: usize,
        deadline: Instant,
    ) -> Result<Relayed, String> {
        let status = response.status();
        let mut headers = HeaderMap::new();
        copy_headers(response.headers(), &mut headers, pool, attempts);
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        let read = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| error_chain(&e))?;
                if body.len() + chunk.len() > Self::LIMIT {
                    return Err(format!("an error answer over {} bytes", Self::LIMIT));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline.into(), read).await {
            Err(_) => return Err("the deadline passed".into()),
            Ok(result) => result?,
        }
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string))
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .unwrap_or_else(|| format!("upstream_{}", status.as_u16()));
        headers.remove(header::CONTENT_LENGTH);
        Ok(Relayed { status, headers, body: Bytes::from(body), code })
    }

    fn response(self) -> (Response, String) {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        (response, self.code)
    }
}

/// Errors of the admin API, as JSON `{error, code}` like the rest.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("the admin API is off: start the gateway with --admin-key (or BLIPSERVE_ADMIN_KEY)")]
    Disabled,
    #[error("missing or wrong admin key (Authorization: Bearer <key>)")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnknownPool(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            AdminError::Disabled => (StatusCode::FORBIDDEN, "admin_disabled"),
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::UnknownPool(_) => (StatusCode::NOT_FOUND, "unknown_pool"),
        };
        let mut response = (status, Json(json!({ "error": self.to_string(), "code": code }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn admin_authorize(gw: &Gateway, headers: &HeaderMap) -> Result<(), AdminError> {
    let key = gw.settings.admin_key.as_deref().ok_or(AdminError::Disabled)?;
    match http::bearer(headers) {
        Some(presented) if http::constant_time_eq(key.as_bytes(), presented.as_bytes()) => Ok(()),
        _ => Err(AdminError::Unauthorized),
    }
}

async fn admin_pools(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Result<Json<Value>, AdminError> {
    admin_authorize(&gw, &headers)?;
    Ok(Json(gw.describe_pools(&gw.pools.current())))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    weights: BTreeMap<String, u32>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

fn parse_admin<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::BadRequest(format!("malformed JSON body: {e}")))
}

async fn admin_set_weights(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    admin_authorize(&gw, &headers)?;
    let WeightsBody { weights } = parse_admin(&body)?;
    set_weights(&gw, &weights)
}

async fn admin_set_weight(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    admin_authorize(&gw, &headers)?;
    let WeightBody { weight } = parse_admin(&body)?;
    set_weights(&gw, &BTreeMap::from([(name, weight)]))
}

fn set_weights(gw: &Gateway, weights: &BTreeMap<String, u32>) -> Result<Json<Value>, AdminError> {
    let before = gw.pools.current().weights();
    let snapshot = gw.pools.set_weights(weights).map_err(|e| match e {
        pools::WeightError::UnknownPool(_) => AdminError::UnknownPool(e.to_string()),
        pools::WeightError::Invalid(_) => AdminError::BadRequest(e.to_string()),
    })?;
    eprintln!("blipserve: weights set through the admin API: {:?} (were {before:?})", snapshot.weights());
    Ok(Json(gw.describe_pools(&snapshot)))
}

/// On SIGHUP, reloads the pools from the configuration file; a file that does not parse or
/// check is refused and the running pools stay. The handler is installed before this returns,
/// so a SIGHUP never kills the process once the gateway is listening.
pub fn spawn_reload_on_sighup(gw: Arc<Gateway>) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let path = gw.config_path.as_ref().map_or_else(|| "(none)".into(), |p| p.display().to_string());
                match gw.reload().await {
                    Ok(snapshot) => {
                        let summary: Vec<String> = snapshot
                            .pools
                            .iter()
                            .map(|p| {
                                format!(
                                    "{} ({}, weight {}, {} worker(s))",
                                    p.name,
                                    p.backend.as_str(),
                                    p.weight,
                                    p.upstreams.len()
                                )
                            })
                            .collect();
                        eprintln!(
                            "blipserve: reloaded {path} (generation {}): {}",
                            snapshot.generation,
                            summary.join(", ")
                        );
                    }
                    Err(e) => {
                        eprintln!("blipserve: reload of {path} refused, keeping the running pools: {e:#}");
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = gw;
    Ok(())
}
