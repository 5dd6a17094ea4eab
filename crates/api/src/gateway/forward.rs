//! Forwarding: a checked detect request goes, body and content type exactly as received, to a
//! worker chosen by [`Attempts`], the one retry loop of the gateway (also used for
//! `/v1/behaviors`).
//!
//! The request id goes along as `x-request-id`, and what is left of the request's deadline as
//! `x-request-timeout-ms`, so a worker never works past the client's deadline. Connection errors,
//! 503 and 429 (and a load balancer's 502) are retried on another worker (of the same pool or
//! another; a load balancer's URL may be tried again) within the deadline and `max_attempts`;
//! any other answer, 4xx or 5xx, is passed through unchanged. When no worker can take the
//! request the client gets 503 `no_upstream`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::StreamExt;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use serde_json::Value;

use super::pools::{self, Attempt, Pool, Snapshot, Upstream};
use super::Gateway;
use crate::camera::{CameraId, Plan};
use crate::detect;
use crate::frame::check_header;
use crate::http::body::{self, Admitted, TIMEOUT_HEADER};
use crate::http::error::ApiError;
use crate::http::{self, RequestId};
use crate::oip;
use crate::otel::Traced;

/// The workers one request tries, in order: never one twice, at most `max_attempts`; each
/// attempt after the first counts as a retry of the pool that failed before it.
struct Attempts<'a> {
    gw: &'a Gateway,
    snapshot: &'a Snapshot,
    tried: Vec<Arc<Upstream>>,
    previous: Option<&'a Pool>,
}

impl<'a> Attempts<'a> {
    fn new(gw: &'a Gateway, snapshot: &'a Snapshot) -> Attempts<'a> {
        Attempts { gw, snapshot, tried: Vec::new(), previous: None }
    }

    fn next(&mut self) -> Option<(&'a Pool, Arc<Upstream>)> {
        if self.tried.len() >= self.gw.settings.max_attempts {
            return None;
        }
        let (pool, upstream) = self.snapshot.pick(&self.tried)?;
        if let Some(previous) = self.previous {
            self.gw.metrics.retries.with_label_values(&[previous.name.as_str(), previous.backend.as_str()]).inc();
        }
        self.previous = Some(pool);
        self.tried.push(upstream.clone());
        Some((pool, upstream))
    }

    /// Attempts made so far.
    fn count(&self) -> usize {
        self.tried.len()
    }
}

/// `POST /v1/detect`: check, then forward until a worker answers.
pub(super) async fn detect(
    State(gw): State<Arc<Gateway>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    traced: Traced,
    request: Request,
) -> Response {
    let forwarding = forward(&gw, &request_id, &traced, request);
    counted(&gw, "detect", &request_id, &traced, forwarding, IntoResponse::into_response).await
}

/// [`body::admit`] with the gateway's limits and keys.
async fn admit(gw: &Gateway, request: Request) -> Result<Admitted, ApiError> {
    body::admit(request, &gw.settings.limits, &gw.settings.api_keys, || Ok(())).await
}

/// An HTTP door's bookkeeping around `forwarding` (which yields the answer and its outcome code:
/// "ok", or a worker's error code relayed): the request counted in the metrics; a refusal
/// logged, marked on the request's span and answered by `refuse` (JSON, or the Open Inference
/// Protocol's error).
async fn counted(
    gw: &Gateway,
    door: &str,
    request_id: &str,
    traced: &Traced,
    forwarding: impl Future<Output = Result<(Response, String), ApiError>>,
    refuse: impl FnOnce(ApiError) -> Response,
) -> Response {
    let mut outcome = gw.metrics.requests.begin();
    match forwarding.await {
        Ok((response, code)) => {
            outcome.finish(&code, response.status().as_u16());
            response
        }
        Err(e) => {
            tracing::info!(request_id, door, code = e.code(), error = %e, "request refused by the gateway");
            traced.fail(&e);
            outcome.finish(e.code(), e.status().as_u16());
            refuse(e)
        }
    }
}

/// The catalogue as a worker has it (the gateway has none of its own).
pub(super) async fn behaviors(State(gw): State<Arc<Gateway>>) -> Response {
    let snapshot = gw.pools.current();
    let mut attempts = Attempts::new(&gw, &snapshot);
    while let Some((_, upstream)) = attempts.next() {
        let answer = async {
            let url = format!("{}/v1/behaviors", upstream.url);
            let response = gw.client.get(url).timeout(Duration::from_secs(5)).send().await?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            Ok::<_, reqwest::Error>((status, content_type, response.bytes().await?))
        };
        if let Ok((status, content_type, body)) = answer.await {
            if status.is_success() {
                let mut response = (status, body).into_response();
                if let Some(ct) = content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                return response;
            }
        }
    }
    ApiError::NoUpstream.into_response()
}

/// The workers' model id: known, or asked of a worker's `/v1/info`.
async fn model_id(gw: &Gateway) -> Option<String> {
    if let Some(id) = gw.model_id() {
        return Some(id);
    }
    let snapshot = gw.pools.current();
    let mut attempts = Attempts::new(gw, &snapshot);
    while let Some((_, upstream)) = attempts.next() {
        let url = format!("{}/v1/info", upstream.url);
        let info = async { gw.client.get(url).timeout(Duration::from_secs(5)).send().await?.bytes().await };
        let info = info.await.ok().and_then(|body| serde_json::from_slice::<Value>(&body).ok());
        if let Some(id) = info.and_then(|v| v["model"]["id"].as_str().map(str::to_string)) {
            gw.learn_model_id(&id);
            return Some(id);
        }
    }
    None
}

/// `GET /v2/models/{name}` on the gateway: the workers' model.
pub(super) async fn v2_model(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match model_id(&gw).await {
        Some(id) if id == name => axum::Json(oip::model_metadata(&id)).into_response(),
        Some(_) => oip::error(ApiError::UnknownModel(name)),
        None => oip::error(ApiError::NoUpstream),
    }
}

/// `GET /v2/models/{name}/ready` on the gateway.
pub(super) async fn v2_model_ready(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match model_id(&gw).await {
        Some(id) if id == name && gw.readiness() == crate::http::Readiness::Ready => StatusCode::OK.into_response(),
        Some(id) if id == name => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Some(_) => oip::error(ApiError::UnknownModel(name)),
        None => oip::error(ApiError::NoUpstream),
    }
}

/// The share of the remaining time the worker is given, so that its own 504 (rather than the
/// gateway's timeout) reaches the client when the deadline passes.
fn worker_budget(remaining: Duration) -> Duration {
    remaining.saturating_sub((remaining / 10).min(Duration::from_millis(50)))
}

/// Checks, then forwards until a worker answers. Returns the response and its outcome label.
async fn forward(
    gw: &Gateway,
    request_id: &str,
    traced: &Traced,
    request: Request,
) -> Result<(Response, String), ApiError> {
    let Admitted { headers, body: bytes, started, deadline } = admit(gw, request).await?;
    let raw = body::parse_body(&headers, bytes.clone()).await?;
    // The original bytes and content type go to the worker: nothing is re-encoded.
    let content_type =
        headers.get(header::CONTENT_TYPE).cloned().ok_or(ApiError::UnsupportedMediaType(String::new()))?;
    let sent = Sending { request_id, headers: &headers, started, deadline, traced };
    match dispatch(gw, &sent, raw, Some((content_type, bytes))).await? {
        Dispatched::Relayed(response, code) => Ok((response, code)),
        Dispatched::Answer(body, headers) => {
            let mut response = axum::Json(body).into_response();
            copy_answer_headers(&headers, response.headers_mut());
            Ok((response, "ok".into()))
        }
    }
}

/// `POST /v2/models/{name}/infer`: the Open Inference Protocol's request, translated to a detect
/// request (checked, reused, forwarded, retried as one) and its answer back.
pub(super) async fn infer_v2(
    State(gw): State<Arc<Gateway>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
    traced: Traced,
    request: Request,
) -> Response {
    let model = params.into_iter().find(|(k, _)| k == "name").map(|(_, v)| v).unwrap_or_default();
    let forwarding = async {
        if model_id(&gw).await.is_some_and(|known| known != model) {
            return Err(ApiError::UnknownModel(model.clone()));
        }
        let Admitted { headers, body, started, deadline } = admit(&gw, request).await?;
        let parsed = oip::parse(&headers, &body)?;
        let sent = Sending { request_id: &request_id, headers: &headers, started, deadline, traced: &traced };
        match dispatch(&gw, &sent, parsed.raw, None).await? {
            Dispatched::Answer(body, _) if body.model != model && !body.model.is_empty() => {
                gw.learn_model_id(&body.model);
                Err(ApiError::UnknownModel(model.clone()))
            }
            Dispatched::Answer(body, _) => {
                gw.learn_model_id(&body.model);
                Ok((oip::render(&body, &model, parsed.id, &parsed.outputs), "ok".to_string()))
            }
            Dispatched::Relayed(response, code) => Ok((oip::relayed_error(response).await, code)),
        }
    };
    counted(&gw, "infer", &request_id, &traced, forwarding, oip::error).await
}

/// One client request on its way: what every attempt sends along.
struct Sending<'a> {
    request_id: &'a str,
    headers: &'a HeaderMap,
    started: Instant,
    deadline: Instant,
    /// The request's server span: the parent of its `checks` and `forward` spans.
    traced: &'a Traced,
}

/// What the workers' answer became.
enum Dispatched {
    /// Passed through as the worker gave it (a success streamed, or an error answer).
    Relayed(Response, String),
    /// A success read whole (reused answers merged in), and the worker's headers.
    Answer(detect::DetectResponse, HeaderMap),
}

/// Checks a parsed request, answers what the camera's state holds, and forwards the rest until
/// a worker answers: `original` (content type and body) as received when every question goes
/// to the model, else a multipart body of the questions left.
async fn dispatch(
    gw: &Gateway,
    sending: &Sending<'_>,
    raw: detect::RawDetect,
    original: Option<(HeaderValue, Bytes)>,
) -> Result<Dispatched, ApiError> {
    let (request_id, deadline) = (sending.request_id, sending.deadline);
    let s = &gw.settings;
    let checked = detect::check(raw, &s.limits, None)?;
    check_header(&checked.image, &s.image_limits)?;
    // The answer is read whole (not streamed) when it is translated or merged.
    let read_whole = original.is_none() || checked.camera.is_some();
    let mut keys: Vec<usize> = (0..checked.keys.len()).collect();
    let mut plan = None;
    if let Some(camera) = &checked.camera {
        gw.cameras.admit(camera).await?;
        let camera_plan = gw.cameras.plan(camera, &checked).await;
        keys = camera_plan.pending();
        if keys.is_empty() {
            let body = camera_plan.response(request_id.to_string(), checked.mode, sending.started);
            return Ok(Dispatched::Answer(body, HeaderMap::new()));
        }
        plan = Some(camera_plan);
    }
    sending.traced.record("checks", sending.started, Instant::now(), Vec::new);
    let (content_type, bytes) = match original {
        Some(original) if keys.len() == checked.keys.len() => original,
        _ => {
            let keys: Vec<&str> = keys.iter().map(|i| checked.keys[*i].as_str()).collect();
            questions_form(&checked.image, &keys, checked.mode, checked.camera.as_ref())
        }
    };
    drop(checked);
    let authorization = sending.headers.get(header::AUTHORIZATION).cloned();
    let snapshot = gw.pools.current();
    let mut attempts = Attempts::new(gw, &snapshot);
    let mut refused: Option<Relayed> = None;
    let forwarding = sending.traced.child("forward", SpanKind::Internal);
    while let Some((pool, upstream)) = attempts.next() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::DeadlineExceeded);
        }
        let labels = [pool.name.as_str(), pool.backend.as_str()];
        let tried = forwarding.child(if attempts.count() == 1 { "attempt" } else { "retry" }, SpanKind::Client);
        tried.set(|| {
            vec![
                KeyValue::new("blipserve.attempt", attempts.count() as i64),
                KeyValue::new("blipserve.pool", pool.name.clone()),
                KeyValue::new("blipserve.backend", pool.backend.as_str()),
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("url.full", upstream.detect_url().to_string()),
            ]
        });
        let record = |attempt: Attempt| {
            upstream.record(attempt);
            gw.metrics.upstream_requests.with_label_values(&[labels[0], labels[1], attempt.as_str()]).inc();
            tried.set(|| vec![KeyValue::new("blipserve.attempt.outcome", attempt.as_str())]);
        };
        // A failed attempt: the upstream may be ejected (see pools.rs), never the last healthy
        // load balancer.
        let fail = |reason: &str| {
            let last_healthy = snapshot.healthy_workers() <= 1;
            if upstream.failed(s.eject, &s.outliers, last_healthy, reason) {
                gw.metrics.ejections.with_label_values(&labels).inc();
            }
        };
        let flight = upstream.begin();
        let mut outgoing = gw
            .client
            .post(upstream.detect_url())
            .timeout(remaining)
            .header(header::CONTENT_TYPE, content_type.clone())
            .header("x-request-id", request_id)
            .header(TIMEOUT_HEADER, worker_budget(remaining).as_millis().to_string())
            .body(bytes.clone());
        if let Some(authorization) = &authorization {
            outgoing = outgoing.header(header::AUTHORIZATION, authorization.clone());
        }
        for (name, value) in tried.context_headers(sending.headers) {
            outgoing = outgoing.header(name, value);
        }
        let sent = Instant::now();
        let result = outgoing.send().await;
        gw.metrics.upstream_seconds.with_label_values(&labels).observe(sent.elapsed().as_secs_f64());
        let response = match result {
            Ok(response) => response,
            Err(e) if e.is_timeout() && !e.is_connect() => {
                record(Attempt::Timeout);
                tried.status_error("timed out".into());
                return Err(ApiError::DeadlineExceeded);
            }
            Err(e) => {
                // Refused, reset, closed mid-answer (a killed worker): detection is idempotent,
                // so another worker may answer it.
                record(Attempt::Transport);
                let reason = error_chain(&e);
                tried.status_error(reason.clone());
                fail(&reason);
                continue;
            }
        };
        let status = response.status();
        tried.set(|| vec![KeyValue::new("http.response.status_code", i64::from(status.as_u16()))]);
        if status.is_server_error() {
            tried.status_error(format!("status {}", status.as_u16()));
        }
        if status == StatusCode::OK {
            record(Attempt::Ok);
            if !read_whole {
                let response = relay_stream(response, flight, pool, attempts.count());
                return Ok(Dispatched::Relayed(response, "ok".into()));
            }
            let relayed = Relayed::read(response, pool, attempts.count(), deadline)
                .await
                .map_err(|e| ApiError::Internal(format!("reading the worker's answer: {e}")))?;
            return with_reused(gw, plan, relayed, request_id);
        }
        // An error answer is small: read it whole, to learn its code and free the connection.
        let relayed = match Relayed::read(response, pool, attempts.count(), deadline).await {
            Ok(relayed) => relayed,
            Err(e) => {
                record(Attempt::Transport);
                fail(&format!("reading the answer: {e}"));
                continue;
            }
        };
        drop(flight);
        match status.as_u16() {
            429 => {
                record(Attempt::Overloaded);
                refused = Some(relayed);
            }
            503 => {
                record(Attempt::Unavailable);
                fail("503");
                refused = Some(relayed);
            }
            // A load balancer's 502: the instance behind it failed (a restart, a crash), and
            // another one may answer.
            502 if upstream.is_load_balancer() => {
                record(Attempt::Transport);
                fail("502 from the load balancer");
                refused = Some(relayed);
            }
            504 => {
                record(Attempt::Timeout);
                return Ok(relayed.relay());
            }
            500..=599 => {
                record(Attempt::ServerError);
                fail(&format!("status {status}"));
                return Ok(relayed.relay());
            }
            _ => {
                record(Attempt::ClientError);
                return Ok(relayed.relay());
            }
        }
    }
    // Every worker tried refused (429/503): the last refusal tells the client when to retry.
    if let Some(refused) = refused {
        return Ok(refused.relay());
    }
    if Instant::now() >= deadline {
        return Err(ApiError::DeadlineExceeded);
    }
    Err(ApiError::NoUpstream)
}

/// A multipart detect body asking `keys` (`q:` question, `b:` behaviour) about `image`.
fn questions_form(image: &[u8], keys: &[&str], mode: detect::Mode, camera: Option<&CameraId>) -> (HeaderValue, Bytes) {
    let boundary = format!("blipserve-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::with_capacity(image.len() + 512);
    let mut part = |name: &str, value: &[u8]| {
        let filename = if name == "image" { "; filename=\"frame\"" } else { "" };
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    };
    part("image", image);
    for key in keys {
        match key.split_at(2) {
            ("q:", question) => part("question", question.as_bytes()),
            (_, behavior) => part("behavior", behavior.as_bytes()),
        }
    }
    part("mode", mode.as_str().as_bytes());
    if let Some(camera) = camera {
        part("camera", camera.as_str().as_bytes());
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type = HeaderValue::try_from(format!("multipart/form-data; boundary={boundary}")).expect("ASCII");
    (content_type, Bytes::from(body))
}

/// The worker's answer, read whole; with a camera's plan, merged with the reused answers, and the
/// fresh ones stored for the camera without delaying the client.
fn with_reused(gw: &Gateway, plan: Option<Plan>, relayed: Relayed, request_id: &str) -> Result<Dispatched, ApiError> {
    let mut body: detect::DetectResponse = serde_json::from_slice(&relayed.body)
        .map_err(|e| ApiError::Internal(format!("the worker's answer does not parse: {e}")))?;
    if let Some(plan) = plan {
        let fresh = std::mem::take(&mut body.answers);
        body.answers = plan.merge(fresh.clone());
        body.camera = Some(plan.describe());
        let (cameras, model, request_id) = (gw.cameras.clone(), body.model.clone(), request_id.to_string());
        tokio::spawn(async move { cameras.record(plan, &fresh, &model, &request_id).await });
    }
    Ok(Dispatched::Answer(body, relayed.headers))
}

/// The worker's headers on the gateway's own rendering of its answer (but the body's).
fn copy_answer_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            to.insert(name.clone(), value.clone());
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Headers that belong to one connection, not to the message.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, pool: &Pool, attempts: usize) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&pool.name) {
        to.insert("x-blipserve-pool", v);
    }
    to.insert("x-blipserve-backend", HeaderValue::from_static(pool.backend.as_str()));
    to.insert("x-blipserve-attempts", HeaderValue::from(attempts));
}

/// The worker's answer, streamed to the client as it arrives.
fn relay_stream(response: reqwest::Response, flight: pools::InFlight, pool: &Pool, attempts: usize) -> Response {
    let status = response.status();
    let mut headers = HeaderMap::new();
    copy_headers(response.headers(), &mut headers, pool, attempts);
    // The worker stays counted in flight until its body has been relayed.
    let body = Body::from_stream(response.bytes_stream().map(move |chunk| {
        let _ = &flight;
        chunk
    }));
    let mut relayed = Response::new(body);
    *relayed.status_mut() = status;
    *relayed.headers_mut() = headers;
    relayed
}

/// A worker's error answer, read whole.
struct Relayed {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The worker's error code, the outcome label.
    code: String,
}

impl Relayed {
    const LIMIT: usize = 1 << 20;

    async fn read(
        response: reqwest::Response,
        pool: &Pool,
        attempts: usize,
        deadline: Instant,
    ) -> Result<Relayed, String> {
        let status = response.status();
        let mut headers = HeaderMap::new();
        copy_headers(response.headers(), &mut headers, pool, attempts);
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        let read = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| error_chain(&e))?;
                if body.len() + chunk.len() > Self::LIMIT {
                    return Err(format!("an error answer over {} bytes", Self::LIMIT));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline.into(), read).await {
            Err(_) => return Err("the deadline passed".into()),
            Ok(result) => result?,
        }
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string))
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .unwrap_or_else(|| format!("upstream_{}", status.as_u16()));
        headers.remove(header::CONTENT_LENGTH);
        Ok(Relayed { status, headers, body: Bytes::from(body), code })
    }

    fn relay(self) -> Dispatched {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        Dispatched::Relayed(response, self.code)
    }
}

/// The gateway's gRPC door: the Open Inference Protocol translated to detect requests, as over
/// HTTP (same checks, reuse, forwarding and retries).
pub struct GrpcDoor(pub Arc<Gateway>);

#[tonic::async_trait]
impl crate::grpc::Backend for GrpcDoor {
    async fn model_id(&self) -> Option<String> {
        model_id(&self.0).await
    }

    fn ready(&self) -> bool {
        self.0.readiness() == crate::http::Readiness::Ready
    }

    async fn answer(
        &self,
        raw: detect::RawDetect,
        request_id: String,
        headers: HeaderMap,
        traced: Traced,
    ) -> Result<detect::DetectResponse, tonic::Status> {
        let gw = &self.0;
        let mut outcome = gw.metrics.requests.begin();
        let answered = async {
            http::authorize(&gw.settings.api_keys, &headers)?;
            let started = Instant::now();
            let deadline = started + gw.settings.limits.request_timeout;
            let sending = Sending { request_id: &request_id, headers: &headers, started, deadline, traced: &traced };
            dispatch(gw, &sending, raw, None).await
        };
        match answered.await {
            Ok(Dispatched::Answer(body, _)) => {
                outcome.finish("ok", 200);
                Ok(body)
            }
            Ok(Dispatched::Relayed(response, code)) => {
                let status = response.status().as_u16();
                outcome.finish(&code, status);
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
                let message = serde_json::from_slice::<crate::http::error::ErrorBody>(&bytes)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| format!("a worker answered {status}"));
                Err(crate::grpc::status_of(status, message))
            }
            Err(e) => {
                outcome.finish(e.code(), e.status().as_u16());
                traced.fail(&e);
                Err(crate::grpc::status(&e))
            }
        }
    }
}
