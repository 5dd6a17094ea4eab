//! `POST /v1/detect`: parse and validate (multipart or JSON), preprocess off the runtime, queue,
//! and answer. Everything a client can get wrong is an [`ApiError`] before any inference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{AppState, RequestId};
use crate::engine::Job;
use crate::model::{AnswerMode, Question};

/// What the client sent, before validation.
#[derive(Debug, Default)]
struct RawDetect {
    image: Option<Bytes>,
    questions: Vec<String>,
    behaviors: Vec<String>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDetect {
    image: Option<String>,
    #[serde(default)]
    questions: Vec<String>,
    #[serde(default)]
    behaviors: Vec<String>,
    mode: Option<String>,
}

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
    let deadline = started + state.limits.request_timeout;
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
    let raw = parse_body(parts, bytes?).await?;
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

/// Parses a body already read: multipart/form-data or JSON, by the content type.
async fn parse_body(parts: axum::http::request::Parts, bytes: Bytes) -> Result<RawDetect, ApiError> {
    let content_type =
        parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if mime != "multipart/form-data" && mime != "application/json" {
        return Err(ApiError::UnsupportedMediaType(content_type));
    }
    if mime == "application/json" {
        let json: JsonDetect = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
        let image = match json.image {
            None => None,
            Some(text) => Some(Bytes::from(decode_base64(&text)?)),
        };
        return Ok(RawDetect { image, questions: json.questions, behaviors: json.behaviors, mode: json.mode });
    }
    let request = Request::from_parts(parts, Body::from(bytes));
    let mut multipart =
        Multipart::from_request(request, &()).await.map_err(|e| ApiError::BadMultipart(e.body_text()))?;
    let mut raw = RawDetect::default();
    while let Some(field) = multipart.next_field().await.map_err(|e| ApiError::BadMultipart(e.body_text()))? {
        let name = field.name().unwrap_or_default().to_string();
        let bad = |e: axum::extract::multipart::MultipartError| ApiError::BadMultipart(e.body_text());
        match name.as_str() {
            "image" => raw.image = Some(field.bytes().await.map_err(bad)?),
            "question" | "questions" => raw.questions.push(field.text().await.map_err(bad)?),
            "behavior" | "behaviors" => raw.behaviors.push(field.text().await.map_err(bad)?),
            "mode" => raw.mode = Some(field.text().await.map_err(bad)?),
            other => return Err(ApiError::BadMultipart(format!("unknown field {other:?}"))),
        }
    }
    Ok(raw)
}

/// The whole body if it fits in `limit` bytes. A larger body is still read and discarded up to
/// four times the limit, so the client gets the 413 instead of a reset connection.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let drain_cap = limit.saturating_mul(4);
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadMultipart(format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > drain_cap {
            break;
        }
        if seen <= limit {
            buf.extend_from_slice(&data);
        }
    }
    if seen > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(Bytes::from(buf))
}

/// Standard base64, padding optional, a `data:...;base64,` prefix allowed.
fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let compact: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    engine.decode(compact).map_err(|e| ApiError::BadBase64(e.to_string()))
}

fn validate(state: &AppState, raw: RawDetect) -> Result<(Bytes, Vec<Asked>, AnswerMode), ApiError> {
    let mode = match raw.mode.as_deref().map(str::trim) {
        None | Some("") | Some("yesno") => AnswerMode::YesNo,
        Some("generate") => AnswerMode::Generate { max_new_tokens: state.max_new_tokens },
        Some(other) => return Err(ApiError::BadMode(other.to_string())),
    };
    let mut texts: Vec<(String, Option<(String, f64)>)> = raw.questions.into_iter().map(|q| (q, None)).collect();
    for name in raw.behaviors {
        let name = name.trim().to_string();
        let behavior = state.behaviors.get(&name).ok_or_else(|| ApiError::UnknownBehavior(name.clone()))?;
        texts.push((behavior.question.clone(), Some((name, behavior.threshold))));
    }
    if texts.is_empty() {
        return Err(ApiError::NoQuestion);
    }
    if texts.len() > state.limits.max_questions {
        return Err(ApiError::TooManyQuestions { count: texts.len(), max: state.limits.max_questions });
    }
    let mut asked = Vec::with_capacity(texts.len());
    for (text, behavior) in texts {
        let chars = text.chars().count();
        if text.trim().is_empty() {
            return Err(ApiError::EmptyQuestion);
        }
        if behavior.is_none() && chars > state.limits.max_question_chars {
            return Err(ApiError::QuestionTooLong { chars, max: state.limits.max_question_chars });
        }
        let question =
            state.tokenizer.encode(&text).map_err(|source| ApiError::Question { question: text.clone(), source })?;
        asked.push(Asked { question, behavior });
    }
    let image = raw.image.filter(|b| !b.is_empty()).ok_or(ApiError::MissingImage)?;
    Ok((image, asked, mode))
}
