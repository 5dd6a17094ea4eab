//! The OpenAPI document for every route, and a small page that renders it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

pub async fn document(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(spec(&state))
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

fn spec(state: &AppState) -> Value {
    let limits = state.limits;
    let behaviors: Vec<&String> = state.behaviors.iter().map(|(name, _)| name).collect();
    json!({
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
                                        "behavior": { "type": "array", "items": { "type": "string", "enum": behaviors }, "description": "repeatable" },
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
                                        "behaviors": { "type": "array", "items": { "type": "string", "enum": behaviors } },
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
                    "properties": { "ready": { "type": "boolean" }, "status": { "type": "string", "enum": ["ready", "loading", "draining"] } }
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
    })
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
