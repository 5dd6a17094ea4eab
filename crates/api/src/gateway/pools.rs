//! The gateway's view of its workers: pools with weights, each worker's health, and the choice
//! of a worker for the next request.
//!
//! A worker is *healthy* when its `/ready` probes pass and it is not ejected. A worker is ready
//! from its first passing probe until [`UNHEALTHY_AFTER`] probes in a row fail (so that one slow
//! probe does not take out a pool behind a single load-balancer URL).
//!
//! Ejection depends on what a URL is. A worker's own URL that fails a request (it cannot be
//! reached, or answers 5xx) is ejected at once. A load balancer's URL stands for many instances:
//! one failure says little about the next request, so it is ejected only as Envoy's outlier
//! detection would, after [`Outliers::consecutive`] failures in a row or a failure rate of at
//! least [`Outliers::failure_rate`] over the last minute (with [`Outliers::min_requests`]), and
//! never while it is the last healthy upstream. Either way the back-off doubles with each
//! ejection that follows an expired one (up to 8×; failures while already ejected do not
//! compound it) and resets on the next success.
//!
//! Choice: a pool by smooth weighted round-robin over the pools with a weight and a healthy
//! worker not yet tried for this request (exact shares, no randomness); pools of weight 0 are
//! standbys, chosen only when no weighted pool can take the request. Within the pool, the
//! healthy untried worker with the fewest requests in flight, ties broken round-robin.
//!
//! Pools live in an immutable [`Snapshot`] behind an `Arc`: a request keeps the snapshot it
//! started with, and a weight change or reload installs a new one. Workers are shared between
//! snapshots by URL, so their health and counters survive a change.
//!
//! (Over 500 lines with its unit tests, about a third of the file: the choice, health and
//! ejection rules are tested beside the code that states them.)

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::config::{check_weights, Backend, PoolSpec, MAX_WEIGHT};
use super::window::Window;

/// Failed `/ready` probes in a row that mark a ready worker down.
pub const UNHEALTHY_AFTER: u32 = 2;

/// How one forwarded attempt ended; the `outcome` label of the upstream metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// 200
    Ok,
    /// 4xx other than 429: the request's fault, passed through.
    ClientError,
    /// 429: the worker's queue is full; retried elsewhere.
    Overloaded,
    /// 503: loading or draining; retried elsewhere and the worker ejected.
    Unavailable,
    /// Another 5xx: passed through, the worker ejected.
    ServerError,
    /// No answer within the request's deadline (or the worker's 504).
    Timeout,
    /// Connection refused, reset or closed: retried elsewhere and the worker ejected.
    Transport,
}

impl Attempt {
    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::Ok => "ok",
            Attempt::ClientError => "client_error",
            Attempt::Overloaded => "overloaded",
            Attempt::Unavailable => "unavailable",
            Attempt::ServerError => "server_error",
            Attempt::Timeout => "timeout",
            Attempt::Transport => "transport",
        }
    }

    /// What counts in a worker's error rate: its failures, not the client's.
    fn is_error(self) -> bool {
        matches!(self, Attempt::Unavailable | Attempt::ServerError | Attempt::Timeout | Attempt::Transport)
    }
}

/// When a load balancer's URL is ejected (see the module's notes).
#[derive(Debug, Clone, Copy)]
pub struct Outliers {
    /// Failed attempts in a row.
    pub consecutive: u32,
    /// Failed share of the last minute's attempts…
    pub failure_rate: f64,
    /// …once there were at least this many.
    pub min_requests: u64,
}

/// One worker (or internal load balancer) URL.
#[derive(Debug)]
pub struct Upstream {
    pub url: String,
    /// A load balancer in front of several workers (a retry may come back to it).
    load_balancer: AtomicBool,
    /// Failed attempts since the last success.
    consecutive_failures: AtomicU32,
    detect: String,
    ready: String,
    /// Ready by its `/ready` probes.
    probe_ok: AtomicBool,
    /// `/ready` probes failed in a row.
    probe_failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Ejections since the last success: the back-off doubles with each.
    ejections: AtomicU32,
    in_flight: AtomicUsize,
    window: Mutex<Window>,
}

impl Upstream {
    fn new(url: &str, load_balancer: bool) -> Upstream {
        Upstream {
            url: url.to_string(),
            load_balancer: AtomicBool::new(load_balancer),
            consecutive_failures: AtomicU32::new(0),
            detect: format!("{url}/v1/detect"),
            ready: format!("{url}/ready"),
            probe_ok: AtomicBool::new(false),
            probe_failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            ejections: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            window: Mutex::new(Window::default()),
        }
    }

    pub fn detect_url(&self) -> &str {
        &self.detect
    }

    pub fn ready_url(&self) -> &str {
        &self.ready
    }

    pub fn probe_ok(&self) -> bool {
        self.probe_ok.load(Ordering::SeqCst)
    }

    /// Records a probe; returns whether the worker's readiness changed.
    pub fn set_probe(&self, ok: bool) -> bool {
        let ready = if ok {
            self.probe_failures.store(0, Ordering::SeqCst);
            true
        } else {
            let failures = self.probe_failures.fetch_add(1, Ordering::SeqCst).saturating_add(1);
            self.probe_ok() && failures < UNHEALTHY_AFTER
        };
        self.probe_ok.swap(ready, Ordering::SeqCst) != ready
    }

    /// How much longer the worker stays ejected.
    pub fn ejected_for(&self, now: Instant) -> Duration {
        let until = *self.ejected_until.lock().unwrap_or_else(|p| p.into_inner());
        until.map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }

    pub fn healthy(&self, now: Instant) -> bool {
        self.probe_ok() && self.ejected_for(now).is_zero()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn is_load_balancer(&self) -> bool {
        self.load_balancer.load(Ordering::SeqCst)
    }

    /// Takes the upstream out of rotation for `base` × 2^(ejections since its last success − 1),
    /// at most 8 × `base`. An upstream already ejected stays as it is: concurrent failures of
    /// requests sent before the ejection do not lengthen it. Returns whether it was ejected now.
    pub fn eject(&self, base: Duration, reason: &str) -> bool {
        let now = Instant::now();
        let mut until = self.ejected_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_some_and(|u| u > now) {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::SeqCst).min(3);
        let backoff = base * (1u32 << n);
        *until = Some(now + backoff);
        tracing::warn!(upstream = %self.url, reason, backoff_ms = backoff.as_millis() as u64, "upstream ejected");
        true
    }

    /// A failed attempt (already [`recorded`](Upstream::record)): a worker's URL is ejected at
    /// once; a load balancer's only when it is an outlier and `last_healthy` is false. Returns
    /// whether it was ejected now.
    pub fn failed(&self, base: Duration, outliers: &Outliers, last_healthy: bool, reason: &str) -> bool {
        if !self.is_load_balancer() {
            return self.eject(base, reason);
        }
        let in_a_row = self.consecutive_failures.load(Ordering::SeqCst);
        let (requests, errors) = self.recent(Instant::now());
        let rate_outlier =
            requests >= outliers.min_requests.max(1) && errors as f64 >= outliers.failure_rate * requests as f64;
        if in_a_row < outliers.consecutive.max(1) && !rate_outlier {
            return false;
        }
        if last_healthy {
            tracing::warn!(upstream = %self.url, reason, "failing load balancer kept: it is the last healthy upstream");
            return false;
        }
        self.eject(base, &format!("{reason} ({in_a_row} failures in a row, {errors} of {requests} in the last minute)"))
    }

    /// Counts an attempt in the error-rate window; a success ends the failure and ejection streaks.
    pub fn record(&self, attempt: Attempt) {
        if matches!(attempt, Attempt::Ok | Attempt::ClientError) {
            self.ejections.store(0, Ordering::SeqCst);
            self.consecutive_failures.store(0, Ordering::SeqCst);
        } else if attempt.is_error() {
            self.consecutive_failures.fetch_add(1, Ordering::SeqCst);
        }
        self.window.lock().unwrap_or_else(|p| p.into_inner()).record(Instant::now(), attempt.is_error());
    }

    /// Requests and errors in the last minute.
    pub fn recent(&self, now: Instant) -> (u64, u64) {
        self.window.lock().unwrap_or_else(|p| p.into_inner()).totals(now)
    }

    /// Counts a request in flight until the guard drops (with the response body, when streamed).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub backend: Backend,
    pub weight: u32,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Where the next search for a worker starts: round-robin among equals.
    next: AtomicUsize,
}

impl Pool {
    fn with_weight(&self, weight: u32) -> Pool {
        Pool {
            name: self.name.clone(),
            backend: self.backend,
            weight,
            upstreams: self.upstreams.clone(),
            next: AtomicUsize::new(0),
        }
    }

    /// The healthy upstream with the fewest requests in flight that is not in `tried`, or is a
    /// load balancer (behind which another instance answers a retry).
    fn candidate(&self, tried: &[Arc<Upstream>], now: Instant) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        (0..n)
            .map(|k| &self.upstreams[(start + k) % n])
            .filter(|u| u.healthy(now) && (u.is_load_balancer() || !tried.iter().any(|t| Arc::ptr_eq(t, u))))
            .min_by_key(|u| u.in_flight())
    }

    pub fn healthy_workers(&self, now: Instant) -> usize {
        self.upstreams.iter().filter(|u| u.healthy(now)).count()
    }

    pub fn in_flight(&self) -> usize {
        self.upstreams.iter().map(|u| u.in_flight()).sum()
    }
}

/// The pools as one request sees them, from start to end.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped by every change: admin weights or a reload.
    pub generation: u64,
    pub pools: Vec<Pool>,
    /// Smooth weighted round-robin: each pool's current weight.
    current: Mutex<Vec<i64>>,
}

impl Snapshot {
    fn new(generation: u64, pools: Vec<Pool>) -> Snapshot {
        let current = Mutex::new(vec![0; pools.len()]);
        Snapshot { generation, pools, current }
    }

    /// The worker for the next attempt of a request that already tried `tried`, with its pool.
    pub fn pick(&self, tried: &[Arc<Upstream>]) -> Option<(&Pool, Arc<Upstream>)> {
        let now = Instant::now();
        let candidates: Vec<Option<&Arc<Upstream>>> = self.pools.iter().map(|p| p.candidate(tried, now)).collect();
        let weighted: Vec<usize> =
            (0..self.pools.len()).filter(|&i| self.pools[i].weight > 0 && candidates[i].is_some()).collect();
        let chosen = if weighted.is_empty() {
            // Standby pools (weight 0) answer only when no weighted pool can.
            (0..self.pools.len()).filter_map(|i| candidates[i].map(|u| (i, u.in_flight()))).min_by_key(|c| c.1)?.0
        } else {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let total: i64 = weighted.iter().map(|&i| i64::from(self.pools[i].weight)).sum();
            let mut best = weighted[0];
            for &i in &weighted {
                current[i] += i64::from(self.pools[i].weight);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best
        };
        Some((&self.pools[chosen], candidates[chosen]?.clone()))
    }

    /// Every worker, once.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.pools.iter().flat_map(|p| p.upstreams.iter())
    }

    pub fn healthy_workers(&self) -> usize {
        let now = Instant::now();
        self.pools.iter().map(|p| p.healthy_workers(now)).sum()
    }

    /// The fraction of requests each pool gets while every weighted pool has a healthy worker.
    pub fn share(&self, pool: &Pool) -> f64 {
        let total: u64 = self.pools.iter().map(|p| u64::from(p.weight)).sum();
        if total == 0 {
            0.0
        } else {
            f64::from(pool.weight) / total as f64
        }
    }

    pub fn weights(&self) -> BTreeMap<String, u32> {
        self.pools.iter().map(|p| (p.name.clone(), p.weight)).collect()
    }
}

/// The current snapshot, replaced whole by weight changes and reloads.
#[derive(Debug)]
pub struct Pools {
    current: RwLock<Arc<Snapshot>>,
}

impl Pools {
    /// Pools from a checked spec; every worker starts unhealthy until its first probe.
    pub fn new(specs: &[PoolSpec]) -> Pools {
        let empty = Snapshot::new(0, Vec::new());
        let (snapshot, _) = Pools::build(&empty, specs, 1);
        Pools { current: RwLock::new(Arc::new(snapshot)) }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The snapshot `specs` describe, reusing the current workers by URL; also returns the
    /// workers that are new (to probe before installing it).
    pub fn prepare(&self, specs: &[PoolSpec]) -> (Snapshot, Vec<Arc<Upstream>>) {
        let current = self.current();
        Pools::build(&current, specs, current.generation + 1)
    }

    fn build(from: &Snapshot, specs: &[PoolSpec], generation: u64) -> (Snapshot, Vec<Arc<Upstream>>) {
        let known: HashMap<&str, &Arc<Upstream>> = from.upstreams().map(|u| (u.url.as_str(), u)).collect();
        let mut fresh = Vec::new();
        let pools = specs
            .iter()
            .map(|spec| Pool {
                name: spec.name.clone(),
                backend: spec.backend,
                weight: spec.weight,
                upstreams: spec
                    .urls
                    .iter()
                    .map(|url| match known.get(url.as_str()) {
                        Some(u) => {
                            u.load_balancer.store(spec.is_load_balancer(), Ordering::SeqCst);
                            (*u).clone()
                        }
                        None => {
                            let u = Arc::new(Upstream::new(url, spec.is_load_balancer()));
                            fresh.push(u.clone());
                            u
                        }
                    })
                    .collect(),
                next: AtomicUsize::new(0),
            })
            .collect();
        (Snapshot::new(generation, pools), fresh)
    }

    /// Installs a prepared snapshot (its generation follows the one it replaces).
    pub fn install(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let snapshot = Arc::new(Snapshot::new(current.generation + 1, snapshot.pools));
        *current = snapshot.clone();
        snapshot
    }

    /// Sets the weights of the named pools (the others keep theirs).
    pub fn set_weights(&self, weights: &BTreeMap<String, u32>) -> Result<Arc<Snapshot>, WeightError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(unknown) = weights.keys().find(|name| !current.pools.iter().any(|p| &p.name == *name)) {
            return Err(WeightError::UnknownPool(unknown.clone()));
        }
        if let Some((name, w)) = weights.iter().find(|(_, w)| **w > MAX_WEIGHT) {
            return Err(WeightError::Invalid(format!("pool {name:?}: weight {w} is over {MAX_WEIGHT}")));
        }
        let pools: Vec<Pool> =
            current.pools.iter().map(|p| p.with_weight(weights.get(&p.name).copied().unwrap_or(p.weight))).collect();
        check_weights(pools.iter().map(|p| p.weight)).map_err(WeightError::Invalid)?;
        let snapshot = Arc::new(Snapshot::new(current.generation + 1, pools));
        *current = snapshot.clone();
        Ok(snapshot)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WeightError {
    #[error("no pool is named {0:?}")]
    UnknownPool(String),
    #[error("{0}")]
    Invalid(String),
}

/// Asks one worker's `/ready`; records and returns the answer.
pub async fn probe(client: &reqwest::Client, upstream: &Upstream) -> bool {
    let ok = matches!(client.get(upstream.ready_url()).send().await, Ok(r) if r.status().is_success());
    if upstream.set_probe(ok) {
        if ok {
            tracing::warn!(worker = %upstream.url, "worker ready");
        } else {
            tracing::warn!(worker = %upstream.url, "worker not ready: /ready failed");
        }
    }
    ok
}

/// Probes the workers at once and waits for every answer (each bounded by the client's timeout).
pub async fn probe_all(client: &reqwest::Client, upstreams: impl IntoIterator<Item = Arc<Upstream>>) {
    let mut probes = tokio::task::JoinSet::new();
    for upstream in upstreams {
        let client = client.clone();
        probes.spawn(async move { probe(&client, &upstream).await });
    }
    while probes.join_next().await.is_some() {}
}

/// Probes every worker of the current snapshot each `interval`, forever.
pub async fn health_loop(pools: Arc<Pools>, client: reqwest::Client, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = pools.current();
        probe_all(&client, snapshot.upstreams().cloned()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, weight: u32, urls: &[&str]) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            backend: Backend::Cpu,
            weight,
            urls: urls.iter().map(|u| u.to_string()).collect(),
            load_balancer: false,
        }
    }

    fn all_ready(pools: &Pools) {
        for u in pools.current().upstreams() {
            u.set_probe(true);
        }
    }

    fn split(pools: &Pools, n: usize) -> BTreeMap<String, usize> {
        let snapshot = pools.current();
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let (pool, _) = snapshot.pick(&[]).unwrap();
            *counts.entry(pool.name.clone()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn pools_get_exactly_their_weights_share() {
        let pools =
            Pools::new(&[spec("a", 3, &["http://a:1"]), spec("b", 1, &["http://b:1"]), spec("c", 0, &["http://c:1"])]);
        all_ready(&pools);
        let counts = split(&pools, 400);
        assert_eq!(counts.get("a"), Some(&300));
        assert_eq!(counts.get("b"), Some(&100));
        assert_eq!(counts.get("c"), None);
    }

    #[test]
    fn unhealthy_and_tried_workers_are_skipped_and_standbys_answer_last() {
        let pools = Pools::new(&[spec("a", 1, &["http://a:1", "http://a:2"]), spec("s", 0, &["http://s:1"])]);
        all_ready(&pools);
        let snapshot = pools.current();
        let a1 = snapshot.pools[0].upstreams[0].clone();
        let a2 = snapshot.pools[0].upstreams[1].clone();
        a1.eject(Duration::from_secs(60), "test");
        for _ in 0..5 {
            assert!(Arc::ptr_eq(&snapshot.pick(&[]).unwrap().1, &a2));
        }
        let (pool, _) = snapshot.pick(std::slice::from_ref(&a2)).unwrap();
        assert_eq!(pool.name, "s");
        let s1 = snapshot.pools[1].upstreams[0].clone();
        assert!(snapshot.pick(&[a2.clone(), s1]).is_none());
        a2.set_probe(false);
        assert_eq!(snapshot.healthy_workers(), 2, "one failed probe is not enough");
        a2.set_probe(false);
        assert_eq!(snapshot.healthy_workers(), 1);
        a2.set_probe(true);
        assert_eq!(snapshot.healthy_workers(), 2, "one passing probe is");
    }

    #[test]
    fn least_in_flight_within_a_pool() {
        let pools = Pools::new(&[spec("a", 1, &["http://a:1", "http://a:2", "http://a:3"])]);
        all_ready(&pools);
        let snapshot = pools.current();
        let busy: Vec<InFlight> = (0..3).map(|_| snapshot.pools[0].upstreams[0].begin()).collect();
        let _also = snapshot.pools[0].upstreams[1].begin();
        for _ in 0..4 {
            assert!(Arc::ptr_eq(&snapshot.pick(&[]).unwrap().1, &snapshot.pools[0].upstreams[2]));
        }
        drop(busy);
        assert_eq!(snapshot.pools[0].upstreams[0].in_flight(), 0);
    }

    #[test]
    fn weights_change_live_and_reloads_keep_worker_state() {
        let pools = Pools::new(&[spec("a", 1, &["http://a:1"]), spec("b", 1, &["http://b:1"])]);
        all_ready(&pools);
        let before = pools.current();
        let weights = BTreeMap::from([("a".to_string(), 0), ("b".to_string(), 100)]);
        let after = pools.set_weights(&weights).unwrap();
        assert_eq!(after.generation, before.generation + 1);
        assert_eq!(split(&pools, 10).get("b"), Some(&10));
        // The old snapshot is unchanged for requests that hold it.
        assert_eq!(before.pools[0].weight, 1);
        assert_eq!(
            pools.set_weights(&BTreeMap::from([("zz".to_string(), 1)])).unwrap_err(),
            WeightError::UnknownPool("zz".into())
        );
        assert!(pools.set_weights(&BTreeMap::from([("b".to_string(), 0)])).is_err());

        let (next, fresh) = pools.prepare(&[spec("b", 1, &["http://b:1", "http://b:2"])]);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].url, "http://b:2");
        let installed = pools.install(next);
        assert!(installed.pools[0].upstreams[0].probe_ok(), "a known worker keeps its health");
        assert!(!installed.pools[0].upstreams[1].probe_ok(), "a new one waits for its probe");
    }

    #[test]
    fn ejection_backs_off_without_compounding_and_the_window_counts_errors() {
        let u = Upstream::new("http://a:1", false);
        u.set_probe(true);
        assert!(u.eject(Duration::from_millis(20), "test"));
        assert!(!u.healthy(Instant::now()));
        // Failures of requests already in flight when it was ejected do not lengthen it.
        assert!(!u.eject(Duration::from_millis(20), "test"));
        assert!(u.ejected_for(Instant::now()) <= Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(25));
        assert!(u.healthy(Instant::now()));
        assert!(u.eject(Duration::from_millis(20), "test"), "failing again after it came back doubles it");
        assert!(u.ejected_for(Instant::now()) > Duration::from_millis(20));
        u.record(Attempt::Ok);
        u.record(Attempt::Transport);
        u.record(Attempt::ClientError);
        assert_eq!(u.recent(Instant::now()), (3, 1));
    }

    fn outliers() -> Outliers {
        Outliers { consecutive: 3, failure_rate: 0.5, min_requests: 10 }
    }

    #[test]
    fn a_load_balancer_is_ejected_only_as_an_outlier_and_never_when_it_is_the_last() {
        let base = Duration::from_secs(60);
        let lb = Upstream::new("http://lb:1", true);
        lb.set_probe(true);
        for _ in 0..2 {
            lb.record(Attempt::Transport);
            assert!(!lb.failed(base, &outliers(), false, "test"), "one or two failures say little");
        }
        lb.record(Attempt::Transport);
        assert!(!lb.failed(base, &outliers(), true, "test"), "the last healthy upstream stays");
        assert!(lb.failed(base, &outliers(), false, "test"), "three in a row make an outlier");

        let lb = Upstream::new("http://lb:2", true);
        lb.set_probe(true);
        for i in 0..12 {
            lb.record(if i % 2 == 0 { Attempt::Ok } else { Attempt::ServerError });
        }
        lb.record(Attempt::ServerError);
        assert!(lb.failed(base, &outliers(), false, "test"), "a failure rate of half the last minute");

        let worker = Upstream::new("http://w:1", false);
        worker.set_probe(true);
        worker.record(Attempt::Transport);
        assert!(worker.failed(base, &outliers(), true, "test"), "a worker's own URL goes at once");
    }

    #[test]
    fn a_retry_may_return_to_a_load_balancer_but_not_to_a_worker() {
        let mut lb = spec("lb", 1, &["http://lb:1"]);
        lb.load_balancer = true;
        let pools = Pools::new(&[lb, spec("w", 1, &["http://w:1"])]);
        all_ready(&pools);
        let snapshot = pools.current();
        let (lb1, w1) = (snapshot.pools[0].upstreams[0].clone(), snapshot.pools[1].upstreams[0].clone());
        let (_, again) = snapshot.pick(&[lb1.clone(), w1.clone()]).expect("the load balancer again");
        assert!(Arc::ptr_eq(&again, &lb1));
        lb1.eject(Duration::from_secs(60), "test");
        assert!(snapshot.pick(std::slice::from_ref(&w1)).is_none(), "the worker was tried, the balancer is out");
    }
}
