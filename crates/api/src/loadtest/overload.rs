//! Overload: three open-loop phases through the gateway of a fresh cluster, `before` at part of
//! the measured capacity (the baseline p99), `overload` at several times the capacity, `after`
//! at the first rate again. Beyond capacity a client may only be refused, with 429 or 503 and a
//! `Retry-After`, never left waiting past its deadline or dropped; every request is accounted
//! for by the client and by both tiers; and service is normal right after.

use std::time::Duration;

use serde::Serialize;

use super::cluster::{Accounting, Cluster, ClusterPlan};
use super::{Plan, Report};

#[derive(Debug, Clone)]
pub struct OverloadPlan {
    pub cluster: ClusterPlan,
    /// Frames, questions and client timeout; url, load and bounds are set here.
    pub traffic: Plan,
    /// The overload phase's rate as a multiple of the capacity.
    pub factor: f64,
    /// The before and after phases' rate as a share of the capacity.
    pub baseline_fraction: f64,
    /// How long the capacity is measured, in seconds.
    pub capacity_s: f64,
    /// How long each phase sends.
    pub phase: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub rate_per_s: f64,
    pub report: Report,
    pub accounting: Accounting,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverloadReport {
    pub capacity_per_s: f64,
    pub factor: f64,
    pub phases: Vec<Phase>,
    /// p99 of the requests admitted during the overload over p99 before it.
    pub p99_ratio: f64,
    /// Why the run failed; empty when it passed.
    pub failures: Vec<String>,
}

pub async fn overload(plan: OverloadPlan, progress: impl Fn(String)) -> anyhow::Result<OverloadReport> {
    progress(format!("starting {} worker(s) and a gateway", plan.cluster.workers));
    let cluster = Cluster::start(&plan.cluster).await?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    progress(format!("measuring the capacity for {:.0} s", plan.capacity_s));
    let capacity = cluster.capacity(&plan.traffic, plan.capacity_s).await?.throughput_per_s;

    let mut phases = Vec::new();
    for (name, share) in
        [("before", plan.baseline_fraction), ("overload", plan.factor), ("after", plan.baseline_fraction)]
    {
        let rate = capacity * share;
        progress(format!("{name}: {rate:.1} requests/s for {:.0} s", plan.phase.as_secs_f64()));
        let before = cluster.counts(&client).await?;
        let report = super::run(plan.traffic.open_loop(cluster.detect_url(), rate, plan.phase), |_, _| {}).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let accounting = Accounting::new(&report, cluster.counts(&client).await? - before);
        phases.push(Phase { name: name.to_string(), rate_per_s: rate, report, accounting });
    }
    cluster.stop(Duration::from_secs(30)).await?;

    let failures = judge(&phases);
    let p99_ratio = phases[1].report.latency_ms.p99 / phases[0].report.latency_ms.p99.max(1e-9);
    Ok(OverloadReport { capacity_per_s: capacity, factor: plan.factor, phases, p99_ratio, failures })
}

fn judge(phases: &[Phase]) -> Vec<String> {
    let mut failures = Vec::new();
    for phase in phases {
        let (name, r) = (&phase.name, &phase.report);
        failures.extend(phase.accounting.problems().into_iter().map(|p| format!("{name}: {p}")));
        if r.refused_without_retry_after > 0 {
            failures.push(format!("{name}: {} refusals without Retry-After", r.refused_without_retry_after));
        }
        if r.ok == 0 {
            failures.push(format!("{name}: no request was answered"));
        }
        if name == "overload" {
            if r.failed_other_than_refused() > 0 {
                failures.push(format!("overload: statuses other than 200, 429 and 503: {:?}", r.errors));
            }
        } else if r.failed() > 0 {
            failures.push(format!("{name}: {} requests failed below capacity: {:?}", r.failed(), r.errors));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, ok: u64, errors: &[(&str, u64)]) -> Phase {
        let report = crate::loadtest::test_report(ok, errors);
        let requests = report.requests;
        let accounting = Accounting {
            sent: requests,
            client_ok: ok,
            unanswered: 0,
            unmatched_ids: 0,
            gateway_counted: requests as f64,
            workers_ok: ok as f64,
        };
        Phase { name: name.into(), rate_per_s: 1.0, report, accounting }
    }

    #[test]
    fn refusals_pass_only_during_the_overload() {
        let good =
            [phase("before", 10, &[]), phase("overload", 10, &[("429", 20), ("503", 1)]), phase("after", 10, &[])];
        assert!(judge(&good).is_empty(), "{:?}", judge(&good));
        let late = [phase("before", 10, &[]), phase("overload", 10, &[("504", 2)]), phase("after", 10, &[("429", 1)])];
        let failures = judge(&late);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("504") && failures[1].starts_with("after"), "{failures:?}");
    }

    #[test]
    fn a_request_counted_twice_fails() {
        let mut twice = phase("overload", 10, &[("429", 5)]);
        twice.accounting.workers_ok = 11.0;
        let failures = judge(&[twice]);
        assert!(failures.iter().any(|f| f.contains("answered twice")), "{failures:?}");
    }
}
