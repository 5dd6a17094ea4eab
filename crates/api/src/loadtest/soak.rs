//! The soak: the two tiers under a steady open-loop load (a share of their measured capacity,
//! with some invalid requests mixed in) for a long time, every process's resident memory, open
//! file descriptors, threads and `/metrics` series sampled all along. It fails when any of them
//! grows after the warm-up beyond the tolerance, when a valid request fails, when an invalid one
//! gets anything but a 4xx or 503, or when a request is not accounted for.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::cluster::{series_count, Accounting, Cluster, ClusterPlan};
use super::{Plan, Report};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    pub cluster: ClusterPlan,
    /// Frames, questions, client timeout and the invalid mix; url, load and bounds are set here.
    pub traffic: Plan,
    /// Open-loop rate in requests/s; None: `load_fraction` × the measured capacity.
    pub rate: Option<f64>,
    pub load_fraction: f64,
    /// How long the capacity is measured, in seconds.
    pub capacity_s: f64,
    /// The whole run under load, warm-up included.
    pub duration: Duration,
    /// The first part of the run, left out of the growth verdict.
    pub warmup: Duration,
    pub sample_every: Duration,
    pub tolerance: Tolerance,
}

/// How much a quantity may grow between the start and the end of the run after the warm-up
/// (the medians of the first and of the last fifth of the samples).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    /// Resident memory: this share of its value at the start…
    pub rss_fraction: f64,
    /// …or this many MiB, whichever is larger.
    pub rss_mib: f64,
    pub fds: f64,
    pub threads: f64,
    /// Sample lines of `/metrics` (a label that grows with traffic is a leak too).
    pub series: f64,
}

impl Default for Tolerance {
    fn default() -> Tolerance {
        Tolerance { rss_fraction: 0.10, rss_mib: 32.0, fds: 8.0, threads: 4.0, series: 16.0 }
    }
}

/// One process at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessSample {
    /// Since the load started.
    pub elapsed_s: f64,
    pub process: String,
    pub rss_mib: f64,
    pub fds: u64,
    pub threads: u64,
    pub series: u64,
}

/// Reads one quantity of a sample.
pub type Reader = fn(&ProcessSample) -> f64;

/// The quantities sampled, as (CSV column, reader).
pub const QUANTITIES: [(&str, Reader); 4] = [
    ("rss_mib", |s| s.rss_mib),
    ("fds", |s| s.fds as f64),
    ("threads", |s| s.threads as f64),
    ("series", |s| s.series as f64),
];

/// One quantity of one process: its start and end after the warm-up, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Growth {
    pub process: String,
    pub quantity: String,
    pub start: f64,
    pub end: f64,
    pub allowed: f64,
    pub within: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Measured throughput when the rate was not given, frames/s.
    pub capacity_per_s: Option<f64>,
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub load: Report,
    pub accounting: Accounting,
    pub tolerance: Tolerance,
    pub growth: Vec<Growth>,
    #[serde(skip)]
    pub samples: Vec<ProcessSample>,
    /// Why the soak failed; empty when it passed.
    pub failures: Vec<String>,
}

/// Starts the cluster, measures the capacity unless the rate is given, runs the load while
/// sampling, stops the cluster and judges. `progress` gets a line now and then.
pub async fn soak(plan: SoakPlan, progress: impl Fn(String) + Send + Sync + 'static) -> anyhow::Result<SoakReport> {
    let progress = std::sync::Arc::new(progress);
    progress(format!("starting {} worker(s) and a gateway", plan.cluster.workers));
    let mut cluster = Cluster::start(&plan.cluster).await?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;

    let (capacity_per_s, rate) = match plan.rate {
        Some(rate) => (None, rate),
        None => {
            progress(format!("measuring the capacity for {:.0} s", plan.capacity_s));
            let measured = cluster.capacity(&plan.traffic, plan.capacity_s).await?;
            (Some(measured.throughput_per_s), measured.throughput_per_s * plan.load_fraction)
        }
    };
    anyhow::ensure!(rate > 0.0, "the soak's rate must be positive");
    progress(format!("{rate:.1} requests/s for {:.0} s", plan.duration.as_secs_f64()));

    let before = cluster.counts(&client).await?;
    let load = plan.traffic.open_loop(cluster.detect_url(), rate, plan.duration);
    let started = Instant::now();
    let reporter = progress.clone();
    let minutes = std::sync::atomic::AtomicU64::new(0);
    let mut run = tokio::spawn(super::run(load, move |sent, elapsed| {
        let minute = elapsed.as_secs() / 60;
        if minute > minutes.swap(minute, std::sync::atomic::Ordering::Relaxed) {
            reporter(format!("{minute} min: {sent} requests sent"));
        }
    }));

    let mut samples = Vec::new();
    let mut failures = Vec::new();
    let mut tick = tokio::time::interval(plan.sample_every);
    let report = loop {
        tokio::select! {
            finished = &mut run => break finished.context("the load task")??,
            _ = tick.tick() => {
                samples.extend(sample(&cluster, &client, started.elapsed()).await?);
                for (name, server) in [("gateway", &mut cluster.gateway)].into_iter()
                    .chain(cluster.workers.iter_mut().map(|w| ("worker", w)))
                {
                    if !server.is_running() {
                        failures.push(format!("a {name} exited during the soak:\n{}", server.log_tail()));
                    }
                }
                if !failures.is_empty() {
                    run.abort();
                    anyhow::bail!("{}", failures.join("\n"));
                }
            }
        }
    };
    samples.extend(sample(&cluster, &client, started.elapsed()).await?);
    // The tiers count a request when its answer is finished; let the last ones settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let accounting = Accounting::new(&report, cluster.counts(&client).await? - before);
    cluster.stop(Duration::from_secs(30)).await?;

    let warmup_s = plan.warmup.as_secs_f64();
    let growth = growth(&samples, warmup_s, &plan.tolerance);
    failures.extend(judge(&report, &accounting, &growth));
    Ok(SoakReport {
        capacity_per_s,
        rate_per_s: rate,
        duration_s: plan.duration.as_secs_f64(),
        warmup_s,
        load: report,
        accounting,
        tolerance: plan.tolerance,
        growth,
        samples,
        failures,
    })
}

/// Every way the run can fail, as sentences.
fn judge(report: &Report, accounting: &Accounting, growth: &[Growth]) -> Vec<String> {
    let mut failures = Vec::new();
    if report.failed() > 0 {
        failures.push(format!("{} valid requests failed: {:?}", report.failed(), report.errors));
    }
    if report.invalid_not_refused() > 0 {
        failures.push(format!(
            "{} invalid requests got something other than a 4xx or 503: {:?}",
            report.invalid_not_refused(),
            report.invalid
        ));
    }
    if report.refused_without_retry_after > 0 {
        failures.push(format!("{} 429/503 answers had no Retry-After", report.refused_without_retry_after));
    }
    failures.extend(accounting.problems());
    if growth.is_empty() {
        failures.push("too few samples after the warm-up to judge growth".into());
    }
    for g in growth.iter().filter(|g| !g.within) {
        failures.push(format!(
            "{}'s {} grew from {:.1} to {:.1} (at most +{:.1} allowed)",
            g.process, g.quantity, g.start, g.end, g.allowed
        ));
    }
    failures
}

/// Samples every process: `/proc/PID/status` (VmRSS, Threads), `/proc/PID/fd` and `/metrics`.
async fn sample(cluster: &Cluster, client: &reqwest::Client, elapsed: Duration) -> anyhow::Result<Vec<ProcessSample>> {
    let metrics = cluster.metrics(client).await?;
    cluster
        .processes()
        .into_iter()
        .zip(metrics)
        .map(|((process, server), text)| {
            let (rss_kib, threads) = proc_status(server.pid())?;
            Ok(ProcessSample {
                elapsed_s: elapsed.as_secs_f64(),
                process,
                rss_mib: rss_kib as f64 / 1024.0,
                fds: open_fds(server.pid())?,
                threads,
                series: series_count(&text) as u64,
            })
        })
        .collect()
}

/// (VmRSS in KiB, Threads) of a process.
pub fn proc_status(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("Threads:")?))
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path).with_context(|| format!("reading {path}"))?.count() as u64)
}

/// Start and end (medians of the first and last fifth of the samples after `warmup_s`) of every
/// quantity of every process, against the tolerance. Empty when fewer than two samples follow
/// the warm-up for a process.
pub fn growth(samples: &[ProcessSample], warmup_s: f64, tolerance: &Tolerance) -> Vec<Growth> {
    let mut out = Vec::new();
    for process in process_names(samples) {
        let after: Vec<&ProcessSample> =
            samples.iter().filter(|s| s.process == process && s.elapsed_s >= warmup_s).collect();
        if after.len() < 2 {
            return Vec::new();
        }
        let window = (after.len() / 5).max(1);
        for (quantity, read) in QUANTITIES {
            let start = median(after[..window].iter().map(|s| read(s)).collect());
            let end = median(after[after.len() - window..].iter().map(|s| read(s)).collect());
            let allowed = match quantity {
                "rss_mib" => (start * tolerance.rss_fraction).max(tolerance.rss_mib),
                "fds" => tolerance.fds,
                "threads" => tolerance.threads,
                _ => tolerance.series,
            };
            out.push(Growth {
                process: process.to_string(),
                quantity: quantity.to_string(),
                start,
                end,
                allowed,
                within: end - start <= allowed,
            });
        }
    }
    out
}

/// The processes sampled, each once, sorted.
pub fn process_names(samples: &[ProcessSample]) -> Vec<&str> {
    let mut names: Vec<&str> = samples.iter().map(|s| s.process.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl SoakReport {
    pub const CSV_HEADER: &'static str = "elapsed_s,process,rss_mib,fds,threads,series";

    /// Every sample, one row per process and moment.
    pub fn csv(&self) -> String {
        let mut out = format!("{}\n", Self::CSV_HEADER);
        for s in &self.samples {
            out.push_str(&format!(
                "{:.1},{},{:.1},{},{},{}\n",
                s.elapsed_s, s.process, s.rss_mib, s.fds, s.threads, s.series
            ));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A passed soak report around these samples.
    pub(crate) fn report(samples: Vec<ProcessSample>, tolerance: Tolerance) -> SoakReport {
        let load = crate::loadtest::test_report(100, &[]);
        let accounting =
            Accounting::new(&load, super::super::cluster::Counts { gateway_requests: 100.0, workers_ok: 100.0 });
        let growth = growth(&samples, 30.0, &tolerance);
        SoakReport {
            capacity_per_s: Some(10.0),
            rate_per_s: 7.0,
            duration_s: 120.0,
            warmup_s: 30.0,
            load,
            accounting,
            tolerance,
            growth,
            samples,
            failures: Vec::new(),
        }
    }

    fn samples(process: &str, rss: impl Fn(f64) -> f64, minutes: usize) -> Vec<ProcessSample> {
        (0..=minutes * 6)
            .map(|i| {
                let t = i as f64 * 10.0;
                ProcessSample {
                    elapsed_s: t,
                    process: process.into(),
                    rss_mib: rss(t),
                    fds: 20,
                    threads: 9,
                    series: 80,
                }
            })
            .collect()
    }

    #[test]
    fn a_flat_process_passes_and_a_leak_fails() {
        let tolerance = Tolerance::default();
        // Flat after a warm-up climb, with noise.
        let mut all = samples("flat", |t| if t < 60.0 { 100.0 + t } else { 400.0 + (t / 10.0 % 3.0) }, 30);
        // 0.05 MiB a second: 90 MiB over 30 minutes.
        all.extend(samples("leak", |t| 400.0 + 0.05 * t, 30));
        let growth = growth(&all, 120.0, &tolerance);
        assert_eq!(growth.len(), 2 * QUANTITIES.len());
        let verdict = |p: &str, q: &str| growth.iter().find(|g| g.process == p && g.quantity == q).unwrap().clone();
        assert!(verdict("flat", "rss_mib").within, "{:?}", verdict("flat", "rss_mib"));
        let leak = verdict("leak", "rss_mib");
        assert!(!leak.within, "{leak:?}");
        assert_eq!(leak.allowed, leak.start * 0.1);
        assert!(verdict("leak", "fds").within);
    }

    #[test]
    fn growth_needs_samples_after_the_warm_up() {
        let all = samples("short", |_| 100.0, 1);
        assert!(growth(&all, 3600.0, &Tolerance::default()).is_empty());
    }

    #[test]
    fn fds_beyond_their_slack_fail() {
        let mut all = samples("fd", |_| 100.0, 10);
        let n = all.len();
        for (i, s) in all.iter_mut().enumerate() {
            s.fds = 20 + (i * 20 / n) as u64;
        }
        let growth = growth(&all, 0.0, &Tolerance::default());
        let fds = growth.iter().find(|g| g.quantity == "fds").unwrap();
        assert!(!fds.within, "{fds:?}");
    }
}
