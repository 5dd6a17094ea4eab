//! The load tester: drives any blipserve `/v1/detect` endpoint with real frames and questions.
//!
//! Closed loop: a fixed number of clients, each sending its next request when the previous one
//! returns. Open loop: requests at a fixed arrival rate, each one's latency counted from when it
//! was *meant* to be sent, so a saturated server cannot hide its queue by slowing the client
//! down (coordinated omission). Both stop at a request count or a duration, whichever comes
//! first.
//!
//! [`sweep`] repeats a bounded closed loop over server replicas × client concurrency, finds the
//! sustainable capacity and the scaling target, and [`chart`] draws the result.

pub mod chart;
pub mod cost;
pub mod local_server;
pub mod sweep;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate_per_s: f64 },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub url: String,
    pub load: Load,
    pub max_requests: usize,
    pub max_duration: Duration,
    /// Encoded frames, used in turn.
    pub frames: Vec<Vec<u8>>,
    pub questions: Vec<String>,
    pub api_key: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub load: Load,
    pub questions_per_frame: usize,
    pub requests: u64,
    pub ok: u64,
    /// Non-200 responses by status code, and `transport` for connection failures and timeouts.
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    /// Successful frames per second over the whole run.
    pub throughput_per_s: f64,
    /// Latency of successful requests, in milliseconds.
    pub latency_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, outcome: Result<u16, String>, latency: Duration) {
        match outcome {
            Ok(200) => {
                self.ok += 1;
                let us = latency.as_micros().clamp(1, 3_600_000_000) as u64;
                let _ = self.latency_us.record(us);
            }
            Ok(status) => *self.errors.entry(status.to_string()).or_default() += 1,
            Err(_) => *self.errors.entry("transport".into()).or_default() += 1,
        }
    }
}

/// Runs the plan and reports. `progress` is called about once a second with requests done.
pub async fn run(plan: Plan, progress: impl Fn(u64, Duration) + Send + Sync + 'static) -> anyhow::Result<Report> {
    anyhow::ensure!(!plan.frames.is_empty(), "no frames to send");
    anyhow::ensure!(!plan.questions.is_empty(), "no questions to ask");
    let client = reqwest::Client::builder().timeout(plan.timeout).pool_max_idle_per_host(1024).build()?;
    let tally = Arc::new(Mutex::new(Tally {
        latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        ok: 0,
        errors: BTreeMap::new(),
    }));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let plan = Arc::new(plan);
    let started = Instant::now();
    let stop_at = started + plan.max_duration;

    let reporter = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                progress(sent.load(std::sync::atomic::Ordering::Relaxed), started.elapsed());
            }
        })
    };

    // Claims the next request number, or None when the plan is used up.
    let claim = {
        let sent = sent.clone();
        let plan = plan.clone();
        move || {
            if Instant::now() >= stop_at {
                return None;
            }
            let n = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n as usize >= plan.max_requests {
                sent.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                return None;
            }
            Some(n as usize)
        }
    };

    match plan.load {
        Load::Closed { concurrency } => {
            let mut clients = Vec::new();
            for _ in 0..concurrency.max(1) {
                let (client, plan, tally, claim) = (client.clone(), plan.clone(), tally.clone(), claim.clone());
                clients.push(tokio::spawn(async move {
                    while let Some(n) = claim() {
                        let t = Instant::now();
                        let outcome = send(&client, &plan, n).await;
                        tally.lock().unwrap_or_else(|p| p.into_inner()).record(outcome, t.elapsed());
                    }
                }));
            }
            for c in clients {
                c.await?;
            }
        }
        Load::Open { rate_per_s } => {
            anyhow::ensure!(rate_per_s > 0.0, "the rate must be positive");
            let interval = Duration::from_secs_f64(1.0 / rate_per_s);
            let mut inflight = Vec::new();
            let mut i = 0u32;
            loop {
                let intended = started + interval * i;
                if intended >= stop_at {
                    break;
                }
                let Some(n) = claim() else { break };
                i += 1;
                tokio::time::sleep_until(intended.into()).await;
                let (client, plan, tally) = (client.clone(), plan.clone(), tally.clone());
                inflight.push(tokio::spawn(async move {
                    let outcome = send(&client, &plan, n).await;
                    // From the intended send time: lateness of the client counts against the server.
                    tally.lock().unwrap_or_else(|p| p.into_inner()).record(outcome, intended.elapsed());
                }));
            }
            for task in inflight {
                task.await?;
            }
        }
    }
    reporter.abort();
    let elapsed = started.elapsed();
    let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    let h = &tally.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let requests = tally.ok + tally.errors.values().sum::<u64>();
    Ok(Report {
        url: plan.url.clone(),
        load: plan.load,
        questions_per_frame: plan.questions.len(),
        requests,
        ok: tally.ok,
        errors: tally.errors.clone(),
        elapsed_s: elapsed.as_secs_f64(),
        throughput_per_s: tally.ok as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        },
    })
}

async fn send(client: &reqwest::Client, plan: &Plan, n: usize) -> Result<u16, String> {
    let frame = plan.frames[n % plan.frames.len()].clone();
    let mut form =
        reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(frame).file_name("frame.jpg"));
    for q in &plan.questions {
        form = form.text("question", q.clone());
    }
    let mut request = client.post(&plan.url).multipart(form);
    if let Some(key) = &plan.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    response.bytes().await.map_err(|e| e.to_string())?;
    Ok(status)
}

impl Report {
    pub const CSV_HEADER: &'static str =
        "load,concurrency,rate_per_s,requests,ok,errors,elapsed_s,throughput_per_s,p50_ms,p90_ms,p99_ms,max_ms";

    pub fn csv_row(&self) -> String {
        let (kind, concurrency, rate) = match self.load {
            Load::Closed { concurrency } => ("closed", concurrency.to_string(), String::new()),
            Load::Open { rate_per_s } => ("open", String::new(), format!("{rate_per_s}")),
        };
        let l = &self.latency_ms;
        format!(
            "{kind},{concurrency},{rate},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}",
            self.requests,
            self.ok,
            self.requests - self.ok,
            self.elapsed_s,
            self.throughput_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.max
        )
    }
}
