//! The capacity sweep: a bounded closed loop at every combination of server replicas and client
//! concurrency, and what follows from it for scaling.
//!
//! The **sustainable capacity** is the highest throughput among the points that answered every
//! request with 200 and kept p99 latency at or under the objective. One server is one instance,
//! so that throughput is the capacity per instance; the **scaling target** is that capacity
//! times a headroom factor (< 1, room for bursts and for the time new instances take to start),
//! in requests/s per instance: the unit of a target-tracking policy on the service's `Requests`
//! metric divided by the in-service instances.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::cost::{Cost, Price};
use super::local_server::LocalServer;
use super::{run, Load, Plan, Report};

/// Where the load goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running server: only the concurrency axis is swept.
    Url(String),
    /// For each replica count, `exe serve --replicas N ARGS…` on a free local port, stopped with
    /// SIGTERM once its points are measured.
    Spawn { exe: PathBuf, replicas: Vec<usize>, serve_args: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct SweepPlan {
    pub target: Target,
    pub concurrency: Vec<usize>,
    /// Frames, questions, key, timeout and the per-point bounds (`max_requests`,
    /// `max_duration`); its `url` and `load` are set for each point.
    pub point: Plan,
    /// Requests sent at each point's concurrency before measuring it, and not counted.
    pub warmup_requests: usize,
    pub slo_p99_ms: f64,
    pub headroom: f64,
    /// The instance's hourly price, for the cost per million frames.
    pub price: Option<Price>,
}

/// Path of the detect endpoint under a server's base URL.
const DETECT_PATH: &str = "/v1/detect";

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// `replicas-concurrency` (`1-4`), or the concurrency alone against a given URL.
    pub label: String,
    /// None when a given URL was driven.
    pub replicas: Option<usize>,
    pub concurrency: usize,
    /// Whether this point counts towards the sustainable capacity.
    pub meets_slo: bool,
    pub report: Report,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The point that gave it.
    pub label: String,
    pub replicas: Option<usize>,
    pub concurrency: usize,
    /// Requests (frames) per second answered by one instance.
    pub requests_per_s: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalingTarget {
    /// capacity × headroom.
    pub value: f64,
    pub unit: &'static str,
    /// The CloudWatch metric the target-tracking policy follows (as a per-second rate per
    /// in-service instance).
    pub metric: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub slo_p99_ms: f64,
    pub headroom: f64,
    pub questions_per_frame: usize,
    pub requests_per_point: usize,
    pub warmup_requests: usize,
    pub points: Vec<Point>,
    /// The best point overall; None when no point met the objective.
    pub capacity: Option<Capacity>,
    pub scaling_target: Option<ScalingTarget>,
    /// The best point of each replica count that has one (for a fleet whose replica count is
    /// fixed by its hardware).
    pub capacity_by_replicas: Vec<Capacity>,
    /// The instance's hourly price, when given.
    pub price: Option<Price>,
    /// What a million frames cost at the capacity and at the scaling target, with a price.
    pub cost: Option<Cost>,
}

pub const SCALING_UNIT: &str = "requests/s per instance";
pub const SCALING_METRIC: &str = "Requests";

/// Whether a point counts towards the sustainable capacity: every request answered with 200
/// and p99 at or under the objective.
pub fn meets_slo(report: &Report, slo_p99_ms: f64) -> bool {
    report.ok > 0 && report.ok == report.requests && report.latency_ms.p99 <= slo_p99_ms
}

/// The highest-throughput point that meets the objective.
pub fn sustainable<'a>(points: impl IntoIterator<Item = &'a Point>) -> Option<Capacity> {
    points
        .into_iter()
        .filter(|p| p.meets_slo)
        .max_by(|a, b| a.report.throughput_per_s.total_cmp(&b.report.throughput_per_s))
        .map(|p| Capacity {
            label: p.label.clone(),
            replicas: p.replicas,
            concurrency: p.concurrency,
            requests_per_s: p.report.throughput_per_s,
            p99_ms: p.report.latency_ms.p99,
        })
}

/// What the sweep is doing, for a progress display.
pub enum Event<'a> {
    ServerStarting {
        replicas: usize,
    },
    ServerReady {
        replicas: usize,
        url: &'a str,
    },
    PointStarting {
        label: &'a str,
    },
    /// Requests sent so far at the current point, about once a second.
    Progress {
        label: &'a str,
        sent: u64,
        elapsed: Duration,
    },
    PointDone(&'a Point),
}

/// Runs every point, in order: replica counts outermost (one server start each), then
/// concurrency.
pub async fn sweep(
    plan: SweepPlan,
    on_event: impl Fn(Event<'_>) + Send + Sync + 'static,
) -> anyhow::Result<SweepReport> {
    anyhow::ensure!(!plan.concurrency.is_empty(), "no concurrency to sweep");
    anyhow::ensure!(plan.concurrency.iter().all(|&c| c > 0), "concurrency must be at least 1");
    anyhow::ensure!(plan.headroom > 0.0 && plan.headroom <= 1.0, "the headroom must be in (0, 1]");
    anyhow::ensure!(plan.slo_p99_ms > 0.0, "the p99 objective must be positive");
    let on_event = std::sync::Arc::new(on_event);
    let mut points = Vec::new();
    match &plan.target {
        Target::Url(url) => {
            for &concurrency in &plan.concurrency {
                points.push(measure(&plan, url, None, concurrency, on_event.clone()).await?);
            }
        }
        Target::Spawn { exe, replicas, serve_args } => {
            anyhow::ensure!(!replicas.is_empty(), "no replica count to sweep");
            anyhow::ensure!(replicas.iter().all(|&r| r > 0), "replica counts must be at least 1");
            for &r in replicas {
                on_event(Event::ServerStarting { replicas: r });
                let mut args = vec!["--replicas".to_string(), r.to_string()];
                args.extend(serve_args.iter().cloned());
                let server = LocalServer::start(exe, &args, Duration::from_secs(120)).await?;
                let url = format!("{}{DETECT_PATH}", server.base_url);
                on_event(Event::ServerReady { replicas: r, url: &url });
                for &concurrency in &plan.concurrency {
                    points.push(measure(&plan, &url, Some(r), concurrency, on_event.clone()).await?);
                }
                server.stop(Duration::from_secs(60)).await?;
            }
        }
    }
    let capacity = sustainable(&points);
    let mut by_replicas: BTreeMap<Option<usize>, Vec<&Point>> = BTreeMap::new();
    for p in &points {
        by_replicas.entry(p.replicas).or_default().push(p);
    }
    let capacity_by_replicas = by_replicas.into_values().filter_map(sustainable).collect();
    let scaling_target = capacity.as_ref().map(|c| ScalingTarget {
        value: c.requests_per_s * plan.headroom,
        unit: SCALING_UNIT,
        metric: SCALING_METRIC,
    });
    let cost = plan
        .price
        .as_ref()
        .zip(capacity.as_ref())
        .and_then(|(price, c)| Cost::new(price, c.requests_per_s, plan.headroom));
    Ok(SweepReport {
        slo_p99_ms: plan.slo_p99_ms,
        headroom: plan.headroom,
        questions_per_frame: plan.point.questions.len(),
        requests_per_point: plan.point.max_requests,
        warmup_requests: plan.warmup_requests,
        points,
        capacity,
        scaling_target,
        capacity_by_replicas,
        price: plan.price,
        cost,
    })
}

async fn measure(
    plan: &SweepPlan,
    url: &str,
    replicas: Option<usize>,
    concurrency: usize,
    on_event: std::sync::Arc<impl Fn(Event<'_>) + Send + Sync + 'static>,
) -> anyhow::Result<Point> {
    let label = match replicas {
        Some(r) => format!("{r}-{concurrency}"),
        None => concurrency.to_string(),
    };
    on_event(Event::PointStarting { label: &label });
    let point_plan = Plan { url: url.to_string(), load: Load::Closed { concurrency }, ..plan.point.clone() };
    if plan.warmup_requests > 0 {
        let warmup = Plan { max_requests: plan.warmup_requests, ..point_plan.clone() };
        run(warmup, |_, _| {}).await?;
    }
    let progress = {
        let (on_event, label) = (on_event.clone(), label.clone());
        move |sent, elapsed| on_event(Event::Progress { label: &label, sent, elapsed })
    };
    let report = run(point_plan, progress).await?;
    let point = Point { label, replicas, concurrency, meets_slo: meets_slo(&report, plan.slo_p99_ms), report };
    on_event(Event::PointDone(&point));
    Ok(point)
}

impl SweepReport {
    pub const CSV_HEADER: &'static str = "label,replicas,concurrency,requests,ok,errors,errors_by_status,elapsed_s,\
                                          throughput_per_s,p50_ms,p90_ms,p99_ms,max_ms,mean_ms,meets_slo,\
                                          usd_per_million_frames";

    /// One row per point, in sweep order, with a header. The cost column is empty without a
    /// price.
    pub fn csv(&self) -> String {
        let mut out = format!("{}\n", Self::CSV_HEADER);
        for p in &self.points {
            let r = &p.report;
            let l = &r.latency_ms;
            // `status:count` pairs joined by ';' so the field needs no quoting.
            let by_status = r.errors.iter().map(|(s, n)| format!("{s}:{n}")).collect::<Vec<_>>().join(";");
            let cost = self.price.as_ref().and_then(|price| price.per_million_frames(r.throughput_per_s));
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{}\n",
                p.label,
                p.replicas.map(|r| r.to_string()).unwrap_or_default(),
                p.concurrency,
                r.requests,
                r.ok,
                r.requests - r.ok,
                by_status,
                r.elapsed_s,
                r.throughput_per_s,
                l.p50,
                l.p90,
                l.p99,
                l.max,
                l.mean,
                p.meets_slo,
                cost.map(|c| format!("{c:.4}")).unwrap_or_default()
            ));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::loadtest::Percentiles;

    /// A measured point with the given outcome.
    pub(crate) fn point(replicas: Option<usize>, concurrency: usize, rps: f64, p99: f64, errors: u64) -> Point {
        let errors = if errors > 0 { vec![("429", errors)] } else { Vec::new() };
        let report = Report {
            load: Load::Closed { concurrency },
            questions_per_frame: 3,
            elapsed_s: 100.0 / rps,
            throughput_per_s: rps,
            latency_ms: Percentiles { p50: p99 / 2.0, p90: p99 * 0.9, p99, max: p99 * 1.1, mean: p99 / 2.0 },
            ..crate::loadtest::test_report(100 - errors.iter().map(|e| e.1).sum::<u64>(), &errors)
        };
        let label = replicas.map_or(concurrency.to_string(), |r| format!("{r}-{concurrency}"));
        Point { label, replicas, concurrency, meets_slo: meets_slo(&report, 250.0), report }
    }

    /// A sweep of `points` at a 250 ms objective, with its sustainable capacity.
    pub(crate) fn report(points: Vec<Point>) -> SweepReport {
        SweepReport {
            slo_p99_ms: 250.0,
            headroom: 0.7,
            questions_per_frame: 3,
            requests_per_point: 100,
            warmup_requests: 0,
            capacity: sustainable(&points),
            points,
            scaling_target: None,
            capacity_by_replicas: Vec::new(),
            price: None,
            cost: None,
        }
    }

    #[test]
    fn capacity_is_the_fastest_point_within_the_objective_and_without_errors() {
        let points = [
            point(Some(1), 1, 30.0, 40.0, 0),
            point(Some(1), 4, 60.0, 200.0, 0),
            point(Some(1), 8, 70.0, 400.0, 0), // faster, but over the objective
            point(Some(2), 8, 80.0, 240.0, 5), // within it, but with errors
            point(Some(2), 4, 55.0, 250.0, 0), // exactly at the objective counts
        ];
        let best = sustainable(&points).unwrap();
        assert_eq!((best.label.as_str(), best.requests_per_s, best.p99_ms), ("1-4", 60.0, 200.0));
        assert_eq!(sustainable(&points[4..]).unwrap().label, "2-4");
        assert!(sustainable(&points[2..4]).is_none());
    }

    #[test]
    fn csv_has_a_row_per_point_and_errors_by_status() {
        let report = report(vec![point(Some(1), 2, 30.0, 40.0, 0), point(None, 8, 20.0, 900.0, 7)]);
        let csv = report.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = SweepReport::CSV_HEADER.split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == columns), "{csv}");
        assert!(lines[1].starts_with("1-2,1,2,100,100,0,,"), "{}", lines[1]);
        assert!(lines[2].starts_with("8,,8,100,93,7,429:7,"), "{}", lines[2]);
        assert!(lines[2].ends_with(",false,"), "no price, no cost: {}", lines[2]);

        let priced = SweepReport { price: Some(Price::given(0.72).unwrap()), ..report };
        let csv = priced.csv();
        // 30 frames/s: a million frames take 9.26 h at 0.72 USD/h = 6.6667 USD.
        assert!(csv.lines().nth(1).unwrap().ends_with(",true,6.6667"), "{csv}");
    }
}
