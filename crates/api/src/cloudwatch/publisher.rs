//! Every interval the tally becomes one entry of a bounded backlog; a sender task delivers the
//! backlog to CloudWatch oldest first and removes an entry only once PutMetricData accepted it,
//! retrying with backoff in between. The request path only ever touches the tally.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::tally::{Snapshot, StatSet, Tally};
use super::{
    DIMENSION_SETS, DIM_BACKEND, DIM_GROUP, ERRORS, LATENCY, OVERLOADED, QUEUE_DEPTH, REQUESTS, REUSED_ANSWERS,
};
use crate::metrics::Registry;
use crate::Backend;

/// How publishing is set up; see `blipserve serve --help` for each setting's flag.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    /// Length of one interval; intervals are aligned to the wall clock (a 60 s interval is a minute).
    pub interval: Duration,
    /// Store at 1-second resolution (high-resolution metrics) instead of 1-minute.
    pub high_resolution: bool,
    pub group: String,
    pub backend: Backend,
    /// CloudWatch endpoint instead of the region's (an emulator, a VPC endpoint).
    pub endpoint: Option<String>,
    /// Intervals kept while CloudWatch cannot be reached; beyond it the oldest are dropped.
    pub max_backlog: usize,
}

/// Queue depth is sampled this often into the interval's statistic set.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A PutMetricData call takes at most 1000 datums; an interval makes at most 10.
const INTERVALS_PER_CALL: usize = 90;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const LAST_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    start: SystemTime,
    snapshot: Snapshot,
}

/// Intervals waiting for delivery, oldest first, at most `capacity` of them.
#[derive(Debug)]
struct Backlog {
    entries: VecDeque<Entry>,
    capacity: usize,
    next_seq: u64,
}

impl Backlog {
    fn new(capacity: usize) -> Backlog {
        Backlog { entries: VecDeque::new(), capacity: capacity.max(1), next_seq: 0 }
    }

    /// Adds an interval; returns the oldest one when it had to make room.
    fn push(&mut self, start: SystemTime, snapshot: Snapshot) -> Option<Entry> {
        let dropped = if self.entries.len() >= self.capacity { self.entries.pop_front() } else { None };
        self.entries.push_back(Entry { seq: self.next_seq, start, snapshot });
        self.next_seq += 1;
        dropped
    }

    fn oldest(&self, n: usize) -> Vec<Entry> {
        self.entries.iter().take(n).cloned().collect()
    }

    /// Removes what was delivered (entries dropped meanwhile are simply gone already).
    fn delivered(&mut self, through_seq: u64) {
        self.entries.retain(|e| e.seq > through_seq);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The publisher's own Prometheus metrics.
#[derive(Clone)]
struct PublisherMetrics {
    /// Intervals by fate: `published`, `rejected` (invalid, not retried) or `dropped` (backlog
    /// full while CloudWatch was unreachable).
    intervals: prometheus::IntCounterVec,
    /// PutMetricData calls that failed and will be retried.
    failures: prometheus::IntCounter,
    /// Intervals waiting to be delivered.
    backlog: prometheus::IntGauge,
}

impl PublisherMetrics {
    fn new(registry: &Registry) -> PublisherMetrics {
        PublisherMetrics {
            intervals: registry.counter_vec(
                "cloudwatch_intervals_total",
                "CloudWatch metric intervals by fate",
                &["result"],
            ),
            failures: registry.counter("cloudwatch_put_failures_total", "Failed PutMetricData calls (retried)"),
            backlog: registry.gauge("cloudwatch_backlog_intervals", "Intervals waiting for CloudWatch"),
        }
    }
}

/// What the publisher samples every second: the depth of the queue in front of the model.
pub type QueueDepth = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The running publisher: it owns the tally the request path records into
/// ([`Publisher::tally`]). [`Publisher::shutdown`] sends what is left.
pub struct Publisher {
    tally: Arc<Tally>,
    stop: watch::Sender<bool>,
    flush: watch::Sender<bool>,
    ticker: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl Publisher {
    /// Starts publishing, every interval, what is recorded into [`Publisher::tally`] and the
    /// queue depth sampled from `queue_depth`; its own metrics go to `registry`.
    pub async fn start(settings: Settings, registry: &Registry, queue_depth: QueueDepth) -> anyhow::Result<Publisher> {
        let metrics = PublisherMetrics::new(registry);
        let tally = Arc::new(Tally::default());
        anyhow::ensure!(settings.interval >= Duration::from_secs(1), "the CloudWatch interval must be at least 1 s");
        let client = client(&settings).await?;
        let backlog = Arc::new(Mutex::new(Backlog::new(settings.max_backlog)));
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let (flush, flush_rx) = watch::channel(false);
        let settings = Arc::new(settings);
        let ticker = tokio::spawn(tick(
            settings.clone(),
            tally.clone(),
            queue_depth,
            metrics.clone(),
            backlog.clone(),
            wake.clone(),
            stop_rx,
        ));
        let sender = tokio::spawn(send(settings, client, metrics, backlog, wake, flush_rx));
        Ok(Publisher { tally, stop, flush, ticker, sender })
    }

    /// Where the request path records each answered detect request.
    pub fn tally(&self) -> Arc<Tally> {
        self.tally.clone()
    }

    /// Closes the interval in progress and tries, for at most `within`, to deliver the backlog.
    pub async fn shutdown(self, within: Duration) {
        let _ = self.stop.send(true);
        let _ = self.ticker.await;
        let _ = self.flush.send(true);
        if tokio::time::timeout(within, self.sender).await.is_err() {
            tracing::warn!("CloudWatch: metrics not delivered before shutdown were lost");
        }
    }
}

async fn client(settings: &Settings) -> anyhow::Result<aws_sdk_cloudwatch::Client> {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(10))
        .build();
    // The sender retries with its own backoff, and never blocks anything else while it does.
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(RetryConfig::disabled());
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let config = loader.load().await;
    anyhow::ensure!(
        config.region().is_some(),
        "CloudWatch publishing needs an AWS region: set AWS_REGION, or run on EC2 (instance metadata)"
    );
    Ok(aws_sdk_cloudwatch::Client::new(&config))
}

/// Seconds since the epoch of the interval boundary at or after `t`.
fn next_boundary(t: SystemTime, interval: Duration) -> u64 {
    let secs = interval.as_secs().max(1);
    let now_ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    now_ms.div_ceil(secs * 1000).max(1) * secs
}

fn at(epoch_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(epoch_secs)
}

/// Samples the queue and closes an interval at every wall-clock boundary.
async fn tick(
    settings: Arc<Settings>,
    tally: Arc<Tally>,
    queue_depth: QueueDepth,
    metrics: PublisherMetrics,
    backlog: Arc<Mutex<Backlog>>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let step = settings.interval.as_secs().max(1);
    let mut boundary = next_boundary(SystemTime::now(), settings.interval);
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let close = |start: u64| {
        let snapshot = tally.take();
        let mut backlog = backlog.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lost) = backlog.push(at(start), snapshot) {
            metrics.intervals.with_label_values(&["dropped"]).inc();
            tracing::warn!(
                requests = lost.snapshot.requests,
                backlog = backlog.len(),
                "CloudWatch unreachable for too long: dropped the oldest interval"
            );
        }
        metrics.backlog.set(backlog.len() as i64);
        wake.notify_one();
    };
    loop {
        let until_boundary = at(boundary).duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            _ = sample.tick() => tally.sample_queue(queue_depth()),
            () = tokio::time::sleep(until_boundary) => {
                close(boundary - step);
                boundary += step;
                // After a suspend or a clock jump, resume at the next boundary from now.
                boundary = boundary.max(next_boundary(SystemTime::now(), settings.interval));
            }
            _ = stop.changed() => {
                close(boundary - step);
                return;
            }
        }
    }
}

/// Delivers the backlog, oldest first. In flush mode (shutting down) it stops at the first
/// failure or when the backlog is empty.
async fn send(
    settings: Arc<Settings>,
    client: aws_sdk_cloudwatch::Client,
    metrics: PublisherMetrics,
    backlog: Arc<Mutex<Backlog>>,
    wake: Arc<Notify>,
    mut flush: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        let batch = backlog.lock().unwrap_or_else(PoisonError::into_inner).oldest(INTERVALS_PER_CALL);
        let flushing = *flush.borrow();
        let Some(last) = batch.last().map(|e| e.seq) else {
            if flushing {
                return;
            }
            tokio::select! {
                () = wake.notified() => {}
                _ = flush.changed() => {}
            }
            continue;
        };
        let outcome = put(&client, &settings, &batch).await;
        let delivered = match &outcome {
            Ok(()) => "published",
            Err(Failure::Rejected(_)) => "rejected",
            Err(Failure::Retry(_)) => "",
        };
        if !delivered.is_empty() {
            let mut b = backlog.lock().unwrap_or_else(PoisonError::into_inner);
            b.delivered(last);
            metrics.backlog.set(b.len() as i64);
            metrics.intervals.with_label_values(&[delivered]).inc_by(batch.len() as u64);
        }
        match outcome {
            Ok(()) => {
                if failing {
                    tracing::info!(intervals = batch.len(), "CloudWatch reachable again: backlog delivered");
                }
                failing = false;
                backoff = FIRST_BACKOFF;
            }
            Err(Failure::Rejected(e)) => {
                tracing::error!(error = %e, intervals = batch.len(), "CloudWatch refused the metrics: dropped");
            }
            Err(Failure::Retry(e)) => {
                metrics.failures.inc();
                if !failing {
                    tracing::warn!(error = %e, "CloudWatch unreachable: keeping the metrics and retrying");
                }
                failing = true;
                if flushing {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = flush.changed() => {}
                }
                backoff = (backoff * 2).min(LAST_BACKOFF);
            }
        }
    }
}

enum Failure {
    /// Worth retrying: the network, a timeout, throttling, a server error, credentials.
    Retry(String),
    /// CloudWatch will never take these datums (a validation error): retrying would block the rest.
    Rejected(String),
}

async fn put(client: &aws_sdk_cloudwatch::Client, settings: &Settings, batch: &[Entry]) -> Result<(), Failure> {
    let data = batch.iter().flat_map(|e| datums(settings, e)).collect::<Vec<_>>();
    match client.put_metric_data().namespace(&settings.namespace).set_metric_data(Some(data)).send().await {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(e)) => {
            let status = e.raw().status().as_u16();
            let code = e.err().code().unwrap_or("").to_string();
            let message = format!("{status} {code}: {}", e.err().message().unwrap_or(""));
            if status == 400 && !code.contains("Throttl") {
                Err(Failure::Rejected(message))
            } else {
                Err(Failure::Retry(message))
            }
        }
        Err(e) => Err(Failure::Retry(aws_sdk_cloudwatch::error::DisplayErrorContext(e).to_string())),
    }
}

/// One interval's datums, under every dimension set. Counts are sent even when zero, so a
/// quiet instance reports 0 and its group can scale in; statistic sets only when sampled.
fn datums(settings: &Settings, entry: &Entry) -> Vec<MetricDatum> {
    let s = &entry.snapshot;
    let timestamp = DateTime::from(entry.start);
    let resolution = if settings.high_resolution { 1 } else { 60 };
    let mut out = Vec::with_capacity(10);
    for names in DIMENSION_SETS {
        let dimensions: Vec<Dimension> = names
            .iter()
            .map(|&name| {
                let value = if name == DIM_GROUP { settings.group.as_str() } else { settings.backend.as_str() };
                debug_assert!(name == DIM_GROUP || name == DIM_BACKEND);
                Dimension::builder().name(name).value(value).build()
            })
            .collect();
        let datum = |name: &str, unit: StandardUnit| {
            MetricDatum::builder()
                .metric_name(name)
                .set_dimensions(Some(dimensions.clone()))
                .timestamp(timestamp)
                .unit(unit)
                .storage_resolution(resolution)
        };
        let stats = |set: &StatSet| {
            StatisticSet::builder()
                .sample_count(set.count as f64)
                .sum(set.sum)
                .minimum(set.min)
                .maximum(set.max)
                .build()
        };
        out.push(datum(REQUESTS, StandardUnit::Count).value(s.requests as f64).build());
        out.push(datum(ERRORS, StandardUnit::Count).value(s.errors as f64).build());
        out.push(datum(OVERLOADED, StandardUnit::Count).value(s.overloaded as f64).build());
        if s.reused_answers > 0 {
            out.push(datum(REUSED_ANSWERS, StandardUnit::Count).value(s.reused_answers as f64).build());
        }
        if s.latency_ms.count > 0 {
            out.push(datum(LATENCY, StandardUnit::Milliseconds).statistic_values(stats(&s.latency_ms)).build());
        }
        if s.queue_depth.count > 0 {
            out.push(datum(QUEUE_DEPTH, StandardUnit::Count).statistic_values(stats(&s.queue_depth)).build());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(requests: u64) -> Snapshot {
        Snapshot { requests, ..Snapshot::default() }
    }

    #[test]
    fn the_backlog_is_bounded_and_drops_the_oldest() {
        let mut b = Backlog::new(3);
        for n in 0..3 {
            assert!(b.push(at(n * 60), snapshot(n)).is_none());
        }
        let dropped = b.push(at(180), snapshot(3)).expect("full: the oldest goes");
        assert_eq!(dropped.snapshot.requests, 0);
        assert_eq!(b.len(), 3);
        let sent = b.oldest(2);
        assert_eq!(sent.iter().map(|e| e.snapshot.requests).collect::<Vec<_>>(), [1, 2]);
        // Delivered entries leave, newer ones stay, even if more arrived during the call.
        b.push(at(240), snapshot(4));
        b.delivered(sent.last().unwrap().seq);
        assert_eq!(b.oldest(10).iter().map(|e| e.snapshot.requests).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn boundaries_follow_the_wall_clock() {
        let minute = Duration::from_secs(60);
        assert_eq!(next_boundary(at(120), minute), 120);
        assert_eq!(next_boundary(UNIX_EPOCH + Duration::from_millis(120_001), minute), 180);
        assert_eq!(next_boundary(at(7), Duration::from_secs(5)), 10);
    }

    #[test]
    fn every_interval_reports_its_counts_even_when_idle() {
        let settings = Settings {
            namespace: "N".into(),
            interval: Duration::from_secs(60),
            high_resolution: false,
            group: "g".into(),
            backend: Backend::Cpu,
            endpoint: None,
            max_backlog: 10,
        };
        let idle = Entry { seq: 0, start: at(60), snapshot: Snapshot::default() };
        let d = datums(&settings, &idle);
        let names: Vec<_> = d.iter().map(|d| d.metric_name().unwrap()).collect();
        assert_eq!(names, [REQUESTS, ERRORS, OVERLOADED, REQUESTS, ERRORS, OVERLOADED]);
        assert!(d.iter().all(|d| d.value() == Some(0.0)));
        assert_eq!(d[0].dimensions().len(), 1);
        assert_eq!(d[0].dimensions()[0].value(), Some("g"));
        assert_eq!(d[3].dimensions().len(), 1);
        assert_eq!(d[3].dimensions()[0].value(), Some("cpu"));
    }
}
