//! `POST /v1/detect`: read the body within its limits, authorise, check, answer through the
//! [`crate::infer::Infer`] facade, render.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use blipserve_api::detect::{self, DetectResponse, RawDetect};
use blipserve_api::http::body::{self, Admitted};
use blipserve_api::http::error::ApiError;
use blipserve_api::http::RequestId;
use blipserve_api::oip;
use blipserve_api::otel::Traced;

use super::AppState;

pub async fn detect(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    traced: Traced,
    request: Request,
) -> Response {
    let answering = async {
        let Admitted { headers, body, started, deadline } = admit(&state, request).await?;
        let raw = body::parse_body(&headers, body).await?;
        render(answer(&state, request_id.clone(), raw, (started, deadline), &traced).await?)
    };
    counted(&state, "detect", &request_id, &traced, answering, IntoResponse::into_response).await.unwrap_or_else(|e| e)
}

/// `POST /v2/models/{name}/infer`: the Open Inference Protocol's request, answered as a detect
/// request is.
pub async fn infer_v2(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(params): Path<Vec<(String, String)>>,
    traced: Traced,
    request: Request,
) -> Response {
    let model = params.iter().find(|(k, _)| k == "name").map(|(_, v)| v.clone()).unwrap_or_default();
    let answering = async {
        if model != state.infer.model_id {
            return Err(ApiError::UnknownModel(model.clone()));
        }
        let Admitted { headers, body, started, deadline } = admit(&state, request).await?;
        let parsed = oip::parse(&headers, &body)?;
        let answer = answer(&state, request_id.clone(), parsed.raw, (started, deadline), &traced).await?;
        Ok(oip::render(&answer, &state.infer.model_id, parsed.id, &parsed.outputs))
    };
    counted(&state, "infer", &request_id, &traced, answering, oip::error).await.unwrap_or_else(|e| e)
}

/// [`body::admit`] with this server's limits and keys, checking that its replicas are ready.
async fn admit(state: &AppState, request: Request) -> Result<Admitted, ApiError> {
    let infer = &state.infer;
    body::admit(request, infer.limits(), &state.api_keys, || infer.check_ready()).await
}

/// Every door's bookkeeping around `answering`: the request counted in the metrics with its
/// outcome; a refusal logged, marked on the request's span and turned into the door's own error
/// answer by `refuse` (JSON, the Open Inference Protocol's, a gRPC status).
pub(super) async fn counted<T, E>(
    state: &AppState,
    door: &str,
    request_id: &str,
    traced: &Traced,
    answering: impl Future<Output = Result<T, ApiError>>,
    refuse: impl FnOnce(ApiError) -> E,
) -> Result<T, E> {
    let mut outcome = state.requests.begin();
    match answering.await {
        Ok(answer) => {
            outcome.finish("ok", 200);
            Ok(answer)
        }
        Err(e) => {
            tracing::info!(request_id, door, code = e.code(), error = %e, "request refused");
            traced.fail(&e);
            outcome.finish(e.code(), e.status().as_u16());
            Err(refuse(e))
        }
    }
}

/// Checks a request that arrived at `started` and answers it before `deadline`: from the
/// camera's stored answers where they hold, from the model for the rest. The checks and the
/// model's stages are spans of `traced`.
pub(super) async fn answer(
    state: &AppState,
    request_id: String,
    raw: RawDetect,
    (started, deadline): (Instant, Instant),
    traced: &Traced,
) -> Result<DetectResponse, ApiError> {
    let infer = &state.infer;
    let checked = detect::check(raw, infer.limits(), Some(infer.behaviors()))?;
    let mode = checked.mode;

    let Some((cameras, camera)) = state.cameras.as_ref().zip(checked.camera.clone()) else {
        traced.record("checks", started, Instant::now(), Vec::new);
        let detection = infer.detect(checked, started, deadline, traced).await?;
        return Ok(DetectResponse {
            request_id,
            model: infer.model_id.clone(),
            mode,
            answers: detection.answers,
            timings_ms: detection.timings,
            batch_frames: detection.batch_frames,
            camera: None,
        });
    };
    cameras.admit(&camera).await?;
    let plan = cameras.plan(&camera, &checked).await;
    let pending = plan.pending();
    traced.record("checks", started, Instant::now(), Vec::new);
    if pending.is_empty() {
        return Ok(plan.response(request_id, mode, started));
    }
    let detection = infer.detect(checked.only(&pending), started, deadline, traced).await?;
    let body = DetectResponse {
        request_id: request_id.clone(),
        model: infer.model_id.clone(),
        mode,
        answers: plan.merge(detection.answers.clone()),
        timings_ms: detection.timings,
        batch_frames: detection.batch_frames,
        camera: Some(plan.describe()),
    };
    // The answer does not wait for the store.
    let (cameras, model) = (cameras.clone(), infer.model_id.clone());
    tokio::spawn(async move { cameras.record(plan, &detection.answers, &model, &request_id).await });
    Ok(body)
}

/// The answer, its timings also as headers.
fn render(body: DetectResponse) -> Result<Response, ApiError> {
    let t = body.timings_ms;
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-queue-ms", t.queue),
        ("x-preprocess-ms", t.preprocess),
        ("x-inference-ms", t.inference),
        ("x-total-ms", t.total),
    ] {
        headers.insert(name, number(value)?);
    }
    let server_timing = format!(
        "queue;dur={:.3}, preprocess;dur={:.3}, inference;dur={:.3}, total;dur={:.3}",
        t.queue, t.preprocess, t.inference, t.total
    );
    headers
        .insert("server-timing", HeaderValue::try_from(server_timing).map_err(|e| ApiError::Internal(e.to_string()))?);
    Ok((headers, Json(body)).into_response())
}

fn number(value: f64) -> Result<HeaderValue, ApiError> {
    HeaderValue::try_from(format!("{value:.3}")).map_err(|e| ApiError::Internal(e.to_string()))
}
