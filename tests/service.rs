//! `blipserve serve`, started as the real binary on a free port, spoken to over HTTP.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use blipserve_testkit::*;
use reqwest::blocking::multipart::Form;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

fn frame_jpeg(seed: u32) -> Vec<u8> {
    jpeg(&synthetic_frame(640, 360, seed), 90, Subsamp::Sub2x2)
}

/// What `blipserve ask` prints for these questions, by question.
fn ask(image: &[u8], questions: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "frame.jpg", image);
    let out = Command::new(BIN)
        .args(["ask", "--model"])
        .arg(model_dir("tiny"))
        .arg("--image")
        .arg(&path)
        .args(questions)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn multipart_and_json_answer_like_ask_and_behaviors_follow_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    // Thresholds at 0 and 1 make `detected` certain either way.
    let config = write(
        dir.path(),
        "blipserve.toml",
        b"[behaviors.always]\nquestion = \"is the dog barking?\"\nthreshold = 0.0\n\n\
          [behaviors.never]\nquestion = \"is the dog barking?\"\nthreshold = 1.0\n",
    );
    let server = Server::start(BIN, "tiny", &["--config", config.to_str().unwrap()]);
    let image = frame_jpeg(1);
    let questions = ["is the dog barking?", "is the cat sleeping on the sofa?"];
    let want = ask(&image, &questions);

    let resp = client()
        .post(server.url("/v1/detect"))
        .multipart(detect_form(&image, &questions, &["always", "never"]))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    for h in ["x-request-id", "x-queue-ms", "x-preprocess-ms", "x-inference-ms", "x-total-ms", "server-timing"] {
        assert!(resp.headers().contains_key(h), "missing header {h}");
    }
    let body: Value = resp.json().unwrap();
    let answers = body["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 4);
    for (got, want) in answers.iter().zip(&want) {
        assert_eq!(got["question"], want["question"]);
        assert_eq!(got["answer"], want["answer"]);
        let d = (got["probability"].as_f64().unwrap() - want["probability"].as_f64().unwrap()).abs();
        assert!(d < 1e-6, "{got} vs {want}");
    }
    assert_eq!(answers[2]["behavior"], "always");
    assert_eq!(answers[2]["detected"], true);
    assert_eq!(answers[3]["behavior"], "never");
    assert_eq!(answers[3]["detected"], false);
    assert!(answers[0].get("detected").is_none());
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["mode"], "yesno");
    for stage in ["queue", "preprocess", "inference", "total"] {
        assert!(body["timings_ms"][stage].as_f64().unwrap() >= 0.0);
    }

    let json_body = json!({
        "image": base64::engine::general_purpose::STANDARD.encode(&image),
        "questions": questions,
    });
    let resp = client()
        .post(server.url("/v1/detect"))
        .header("x-request-id", "camera-42-frame-7")
        .json(&json_body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "camera-42-frame-7");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["request_id"], "camera-42-frame-7");
    for (got, want) in body["answers"].as_array().unwrap().iter().zip(&want) {
        assert_eq!(got["answer"], want["answer"]);
        assert!((got["probability"].as_f64().unwrap() - want["probability"].as_f64().unwrap()).abs() < 1e-6);
    }

    let generate = client()
        .post(server.url("/v1/detect"))
        .json(&json!({"image": base64::engine::general_purpose::STANDARD.encode(&image), "questions": ["what is the dog doing?"], "mode": "generate"}))
        .send()
        .unwrap();
    assert_eq!(generate.status(), 200);
    let body: Value = generate.json().unwrap();
    assert_eq!(body["mode"], "generate");
    assert!(body["answers"][0]["answer"].is_string() && body["answers"][0].get("probability").is_none());

    let catalogue: Value = client().get(server.url("/v1/behaviors")).send().unwrap().json().unwrap();
    let names: Vec<&str> =
        catalogue["behaviors"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    for name in ["barking", "chewing_furniture", "playing", "sleeping", "eating", "always", "never"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

#[test]
fn bad_requests_get_documented_status_and_json_errors() {
    let server = Server::start(
        BIN,
        "tiny",
        &["--max-questions", "3", "--max-question-chars", "40", "--max-body-bytes", "300000"],
    );
    let image = frame_jpeg(2);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let post_json = |body: Value| client().post(server.url("/v1/detect")).json(&body).send().unwrap();
    let post_form = |form: Form| client().post(server.url("/v1/detect")).multipart(form).send().unwrap();
    let mut truncated = image.clone();
    truncated.truncate(image.len() / 2);

    let cases: Vec<(&str, reqwest::blocking::Response, u16, &str)> = vec![
        ("bad image", post_form(detect_form(b"\xFF\xD8\xFFgarbage", &["q?"], &[])), 400, "bad_image"),
        ("truncated image", post_form(detect_form(&truncated, &["q?"], &[])), 400, "bad_image"),
        ("missing image", post_form(Form::new().text("question", "is it?")), 400, "missing_image"),
        ("empty image", post_json(json!({"image": "", "questions": ["is it?"]})), 400, "missing_image"),
        ("no question", post_form(detect_form(&image, &[], &[])), 400, "no_question"),
        (
            "too many questions",
            post_form(detect_form(&image, &["a?", "b?", "c?", "d?"], &[])),
            400,
            "too_many_questions",
        ),
        ("question too long", post_form(detect_form(&image, &[&"why ".repeat(20)], &[])), 400, "question_too_long"),
        ("empty question", post_form(detect_form(&image, &["   "], &[])), 400, "empty_question"),
        ("body too large", post_form(detect_form(&vec![0xFFu8; 400_000], &["q?"], &[])), 413, "body_too_large"),
        (
            "wrong content type",
            client()
                .post(server.url("/v1/detect"))
                .header("content-type", "image/jpeg")
                .body(image.clone())
                .send()
                .unwrap(),
            415,
            "unsupported_media_type",
        ),
        ("bad base64", post_json(json!({"image": "not*base64!", "questions": ["is it?"]})), 400, "bad_base64"),
        ("unknown behaviour", post_form(detect_form(&image, &[], &["juggling"])), 400, "unknown_behavior"),
        (
            "bad mode",
            post_json(json!({"image": b64(&image), "questions": ["is it?"], "mode": "poetry"})),
            400,
            "bad_mode",
        ),
        (
            "bad json",
            client()
                .post(server.url("/v1/detect"))
                .header("content-type", "application/json")
                .body("{\"image\": ")
                .send()
                .unwrap(),
            400,
            "bad_json",
        ),
        ("unknown json field", post_json(json!({"image": b64(&image), "question": "singular?"})), 400, "bad_json"),
        (
            "unsupported image format",
            post_json(json!({"image": b64(b"II*\0tiff body"), "questions": ["is it?"]})),
            415,
            "unsupported_image_format",
        ),
        (
            "image too large",
            post_json(json!({"image": b64(&png_claiming(20_000, 20_000)), "questions": ["is it?"]})),
            413,
            "image_too_large",
        ),
    ];
    for (name, resp, status, code) in cases {
        assert_eq!(resp.status().as_u16(), status, "{name}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{name}");
        let body: Value = resp.json().unwrap();
        assert_eq!(body["code"], code, "{name}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}");
    }
    // Still serving, and every refusal was counted.
    assert_eq!(post_form(detect_form(&image, &["is it?"], &[])).status(), 200);
    assert_eq!(server.metric("blipserve_requests_total{outcome=\"bad_image\"}"), 2.0);
}

#[test]
fn api_keys_guard_detect_only() {
    let server = Server::start(BIN, "tiny", &["--api-key", "k1,k2"]);
    let image = frame_jpeg(3);
    let resp = server.detect(&image, &["is it?"]);
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().unwrap()["code"], "unauthorized");
    let resp = client()
        .post(server.url("/v1/detect"))
        .bearer_auth("k2")
        .multipart(detect_form(&image, &["is it?"], &[]))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    for open in ["/health", "/ready", "/metrics", "/openapi.json", "/v1/behaviors"] {
        assert_eq!(client().get(server.url(open)).send().unwrap().status(), 200, "{open}");
    }
    // A stray comma would add an empty key: refused at start-up (bounded wait: a server that
    // starts anyway is killed and the test fails).
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1", "--port", "0", "--api-key", "k1,", "--model"])
        .arg(model_dir("tiny"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    eventually_every(Duration::from_secs(10), Duration::from_millis(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
    }
    let stderr = child.wait_with_output().unwrap().stderr;
    assert!(status.is_some_and(|s| !s.success()), "a server with an empty API key started");
    assert!(String::from_utf8_lossy(&stderr).contains("API key is empty"));
}

#[test]
fn overload_gets_429_not_errors_and_recovers() {
    // One replica, one batch at a time, room for one waiting frame.
    let server = Server::start(
        BIN,
        "tiny",
        &["--replicas", "1", "--max-batch-frames", "1", "--queue-capacity", "1", "--max-wait-us", "0"],
    );
    let image = frame_jpeg(4);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                let (url, image) = (server.url("/v1/detect"), image.clone());
                s.spawn(move || {
                    let resp = client()
                        .post(url)
                        .multipart(detect_form(&image, &["is the dog barking?"; 3], &[]))
                        .send()
                        .unwrap();
                    let status = resp.status().as_u16();
                    if status == 429 {
                        assert_eq!(resp.headers()["retry-after"], "1");
                        assert_eq!(resp.json::<Value>().unwrap()["code"], "overloaded");
                    }
                    status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(statuses.contains(&429), "the queue never filled: {statuses:?}");
    assert!(statuses.contains(&200));
    let resp = server.detect(&image, &["is it?"]);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        server.metric("blipserve_requests_total{outcome=\"overloaded\"}") as usize,
        statuses.iter().filter(|s| **s == 429).count()
    );
}

#[test]
fn concurrent_frames_are_batched_and_answer_as_alone() {
    let server = Server::start(BIN, "tiny", &["--replicas", "1", "--max-batch-frames", "8", "--max-wait-us", "200000"]);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| frame_jpeg(10 + i)).collect();
    let questions = ["is the dog barking?", "is the cat on the sofa by the window?"];
    let alone: Vec<Value> = frames.iter().map(|f| server.detect(f, &questions).json().unwrap()).collect();
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = frames
            .iter()
            .map(|f| {
                let url = server.url("/v1/detect");
                s.spawn(move || {
                    client()
                        .post(url)
                        .multipart(detect_form(f, &questions, &[]))
                        .send()
                        .unwrap()
                        .json::<Value>()
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(together.iter().any(|b| b["batch_frames"].as_u64().unwrap() > 1), "no batch formed");
    let batches = server.metric("blipserve_batch_frames_count");
    let frames_seen = server.metric("blipserve_batch_frames_sum");
    assert!(
        frames_seen / batches > 1.0 + 1e-9 || batches < frames_seen,
        "metrics show no batching: {batches} batches, {frames_seen} frames"
    );
    for (a, t) in alone.iter().zip(&together) {
        for (qa, qt) in a["answers"].as_array().unwrap().iter().zip(t["answers"].as_array().unwrap()) {
            assert_eq!(qa["answer"], qt["answer"]);
            let d = (qa["probability"].as_f64().unwrap() - qt["probability"].as_f64().unwrap()).abs();
            assert!(d < 1e-5, "batched answer differs by {d}");
        }
    }
}

/// On the CPU a batch forms once its cores are free: frames decoded while the replica was busy
/// join its next batch together, though one takes far longer to decode than the other (without
/// waiting for frames, `--max-wait-us 0`, the first one decoded would otherwise go alone while
/// the batch's cores were still decoding the second).
#[test]
fn frames_decoded_during_a_batch_join_the_next_one_together() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    let flags = ["--replicas", "1", "--threads", &threads, "--max-questions", "48", "--max-wait-us", "0"];
    // The fixed-shape export generates without a key/value cache: 48 long questions, generated,
    // hold the replica for about a second whatever the machine.
    let server = Server::start(BIN, "tiny-static", &flags);
    let long: Vec<String> = (0..48).map(|i| format!("is the big brown dog number {i} barking at the door?")).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let (small, big) = (
        jpeg(&synthetic_frame(64, 48, 3), 90, Subsamp::Sub2x2),
        jpeg(&synthetic_frame(1920, 1080, 4), 90, Subsamp::Sub2x2),
    );
    let detect = |image: &[u8]| client().post(server.url("/v1/detect")).multipart(detect_form(image, &["is it?"], &[]));
    let (busy_done, big_sent, answers) = std::thread::scope(|s| {
        let busy =
            client().post(server.url("/v1/detect")).multipart(detect_form(&small, &long, &[]).text("mode", "generate"));
        let busy = s.spawn(move || {
            assert_eq!(busy.send().unwrap().status(), 200);
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(150));
        let first = detect(&small);
        let first = s.spawn(move || first.send().unwrap().json::<Value>().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        let (second, big_sent) = (detect(&big), Instant::now());
        let second = s.spawn(move || second.send().unwrap().json::<Value>().unwrap());
        (busy.join().unwrap(), big_sent, [first.join().unwrap(), second.join().unwrap()])
    });
    assert!(big_sent < busy_done, "the premise: both frames arrived while the replica was busy");
    for answer in &answers {
        assert_eq!(answer["batch_frames"], 2, "the small frame and the big one in one batch: {answers:?}");
    }
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut server = Server::start(
        BIN,
        "tiny",
        &["--replicas", "1", "--max-batch-frames", "1", "--drain-delay-ms", "1500", "--queue-capacity", "64"],
    );
    let image = frame_jpeg(5);
    let url = server.url("/v1/detect");
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                let (url, image) = (url.clone(), image.clone());
                s.spawn(move || {
                    client()
                        .post(url)
                        .multipart(detect_form(&image, &["is the dog barking?"; 4], &[]))
                        .send()
                        .map(|r| r.status().as_u16())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        server.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(300));
        let ready = client().get(server.url("/ready")).send().unwrap();
        assert_eq!(ready.status(), 503, "/ready must turn false while draining");
        assert_eq!(ready.json::<Value>().unwrap()["status"], "draining");
        handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    assert!(results.iter().all(|r| matches!(r, Ok(200))), "{results:?}");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn metrics_pass_promtool_and_openapi_passes_a_validator() {
    let server = Server::start(BIN, "tiny", &[]);
    let image = frame_jpeg(6);
    server.detect(&image, &["is it?"]);
    server.detect(b"nope", &["is it?"]);
    let metrics = client().get(server.url("/metrics")).send().unwrap().text().unwrap();
    for name in [
        "blipserve_requests_total",
        "blipserve_stage_duration_seconds",
        "blipserve_queue_depth",
        "blipserve_batch_frames",
        "blipserve_in_flight_requests",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    promtool_check(&metrics);

    let spec = client().get(server.url("/openapi.json")).send().unwrap().bytes().unwrap();
    openapi_validate(&spec);

    let spec: Value = serde_json::from_slice(&spec).unwrap();
    let paths = ["/v1/detect", "/v1/behaviors", "/v1/info", "/health", "/ready", "/metrics", "/openapi.json", "/docs"];
    for path in paths.into_iter().chain(["/ping", "/invocations"]) {
        assert!(spec["paths"].get(path).is_some(), "{path} undocumented");
        let method = if path == "/v1/detect" || path == "/invocations" { "post" } else { "get" };
        assert!(spec["paths"][path][method].is_object(), "{method} {path}");
    }
    let docs = client().get(server.url("/docs")).send().unwrap();
    assert!(docs.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let info: Value = client().get(server.url("/v1/info")).send().unwrap().json().unwrap();
    assert_eq!(info["model"]["id"], "tiny");
    assert_eq!((&info["model"]["dtype"], &info["model"]["precision"]), (&json!("float32"), &json!("float32")));
    assert!(info["model"].get("quantization").is_none(), "{info}");
    assert_eq!(info["device"], "cpu");
    assert!(info["replicas"].as_u64().unwrap() >= 1);
    // A CPU server maps libtorch but not its CUDA half (loaded only when a CUDA device is asked for).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(maps.contains("/libtorch_cpu.so") && !maps.contains("/libtorch_cuda.so"), "CUDA libraries mapped on cpu");
}

/// An int8 export serves like any other and says what it is.
#[test]
fn an_int8_export_answers_and_info_says_int8() {
    let server = Server::start(BIN, "tiny-int8", &[]);
    let info: Value = client().get(server.url("/v1/info")).send().unwrap().json().unwrap();
    assert_eq!((&info["model"]["dtype"], &info["model"]["precision"]), (&json!("float32"), &json!("int8")));
    assert_eq!(info["model"]["quantization"]["weights"], "int8", "{info}");
    let resp = server.detect(&frame_jpeg(7), &["is the dog barking?"]);
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().unwrap();
    let p = body["answers"][0]["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{body}");
}

#[test]
fn past_its_deadline_a_request_gets_504_and_is_not_run() {
    let server = Server::start(BIN, "tiny", &["--request-timeout-ms", "1"]);
    let resp = server.detect(&frame_jpeg(7), &["is it?"]);
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.json::<Value>().unwrap()["code"], "deadline_exceeded");
    // Bounded wait for the drop to be recorded (blipserve_dropped_total appears with its first).
    let expired = "blipserve_dropped_total{reason=\"expired\"}";
    eventually(Duration::from_secs(10), || server.try_metric(expired).is_some());
    let dropped = server.metric(expired) + server.metric("blipserve_dropped_total{reason=\"cancelled\"}");
    assert_eq!(dropped, 1.0, "the expired frame must be dropped before inference");
    assert_eq!(server.metric("blipserve_batch_frames_count"), 0.0);
}

#[test]
fn frames_of_clients_that_hung_up_are_dropped_before_inference() {
    // The fixed-shape export generates without a key/value cache, re-running its decoder at full
    // length for every token: slow enough to hold the replica whatever the machine.
    let server = Server::start(
        BIN,
        "tiny-static",
        &["--replicas", "1", "--max-batch-frames", "1", "--max-wait-us", "0", "--max-questions", "48"],
    );
    // Keeps the only replica busy for about a second: 48 long questions, generated.
    let long: Vec<String> = (0..48)
        .map(|i| format!("is the big brown dog number {i} barking at the mail carrier by the front door?"))
        .collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let busy = detect_form(&frame_jpeg(8), &long, &[]).text("mode", "generate");
    let small = jpeg(&synthetic_frame(64, 48, 9), 90, Subsamp::Sub2x2);
    std::thread::scope(|s| {
        let url = server.url("/v1/detect");
        let patient = s.spawn(move || {
            let body: Value = client().post(url).multipart(busy).send().unwrap().json().unwrap();
            (if body["answers"].is_array() { 200 } else { 0 }, body["timings_ms"]["inference"].as_f64().unwrap_or(0.0))
        });
        std::thread::sleep(Duration::from_millis(60));
        // Clients that give up after 150 ms: their frames wait behind the busy replica (for a core to
        // be decoded on, which its batch holds, or in the queue).
        for _ in 0..4 {
            let (url, small) = (server.url("/v1/detect"), small.clone());
            s.spawn(move || {
                let impatient =
                    reqwest::blocking::Client::builder().timeout(Duration::from_millis(150)).build().unwrap();
                let _ = impatient.post(url).multipart(detect_form(&small, &["is it?"], &[])).send();
            });
        }
        let (status, inference_ms) = patient.join().unwrap();
        assert_eq!(status, 200);
        // The premise: the replica was busy for longer than the impatient clients waited.
        assert!(inference_ms > 400.0, "the blocking request took only {inference_ms} ms");
    });
    // Bounded wait for the server to see the departed clients: none in flight, one cancelled.
    eventually(Duration::from_secs(10), || {
        server.metric("blipserve_in_flight_requests") == 0.0
            && server.try_metric("blipserve_dropped_total{reason=\"cancelled\"}").is_some_and(|c| c >= 1.0)
    });
    let cancelled = server.metric("blipserve_dropped_total{reason=\"cancelled\"}");
    let inferred = server.metric("blipserve_batch_frames_sum");
    assert!(cancelled >= 1.0, "no frame of a departed client was dropped ({inferred} inferred)");
    assert!(inferred + cancelled <= 5.0 && inferred < 5.0, "{inferred} inferred, {cancelled} cancelled");
    assert_eq!(server.metric("blipserve_in_flight_requests"), 0.0, "departed clients still counted in flight");
    assert!(server.metric("blipserve_requests_total{outcome=\"cancelled\"}") >= 1.0);
    let resp = server.detect(&small, &["is it?"]);
    assert_eq!(resp.status(), 200);
}

#[test]
fn sagemaker_ping_and_invocations_answer_as_the_hosting_contract_expects() {
    // SageMaker starts the image with `serve` (its entry point is blipserve) and calls GET /ping,
    // then POST /invocations with the client's body and content type.
    let server = Server::start(BIN, "tiny", &["--drain-delay-ms", "3000"]);
    let ping = client().get(server.url("/ping")).send().unwrap();
    assert_eq!(ping.status(), 200);
    let image = frame_jpeg(11);
    let questions = ["is the dog barking?", "is there a cat?"];
    let detect: Value = server.detect(&image, &questions).json().unwrap();
    for (content_type, body) in [
        ("multipart", None),
        (
            "application/json",
            Some(json!({"image": base64::engine::general_purpose::STANDARD.encode(&image), "questions": questions})),
        ),
    ] {
        let request = client().post(server.url("/invocations"));
        let resp = match body {
            None => request.multipart(detect_form(&image, &questions, &[])),
            Some(body) => request.json(&body),
        }
        .send()
        .unwrap();
        assert_eq!(resp.status(), 200, "{content_type}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let answer: Value = resp.json().unwrap();
        for (a, d) in answer["answers"].as_array().unwrap().iter().zip(detect["answers"].as_array().unwrap()) {
            assert_eq!(a["probability"], d["probability"], "{content_type}: {answer}");
        }
    }
    // A bad invocation is the client's error, with the same JSON error body.
    let bad =
        client().post(server.url("/invocations")).header("content-type", "text/csv").body("1,2,3").send().unwrap();
    assert_eq!(bad.status(), 415);
    assert_eq!(bad.json::<Value>().unwrap()["code"], "unsupported_media_type");
    // Draining: /ping turns 503 as /ready does, so SageMaker stops routing to the container.
    server.signal(libc::SIGTERM);
    assert!(eventually(Duration::from_secs(5), || client()
        .get(server.url("/ping"))
        .send()
        .is_ok_and(|r| r.status() == 503)));
}
