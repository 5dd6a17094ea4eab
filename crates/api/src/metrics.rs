//! Prometheus metrics, the one way every role makes them: a [`Registry`] that registers as it
//! creates (names prefixed `blipserve_`), one set of latency buckets, and the detect-request
//! counters every role keeps ([`RequestMetrics`]), recorded by one guard ([`RequestOutcome`]).

use std::sync::Arc;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

use crate::cloudwatch::Tally;

/// Seconds, from half a millisecond (a refusal) to half a minute (a deadline).
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A role's metrics; each `*` constructor creates a metric and registers it.
#[derive(Clone)]
pub struct Registry(prometheus::Registry);

impl Default for Registry {
    fn default() -> Self {
        Registry(prometheus::Registry::new_custom(Some("blipserve".into()), None).expect("a valid prefix"))
    }
}

impl Registry {
    fn register<C: Collector + Clone + 'static>(&self, metric: C) -> C {
        // Names are literals of this crate: a clash is a programming error, caught by any test.
        self.0.register(Box::new(metric.clone())).expect("metric names are unique");
        metric
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("a valid metric"))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("a valid metric"))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric"))
    }

    /// A histogram of seconds with [`LATENCY_BUCKETS`], or of other values with `buckets`.
    pub fn histogram(&self, name: &str, help: &str, buckets: Option<&[f64]>) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.unwrap_or(&LATENCY_BUCKETS).to_vec());
        self.register(Histogram::with_opts(opts).expect("a valid metric"))
    }

    pub fn histogram_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("a valid metric"))
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.0.gather(), &mut buf).expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// What every role counts of its detect requests.
pub struct RequestMetrics {
    /// Finished detect requests by outcome: `ok`, an error code, or `cancelled` (client gone).
    pub requests: IntCounterVec,
    /// Detect requests being handled.
    pub in_flight: IntGauge,
    /// Arrival to response headers.
    pub duration: Histogram,
    /// The CloudWatch publisher's tally, when it publishes.
    tally: Option<Arc<Tally>>,
}

impl RequestMetrics {
    pub fn new(registry: &Registry, tally: Option<Arc<Tally>>) -> RequestMetrics {
        RequestMetrics {
            requests: registry.counter_vec(
                "requests_total",
                "Detect requests by outcome (ok, an error code, or cancelled)",
                &["outcome"],
            ),
            in_flight: registry.gauge("in_flight_requests", "Detect requests being handled"),
            duration: registry.histogram(
                "request_duration_seconds",
                "Detect requests, arrival to response headers",
                None,
            ),
            tally,
        }
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn begin(&self) -> RequestOutcome<'_> {
        self.in_flight.inc();
        RequestOutcome { metrics: self, started: Instant::now(), outcome: None }
    }
}

/// A detect request in flight; when dropped it is counted by its outcome, `cancelled` (as
/// status 499, nginx's "client closed request") when the client hung up before it finished.
pub struct RequestOutcome<'a> {
    metrics: &'a RequestMetrics,
    started: Instant,
    outcome: Option<(String, u16)>,
}

impl RequestOutcome<'_> {
    pub fn finish(&mut self, outcome: &str, status: u16) {
        self.outcome = Some((outcome.to_string(), status));
    }
}

impl Drop for RequestOutcome<'_> {
    fn drop(&mut self) {
        let (outcome, status) = self.outcome.take().unwrap_or_else(|| ("cancelled".into(), 499));
        let elapsed = self.started.elapsed();
        let m = self.metrics;
        m.in_flight.dec();
        m.duration.observe(elapsed.as_secs_f64());
        m.requests.with_label_values(&[outcome.as_str()]).inc();
        if let Some(tally) = &m.tally {
            tally.record(status, elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_once_and_a_dropped_request_is_cancelled() {
        let registry = Registry::default();
        let tally = Arc::new(Tally::default());
        let m = RequestMetrics::new(&registry, Some(tally.clone()));
        m.begin().finish("ok", 200);
        {
            let _abandoned = m.begin();
            assert_eq!(m.in_flight.get(), 1);
        }
        assert_eq!(m.in_flight.get(), 0);
        assert_eq!(m.requests.with_label_values(&["ok"]).get(), 1);
        assert_eq!(m.requests.with_label_values(&["cancelled"]).get(), 1);
        assert_eq!(tally.take().requests, 2);
        assert!(registry.render().contains("blipserve_request_duration_seconds_count 2"));
    }
}
