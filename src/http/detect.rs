//! `POST /v1/detect`: parse and validate (multipart or JSON), preprocess off the runtime, queue,
//! and answer. Everything a client can get wrong is an [`ApiError`] before any inference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::error::ApiError;
use super::validate::{self, parse_body, read_limited, RawDetect};
use super::{AppState, RequestId};
use crate::engine::Job;
use crate::model::{AnswerMode, Question};

/// A validated question: its tokens and, for a catalogue behaviour, its name and threshold.
struct Asked {
    question: Question,
    behavior: Option<(String, f64)>,
}

#[derive(Serialize)]
pub struct DetectResponse {
    pub request_id: String,
    pub model: String,
    pub mode: &'static str,
    pub answers: Vec<AnswerOut>,
    pub timings_ms: Timings,
    /// Frames in the inference batch this frame was part of.
    pub batch_frames: usize,
}

#[derive(Serialize)]
pub struct AnswerOut {
    pub question: String,
    pub answer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
}

#[derive(Serialize)]
pub struct Timings {
    pub queue: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub total: f64,
}

pub async fn detect(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let mut guard = InFlight::new(&state, started);
    let result = handle(&state, &request_id, started, request).await;
    match &result {
        Ok(_) => guard.finish("ok", 200),
        Err(e) => guard.finish(e.code(), e.status().as_u16()),
    }
    match result {
        Ok(response) => response,
        Err(e) => {
            tracing::info!(request_id, code = e.code(), error = %e, "detect refused");
            e.into_response()
        }
    }
}

/// Counts a detect request in flight, and its outcome: `cancelled` when the client hung up
/// and the handler was dropped before finishing.
struct InFlight<'a> {
    state: &'a AppState,
    started: Instant,
    outcome: Option<(&'static str, u16)>,
}

impl<'a> InFlight<'a> {
    fn new(state: &'a AppState, started: Instant) -> Self {
        state.metrics.in_flight.inc();
        InFlight { state, started, outcome: None }
    }

    fn finish(&mut self, outcome: &'static str, status: u16) {
        self.outcome = Some((outcome, status));
    }
}

/// What a request whose client hung up is counted as (nginx's "client closed request").
const CLIENT_CLOSED: u16 = 499;

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let (outcome, status) = self.outcome.unwrap_or(("cancelled", CLIENT_CLOSED));
        let metrics = &self.state.metrics;
        metrics.in_flight.dec();
        metrics.requests.with_label_values(&[outcome]).inc();
        metrics.tally.record(status, self.started.elapsed());
    }
}

async fn handle(state: &AppState, request_id: &str, started: Instant, request: Request) -> Result<Response, ApiError> {
    let deadline = validate::deadline(request.headers(), started, state.limits.request_timeout);
    // The body is read (bounded in size and time) before refusing anything: a client still
    // sending when the server answers and closes sees a broken connection instead of the answer.
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout_at(deadline.into(), read_limited(body, state.limits.max_body_bytes)).await {
        Err(_) => return Err(ApiError::DeadlineExceeded),
        Ok(bytes) => bytes,
    };
    state.authorize(&parts.headers)?;
    if !state.engine.is_ready() {
        return Err(ApiError::NotReady);
    }
    let raw = parse_body(&parts.headers, bytes?).await?;
    let (image, asked, mode) = validate(state, raw)?;
    // Refuse before paying for decoding when the queue is already full.
    if state.engine.queue_is_full() {
        return Err(ApiError::Overloaded);
    }

    // Decoding is bounded to a few frames at a time (an 8K frame decodes to ~100 MB).
    let permit = match tokio::time::timeout_at(deadline.into(), state.preprocess_permits.clone().acquire_owned()).await
    {
        Err(_) => return Err(ApiError::DeadlineExceeded),
        Ok(permit) => permit.map_err(|_| ApiError::ShuttingDown)?,
    };
    let preprocessor = state.preprocessor.clone();
    let pre_started = Instant::now();
    let pixels = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        preprocessor.pixels(&image)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("preprocessing task: {e}")))??;
    let preprocess = pre_started.elapsed();

    let (reply, answer) = tokio::sync::oneshot::channel();
    let questions = asked.iter().map(|a| a.question.clone()).collect();
    state.engine.submit(Job { pixels, questions, mode, deadline, enqueued: Instant::now(), reply })?;
    let result = match tokio::time::timeout_at(deadline.into(), answer).await {
        Err(_) => return Err(ApiError::DeadlineExceeded),
        Ok(Err(_)) => return Err(ApiError::Internal("the model replica dropped the request".into())),
        Ok(Ok(result)) => result?,
    };

    let total = started.elapsed();
    let m = &state.metrics.stage_seconds;
    m.with_label_values(&["preprocess"]).observe(preprocess.as_secs_f64());
    m.with_label_values(&["queue"]).observe(result.queued.as_secs_f64());
    m.with_label_values(&["inference"]).observe(result.inference.as_secs_f64());
    m.with_label_values(&["total"]).observe(total.as_secs_f64());

    let answers = asked
        .into_iter()
        .zip(result.answers)
        .map(|(asked, a)| {
            let detected = match (&asked.behavior, a.probability) {
                (Some((_, threshold)), Some(p)) => Some(p >= *threshold),
                _ => None,
            };
            AnswerOut {
                question: asked.question.text,
                answer: a.answer,
                probability: a.probability,
                behavior: asked.behavior.map(|(name, _)| name),
                detected,
            }
        })
        .collect();
    let timings = Timings {
        queue: ms(result.queued),
        preprocess: ms(preprocess),
        inference: ms(result.inference),
        total: ms(total),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-queue-ms", timings.queue),
        ("x-preprocess-ms", timings.preprocess),
        ("x-inference-ms", timings.inference),
        ("x-total-ms", timings.total),
    ] {
        headers.insert(name, HeaderValue::from_str(&format!("{value:.3}")).expect("a number is a header value"));
    }
    let server_timing = format!(
        "queue;dur={:.3}, preprocess;dur={:.3}, inference;dur={:.3}, total;dur={:.3}",
        timings.queue, timings.preprocess, timings.inference, timings.total
    );
    headers.insert("server-timing", HeaderValue::from_str(&server_timing).expect("ascii"));
    let body = DetectResponse {
        request_id: request_id.to_string(),
        model: state.model_id.clone(),
        mode: match mode {
            AnswerMode::YesNo => "yesno",
            AnswerMode::Generate { .. } => "generate",
        },
        answers,
        timings_ms: timings,
        batch_frames: result.batch_frames,
    };
    Ok((headers, Json(body)).into_response())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The model-independent checks (shared with the gateway), then the questions' tokens.
fn validate(state: &AppState, raw: RawDetect) -> Result<(Bytes, Vec<Asked>, AnswerMode), ApiError> {
    let checked = validate::check(raw, &state.limits, Some(&state.behaviors))?;
    let mode = match checked.mode {
        validate::Mode::YesNo => AnswerMode::YesNo,
        validate::Mode::Generate => AnswerMode::Generate { max_new_tokens: state.max_new_tokens },
    };
    let mut asked = Vec::with_capacity(checked.questions.len());
    for (text, behavior) in checked.questions {
        let question =
            state.tokenizer.encode(&text).map_err(|source| ApiError::Question { question: text.clone(), source })?;
        asked.push(Asked { question, behavior });
    }
    Ok((checked.image, asked, mode))
}
