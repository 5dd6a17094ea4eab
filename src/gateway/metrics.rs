//! The gateway's Prometheus metrics: the clients' requests, and per pool (and backend) the
//! forwarded attempts, their latency, retries, in-flight requests, health and weights.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::pools::Snapshot;

const BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct GatewayMetrics {
    registry: Registry,
    /// Finished client detect requests by outcome: `ok`, the error code (the gateway's own or the
    /// worker's it passed through), or `cancelled`.
    pub requests: IntCounterVec,
    /// Client detect requests, from arrival to response headers.
    pub request_seconds: Histogram,
    pub in_flight: IntGauge,
    /// Attempts forwarded to a pool, by outcome (see [`super::pools::Attempt`]).
    pub upstream_requests: IntCounterVec,
    /// Attempts' time to the worker's response headers.
    pub upstream_seconds: HistogramVec,
    /// Requests retried after an attempt on this pool failed.
    pub retries: IntCounterVec,
    upstream_in_flight: IntGaugeVec,
    workers: IntGaugeVec,
    healthy_workers: IntGaugeVec,
    weight: IntGaugeVec,
}

impl GatewayMetrics {
    pub fn new() -> GatewayMetrics {
        let registry = Registry::new_custom(Some("blipserve".into()), None).expect("valid prefix");
        let pool = ["pool", "backend"];
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Client detect requests by outcome (ok or an error code)"),
            &["outcome"],
        )
        .expect("metric");
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new("request_duration_seconds", "Client detect requests, arrival to response headers")
                .buckets(BUCKETS.to_vec()),
        )
        .expect("metric");
        let in_flight = IntGauge::new("in_flight_requests", "Client detect requests being handled").expect("metric");
        let upstream_requests = IntCounterVec::new(
            Opts::new("upstream_requests_total", "Detect attempts forwarded to a pool, by outcome"),
            &["pool", "backend", "outcome"],
        )
        .expect("metric");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Forwarded attempts, sending to the worker's response headers",
            )
            .buckets(BUCKETS.to_vec()),
            &pool,
        )
        .expect("metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "upstream_retries_total",
                "Requests retried on another worker after an attempt on this pool failed",
            ),
            &pool,
        )
        .expect("metric");
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &pool).expect("metric");
        let upstream_in_flight = gauge("upstream_in_flight_requests", "Attempts in flight to the pool's workers");
        let workers = gauge("pool_workers", "Workers configured in the pool");
        let healthy_workers = gauge("pool_healthy_workers", "Workers whose /ready passed and that are not ejected");
        let weight = gauge("pool_weight", "The pool's weight");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(retries.clone()),
            Box::new(upstream_in_flight.clone()),
            Box::new(workers.clone()),
            Box::new(healthy_workers.clone()),
            Box::new(weight.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        GatewayMetrics {
            registry,
            requests,
            request_seconds,
            in_flight,
            upstream_requests,
            upstream_seconds,
            retries,
            upstream_in_flight,
            workers,
            healthy_workers,
            weight,
        }
    }

    /// The text exposition, with the pool gauges read from `snapshot` (pools removed by a
    /// reload disappear from them).
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
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8 exposition")
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics::new()
    }
}
