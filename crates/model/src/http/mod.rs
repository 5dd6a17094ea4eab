//! The HTTP API of `serve` and `worker`: routes in one table, over the [`Infer`] facade. The
//! plumbing every role shares (request ids, keys, errors, health, shutdown) is
//! [`blipserve_api::http`]'s.

mod detect;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use blipserve_api::camera::Cameras;
use blipserve_api::detect::{Behaviors, DetectResponse, RawDetect};
use blipserve_api::grpc;
use blipserve_api::http::error::ApiError;
use blipserve_api::http::{self as api_http, openapi, Readiness};
use blipserve_api::info::ServeInfo;
use blipserve_api::metrics::{Registry, RequestMetrics};
use blipserve_api::oip;
use blipserve_api::otel::{Otel, Traced};

use crate::infer::Infer;

/// What every handler shares.
pub struct AppState {
    pub infer: Infer,
    /// Reuse and per-camera admission (`serve`; a worker leaves them to its gateway).
    pub cameras: Option<Arc<Cameras>>,
    pub requests: RequestMetrics,
    pub registry: Registry,
    /// Set on SIGTERM/SIGINT: /ready answers 503 so the load balancer stops sending.
    pub draining: Arc<AtomicBool>,
    pub api_keys: Vec<String>,
    /// `GET /v1/info` apart from what changes (ready, queue depth).
    pub info: ServeInfo,
    /// Traces the inference routes (when on).
    pub otel: Otel,
}

impl AppState {
    fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::SeqCst) {
            Readiness::Draining
        } else if !self.infer.is_loaded() {
            Readiness::Loading
        } else if !self.infer.is_ready() {
            Readiness::InferenceFailing
        } else {
            Readiness::Ready
        }
    }
}

/// The gRPC door: the Open Inference Protocol's service over the same request path.
pub struct Grpc(pub Arc<AppState>);

#[tonic::async_trait]
impl grpc::Backend for Grpc {
    async fn model_id(&self) -> Option<String> {
        Some(self.0.infer.model_id.clone())
    }

    fn ready(&self) -> bool {
        self.0.readiness() == Readiness::Ready
    }

    async fn answer(
        &self,
        raw: RawDetect,
        request_id: String,
        headers: axum::http::HeaderMap,
        traced: Traced,
    ) -> Result<DetectResponse, tonic::Status> {
        let state = &self.0;
        let answering = async {
            api_http::authorize(&state.api_keys, &headers)?;
            state.infer.check_ready()?;
            let started = std::time::Instant::now();
            let deadline = started + state.infer.limits().request_timeout;
            detect::answer(state, request_id.clone(), raw, (started, deadline), &traced).await
        };
        detect::counted(state, "grpc", &request_id, &traced, answering, |e| grpc::status(&e)).await
    }
}

/// The routes, in one table.
pub fn router(state: Arc<AppState>) -> Router {
    let otel = state.otel.clone();
    let routes = Router::new()
        .route("/v1/detect", post(detect::detect))
        .route("/v1/behaviors", get(behaviors))
        .route("/v1/info", get(info))
        .route("/ready", get(ready))
        // SageMaker's hosting contract: its container runs `blipserve serve` on port 8080
        // (the image's entry point and defaults) and calls these.
        .route("/ping", get(ready))
        .route("/invocations", post(detect::detect))
        // The Open Inference Protocol (KServe v2), the same answers through another door.
        .route("/v2", get(v2_server))
        .route("/v2/health/live", get(v2_live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{name}", get(v2_model))
        .route("/v2/models/{name}/ready", get(v2_model_ready))
        .route("/v2/models/{name}/infer", post(detect::infer_v2))
        .route("/v2/models/{name}/versions/{version}/infer", post(detect::infer_v2))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_document))
        .with_state(state);
    api_http::with_common_routes(routes, &otel)
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    state.readiness().into_response()
}

async fn v2_server() -> Json<serde_json::Value> {
    Json(oip::server_metadata())
}

async fn v2_live() -> StatusCode {
    StatusCode::OK
}

async fn v2_ready(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.readiness() == Readiness::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn v2_model(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    if name != state.infer.model_id {
        return oip::error(ApiError::UnknownModel(name));
    }
    Json(oip::model_metadata(&state.infer.model_id)).into_response()
}

async fn v2_model_ready(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    if name != state.infer.model_id {
        return oip::error(ApiError::UnknownModel(name));
    }
    v2_ready(State(state)).await.into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    api_http::prometheus_text(state.registry.render())
}

async fn behaviors(State(state): State<Arc<AppState>>) -> Json<Behaviors> {
    Json(Behaviors::from(state.infer.behaviors()))
}

async fn info(State(state): State<Arc<AppState>>) -> Json<ServeInfo> {
    let mut info = state.info.clone();
    info.ready = state.readiness() == Readiness::Ready;
    info.queue_depth = state.infer.queue_depth();
    Json(info)
}

async fn openapi_document(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(openapi::serve(state.infer.limits()))
}
