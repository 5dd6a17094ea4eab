//! The load tester: drives any blipserve `/v1/detect` endpoint with real frames and questions.
//!
//! Closed loop: a fixed number of clients, each sending its next request when the previous one
//! returns. Open loop: requests at a fixed arrival rate, each one's latency counted from when it
//! was *meant* to be sent, so a saturated server cannot hide its queue by slowing the client
//! down (coordinated omission). Both stop at a request count or a duration, whichever comes
//! first.
//!
//! Every request carries its own `x-request-id`, and the answer must echo it; a 429 or 503 must
//! say when to come back (`Retry-After`). With `invalid_every`, some requests are deliberately
//! bad (a truncated frame, no question, a wrong content type) and must get a 4xx: they are
//! counted apart from the valid ones.
//!
//! [`sweep`] repeats a bounded closed loop over server replicas × client concurrency, finds the
//! sustainable capacity and the scaling target, and [`chart`] draws the result. [`cluster`]
//! starts the two tiers on local ports, for [`soak`] (a long run at part of the capacity, with
//! every process sampled) and [`overload`] (three times the capacity, then back).

pub mod cameras;
pub mod chart;
pub mod cluster;
pub mod cost;
pub mod local_server;
pub mod overload;
pub mod soak;
pub mod soak_chart;
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
    /// Every this many requests one is deliberately invalid (0: none).
    pub invalid_every: usize,
    /// Prefix of the requests' `x-request-id`s (`PREFIX-N`).
    pub id_prefix: String,
}

impl Plan {
    /// This traffic to `url` as an open loop of `rate_per_s` for `duration`.
    pub fn open_loop(&self, url: String, rate_per_s: f64, duration: Duration) -> Plan {
        Plan { url, load: Load::Open { rate_per_s }, max_requests: usize::MAX, max_duration: duration, ..self.clone() }
    }

    fn is_invalid(&self, n: usize) -> bool {
        self.invalid_every > 0 && n % self.invalid_every == self.invalid_every - 1
    }
}

/// `lt-<pid>-<microseconds>`: distinct between runs, so that a server's log tells them apart.
pub fn id_prefix() -> String {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    format!("lt-{}-{micros}", std::process::id())
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
    /// The deliberately invalid requests among `requests`, by status (each should be a 4xx).
    pub invalid: BTreeMap<String, u64>,
    /// Answers whose `x-request-id` was not the request's own.
    pub unmatched_ids: u64,
    /// 429 and 503 answers without a `Retry-After`.
    pub refused_without_retry_after: u64,
}

impl Report {
    /// Valid requests that did not get a 200.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Invalid requests that got neither a 4xx nor a 503: a 200, another 5xx, or no answer. (A 429
    /// or 503 refuses the request before judging it, which is as clear.)
    pub fn invalid_not_refused(&self) -> u64 {
        self.invalid.iter().filter(|(status, _)| !is_refusal(status)).map(|(_, n)| n).sum()
    }

    /// Valid requests answered with something other than 200, 429 or 503 (+ transport errors).
    pub fn failed_other_than_refused(&self) -> u64 {
        self.errors.iter().filter(|(status, _)| !matches!(status.as_str(), "429" | "503")).map(|(_, n)| n).sum()
    }
}

fn is_refusal(status: &str) -> bool {
    status.starts_with('4') || status == "503"
}

/// One answer as the client saw it.
struct Outcome {
    /// The status, or the transport error.
    status: Result<u16, String>,
    /// The answer's `x-request-id` was the request's.
    id_matched: bool,
    /// A `Retry-After` came with the answer.
    retry_after: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// In milliseconds, from a histogram of microseconds.
    pub fn of_micros(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    invalid: BTreeMap<String, u64>,
    unmatched_ids: u64,
    refused_without_retry_after: u64,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, invalid: bool, latency: Duration) {
        let label = match &outcome.status {
            Ok(status) => status.to_string(),
            Err(_) => "transport".to_string(),
        };
        if let Ok(status) = outcome.status {
            self.unmatched_ids += u64::from(!outcome.id_matched);
            self.refused_without_retry_after += u64::from(matches!(status, 429 | 503) && !outcome.retry_after);
        }
        if invalid {
            *self.invalid.entry(label).or_default() += 1;
        } else if outcome.status == Ok(200) {
            self.ok += 1;
            let us = latency.as_micros().clamp(1, 3_600_000_000) as u64;
            let _ = self.latency_us.record(us);
        } else {
            *self.errors.entry(label).or_default() += 1;
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
        invalid: BTreeMap::new(),
        unmatched_ids: 0,
        refused_without_retry_after: 0,
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
                        tally.lock().unwrap_or_else(|p| p.into_inner()).record(
                            outcome,
                            plan.is_invalid(n),
                            t.elapsed(),
                        );
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
                    let invalid = plan.is_invalid(n);
                    tally.lock().unwrap_or_else(|p| p.into_inner()).record(outcome, invalid, intended.elapsed());
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
    let requests = tally.ok + tally.errors.values().sum::<u64>() + tally.invalid.values().sum::<u64>();
    Ok(Report {
        url: plan.url.clone(),
        load: plan.load,
        questions_per_frame: plan.questions.len(),
        requests,
        ok: tally.ok,
        errors: tally.errors.clone(),
        elapsed_s: elapsed.as_secs_f64(),
        throughput_per_s: tally.ok as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: Percentiles::of_micros(h),
        invalid: tally.invalid.clone(),
        unmatched_ids: tally.unmatched_ids,
        refused_without_retry_after: tally.refused_without_retry_after,
    })
}

/// The kinds of invalid request, in turn: each must get a 4xx from the first tier that reads it.
#[derive(Debug, Clone, Copy)]
enum Invalid {
    /// The first half of the frame: the header passes, decoding fails (400 `bad_image`).
    TruncatedFrame,
    /// A frame and no question (400 `no_question`).
    NoQuestion,
    /// A text body (415).
    WrongContentType,
}

async fn send(client: &reqwest::Client, plan: &Plan, n: usize) -> Outcome {
    let frame = &plan.frames[n % plan.frames.len()];
    let invalid = plan.is_invalid(n).then(|| {
        [Invalid::TruncatedFrame, Invalid::NoQuestion, Invalid::WrongContentType][(n / plan.invalid_every) % 3]
    });
    let request_id = format!("{}-{n}", plan.id_prefix);
    let mut request = client.post(&plan.url).header("x-request-id", &request_id);
    request = match invalid {
        Some(Invalid::WrongContentType) => request.header("content-type", "text/plain").body("is the dog barking?"),
        _ => {
            let bytes = match invalid {
                Some(Invalid::TruncatedFrame) => frame[..frame.len() / 2].to_vec(),
                _ => frame.clone(),
            };
            let part = reqwest::multipart::Part::bytes(bytes).file_name("frame.jpg");
            let mut form = reqwest::multipart::Form::new().part("image", part);
            if !matches!(invalid, Some(Invalid::NoQuestion)) {
                for q in &plan.questions {
                    form = form.text("question", q.clone());
                }
            }
            request.multipart(form)
        }
    };
    if let Some(key) = &plan.api_key {
        request = request.bearer_auth(key);
    }
    let failed = |e: reqwest::Error| Outcome { status: Err(e.to_string()), id_matched: false, retry_after: false };
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return failed(e),
    };
    let status = response.status().as_u16();
    let headers = response.headers();
    let id_matched = headers.get("x-request-id").is_some_and(|v| v.as_bytes() == request_id.as_bytes());
    let retry_after = headers.contains_key(reqwest::header::RETRY_AFTER);
    match response.bytes().await {
        Ok(_) => Outcome { status: Ok(status), id_matched, retry_after },
        Err(e) => failed(e),
    }
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
            self.failed(),
            self.elapsed_s,
            self.throughput_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.max
        )
    }
}

/// A report of `ok` answers and these errors, for unit tests of what judges reports.
#[cfg(test)]
pub(crate) fn test_report(ok: u64, errors: &[(&str, u64)]) -> Report {
    let errors: BTreeMap<String, u64> = errors.iter().map(|(s, n)| (s.to_string(), *n)).collect();
    Report {
        url: String::new(),
        load: Load::Open { rate_per_s: 1.0 },
        questions_per_frame: 1,
        requests: ok + errors.values().sum::<u64>(),
        ok,
        errors,
        elapsed_s: 1.0,
        throughput_per_s: ok as f64,
        latency_ms: Percentiles { p50: 1.0, p90: 1.0, p99: 1.0, max: 1.0, mean: 1.0 },
        invalid: BTreeMap::new(),
        unmatched_ids: 0,
        refused_without_retry_after: 0,
    }
}
