//! The HTTP layer: routes, request ids, authentication, and graceful shutdown. Handlers only
//! parse, validate and map errors; the work happens in the [`crate::engine`].

mod detect;
pub mod error;
pub(crate) mod openapi;
pub mod validate;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::behaviors::Catalogue;
use crate::config::RequestLimits;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::model::{Preprocessor, QuestionTokenizer};
use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub engine: Engine,
    pub tokenizer: QuestionTokenizer,
    pub preprocessor: Preprocessor,
    pub behaviors: Catalogue,
    pub limits: RequestLimits,
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM/SIGINT: /ready answers 503 so the load balancer stops sending.
    pub draining: Arc<AtomicBool>,
    pub api_keys: Vec<String>,
    pub model_id: String,
    pub max_new_tokens: usize,
    /// The static part of `GET /v1/info`.
    pub info: serde_json::Value,
    /// Frames being decoded at once (decoding an 8K frame takes ~100 MB).
    pub preprocess_permits: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Bearer API keys guard the work endpoints when any are configured.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        authorize(&self.api_keys, headers)
    }
}

/// Ok when no keys are configured or the request's `Authorization: Bearer` key is one of them.
pub(crate) fn authorize(keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    match bearer(headers) {
        Some(key) if keys.iter().any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The key of an `Authorization: Bearer <key>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's id: the client's `x-request-id` when it is sane, else a new UUID.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The routes, in one table.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/detect", post(detect::detect))
        .route("/v1/behaviors", get(behaviors))
        .route("/v1/info", get(info))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::docs_page))
        // detect enforces its own body limit so the error is JSON.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

pub(crate) async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let started = Instant::now();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    tracing::info!(request_id = %id, %method, path, status, ms = started.elapsed().as_secs_f64() * 1e3, "request");
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let (ready, reason) = if state.draining.load(Ordering::SeqCst) {
        (false, "draining")
    } else if !state.engine.is_ready() {
        (false, "loading")
    } else {
        (true, "ready")
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "status": reason }))).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    prometheus_text(state.metrics.render())
}

pub(crate) fn prometheus_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn behaviors(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let list: Vec<_> = state
        .behaviors
        .iter()
        .map(|(name, b)| json!({ "name": name, "question": b.question, "threshold": b.threshold }))
        .collect();
    Json(json!({ "behaviors": list }))
}

async fn info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut info = state.info.clone();
    info["ready"] = json!(state.engine.is_ready() && !state.draining.load(Ordering::SeqCst));
    info["queue_depth"] = json!(state.engine.queue_depth());
    Json(info)
}

/// How the service stops: on SIGTERM or SIGINT, /ready turns false, after `drain_delay` the
/// listener stops accepting, and in-flight requests get `grace` to finish.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    pub drain_delay: Duration,
    pub grace: Duration,
}

/// Serves until a termination signal, then drains as [`Shutdown`] says. Returns when done.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    draining: Arc<AtomicBool>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stopping = async move {
        termination_signal().await;
        tracing::info!("termination signal: draining");
        draining.store(true, Ordering::SeqCst);
        tokio::time::sleep(shutdown.drain_delay).await;
        let _ = stop_tx.send(true);
    };
    let server =
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(stopping);
    let deadline = async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(shutdown.grace).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!("shutdown grace period over with requests still in flight");
            Ok(())
        }
    }
}

async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
