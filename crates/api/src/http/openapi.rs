//! The OpenAPI document of each role, generated from the request and response types (utoipa), so
//! that it cannot drift from what the service answers; error responses are generated from
//! [`ApiError::catalogue`]. The limits in force are filled in when the document is served.

use std::collections::BTreeMap;

use axum::response::Html;
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ApiError, ErrorBody};
use super::{Health, Readiness, Ready};
use crate::backend::Backend;
use crate::detect::{AnswerOut, BehaviorOut, Behaviors, DetectForm, DetectResponse, JsonDetect, Mode, Timings};
use crate::gateway::admin::{PoolView, PoolsView, Recent, WeightBody, WeightsBody, WorkerView};
use crate::gateway::{Forwarding, GatewayInfo, PoolInfo};
use crate::info::{Batching, ModelInfo, ReplicaPlacement, ServeInfo};
use crate::oip::InferError;
use crate::settings::{LimitsInfo, RequestLimits};

/// The inference tier: `serve` and `worker`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "blipserve",
        description = "Answers behaviour questions about pet-camera frames with BLIP visual question answering."
    ),
    paths(
        detect, behaviors, serve_info, health, ready, metrics, openapi_json, docs, v2_server, v2_live, v2_ready,
        v2_model, v2_model_ready, v2_infer
    ),
    components(schemas(
        Mode, JsonDetect, DetectForm, DetectResponse, AnswerOut, Timings, BehaviorOut, Behaviors, ErrorBody,
        Health, Ready, Readiness, ServeInfo, ModelInfo, ReplicaPlacement, Batching, LimitsInfo, Backend,
        InferError
    )),
    modifiers(&BearerScheme)
)]
struct ServeApi;

/// The API tier: `gateway`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "blipserve gateway",
        description = "The API tier of blipserve: checks detect requests with the same limits and errors as a \
                       worker, then forwards them unchanged to weighted pools of inference workers \
                       (`blipserve worker`), retrying on another worker when one is unreachable, unavailable \
                       (503) or overloaded (429). Responses carry x-blipserve-pool, x-blipserve-backend and \
                       x-blipserve-attempts."
    ),
    paths(
        detect, behaviors, gateway_info, health, ready, metrics, openapi_json, docs, admin_pools, admin_set_weights,
        admin_set_weight, v2_server, v2_live, v2_ready, v2_model, v2_model_ready, v2_infer
    ),
    components(schemas(
        Mode, JsonDetect, DetectForm, DetectResponse, AnswerOut, Timings, BehaviorOut, Behaviors, ErrorBody,
        Health, Ready, Readiness, GatewayInfo, PoolInfo, Forwarding, LimitsInfo, Backend, PoolsView, PoolView,
        WorkerView, Recent, WeightsBody, WeightBody, InferError
    )),
    modifiers(&BearerScheme)
)]
struct GatewayApi;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document `serve` and `worker` serve at /openapi.json.
pub fn serve(limits: &RequestLimits) -> Value {
    let mut doc = serde_json::to_value(ServeApi::openapi()).unwrap_or_default();
    finish(&mut doc, limits, false);
    // SageMaker's hosting contract: the same operations under the names it calls.
    alias(&mut doc, "/ping", "get", "/ready", "ping", "SageMaker's health check: the same as /ready");
    alias(
        &mut doc,
        "/invocations",
        "post",
        "/v1/detect",
        "invocations",
        "SageMaker's inference call: the same as /v1/detect",
    );
    doc
}

/// The document the gateway serves at /openapi.json.
pub fn gateway(limits: &RequestLimits) -> Value {
    let mut doc = serde_json::to_value(GatewayApi::openapi()).unwrap_or_default();
    finish(&mut doc, limits, true);
    doc
}

/// `path` answers as `from` does (another name for the same operation).
fn alias(doc: &mut Value, path: &str, method: &str, from: &str, id: &str, summary: &str) {
    let mut operation = doc["paths"][from][method].clone();
    operation["operationId"] = json!(id);
    operation["summary"] = json!(summary);
    doc["paths"][path] = json!({ method: operation });
}

/// Fills in what is known only at run time (the limits, the version) and the error responses.
fn finish(doc: &mut Value, limits: &RequestLimits, gateway: bool) {
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let summary = "Open Inference Protocol inference, by version (there is one, \"1\")";
    alias(
        doc,
        "/v2/models/{name}/versions/{version}/infer",
        "post",
        "/v2/models/{name}/infer",
        "v2_infer_version",
        summary,
    );
    if let Some(params) =
        doc["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"].as_array_mut()
    {
        params.push(json!({"name": "version", "in": "path", "required": true, "schema": {"type": "string"}}));
    }
    let detect = &mut doc["paths"]["/v1/detect"]["post"];
    let mut description = format!(
        "One image and up to {} questions (free text and/or catalogue behaviours), each at most {} characters. Body \
         at most {} bytes. Requests are answered within {} ms or fail with 504.",
        limits.max_questions,
        limits.max_question_chars,
        limits.max_body_bytes,
        limits.request_timeout.as_millis()
    );
    if gateway {
        description.push_str(
            " The gateway checks everything that needs no model (body size, content type, JSON/multipart syntax, \
             question count and length, mode, image format and dimensions from its header) and forwards the body as \
             received; the worker checks the rest (behaviour names, token limits, decoding) and its refusals are \
             passed through unchanged.",
        );
    }
    detect["description"] = json!(description);
    let detect_errors = ApiError::catalogue().into_iter().filter(|e| {
        !e.is_admin()
            && !matches!(e, ApiError::BadInferRequest(_) | ApiError::UnknownModel(_))
            && (gateway || !matches!(e, ApiError::NoUpstream))
    });
    add_errors(detect, detect_errors);
    if gateway {
        for path in ["/admin/pools", "/admin/pools/{name}"] {
            // POST is PUT's twin (for clients that cannot send PUT).
            let mut post = doc["paths"][path]["put"].clone();
            let id = post["operationId"].as_str().unwrap_or_default().to_string();
            post["operationId"] = json!(format!("{id}_post"));
            doc["paths"][path]["post"] = post;
        }
        let admin = |writes: bool| {
            let mut errors = vec![ApiError::AdminDisabled, ApiError::AdminUnauthorized];
            if writes {
                errors.extend([ApiError::BadRequest(String::new()), ApiError::UnknownPool(String::new())]);
            }
            errors.into_iter()
        };
        add_errors(&mut doc["paths"]["/admin/pools"]["get"], admin(false));
        for (path, method) in [
            ("/admin/pools", "put"),
            ("/admin/pools", "post"),
            ("/admin/pools/{name}", "put"),
            ("/admin/pools/{name}", "post"),
        ] {
            add_errors(&mut doc["paths"][path][method], admin(true));
        }
    }
}

/// One response per status, listing the codes it carries.
fn add_errors(operation: &mut Value, errors: impl Iterator<Item = ApiError>) {
    let mut by_status: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    for e in errors {
        let codes = by_status.entry(e.status().as_u16()).or_default();
        if !codes.contains(&e.code()) {
            codes.push(e.code());
        }
    }
    for (status, codes) in by_status {
        operation["responses"][status.to_string()] = json!({
            "description": codes.join(", "),
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
        });
    }
}

#[utoipa::path(
    post,
    path = "/v1/detect",
    summary = "Answer questions about one frame",
    params(
        ("x-request-id" = Option<String>, Header, description = "Echoed back; generated when absent (at most 128 printable characters)."),
        ("x-request-timeout-ms" = Option<u64>, Header, description = "How long the client still waits, in ms: shortens (never lengthens) the request's deadline. The gateway sends it to the worker with what is left of the deadline.")
    ),
    request_body(content(
        (JsonDetect = "application/json"),
        (DetectForm = "multipart/form-data")
    )),
    responses((
        status = 200,
        description = "Answers, in the order asked (questions, then behaviours). Timings are also sent as x-queue-ms, x-preprocess-ms, x-inference-ms, x-total-ms and Server-Timing.",
        body = DetectResponse,
        headers(("x-request-id" = String), ("x-total-ms" = f64))
    )),
    security((), ("bearer" = []))
)]
#[allow(dead_code)]
fn detect() {}

#[utoipa::path(get, path = "/v1/behaviors", summary = "The behaviour catalogue (on the gateway: as a worker reports it)", responses((status = 200, body = Behaviors)))]
#[allow(dead_code)]
fn behaviors() {}

#[utoipa::path(get, path = "/v1/info", summary = "Model, device, replicas, batching, limits and version", responses((status = 200, body = ServeInfo)))]
#[allow(dead_code)]
fn serve_info() {}

#[utoipa::path(get, path = "/v1/info", summary = "Pools, limits, forwarding settings and version", responses((status = 200, body = GatewayInfo)))]
#[allow(dead_code)]
fn gateway_info() {}

#[utoipa::path(get, path = "/health", summary = "Liveness: the process answers", responses((status = 200, body = Health)))]
#[allow(dead_code)]
fn health() {}

#[utoipa::path(
    get,
    path = "/ready",
    summary = "Readiness for the load balancer: loaded and warmed (gateway: a worker is healthy), not draining",
    responses((status = 200, body = Ready), (status = 503, description = "Loading, draining or (gateway) no healthy worker", body = Ready))
)]
#[allow(dead_code)]
fn ready() {}

#[utoipa::path(get, path = "/metrics", summary = "Prometheus metrics", responses((status = 200, description = "Text exposition format", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", summary = "This document", responses((status = 200, description = "OpenAPI", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

#[utoipa::path(get, path = "/docs", summary = "A page that renders this document", responses((status = 200, description = "HTML", body = String, content_type = "text/html")))]
#[allow(dead_code)]
fn docs() {}

#[utoipa::path(
    get,
    path = "/admin/pools",
    summary = "The pools: weights, traffic shares, and per worker health, in-flight requests and the last minute's error rate",
    responses((status = 200, body = PoolsView)),
    security(("bearer" = []))
)]
#[allow(dead_code)]
fn admin_pools() {}

#[utoipa::path(
    put,
    path = "/admin/pools",
    summary = "Set the weights of some pools, live (a SIGHUP reload puts the file's back); POST does the same",
    request_body = WeightsBody,
    responses((status = 200, description = "The pools after the change", body = PoolsView)),
    security(("bearer" = []))
)]
#[allow(dead_code)]
fn admin_set_weights() {}

#[utoipa::path(
    put,
    path = "/admin/pools/{name}",
    summary = "Set one pool's weight, live; POST does the same",
    params(("name" = String, Path, description = "The pool")),
    request_body = WeightBody,
    responses((status = 200, description = "The pools after the change", body = PoolsView)),
    security(("bearer" = []))
)]
#[allow(dead_code)]
fn admin_set_weight() {}

#[utoipa::path(get, path = "/v2", summary = "Open Inference Protocol: server metadata (name, version, extensions: binary_tensor_data)", responses((status = 200, description = "Server metadata", body = Object)))]
#[allow(dead_code)]
fn v2_server() {}

#[utoipa::path(get, path = "/v2/health/live", summary = "Open Inference Protocol: liveness", responses((status = 200, description = "Live")))]
#[allow(dead_code)]
fn v2_live() {}

#[utoipa::path(get, path = "/v2/health/ready", summary = "Open Inference Protocol: readiness, as /ready", responses((status = 200, description = "Ready"), (status = 503, description = "Loading, draining or failing")))]
#[allow(dead_code)]
fn v2_ready() {}

#[utoipa::path(
    get,
    path = "/v2/models/{name}",
    summary = "Open Inference Protocol: model metadata (inputs IMAGE, QUESTION, BEHAVIOR; outputs PROBABILITY, ANSWER)",
    params(("name" = String, Path, description = "The model's id, as /v1/info shows it")),
    responses((status = 200, description = "Model metadata", body = Object), (status = 404, description = "unknown_model", body = InferError))
)]
#[allow(dead_code)]
fn v2_model() {}

#[utoipa::path(
    get,
    path = "/v2/models/{name}/ready",
    summary = "Open Inference Protocol: model readiness",
    params(("name" = String, Path, description = "The model's id")),
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready"), (status = 404, description = "unknown_model", body = InferError))
)]
#[allow(dead_code)]
fn v2_model_ready() {}

#[utoipa::path(
    post,
    path = "/v2/models/{name}/infer",
    summary = "Open Inference Protocol inference: one frame and its questions, answered as /v1/detect answers them",
    description = "Inputs: IMAGE (BYTES [1], the encoded frame; base64 in JSON data), QUESTION (BYTES [n]), BEHAVIOR (BYTES [m], optional). Parameters: mode, camera, reuse. Outputs: PROBABILITY (FP32 [n+m], NaN/null in generate mode) and ANSWER (BYTES [n+m]). The binary tensor data extension is supported both ways: with an Inference-Header-Content-Length header the body is that many bytes of JSON, then the inputs' binary data (each BYTES element a little-endian u32 length and its bytes); outputs asked with binary_data (or the binary_data_output parameter) come back the same way. Errors are {\"error\": message} with /v1/detect's status for the same fault.",
    params(
        ("name" = String, Path, description = "The model's id, as /v1/info shows it"),
        ("inference-header-content-length" = Option<u64>, Header, description = "Binary extension: bytes of JSON at the start of the body")
    ),
    request_body(content((Object = "application/json"), (Object = "application/octet-stream"))),
    responses(
        (status = 200, description = "Outputs (JSON, or JSON then binary data with Inference-Header-Content-Length)", body = Object),
        (status = 400, description = "A malformed request: wrong datatype or shape, a missing or unknown input, bad binary lengths; or a detect check (no image, no question, a corrupt frame…)", body = InferError),
        (status = 404, description = "unknown_model", body = InferError),
        (status = 413, description = "body or image too large", body = InferError),
        (status = 429, description = "overloaded, camera_rate_limited", body = InferError),
        (status = 503, description = "not ready, shutting down", body = InferError),
        (status = 504, description = "deadline exceeded", body = InferError)
    ),
    security((), ("bearer" = []))
)]
#[allow(dead_code)]
fn v2_infer() {}

pub async fn docs_page() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>blipserve API</title>
<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f4f4f4}h2{margin-top:2rem}.m{font-weight:bold;text-transform:uppercase}</style></head>
<body><h1>blipserve API</h1><p>Rendered from <a href="/openapi.json">/openapi.json</a>.</p><div id="api"></div>
<script>
fetch('/openapi.json').then(r => r.json()).then(spec => {
  const root = document.getElementById('api');
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const h = document.createElement('h2');
      h.innerHTML = `<span class="m">${method}</span> <code>${path}</code>`;
      root.appendChild(h);
      const p = document.createElement('p');
      p.textContent = (op.summary || '') + (op.description ? ' — ' + op.description : '');
      root.appendChild(p);
      const ul = document.createElement('ul');
      for (const [code, r] of Object.entries(op.responses || {})) {
        const li = document.createElement('li');
        li.textContent = `${code}: ${r.description}`;
        ul.appendChild(li);
      }
      root.appendChild(ul);
    }
  }
});
</script></body></html>"#;
