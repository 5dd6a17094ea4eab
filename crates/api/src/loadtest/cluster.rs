//! The two tiers on local ports, as a fleet instance runs them: `blipserve worker`s and a
//! `blipserve gateway` in front of them as one pool. The soak and overload runs start one, drive
//! the gateway, read every process's `/metrics` and `/proc` entry, and stop it with SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::local_server::LocalServer;
use super::{Load, Plan, Report};

/// How long a worker may take to load the model and warm up before it must be ready.
const READY_WITHIN: Duration = Duration::from_secs(180);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// The `blipserve` executable.
    pub exe: PathBuf,
    pub model: PathBuf,
    pub workers: usize,
    /// Intra-op threads of each worker's one replica.
    pub threads: usize,
    /// Extra flags for every worker, e.g. `--queue-capacity 16`.
    pub worker_args: Vec<String>,
    /// Extra flags for the gateway.
    pub gateway_args: Vec<String>,
    /// Folder for the gateway's configuration file.
    pub dir: PathBuf,
}

/// Running workers and their gateway.
pub struct Cluster {
    pub gateway: LocalServer,
    pub workers: Vec<LocalServer>,
}

impl Cluster {
    /// Starts the workers, waits until each is ready, then the gateway on a configuration file
    /// listing them (written to `plan.dir/gateway.toml`).
    pub async fn start(plan: &ClusterPlan) -> anyhow::Result<Cluster> {
        let mut workers = Vec::new();
        for _ in 0..plan.workers.max(1) {
            let mut args = vec![
                "--model".to_string(),
                plan.model.display().to_string(),
                "--threads".to_string(),
                plan.threads.max(1).to_string(),
                "--replicas".to_string(),
                "1".to_string(),
            ];
            args.extend(plan.worker_args.iter().cloned());
            workers.push(LocalServer::start_role(&plan.exe, "worker", &args, READY_WITHIN).await?);
        }
        let config = write_config(&plan.dir, &workers)?;
        let mut args = vec!["--config".to_string(), config.display().to_string()];
        args.extend(plan.gateway_args.iter().cloned());
        let gateway = LocalServer::start_role(&plan.exe, "gateway", &args, READY_WITHIN).await?;
        Ok(Cluster { gateway, workers })
    }

    pub fn detect_url(&self) -> String {
        format!("{}/v1/detect", self.gateway.base_url)
    }

    /// Every process as (name, server): `gateway`, `worker-1`, `worker-2`, …
    pub fn processes(&self) -> Vec<(String, &LocalServer)> {
        let mut all = vec![("gateway".to_string(), &self.gateway)];
        all.extend(self.workers.iter().enumerate().map(|(i, w)| (format!("worker-{}", i + 1), w)));
        all
    }

    /// Every process's `/metrics` text, in the order of [`Cluster::processes`].
    pub async fn metrics(&self, client: &reqwest::Client) -> anyhow::Result<Vec<String>> {
        let mut texts = Vec::new();
        for (name, server) in self.processes() {
            let url = format!("{}/metrics", server.base_url);
            let text = async { client.get(&url).send().await?.error_for_status()?.text().await }
                .await
                .with_context(|| format!("reading {name}'s /metrics"))?;
            texts.push(text);
        }
        Ok(texts)
    }

    /// What the tiers counted so far: detect requests the gateway answered (any outcome) and
    /// those the workers answered with a detection.
    pub async fn counts(&self, client: &reqwest::Client) -> anyhow::Result<Counts> {
        let texts = self.metrics(client).await?;
        let requests = |text: &str, outcome: Option<&str>| metric_sum(text, "blipserve_requests_total", outcome);
        Ok(Counts {
            gateway_requests: requests(&texts[0], None),
            workers_ok: texts[1..].iter().map(|t| requests(t, Some("ok"))).sum(),
        })
    }

    /// The sustainable throughput through the gateway, frames/s: a closed loop of four clients a
    /// worker for `seconds` (after four warm-up requests a client), valid requests only; errors
    /// fail it (the cluster is idle, nothing should be refused).
    pub async fn capacity(&self, traffic: &Plan, seconds: f64) -> anyhow::Result<Report> {
        let concurrency = 4 * self.workers.len().max(1);
        let closed =
            Plan { url: self.detect_url(), load: Load::Closed { concurrency }, invalid_every: 0, ..traffic.clone() };
        super::run(Plan { max_requests: concurrency * 4, ..closed.clone() }, |_, _| {}).await?;
        let max_duration = Duration::from_secs_f64(seconds.max(1.0));
        let report = super::run(Plan { max_requests: usize::MAX, max_duration, ..closed }, |_, _| {}).await?;
        anyhow::ensure!(
            report.failed() == 0 && report.ok > 0,
            "measuring the capacity: {} of {} requests failed ({:?})",
            report.failed(),
            report.requests,
            report.errors
        );
        Ok(report)
    }

    /// SIGTERM to the gateway, then to the workers; each must exit cleanly within `within`.
    pub async fn stop(self, within: Duration) -> anyhow::Result<()> {
        self.gateway.stop(within).await?;
        for worker in self.workers {
            worker.stop(within).await?;
        }
        Ok(())
    }
}

/// Request counters of both tiers at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Counts {
    /// `blipserve_requests_total` of the gateway, every outcome.
    pub gateway_requests: f64,
    /// `blipserve_requests_total{outcome="ok"}` summed over the workers.
    pub workers_ok: f64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, earlier: Counts) -> Counts {
        Counts {
            gateway_requests: self.gateway_requests - earlier.gateway_requests,
            workers_ok: self.workers_ok - earlier.workers_ok,
        }
    }
}

/// Every request of a run accounted for, by the client and by both tiers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Accounting {
    /// Requests the client sent (each with its own `x-request-id`).
    pub sent: u64,
    /// Of those, answered with 200.
    pub client_ok: u64,
    /// Requests that got no HTTP answer (connection errors, client timeouts): lost.
    pub unanswered: u64,
    /// Answers whose `x-request-id` was not the request's own.
    pub unmatched_ids: u64,
    /// Detect requests the gateway counted over the run.
    pub gateway_counted: f64,
    /// Detections the workers answered over the run.
    pub workers_ok: f64,
}

impl Accounting {
    /// The client's report and the tiers' counters over the same run.
    pub fn new(report: &Report, counted: Counts) -> Accounting {
        let unanswered = report.errors.get("transport").copied().unwrap_or(0)
            + report.invalid.get("transport").copied().unwrap_or(0);
        Accounting {
            sent: report.requests,
            client_ok: report.ok,
            unanswered,
            unmatched_ids: report.unmatched_ids,
            gateway_counted: counted.gateway_requests,
            workers_ok: counted.workers_ok,
        }
    }

    /// What does not add up, as sentences; empty when every request is accounted for once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.unanswered > 0 {
            problems.push(format!("{} of {} requests got no answer", self.unanswered, self.sent));
        }
        if self.unmatched_ids > 0 {
            problems.push(format!("{} answers carried another request's id", self.unmatched_ids));
        }
        if self.gateway_counted != self.sent as f64 {
            problems
                .push(format!("the gateway counted {} requests, the client sent {}", self.gateway_counted, self.sent));
        }
        if self.workers_ok != self.client_ok as f64 {
            problems.push(format!(
                "the workers answered {} detections, the client received {} (a request answered twice, or an answer lost)",
                self.workers_ok, self.client_ok
            ));
        }
        problems
    }
}

impl std::fmt::Display for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, gateway counted {}, workers answered {} detections, client got {} 200s, {} unanswered, {} ids unmatched",
            self.sent, self.gateway_counted, self.workers_ok, self.client_ok, self.unanswered, self.unmatched_ids
        )
    }
}

fn write_config(dir: &Path, workers: &[LocalServer]) -> anyhow::Result<PathBuf> {
    let urls: Vec<String> = workers.iter().map(|w| format!("\"{}\"", w.base_url)).collect();
    let text = format!(
        "# Written by blipserve loadtest: the workers it started, as one pool.\n\
         [[pools]]\nname = \"local\"\nbackend = \"cpu\"\nweight = 1\nurls = [{}]\n",
        urls.join(", ")
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The sum of a metric's samples in a Prometheus text, all of them or those whose `outcome`
/// label is `outcome`.
pub fn metric_sum(text: &str, name: &str, outcome: Option<&str>) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if let Some(outcome) = outcome {
                if !labels.split(',').any(|l| l == format!("outcome=\"{outcome}\"")) {
                    return None;
                }
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Sample lines of a Prometheus text (one per series).
pub fn series_count(text: &str) -> usize {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP blipserve_requests_total Detect requests\n\
        # TYPE blipserve_requests_total counter\n\
        blipserve_requests_total{outcome=\"ok\"} 40\n\
        blipserve_requests_total{outcome=\"overloaded\"} 7\n\
        blipserve_requests_total_other 1000\n\
        blipserve_in_flight_requests 2\n";

    #[test]
    fn sums_a_counter_by_outcome_and_whole() {
        assert_eq!(metric_sum(TEXT, "blipserve_requests_total", None), 47.0);
        assert_eq!(metric_sum(TEXT, "blipserve_requests_total", Some("ok")), 40.0);
        assert_eq!(metric_sum(TEXT, "blipserve_requests_total", Some("cancelled")), 0.0);
        assert_eq!(metric_sum(TEXT, "blipserve_in_flight_requests", None), 2.0);
        assert_eq!(series_count(TEXT), 4);
    }
}
