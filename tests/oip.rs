//! The Open Inference Protocol (KServe v2) over HTTP on `serve`: NVIDIA's tritonclient (the tools
//! environment's) asks it, and its answers equal `/v1/detect`'s; bad requests get the protocol's
//! error body and a 4xx.

use std::process::Command;

use blipserve_testkit::*;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");
const QUESTIONS: [&str; 3] = ["is the dog barking?", "is the pet on the sofa?", "is the cat asleep?"];

fn frame() -> Vec<u8> {
    jpeg(&synthetic_frame(640, 360, 21), 90, Subsamp::Sub2x2)
}

/// What `/v1/detect` answers for the frame: (probabilities, answers).
fn detect(server: &Server, image: &[u8]) -> (Vec<f64>, Vec<String>) {
    let body: Value = server.detect(image, &QUESTIONS).json().unwrap();
    let answers = body["answers"].as_array().unwrap();
    (
        answers.iter().map(|a| a["probability"].as_f64().unwrap()).collect(),
        answers.iter().map(|a| a["answer"].as_str().unwrap().to_string()).collect(),
    )
}

/// tests/clients/oip_http.py (tritonclient) against `server`: what it saw.
fn tritonclient(server: &Server, image: &[u8]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "frame.jpg", image);
    let tools = tools_python();
    let out = Command::new(tools)
        .arg(repo().join("tests/clients/oip_http.py"))
        .arg(server.base.trim_start_matches("http://"))
        .arg("tiny")
        .arg(&path)
        .args(QUESTIONS)
        .output()
        .unwrap();
    assert!(out.status.success(), "tritonclient failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tritonclient_speaks_to_serve_and_to_the_gateway_and_gets_detects_answers() {
    let server = Server::start(BIN, "tiny", &["--grpc-port", "0"]);
    let worker = Server::start_role(BIN, "worker", "tiny", 0, &["--threads", "1", "--replicas", "1"]);
    let (gateway, _config) = gateway(BIN, &[&worker.base], &["--grpc-port", "0"], &[]);
    let image = frame();
    for (name, server) in [("serve", &server), ("gateway", &gateway)] {
        check_tritonclient(name, server, &image);
        check_tritonclient_grpc(name, server, &image);
    }
    assert!(
        worker.metric("blipserve_requests_total{outcome=\"ok\"}") >= 4.0,
        "the gateway's infers reached the worker"
    );
}

/// tritonclient's gRPC flavour against the server's gRPC port.
fn check_tritonclient_grpc(name: &str, server: &Server, image: &[u8]) {
    let addr = server.grpc_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "frame.jpg", image);
    let out = Command::new(tools_python())
        .arg(repo().join("tests/clients/oip_grpc.py"))
        .arg(addr)
        .arg("tiny")
        .arg(&path)
        .args(QUESTIONS)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: tritonclient (gRPC) failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&got["live"], &got["ready"], &got["model_ready"]),
        (&json!(true), &json!(true), &json!(true)),
        "{name}"
    );
    assert_eq!(got["server"]["name"], "blipserve");
    assert_eq!(got["model"]["inputs"].as_array().unwrap().len(), 3, "{name}: {got}");
    assert_eq!(got["unknown_model"], "StatusCode.NOT_FOUND", "{name}");
    let (want_p, want_a) = detect(server, image);
    let p: Vec<f64> = got["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let a: Vec<&str> = got["answers"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(a, want_a, "{name}");
    let worst = p.iter().zip(&want_p).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    eprintln!("{name}: tritonclient (gRPC) against /v1/detect: max |dP| {worst:.2e} over {} answers", p.len());
    assert!(worst <= 1e-6, "{name}: {p:?} vs {want_p:?}");
    assert_eq!(got["id"], "oip-grpc", "{name}");
}

fn check_tritonclient(name: &str, server: &Server, image: &[u8]) {
    let got = tritonclient(server, image);
    assert_eq!((&got["live"], &got["ready"], &got["model_ready"]), (&json!(true), &json!(true), &json!(true)));
    assert_eq!(got["server"]["name"], "blipserve");
    assert!(got["server"]["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    let inputs: Vec<&str> =
        got["model"]["inputs"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(inputs, ["IMAGE", "QUESTION", "BEHAVIOR"]);

    let (want_p, want_a) = detect(server, image);
    for (mode, result) in [("binary", &got["binary"]), ("json", &got["json"])] {
        let p: Vec<f64> = result["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let a: Vec<&str> = result["answers"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(a, want_a, "{mode} outputs");
        let worst = p.iter().zip(&want_p).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        eprintln!(
            "{name}: tritonclient ({mode} outputs) against /v1/detect: max |dP| {worst:.2e} over {} answers",
            p.len()
        );
        // FP32 on the wire: within its rounding of /v1/detect's f64.
        assert!(worst <= 1e-6, "{mode}: {p:?} vs {want_p:?}");
        assert_eq!(result["id"], format!("oip-{mode}"));
    }
    // Both doors are one request path: every infer is counted as a detect request.
    assert!(server.metric("blipserve_requests_total{outcome=\"ok\"}") >= 3.0, "{name}");
}

/// A BYTES tensor in the binary form: each element's u32 length, then its bytes.
fn bytes_tensor(items: &[&[u8]]) -> Vec<u8> {
    items.iter().flat_map(|i| (i.len() as u32).to_le_bytes().into_iter().chain(i.iter().copied())).collect()
}

#[test]
fn bad_infer_requests_get_the_protocols_error_and_a_4xx_from_serve_and_the_gateway() {
    let server = Server::start(BIN, "tiny", &[]);
    check_bad_requests("serve", &server);
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "gateway.toml",
        format!("listen = \"127.0.0.1\"\nport = 0\n\n[[pools]]\nname = \"cpu\"\nbackend = \"cpu\"\nweight = 100\nurls = [\"{}\"]\n", server.base)
            .as_bytes(),
    );
    let gateway = Server::spawn(BIN, &["gateway".into(), "--config".into(), config.into_os_string()]);
    gateway.wait_ready(std::time::Duration::from_secs(30));
    check_bad_requests("gateway", &gateway);
}

fn check_bad_requests(name: &str, server: &Server) {
    let image = frame();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &image);
    let image_json = json!({"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [b64]});
    let question = json!({"name": "QUESTION", "datatype": "BYTES", "shape": [1], "data": ["is the dog barking?"]});
    let url = server.url("/v2/models/tiny/infer");
    let send_json = |url: &str, body: Value| client().post(url).json(&body).send().unwrap();
    let binary = |claimed: usize, header_length: Option<usize>| {
        let data = bytes_tensor(&[&image]);
        let header = json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": claimed}}, question.clone()]});
        let mut body = serde_json::to_vec(&header).unwrap();
        let length = header_length.unwrap_or(body.len());
        body.extend_from_slice(&data);
        client().post(&url).header("inference-header-content-length", length.to_string()).body(body).send().unwrap()
    };
    let cases: Vec<(&str, reqwest::blocking::Response, u16)> = vec![
        (
            "wrong datatype",
            send_json(
                &url,
                json!({"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [3], "data": [1, 2, 3]}, question]}),
            ),
            400,
        ),
        (
            "wrong shape",
            send_json(
                &url,
                json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [2], "data": [b64, b64]}, question]}),
            ),
            400,
        ),
        (
            "shape and data disagree",
            send_json(
                &url,
                json!({"inputs": [image_json, {"name": "QUESTION", "datatype": "BYTES", "shape": [3], "data": ["a?"]}]}),
            ),
            400,
        ),
        ("missing image", send_json(&url, json!({"inputs": [question]})), 400),
        ("missing questions", send_json(&url, json!({"inputs": [image_json]})), 400),
        (
            "unknown input",
            send_json(
                &url,
                json!({"inputs": [image_json, question, {"name": "AUDIO", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}),
            ),
            400,
        ),
        (
            "unknown output",
            send_json(&url, json!({"inputs": [image_json, question], "outputs": [{"name": "LOGITS"}]})),
            400,
        ),
        (
            "unknown model",
            send_json(&server.url("/v2/models/resnet/infer"), json!({"inputs": [image_json, question]})),
            404,
        ),
        ("not JSON", client().post(&url).body("hello").send().unwrap(), 400),
        ("binary size past the body", binary(image.len() + 100, None), 400),
        ("header length past the body", binary(image.len() + 4, Some(1 << 20)), 400),
        ("header length inside the JSON", binary(image.len() + 4, Some(10)), 400),
        ("bad mode", send_json(&url, json!({"inputs": [image_json, question], "parameters": {"mode": "poetry"}})), 400),
        (
            "corrupt image",
            send_json(
                &url,
                json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["/9j/AAAA"]}, question]}),
            ),
            400,
        ),
    ];
    for (what, resp, status) in cases {
        assert_eq!(resp.status().as_u16(), status, "{name}: {what}");
        let body: Value = resp.json().unwrap_or_else(|e| panic!("{name}: {what}: not JSON: {e}"));
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{name}: {what}: no error: {body}"));
        eprintln!("{name}: {what}: {status} {error}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{name}: {what}: only the protocol's error field: {body}");
    }
    // The same request, well formed, is answered.
    let ok = binary(image.len() + 4, None);
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().get("inference-header-content-length").is_none(), "JSON outputs unless asked for binary");
    let form = Form::new().part("image", Part::bytes(image).file_name("f.jpg"));
    assert_eq!(client().post(server.url("/v1/detect")).multipart(form).send().unwrap().status(), 400);
}
