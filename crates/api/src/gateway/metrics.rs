//! The gateway's Prometheus metrics: the clients' detect requests (as every role counts them),
//! and per pool (and backend) the forwarded attempts, their latency, retries, in-flight requests,
//! health and weights.

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

use super::pools::Snapshot;
use crate::metrics::{Registry, RequestMetrics};

pub struct GatewayMetrics {
    registry: Registry,
    /// The gateway's own client connections.
    pub connections: crate::http::ConnectionMetrics,
    /// Client detect requests: `ok`, the error code (the gateway's own or the worker's it passed
    /// through), or `cancelled`.
    pub requests: RequestMetrics,
    /// Attempts forwarded to a pool, by outcome (see [`super::pools::Attempt`]).
    pub upstream_requests: IntCounterVec,
    /// Attempts' time to the worker's response headers.
    pub upstream_seconds: HistogramVec,
    /// Requests retried after an attempt on this pool failed.
    pub retries: IntCounterVec,
    /// Upstreams of this pool taken out of rotation after failed requests.
    pub ejections: IntCounterVec,
    upstream_in_flight: IntGaugeVec,
    workers: IntGaugeVec,
    healthy_workers: IntGaugeVec,
    weight: IntGaugeVec,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let registry = Registry::default();
        let pool = ["pool", "backend"];
        GatewayMetrics {
            connections: crate::http::ConnectionMetrics::new(&registry),
            requests: RequestMetrics::new(&registry, None),
            upstream_requests: registry.counter_vec(
                "upstream_requests_total",
                "Detect attempts forwarded to a pool, by outcome",
                &["pool", "backend", "outcome"],
            ),
            upstream_seconds: registry.histogram_vec(
                "upstream_duration_seconds",
                "Forwarded attempts, sending to the worker's response headers",
                &pool,
            ),
            retries: registry.counter_vec(
                "upstream_retries_total",
                "Requests retried on another worker after an attempt on this pool failed",
                &pool,
            ),
            ejections: registry.counter_vec(
                "upstream_ejections_total",
                "Upstreams of the pool ejected after failed requests",
                &pool,
            ),
            upstream_in_flight: registry.gauge_vec(
                "upstream_in_flight_requests",
                "Attempts in flight to the pool's workers",
                &pool,
            ),
            workers: registry.gauge_vec("pool_workers", "Workers configured in the pool", &pool),
            healthy_workers: registry.gauge_vec(
                "pool_healthy_workers",
                "Workers whose /ready passed and that are not ejected",
                &pool,
            ),
            weight: registry.gauge_vec("pool_weight", "The pool's weight", &pool),
            registry,
        }
    }
}

impl GatewayMetrics {
    /// The text exposition, with the pool gauges read from `snapshot` (pools removed by a
    /// reload disappear from them).
    /// Where the gateway's other parts (the cameras) register their metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self, snapshot: &Snapshot) -> String {
        let now = std::time::Instant::now();
        for g in [&self.upstream_in_flight, &self.workers, &self.healthy_workers, &self.weight] {
            g.reset();
        }
        for pool in &snapshot.pools {
            let labels = [pool.name.as_str(), pool.backend.as_str()];
            self.upstream_in_flight.with_label_values(&labels).set(pool.in_flight() as i64);
            self.workers.with_label_values(&labels).set(pool.upstreams.len() as i64);
            self.healthy_workers.with_label_values(&labels).set(pool.healthy_workers(now) as i64);
            self.weight.with_label_values(&labels).set(i64::from(pool.weight));
            // Every pool's counters exist from the start, at 0, so that a dashboard (or a test)
            // can tell "none yet" from "not exported".
            self.retries.with_label_values(&labels);
            self.ejections.with_label_values(&labels);
        }
        self.registry.render()
    }
}
