//! The admin API (`/admin/pools`): see the pools, their workers' health and recent error rates,
//! and change weights live (for example to shift traffic between Inf2 and GPU pools). Off unless
//! the gateway has an admin key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::pools::{self, Snapshot};
use super::Gateway;
use crate::http::{self, error::ApiError};
use crate::Backend;

/// `GET /admin/pools`, and the answer to every weight change.
#[derive(Serialize, ToSchema)]
#[schema(as = Pools)]
pub struct PoolsView {
    /// Bumped by every change (admin or reload).
    pub generation: u64,
    /// The file SIGHUP reloads.
    #[schema(value_type = Option<String>)]
    pub config: Option<std::path::PathBuf>,
    pub pools: Vec<PoolView>,
}

#[derive(Serialize, ToSchema)]
pub struct PoolView {
    pub name: String,
    pub backend: Backend,
    pub weight: u32,
    /// This pool's fraction of new requests while all pools have healthy workers.
    pub share: f64,
    pub healthy_workers: usize,
    pub in_flight: usize,
    #[serde(flatten)]
    pub recent: Recent,
    pub workers: Vec<WorkerView>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkerView {
    pub url: String,
    /// A load balancer in front of several workers.
    pub load_balancer: bool,
    /// Ready and not ejected.
    pub healthy: bool,
    /// By its /ready probes: from one passing until two fail in a row.
    pub ready: bool,
    /// How long it stays ejected after failing requests.
    pub ejected_ms: u64,
    pub in_flight: usize,
    #[serde(flatten)]
    pub recent: Recent,
}

/// The last minute's attempts: transport errors and 5xx answers count as errors.
#[derive(Serialize, ToSchema)]
pub struct Recent {
    pub requests_1m: u64,
    pub errors_1m: u64,
    pub error_rate_1m: f64,
}

impl Recent {
    fn new((requests, errors): (u64, u64)) -> Recent {
        let error_rate_1m = if requests == 0 { 0.0 } else { errors as f64 / requests as f64 };
        Recent { requests_1m: requests, errors_1m: errors, error_rate_1m }
    }
}

fn describe_pools(gw: &Gateway, snapshot: &Snapshot) -> PoolsView {
    let now = Instant::now();
    let pools = snapshot
        .pools
        .iter()
        .map(|pool| {
            let workers = pool
                .upstreams
                .iter()
                .map(|u| WorkerView {
                    url: u.url.clone(),
                    load_balancer: u.is_load_balancer(),
                    healthy: u.healthy(now),
                    ready: u.probe_ok(),
                    ejected_ms: u.ejected_for(now).as_millis() as u64,
                    in_flight: u.in_flight(),
                    recent: Recent::new(u.recent(now)),
                })
                .collect();
            let totals = pool.upstreams.iter().map(|u| u.recent(now)).fold((0, 0), |(r, e), (r2, e2)| (r + r2, e + e2));
            PoolView {
                name: pool.name.clone(),
                backend: pool.backend,
                weight: pool.weight,
                share: snapshot.share(pool),
                healthy_workers: pool.healthy_workers(now),
                in_flight: pool.in_flight(),
                recent: Recent::new(totals),
                workers,
            }
        })
        .collect();
    PoolsView { generation: snapshot.generation, config: gw.config_path(), pools }
}

pub(super) async fn pools(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Result<Json<PoolsView>, ApiError> {
    http::authorize_admin(gw.settings.admin_key.as_deref(), &headers)?;
    Ok(Json(describe_pools(&gw, &gw.pools.current())))
}

/// New weights for some pools; pools not named keep theirs.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    /// Pool name → weight (0 to 1000000).
    pub weights: BTreeMap<String, u32>,
}

/// A new weight for one pool (0 to 1000000).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightBody {
    pub weight: u32,
}

fn parse_admin<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

pub(super) async fn set_weights(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PoolsView>, ApiError> {
    http::authorize_admin(gw.settings.admin_key.as_deref(), &headers)?;
    let WeightsBody { weights } = parse_admin(&body)?;
    apply_weights(&gw, &weights)
}

pub(super) async fn set_weight(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PoolsView>, ApiError> {
    http::authorize_admin(gw.settings.admin_key.as_deref(), &headers)?;
    let WeightBody { weight } = parse_admin(&body)?;
    apply_weights(&gw, &BTreeMap::from([(name, weight)]))
}

fn apply_weights(gw: &Gateway, weights: &BTreeMap<String, u32>) -> Result<Json<PoolsView>, ApiError> {
    let before = gw.pools.current().weights();
    let snapshot = gw.pools.set_weights(weights).map_err(|e| match e {
        pools::WeightError::UnknownPool(_) => ApiError::UnknownPool(e.to_string()),
        pools::WeightError::Invalid(_) => ApiError::BadRequest(e.to_string()),
    })?;
    eprintln!("blipserve: weights set through the admin API: {:?} (were {before:?})", snapshot.weights());
    Ok(Json(describe_pools(gw, &snapshot)))
}
