//! Prometheus metrics shared by every role: what the load balancer's operators and the load
//! tester read from `/metrics`.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::cloudwatch::Tally;

pub struct Metrics {
    registry: Registry,
    /// Finished detect requests by outcome (`ok` or an error code).
    pub requests: IntCounterVec,
    /// Seconds spent per stage: queue, preprocess, inference, total.
    pub stage_seconds: HistogramVec,
    /// Frames waiting for a replica.
    pub queue_depth: IntGauge,
    /// Frames per batch handed to a replica.
    pub batch_frames: Histogram,
    /// Detect requests being handled.
    pub in_flight: IntGauge,
    /// Work dropped before inference: `cancelled` (client gone) or `expired` (deadline passed).
    pub dropped: IntCounterVec,
    /// What the CloudWatch publisher reads each interval (kept whether or not it runs).
    pub tally: Arc<Tally>,
    /// CloudWatch intervals by fate: `published`, `rejected` (invalid, not retried) or `dropped`
    /// (backlog full while CloudWatch was unreachable).
    pub cloudwatch_intervals: IntCounterVec,
    /// PutMetricData calls that failed and will be retried.
    pub cloudwatch_failures: IntCounter,
    /// Intervals waiting to be delivered to CloudWatch.
    pub cloudwatch_backlog: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("blipserve".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(Opts::new("requests_total", "Detect requests by outcome"), &["outcome"])
            .expect("metric");
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("stage_duration_seconds", "Time per request stage").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["stage"],
        )
        .expect("metric");
        let queue_depth = IntGauge::new("queue_depth", "Frames waiting for a model replica").expect("metric");
        let batch_frames = Histogram::with_opts(
            HistogramOpts::new("batch_frames", "Frames per inference batch")
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0]),
        )
        .expect("metric");
        let in_flight = IntGauge::new("in_flight_requests", "Detect requests being handled").expect("metric");
        let dropped = IntCounterVec::new(Opts::new("dropped_total", "Frames dropped before inference"), &["reason"])
            .expect("metric");
        let cloudwatch_intervals = IntCounterVec::new(
            Opts::new("cloudwatch_intervals_total", "CloudWatch metric intervals by fate"),
            &["result"],
        )
        .expect("metric");
        let cloudwatch_failures =
            IntCounter::new("cloudwatch_put_failures_total", "Failed PutMetricData calls (retried)").expect("metric");
        let cloudwatch_backlog =
            IntGauge::new("cloudwatch_backlog_intervals", "Intervals waiting for CloudWatch").expect("metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stage_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_frames.clone()),
            Box::new(in_flight.clone()),
            Box::new(dropped.clone()),
            Box::new(cloudwatch_intervals.clone()),
            Box::new(cloudwatch_failures.clone()),
            Box::new(cloudwatch_backlog.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Metrics {
            registry,
            requests,
            stage_seconds,
            queue_depth,
            batch_frames,
            in_flight,
            dropped,
            tally: Arc::new(Tally::default()),
            cloudwatch_intervals,
            cloudwatch_failures,
            cloudwatch_backlog,
        }
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8 exposition")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
