//! The Open Inference Protocol (KServe v2) over HTTP: a second front door to the same detect
//! request. One model with three inputs and two outputs, all named here:
//!
//! | tensor | datatype | shape | what |
//! | --- | --- | --- | --- |
//! | input `IMAGE` | BYTES | [1] | the encoded frame (binary extension; in JSON, base64) |
//! | input `QUESTION` | BYTES | [n] | free-text questions |
//! | input `BEHAVIOR` | BYTES | [m] | behaviour names, optional |
//! | output `PROBABILITY` | FP32 | [n + m] | P(yes), yesno mode (NaN in generate mode) |
//! | output `ANSWER` | BYTES | [n + m] | yes/no, or the generated text |
//!
//! Request parameters `mode`, `camera` and `reuse` mean what the detect fields do. The binary
//! tensor data extension is supported both ways (`Inference-Header-Content-Length`): tritonclient
//! sends the frame as raw bytes and asks for binary outputs by default. What is parsed becomes a
//! [`RawDetect`], checked and answered exactly as `/v1/detect`'s.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::detect::{DetectResponse, RawDetect};
use crate::http::error::ApiError;

pub const HEADER_LENGTH: &str = "inference-header-content-length";
pub const IMAGE: &str = "IMAGE";
pub const QUESTION: &str = "QUESTION";
pub const BEHAVIOR: &str = "BEHAVIOR";
pub const PROBABILITY: &str = "PROBABILITY";
pub const ANSWER: &str = "ANSWER";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<Input>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// What the response should hold: which outputs, and which of them as binary data.
#[derive(Debug, Clone)]
pub struct Outputs(Vec<(&'static str, bool)>);

/// An infer request, parsed.
#[derive(Debug)]
pub struct Parsed {
    pub raw: RawDetect,
    pub id: Option<String>,
    pub outputs: Outputs,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadInferRequest(message.into())
}

/// Parses an infer request body (JSON, or JSON then binary tensors when the header says so).
pub fn parse(headers: &HeaderMap, body: &Bytes) -> Result<Parsed, ApiError> {
    let (json_part, mut binary) = match headers.get(HEADER_LENGTH) {
        None => (&body[..], &b""[..]),
        Some(value) => {
            let length: usize = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad(format!("{HEADER_LENGTH} is not a length")))?;
            if length > body.len() {
                return Err(bad(format!("{HEADER_LENGTH} is {length}, past the body's {} bytes", body.len())));
            }
            body.split_at(length)
        }
    };
    let request: InferRequest =
        serde_json::from_slice(json_part).map_err(|e| bad(format!("the inference header: {e}")))?;
    let mut raw = RawDetect::default();
    let mut seen = Vec::new();
    for input in request.inputs {
        if seen.contains(&input.name) {
            return Err(bad(format!("input {} is given twice", input.name)));
        }
        seen.push(input.name.clone());
        let name = input.name.as_str();
        if ![IMAGE, QUESTION, BEHAVIOR].contains(&name) {
            return Err(bad(format!("unknown input {name:?}: the inputs are {IMAGE}, {QUESTION} and {BEHAVIOR}")));
        }
        if input.datatype != "BYTES" {
            return Err(bad(format!("input {name} is {}; it must be BYTES", input.datatype)));
        }
        let count = elements(name, &input.shape)?;
        if name == IMAGE && count != 1 {
            return Err(bad(format!("input {IMAGE} has shape {:?}; it must be [1]", input.shape)));
        }
        let items = match input.parameters.get("binary_data_size") {
            Some(size) => {
                let size = size.as_u64().ok_or_else(|| bad(format!("input {name}: binary_data_size is not a size")))?;
                if input.data.is_some() {
                    return Err(bad(format!("input {name} has both data and binary_data_size")));
                }
                if size as usize > binary.len() {
                    return Err(bad(format!("input {name}: binary_data_size {size} is past the body's end")));
                }
                let (mine, rest) = binary.split_at(size as usize);
                binary = rest;
                byte_elements(name, mine)?
            }
            None => json_elements(name, input.data)?,
        };
        if items.len() != count {
            return Err(bad(format!("input {name} has shape {:?} but {} elements", input.shape, items.len())));
        }
        match name {
            IMAGE => raw.image = Some(Bytes::from(items.into_iter().next().expect("one element"))),
            QUESTION => raw.questions = utf8(name, items)?,
            _ => raw.behaviors = utf8(name, items)?,
        }
    }
    if !binary.is_empty() {
        return Err(bad(format!("{} bytes of binary data follow the inputs that claim them", binary.len())));
    }
    for (key, value) in &request.parameters {
        match (key.as_str(), value) {
            ("mode", Value::String(s)) => raw.mode = Some(s.clone()),
            ("camera", Value::String(s)) => raw.camera = Some(s.clone()),
            ("reuse", Value::Bool(b)) => raw.reuse = Some(b.to_string()),
            ("mode" | "camera" | "reuse", other) => return Err(bad(format!("parameter {key} cannot be {other}"))),
            // The client's own (tritonclient's binary_data_output, priority, timeout…).
            _ => {}
        }
    }
    let binary_default = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let outputs = if request.outputs.is_empty() {
        Outputs(vec![(PROBABILITY, binary_default), (ANSWER, binary_default)])
    } else {
        let mut outputs = Vec::new();
        for o in request.outputs {
            let name = match o.name.as_str() {
                PROBABILITY => PROBABILITY,
                ANSWER => ANSWER,
                other => {
                    return Err(bad(format!("unknown output {other:?}: the outputs are {PROBABILITY} and {ANSWER}")))
                }
            };
            let binary = o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(binary_default);
            outputs.push((name, binary));
        }
        Outputs(outputs)
    };
    Ok(Parsed { raw, id: request.id, outputs })
}

/// The number of elements a shape holds (every dimension ≥ 0).
pub(crate) fn elements(name: &str, shape: &[i64]) -> Result<usize, ApiError> {
    if shape.is_empty() || shape.iter().any(|d| *d < 0) {
        return Err(bad(format!("input {name} has shape {shape:?}; give its dimensions")));
    }
    shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d as usize))
        .filter(|n| *n <= 1 << 20)
        .ok_or_else(|| bad(format!("input {name} has shape {shape:?}: too many elements")))
}

/// A BYTES tensor's binary form: each element a little-endian u32 length, then its bytes.
pub(crate) fn byte_elements(name: &str, mut data: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut items = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(bad(format!("input {name}: a BYTES element's length is cut short")));
        }
        let (length, rest) = data.split_at(4);
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        if length > rest.len() {
            return Err(bad(format!("input {name}: a BYTES element claims {length} bytes; {} are left", rest.len())));
        }
        let (item, rest) = rest.split_at(length);
        items.push(item.to_vec());
        data = rest;
    }
    Ok(items)
}

/// A BYTES tensor's JSON form: strings, nested as the shape (flattened here); the image base64.
fn json_elements(name: &str, data: Option<Value>) -> Result<Vec<Vec<u8>>, ApiError> {
    let data = data.ok_or_else(|| bad(format!("input {name} has neither data nor binary_data_size")))?;
    let mut flat = Vec::new();
    let mut stack = vec![data];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.into_iter().rev()),
            Value::String(s) if name == IMAGE => flat.push(crate::http::body::decode_base64(&s)?),
            Value::String(s) => flat.push(s.into_bytes()),
            other => return Err(bad(format!("input {name} holds {other}; BYTES data are strings"))),
        }
    }
    Ok(flat)
}

pub(crate) fn utf8(name: &str, items: Vec<Vec<u8>>) -> Result<Vec<String>, ApiError> {
    items
        .into_iter()
        .map(|b| String::from_utf8(b).map_err(|_| bad(format!("input {name} is not UTF-8 text"))))
        .collect()
}

/// The infer response for a detect answer.
pub fn render(answer: &DetectResponse, model: &str, id: Option<String>, outputs: &Outputs) -> Response {
    let n = answer.answers.len();
    let mut tensors = Vec::new();
    let mut binary = Vec::new();
    for (name, as_binary) in &outputs.0 {
        let (datatype, data, bytes): (&str, Value, Vec<u8>) = if *name == PROBABILITY {
            let values: Vec<f32> =
                answer.answers.iter().map(|a| a.probability.map_or(f32::NAN, |p| p as f32)).collect();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let json = values.iter().map(|v| if v.is_nan() { Value::Null } else { json!(v) }).collect();
            ("FP32", Value::Array(json), bytes)
        } else {
            let mut bytes = Vec::new();
            for a in &answer.answers {
                bytes.extend_from_slice(&(a.answer.len() as u32).to_le_bytes());
                bytes.extend_from_slice(a.answer.as_bytes());
            }
            ("BYTES", json!(answer.answers.iter().map(|a| a.answer.as_str()).collect::<Vec<_>>()), bytes)
        };
        let mut tensor = json!({"name": name, "datatype": datatype, "shape": [n]});
        if *as_binary {
            tensor["parameters"] = json!({"binary_data_size": bytes.len()});
            binary.extend_from_slice(&bytes);
        } else {
            tensor["data"] = data;
        }
        tensors.push(tensor);
    }
    let mut body = json!({"model_name": model, "model_version": "1", "outputs": tensors});
    body["id"] = json!(id.unwrap_or_else(|| answer.request_id.clone()));
    body["parameters"] = json!({"request_id": answer.request_id, "batch_frames": answer.batch_frames});
    let header_json = serde_json::to_vec(&body).expect("JSON");
    if binary.is_empty() {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], header_json).into_response();
    }
    let length = header_json.len();
    let mut all = header_json;
    all.extend_from_slice(&binary);
    let mut response = Response::new(Body::from(all));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(HEADER_LENGTH, HeaderValue::from(length));
    response
}

/// The protocol's error body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct InferError {
    pub error: String,
}

/// An error as the protocol answers it: `{"error": message}`, the status (and Retry-After) as
/// `/v1/detect` gives it.
pub fn error(e: ApiError) -> Response {
    let message = e.to_string();
    let mut response = e.into_response();
    response.headers_mut().remove(header::CONTENT_LENGTH);
    *response.body_mut() = Body::from(serde_json::to_vec(&InferError { error: message }).expect("JSON"));
    response
}

/// A worker's error answer (`{"code", "error"}`) as the protocol's, status and headers kept.
pub async fn relayed_error(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let error = serde_json::from_slice::<crate::http::error::ErrorBody>(&bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(serde_json::to_vec(&InferError { error }).expect("JSON")))
}

/// `GET /v2/models/{name}`.
pub fn model_metadata(model: &str) -> Value {
    let tensor = |name: &str, datatype: &str, shape: i64| json!({"name": name, "datatype": datatype, "shape": [shape]});
    json!({
        "name": model,
        "versions": ["1"],
        "platform": "blipserve",
        "inputs": [tensor(IMAGE, "BYTES", 1), tensor(QUESTION, "BYTES", -1), tensor(BEHAVIOR, "BYTES", -1)],
        "outputs": [tensor(PROBABILITY, "FP32", -1), tensor(ANSWER, "BYTES", -1)],
    })
}

/// `GET /v2`.
pub fn server_metadata() -> Value {
    json!({"name": "blipserve", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_request(header: Value, tensors: &[&[u8]]) -> (HeaderMap, Bytes) {
        let mut body = serde_json::to_vec(&header).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(body.len()));
        for t in tensors {
            body.extend_from_slice(t);
        }
        (headers, Bytes::from(body))
    }

    fn bytes_tensor(items: &[&[u8]]) -> Vec<u8> {
        items.iter().flat_map(|i| (i.len() as u32).to_le_bytes().into_iter().chain(i.iter().copied())).collect()
    }

    #[test]
    fn binary_inputs_become_a_detect_request() {
        let image = bytes_tensor(&[b"\xff\xd8\xffjpeg"]);
        let questions = bytes_tensor(&[b"is the dog barking?", b"is the cat asleep?"]);
        let header = json!({
            "id": "r1",
            "parameters": {"mode": "yesno", "camera": "cam-1", "binary_data_output": true},
            "inputs": [
                {"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": image.len()}},
                {"name": "QUESTION", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": questions.len()}},
            ],
        });
        let (headers, body) = binary_request(header, &[&image, &questions]);
        let parsed = parse(&headers, &body).unwrap();
        assert_eq!(parsed.raw.image.as_deref(), Some(&b"\xff\xd8\xffjpeg"[..]));
        assert_eq!(parsed.raw.questions, ["is the dog barking?", "is the cat asleep?"]);
        assert_eq!(parsed.raw.camera.as_deref(), Some("cam-1"));
        assert_eq!(parsed.id.as_deref(), Some("r1"));
        assert!(parsed.outputs.0.iter().all(|(_, binary)| *binary));
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let ok_image = json!({"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["aGk="]});
        let cases = [
            json!({"inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [1], "data": [1.0]}]}),
            json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [2], "data": ["aGk=", "aGk="]}]}),
            json!({"inputs": [ok_image, {"name": "QUESTION", "datatype": "BYTES", "shape": [2], "data": ["a?"]}]}),
            json!({"inputs": [{"name": "PICTURE", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}),
            json!({"inputs": [ok_image], "outputs": [{"name": "LOGITS"}]}),
            json!({"inputs": [ok_image], "parameters": {"reuse": "sometimes"}}),
            json!({"inputs": [ok_image, {"name": "QUESTION", "datatype": "BYTES", "shape": [-1], "data": ["a?"]}]}),
        ];
        for case in cases {
            let e = parse(&HeaderMap::new(), &Bytes::from(case.to_string())).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{case}: {e}");
        }
        // Binary lengths that do not add up.
        let header = json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 100}}]});
        assert!(parse(&binary_request(header.clone(), &[b"short"]).0, &binary_request(header, &[b"short"]).1).is_err());
        let header = json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]});
        let (headers, body) = binary_request(header, &[&[200, 0, 0, 0, 1, 2, 3, 4]]);
        assert!(parse(&headers, &body).is_err(), "an element longer than its tensor");
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(10_000));
        assert!(parse(&headers, &Bytes::from_static(b"{}")).is_err(), "a header length past the body");
    }
}
