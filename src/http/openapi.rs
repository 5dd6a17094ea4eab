//! The OpenAPI document for every route, and a small page that renders it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::config::RequestLimits;

/// Which service the document describes.
pub(crate) struct Described {
    pub limits: RequestLimits,
    /// The behaviour catalogue's names; the gateway does not know them (its workers do).
    pub behaviors: Option<Vec<String>>,
    /// The gateway: detect is forwarded to workers, and the admin API exists.
    pub gateway: bool,
}

pub async fn document(State(state): State<Arc<AppState>>) -> Json<Value> {
    let behaviors = state.behaviors.iter().map(|(name, _)| name.clone()).collect();
    Json(spec(&Described { limits: state.limits, behaviors: Some(behaviors), gateway: false }))
}

pub async fn docs_page() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

pub(crate) fn spec(described: &Described) -> Value {
    let limits = described.limits;
    let behavior_name = match &described.behaviors {
        Some(names) => json!({ "type": "string", "enum": names }),
        None => json!({ "type": "string", "description": "a name from GET /v1/behaviors" }),
    };
    let mut spec = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "blipserve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Answers behaviour questions about pet-camera frames with BLIP visual question answering."
        },
        "paths": {
            "/v1/detect": {
                "post": {
                    "summary": "Answer questions about one frame",
                    "description": format!(
                        "One image and up to {} questions (free text and/or catalogue behaviours), each at most {} \
                         characters. Body at most {} bytes. Requests are answered within {} ms or fail with 504.",
                        limits.max_questions, limits.max_question_chars, limits.max_body_bytes,
                        limits.request_timeout.as_millis()
                    ),
                    "security": [{ "bearer": [] }, {}],
                    "parameters": [{
                        "name": "x-request-id", "in": "header", "required": false,
                        "schema": { "type": "string", "maxLength": 128 },
                        "description": "Echoed back; generated when absent."
                    }, {
                        "name": "x-request-timeout-ms", "in": "header", "required": false,
                        "schema": { "type": "integer", "minimum": 0 },
                        "description": "How long the client still waits, in ms: shortens (never lengthens) the request's deadline. The gateway sends it to the worker with what is left of the deadline."
                    }],
                    "requestBody": {
                        "required": true,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": { "type": "string", "format": "binary", "description": "JPEG, PNG, WebP, GIF or BMP" },
                                        "question": { "type": "array", "items": { "type": "string" }, "description": "repeatable" },
                                        "behavior": { "type": "array", "items": behavior_name, "description": "repeatable" },
                                        "mode": { "$ref": "#/components/schemas/Mode" }
                                    }
                                }
                            },
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "additionalProperties": false,
                                    "properties": {
                                        "image": { "type": "string", "format": "byte", "description": "base64 (a data: URL prefix is accepted)" },
                                        "questions": { "type": "array", "items": { "type": "string" } },
                                        "behaviors": { "type": "array", "items": behavior_name },
                                        "mode": { "$ref": "#/components/schemas/Mode" }
                                    }
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": {
                            "description": "Answers, in the order asked (questions, then behaviours). Timings are also sent as x-queue-ms, x-preprocess-ms, x-inference-ms, x-total-ms and Server-Timing.",
                            "headers": {
                                "x-request-id": { "schema": { "type": "string" } },
                                "x-total-ms": { "schema": { "type": "number" } }
                            },
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/DetectResponse" } } }
                        },
                        "400": error_response("Invalid request: bad_json, bad_multipart, bad_base64, missing_image, bad_image, no_question, too_many_questions, empty_question, question_too_long, bad_question, unknown_behavior, bad_mode"),
                        "401": error_response("unauthorized: API keys are configured and none matched"),
                        "413": error_response("body_too_large, or image_too_large (dimensions over the limit)"),
                        "415": error_response("unsupported_media_type (not multipart/form-data or application/json), or unsupported_image_format"),
                        "429": error_response("overloaded: the queue is full; retry after the Retry-After header's seconds"),
                        "500": error_response("internal"),
                        "503": error_response("not_ready (model loading) or shutting_down"),
                        "504": error_response("deadline_exceeded")
                    }
                }
            },
            "/v1/behaviors": {
                "get": {
                    "summary": "The behaviour catalogue",
                    "responses": { "200": { "description": "Catalogue", "content": { "application/json": { "schema": {
                        "type": "object", "required": ["behaviors"],
                        "properties": { "behaviors": { "type": "array", "items": { "$ref": "#/components/schemas/Behavior" } } }
                    } } } } }
                }
            },
            "/v1/info": {
                "get": {
                    "summary": "Model, device, replicas, limits and version",
                    "responses": { "200": { "description": "Service information", "content": { "application/json": { "schema": { "type": "object" } } } } }
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness: the process answers",
                    "responses": { "200": { "description": "Alive", "content": { "application/json": { "schema": {
                        "type": "object", "properties": { "status": { "type": "string", "enum": ["alive"] } }
                    } } } } }
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness for the load balancer: every model replica loaded and warmed, not draining",
                    "responses": {
                        "200": { "description": "Ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Ready" } } } },
                        "503": { "description": "Loading or draining", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Ready" } } } }
                    }
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": { "200": { "description": "Text exposition format", "content": { "text/plain": { "schema": { "type": "string" } } } } }
                }
            },
            "/openapi.json": {
                "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.0", "content": { "application/json": { "schema": { "type": "object" } } } } } }
            },
            "/docs": {
                "get": { "summary": "A page that renders this document", "responses": { "200": { "description": "HTML", "content": { "text/html": { "schema": { "type": "string" } } } } } }
            }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Mode": { "type": "string", "enum": ["yesno", "generate"], "default": "yesno" },
                "Error": {
                    "type": "object", "required": ["error", "code"],
                    "properties": { "error": { "type": "string" }, "code": { "type": "string" } }
                },
                "Behavior": {
                    "type": "object", "required": ["name", "question", "threshold"],
                    "properties": {
                        "name": { "type": "string" }, "question": { "type": "string" },
                        "threshold": { "type": "number", "minimum": 0, "maximum": 1 }
                    }
                },
                "Ready": {
                    "type": "object", "required": ["ready", "status"],
                    "properties": { "ready": { "type": "boolean" }, "status": { "type": "string", "enum": ["ready", "loading", "draining", "no_upstream"] } }
                },
                "Answer": {
                    "type": "object", "required": ["question", "answer"],
                    "properties": {
                        "question": { "type": "string" },
                        "answer": { "type": "string", "description": "yes/no in yesno mode, generated text in generate mode" },
                        "probability": { "type": "number", "minimum": 0, "maximum": 1, "description": "P(yes | yes or no); yesno mode only" },
                        "behavior": { "type": "string", "description": "the catalogue behaviour this question came from" },
                        "detected": { "type": "boolean", "description": "probability ≥ the behaviour's threshold; yesno mode, behaviours only" }
                    }
                },
                "DetectResponse": {
                    "type": "object", "required": ["request_id", "model", "mode", "answers", "timings_ms", "batch_frames"],
                    "properties": {
                        "request_id": { "type": "string" },
                        "model": { "type": "string" },
                        "mode": { "$ref": "#/components/schemas/Mode" },
                        "answers": { "type": "array", "items": { "$ref": "#/components/schemas/Answer" } },
                        "timings_ms": {
                            "type": "object", "required": ["queue", "preprocess", "inference", "total"],
                            "properties": {
                                "queue": { "type": "number" }, "preprocess": { "type": "number" },
                                "inference": { "type": "number" }, "total": { "type": "number" }
                            }
                        },
                        "batch_frames": { "type": "integer", "minimum": 1 }
                    }
                }
            }
        }
    });
    if described.gateway {
        add_gateway(&mut spec);
    }
    spec
}

/// What differs on `blipserve gateway`: detect is forwarded, and the admin API.
fn add_gateway(spec: &mut Value) {
    spec["info"]["description"] = json!(
        "The API tier of blipserve: validates detect requests with the same limits and errors as a worker, then \
         forwards them unchanged to weighted pools of inference workers (`blipserve worker`), retrying on another \
         worker when one is unreachable, unavailable (503) or overloaded (429)."
    );
    let detect = &mut spec["paths"]["/v1/detect"]["post"];
    detect["description"] = json!(format!(
        "{} The gateway checks everything that needs no model (body size, content type, JSON/multipart syntax, \
         question count and length, mode, image format and dimensions from its header) and forwards the body as \
         received; the worker checks the rest (behaviour names, token limits, decoding) and its refusals are passed \
         through unchanged. The responses carry x-blipserve-pool, x-blipserve-backend and x-blipserve-attempts.",
        detect["description"].as_str().unwrap_or_default()
    ));
    detect["responses"]["503"] = error_response(
        "no_upstream (no healthy worker could take the request), or a worker's not_ready / shutting_down after \
         every retry",
    );
    spec["paths"]["/ready"]["get"]["summary"] =
        json!("Readiness: at least one worker healthy, not draining (503 with status no_upstream or draining)");
    spec["paths"]["/v1/behaviors"]["get"]["summary"] = json!("The behaviour catalogue, as a worker reports it");
    let admin_error = |d: &str| error_response(d);
    let pools_body = json!({
        "required": true,
        "content": { "application/json": { "schema": {
            "type": "object", "required": ["weights"], "additionalProperties": false,
            "properties": { "weights": { "type": "object", "additionalProperties": { "type": "integer", "minimum": 0, "maximum": 1_000_000 },
                "description": "pool name → weight; pools not named keep theirs" } }
        } } }
    });
    let pool_body = json!({
        "required": true,
        "content": { "application/json": { "schema": {
            "type": "object", "required": ["weight"], "additionalProperties": false,
            "properties": { "weight": { "type": "integer", "minimum": 0, "maximum": 1_000_000 } }
        } } }
    });
    let pools_ok = json!({ "description": "The pools after the change", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Pools" } } } });
    let write = |summary: &str, body: &Value, extra: Option<Value>| {
        let mut responses = json!({
            "200": pools_ok,
            "400": admin_error("bad_request: malformed body, a weight over 1000000, or every weight 0"),
            "401": admin_error("unauthorized: wrong or missing admin key"),
            "403": admin_error("admin_disabled: the gateway runs without an admin key"),
        });
        if let Some(extra) = extra {
            responses["404"] = extra;
        }
        json!({ "summary": summary, "security": [{ "bearer": [] }], "requestBody": body, "responses": responses })
    };
    spec["paths"]["/admin/pools"] = json!({
        "get": {
            "summary": "The pools: weights, traffic shares, and per worker health, in-flight requests and the last minute's error rate",
            "security": [{ "bearer": [] }],
            "responses": {
                "200": { "description": "Pools", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Pools" } } } },
                "401": admin_error("unauthorized: wrong or missing admin key"),
                "403": admin_error("admin_disabled: the gateway runs without an admin key")
            }
        },
        "put": write("Set the weights of some pools, live (a SIGHUP reload puts the file's back)", &pools_body, Some(admin_error("unknown_pool"))),
        "post": write("Same as PUT", &pools_body, Some(admin_error("unknown_pool"))),
    });
    let name_param = json!([{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }]);
    spec["paths"]["/admin/pools/{name}"] = json!({
        "parameters": name_param,
        "put": write("Set one pool's weight, live", &pool_body, Some(admin_error("unknown_pool"))),
        "post": write("Same as PUT", &pool_body, Some(admin_error("unknown_pool"))),
    });
    spec["components"]["schemas"]["Pools"] = json!({
        "type": "object", "required": ["generation", "pools"],
        "properties": {
            "generation": { "type": "integer", "description": "bumped by every change (admin or reload)" },
            "config": { "type": "string", "description": "the file SIGHUP reloads" },
            "pools": { "type": "array", "items": {
                "type": "object", "required": ["name", "backend", "weight", "share", "workers"],
                "properties": {
                    "name": { "type": "string" },
                    "backend": { "type": "string", "enum": ["neuron", "gpu", "cpu"] },
                    "weight": { "type": "integer" },
                    "share": { "type": "number", "description": "this pool's fraction of new requests while all pools have healthy workers" },
                    "healthy_workers": { "type": "integer" },
                    "in_flight": { "type": "integer" },
                    "requests_1m": { "type": "integer" },
                    "errors_1m": { "type": "integer" },
                    "error_rate_1m": { "type": "number" },
                    "workers": { "type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "url": { "type": "string" },
                            "healthy": { "type": "boolean", "description": "ready and not ejected" },
                            "ready": { "type": "boolean", "description": "by its /ready probes: from one passing until two fail in a row" },
                            "ejected_ms": { "type": "integer", "description": "how long it stays ejected after failing requests" },
                            "in_flight": { "type": "integer" },
                            "requests_1m": { "type": "integer" },
                            "errors_1m": { "type": "integer", "description": "transport errors and 5xx answers in the last minute" },
                            "error_rate_1m": { "type": "number" }
                        }
                    } }
                }
            } }
        }
    });
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
