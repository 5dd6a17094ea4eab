//! `blipserve gateway`: the API tier. It checks detect requests with the same code, limits and
//! errors as a worker, then forwards the body exactly as received to a worker chosen from
//! weighted pools ([`pools`]), retrying on another worker when one cannot take the request
//! ([`forward`]), and streams the answer back. Operators change weights live ([`admin`]) or
//! reload the pools from the file on SIGHUP ([`reload`]).

pub mod admin;
pub mod config;
mod forward;
pub mod metrics;
pub mod pools;
mod reload;
mod window;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::camera::{CameraSettings, Cameras};
use crate::frame::ImageLimits;
use crate::http::{self, openapi, Readiness};
use crate::otel::Otel;
use crate::settings::{ConfigFile, LimitsInfo, RequestLimits};
use crate::Backend;
pub use forward::GrpcDoor;
use metrics::GatewayMetrics;
use pools::{Pools, Snapshot};
pub use reload::spawn_reload_on_sighup;

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
    /// When a load balancer's URL is ejected.
    pub outliers: pools::Outliers,
    /// Idle pooled connections to upstreams are closed after this long.
    pub upstream_idle_timeout: Duration,
    /// Reuse and per-camera admission for requests that name their camera.
    pub cameras: CameraSettings,
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
    /// The file SIGHUP re-reads, as it was last applied.
    file: Mutex<ConfigFile>,
    /// Reuse and per-camera admission: where a request first arrives.
    pub(crate) cameras: Arc<Cameras>,
    /// The workers' model id, once a worker has said it (the Open Inference Protocol names it).
    model_id: Mutex<Option<String>>,
    /// Traces requests through to the workers (when on).
    pub otel: Otel,
}

impl Gateway {
    pub fn new(settings: Settings, file: ConfigFile, otel: Otel) -> anyhow::Result<Gateway> {
        let pools = config::pools_of(&file)?;
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(settings.upstream_idle_timeout)
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()?;
        let probe_client = reqwest::Client::builder()
            .timeout(settings.health_timeout)
            .connect_timeout(settings.health_timeout)
            .pool_idle_timeout(settings.upstream_idle_timeout)
            .pool_max_idle_per_host(2)
            .tcp_nodelay(true)
            .build()?;
        let metrics = GatewayMetrics::default();
        let cameras =
            Arc::new(Cameras::new(settings.cameras.clone(), settings.image_limits, metrics.registry(), None)?);
        Ok(Gateway {
            settings,
            pools: Arc::new(Pools::new(&pools)),
            metrics,
            cameras,
            model_id: Mutex::new(None),
            otel,
            client,
            probe_client,
            draining: Arc::new(AtomicBool::new(false)),
            file: Mutex::new(file),
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

    /// The workers' model id, if known yet.
    pub fn model_id(&self) -> Option<String> {
        self.model_id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn learn_model_id(&self, id: &str) {
        *self.model_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.to_string());
    }

    fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::SeqCst) {
            Readiness::Draining
        } else if self.pools.current().healthy_workers() == 0 {
            Readiness::NoUpstream
        } else {
            Readiness::Ready
        }
    }
}

/// One line per pool, for the log.
pub fn describe(snapshot: &Snapshot) -> String {
    let pools: Vec<String> = snapshot
        .pools
        .iter()
        .map(|p| format!("{} ({}, weight {}, {} worker(s))", p.name, p.backend, p.weight, p.upstreams.len()))
        .collect();
    pools.join(", ")
}

/// The gateway's routes.
pub fn router(state: Arc<Gateway>) -> Router {
    let otel = state.otel.clone();
    let routes = Router::new()
        .route("/v1/detect", post(forward::detect))
        .route("/v1/behaviors", get(forward::behaviors))
        .route("/v1/info", get(info))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_document))
        // The Open Inference Protocol, translated to detect requests.
        .route("/v2", get(|| async { Json(crate::oip::server_metadata()) }))
        .route("/v2/health/live", get(|| async { axum::http::StatusCode::OK }))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{name}", get(forward::v2_model))
        .route("/v2/models/{name}/ready", get(forward::v2_model_ready))
        .route("/v2/models/{name}/infer", post(forward::infer_v2))
        .route("/v2/models/{name}/versions/{version}/infer", post(forward::infer_v2))
        .route("/admin/pools", get(admin::pools).put(admin::set_weights).post(admin::set_weights))
        .route("/admin/pools/{name}", axum::routing::put(admin::set_weight).post(admin::set_weight))
        .with_state(state);
    http::with_common_routes(routes, &otel)
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    gw.readiness().into_response()
}

async fn v2_ready(State(gw): State<Arc<Gateway>>) -> axum::http::StatusCode {
    if gw.readiness() == Readiness::Ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    http::prometheus_text(gw.metrics.render(&gw.pools.current()))
}

async fn openapi_document(State(gw): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    Json(openapi::gateway(&gw.settings.limits))
}

/// `GET /v1/info` on the gateway.
#[derive(Serialize, ToSchema)]
pub struct GatewayInfo {
    pub version: &'static str,
    /// `gateway`
    pub role: &'static str,
    pub ready: bool,
    pub pools: Vec<PoolInfo>,
    pub limits: LimitsInfo,
    pub forwarding: Forwarding,
    /// Reuse and per-camera rates.
    pub cameras: crate::camera::CameraInfo,
    /// API keys are required on /v1/detect.
    pub auth: bool,
    /// The admin API is on.
    pub admin: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PoolInfo {
    pub name: String,
    pub backend: Backend,
    pub weight: u32,
    pub workers: usize,
    pub healthy_workers: usize,
}

#[derive(Serialize, ToSchema)]
pub struct Forwarding {
    pub max_attempts: usize,
    pub upstream_idle_timeout_ms: u64,
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    pub eject_ms: u64,
    pub connect_timeout_ms: u64,
}

async fn info(State(gw): State<Arc<Gateway>>) -> Json<GatewayInfo> {
    let s = &gw.settings;
    let snapshot = gw.pools.current();
    let now = Instant::now();
    let ms = |d: Duration| d.as_millis() as u64;
    Json(GatewayInfo {
        version: env!("CARGO_PKG_VERSION"),
        role: "gateway",
        ready: gw.readiness() == Readiness::Ready,
        pools: snapshot
            .pools
            .iter()
            .map(|p| PoolInfo {
                name: p.name.clone(),
                backend: p.backend,
                weight: p.weight,
                workers: p.upstreams.len(),
                healthy_workers: p.healthy_workers(now),
            })
            .collect(),
        limits: LimitsInfo::new(&s.limits, &s.image_limits, None),
        forwarding: Forwarding {
            max_attempts: s.max_attempts,
            upstream_idle_timeout_ms: ms(s.upstream_idle_timeout),
            health_interval_ms: ms(s.health_interval),
            health_timeout_ms: ms(s.health_timeout),
            eject_ms: ms(s.eject),
            connect_timeout_ms: ms(s.connect_timeout),
        },
        cameras: (&s.cameras).into(),
        auth: !s.api_keys.is_empty(),
        admin: s.admin_key.is_some(),
    })
}
