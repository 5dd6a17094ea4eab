//! What every role's HTTP server shares: request ids, bearer keys, the health and readiness
//! answers, the Prometheus text response, the routes every role serves the same way, and
//! graceful shutdown. Handlers only read, authorise, check, call and render; errors are
//! [`error::ApiError`]s, rendered in one place.

pub mod body;
pub mod error;
pub mod openapi;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use error::ApiError;

/// Ok when no keys are configured or the request's `Authorization: Bearer` key is one of them.
pub fn authorize(keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if keys.is_empty() || bearer(headers).is_some_and(|presented| keys.iter().any(|k| same_key(k, presented))) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Ok when `key` is set and the request presents it; the admin API is off without a key.
pub fn authorize_admin(key: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = key.ok_or(ApiError::AdminDisabled)?;
    match bearer(headers) {
        Some(presented) if same_key(key, presented) => Ok(()),
        _ => Err(ApiError::AdminUnauthorized),
    }
}

/// The key of an `Authorization: Bearer <key>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Compares in time independent of where the keys differ.
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's id: the client's `x-request-id` when it is sane, else a new UUID.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Assigns the request id, echoes it on the response and logs the request.
async fn request_id(mut request: Request, next: Next) -> Response {
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

/// A role's routes with what every role serves the same way: `/health`, `/docs`, request ids,
/// the inference routes' trace spans (when tracing is on), and no body limit of axum's own
/// (bodies are read with [`body::read_limited`], so that the error is JSON).
pub fn with_common_routes(routes: Router, otel: &crate::otel::Otel) -> Router {
    let routes = routes.route("/health", get(health)).route("/docs", get(openapi::docs_page));
    otel.layer(routes).layer(DefaultBodyLimit::disable()).layer(middleware::from_fn(request_id))
}

/// `GET /health`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `alive`: the process answers.
    pub status: String,
}

async fn health() -> Json<Health> {
    Json(Health { status: "alive".into() })
}

/// Why a role is, or is not, ready for traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    Ready,
    /// The model replicas are loading and warming up.
    Loading,
    /// Batches keep failing: not ready until a self-check forward pass succeeds.
    InferenceFailing,
    /// A termination signal arrived: the load balancer should stop sending.
    Draining,
    /// Gateway: no worker is healthy.
    NoUpstream,
}

/// `GET /ready`: 200 when ready, 503 otherwise.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    pub status: Readiness,
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        let ready = self == Readiness::Ready;
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, Json(Ready { ready, status: self })).into_response()
    }
}

/// The Prometheus text exposition format, as a response.
pub fn prometheus_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// How the service stops: on SIGTERM or SIGINT, /ready turns false, after `drain_delay` the
/// listener stops accepting, and in-flight requests get `grace` to finish.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    pub drain_delay: Duration,
    pub grace: Duration,
}

/// What a client may hold: see [`crate::settings::ConnectionArgs`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// The server's own count of its connections.
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: prometheus::IntGauge,
    accepted: prometheus::IntCounter,
}

impl ConnectionMetrics {
    pub fn new(registry: &crate::metrics::Registry) -> ConnectionMetrics {
        ConnectionMetrics {
            open: registry.gauge("open_connections", "Client connections open now"),
            accepted: registry.counter("connections_total", "Client connections accepted"),
        }
    }
}

/// One accepted connection, counted open until it drops; holding one of the limited permits.
struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: ConnectionMetrics,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

/// Serves until a termination signal or `stop` resolves (a fatal error of the role's own, such
/// as a model that failed to load), then drains as [`Shutdown`] says. Returns when done.
///
/// The accept loop is the server's own (hyper's connection builder): a client has
/// `header_read_timeout` to send each request's headers (hyper measures it from when it starts
/// waiting, so it also closes an idle keep-alive connection), and at most `max_connections` are
/// open: beyond that, new connections wait in the kernel's listen backlog rather than being
/// accepted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    draining: Arc<AtomicBool>,
    shutdown: Shutdown,
    connections: (ConnectionLimits, ConnectionMetrics),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let (limits, metrics) = connections;
    let stopping = async move {
        tokio::select! {
            () = termination_signal() => {
                tracing::info!("termination signal: draining");
                draining.store(true, Ordering::SeqCst);
                tokio::time::sleep(shutdown.drain_delay).await;
            }
            () = stop => draining.store(true, Ordering::SeqCst),
        }
    };
    tokio::pin!(stopping);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut stopping => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin, and go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stopping => break,
        };
        let _ = stream.set_nodelay(true);
        metrics.accepted.inc();
        metrics.open.inc();
        let held = Held { _permit: permit, metrics: metrics.clone() };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _held = held;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(shutdown.grace) => {
            tracing::warn!("shutdown grace period over with requests still in flight");
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_the_admin_api_is_off_without_one() {
        let mut headers = HeaderMap::new();
        assert!(authorize(&[], &headers).is_ok());
        assert_eq!(authorize(&["k".into()], &headers).unwrap_err().code(), "unauthorized");
        headers.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        assert!(authorize(&["j".into(), "k".into()], &headers).is_ok());
        assert_eq!(authorize_admin(None, &headers).unwrap_err().code(), "admin_disabled");
        assert!(authorize_admin(Some("k"), &headers).is_ok());
        assert_eq!(authorize_admin(Some("kk"), &headers).unwrap_err().code(), "unauthorized");
    }
}
