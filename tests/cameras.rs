//! Camera-aware serving through the real binary: reuse on a simulated fleet of cameras (savings,
//! no changed frame answered from reuse, agreement with the model), state shared by two servers
//! through a real Redis (and its outage), one loud camera against the others, and bad camera ids.

use std::time::Duration;

use blipserve_api::loadtest::cameras::{self, CameraPlan, CameraReport, Scene};
use blipserve_api::loadtest::{self, Load, Plan};
use blipserve_testkit::*;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");
const SIZE: (usize, usize) = (640, 360);

fn fleet(url: &str, cameras: usize, fps: f64, seconds: f64) -> CameraPlan {
    CameraPlan {
        url: url.to_string(),
        cameras,
        fps,
        duration: Duration::from_secs_f64(seconds),
        size: SIZE,
        questions: blipserve_api::DEFAULT_QUESTIONS.map(String::from).to_vec(),
        change_probability: 0.05,
        // Pets from under 2 % of the frame.
        sprite_area: (0.018, 0.06),
        reuse: true,
        verify_every: 0,
        loud_factor: 1.0,
        seed: 11,
        timeout: Duration::from_secs(30),
        api_key: None,
        id_prefix: loadtest::id_prefix(),
    }
}

fn run(plan: CameraPlan) -> CameraReport {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(cameras::run(plan)).unwrap()
}

/// Frames the server's model answered so far.
fn model_frames(server: &Server) -> f64 {
    server.metric("blipserve_batch_frames_sum")
}

#[test]
fn reuse_saves_most_model_calls_and_never_answers_a_changed_frame() {
    let server = Server::start(BIN, "tiny", &["--camera-reuse-max-age-ms", "15000"]);
    let url = server.url("/v1/detect");

    let before = model_frames(&server);
    let off = run(CameraPlan { reuse: false, ..fleet(&url, 30, 1.0, 15.0) });
    let calls_off = model_frames(&server) - before;

    let before = model_frames(&server);
    let on = run(CameraPlan { verify_every: 5, ..fleet(&url, 30, 1.0, 15.0) });
    // The verification requests (reuse=false) are model calls too: not the fleet's.
    let calls_on = model_frames(&server) - before - on.agreement.frames as f64;

    let per_frame_off = calls_off / off.frames as f64;
    let per_frame_on = calls_on / on.frames as f64;
    let drop = 1.0 - per_frame_on / per_frame_off;
    let a = &on.agreement;
    eprintln!(
        "reuse off: {} frames, {calls_off} model calls; reuse on: {} frames ({} changed), {calls_on} model calls \
         ({} by the client's count), {} of {} answers reused; model calls per frame {per_frame_off:.3} -> \
         {per_frame_on:.3}: {:.1} % fewer; changed frames answered from reuse: {} (smallest pet {:.2} %); \
         reused vs fresh: {} of {} answers the same, |dP| max {:.4} mean {:.4}",
        off.frames,
        on.frames,
        on.frames_changed,
        on.model_calls,
        on.answers_reused,
        on.answers,
        drop * 100.0,
        on.changed_answered_from_reuse,
        on.smallest_sprite * 100.0,
        a.same_answer,
        a.answers,
        a.max_abs_dp,
        a.mean_abs_dp
    );
    for report in [&off, &on] {
        assert!(report.quiet.errors.is_empty(), "every frame answered: {:?}", report.quiet.errors);
        assert!(report.frames >= 350, "{} frames", report.frames);
    }
    assert_eq!(per_frame_off, 1.0, "without reuse every frame is a model call");
    assert_eq!(calls_on, on.model_calls as f64, "the server and the client count the same model calls");
    assert!(drop >= 0.7, "model calls dropped by {:.1} %", drop * 100.0);
    assert!(on.frames_changed >= 10, "the fleet's scenes changed {} times", on.frames_changed);
    assert_eq!(on.changed_answered_from_reuse, 0, "a changed frame was answered from reuse");
    assert!(on.smallest_sprite <= 0.02, "the smallest pet was {:.2} % of the frame", on.smallest_sprite * 100.0);
    // Reused answers against the model's on a re-encoding of the same scene: the model's own
    // noise between two noisy JPEGs of one room, never a different scene.
    assert!(a.frames >= 20 && a.answers >= 60, "{a:?}");
    assert!(a.same_answer as f64 >= 0.95 * a.answers as f64, "{a:?}");
    assert!(a.max_abs_dp < 0.1, "{a:?}");
    assert_eq!(server.metric("blipserve_camera_answers_reused_total"), on.answers_reused as f64);
}

/// One request from `camera` (multipart), answered 200; the JSON body.
fn ask(server: &Server, camera: &str, frame: Vec<u8>, request_id: &str) -> Value {
    let form = Form::new()
        .part("image", Part::bytes(frame).file_name("frame.jpg"))
        .text("question", "is the dog barking?")
        .text("question", "is the pet on the sofa?")
        .text("camera", camera.to_string());
    let resp =
        client().post(server.url("/v1/detect")).header("x-request-id", request_id).multipart(form).send().unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().unwrap()
}

#[test]
fn a_fleet_shares_camera_state_through_redis_and_survives_its_outage() {
    let mut redis = Redis::start();
    let store = redis.url();
    let a = Server::start(BIN, "tiny", &["--camera-store", &store]);
    let b = Server::start(BIN, "tiny", &["--camera-store", &store]);
    let mut scene = Scene::new(SIZE, 5, (0.03, 0.05));

    let first = ask(&a, "cam-fleet", scene.frame().unwrap(), "fleet-1");
    assert_eq!(first["camera"]["frame"], "new", "{first}");
    assert!(eventually(Duration::from_secs(5), || redis.keys() >= 2), "the state and the bucket reach Redis");
    // The same room, another noisy JPEG, sent to the other server: answered from A's answers.
    let second = ask(&b, "cam-fleet", scene.frame().unwrap(), "fleet-2");
    assert_eq!(second["camera"]["frame"], "unchanged", "{second}");
    assert_eq!(second["batch_frames"], 0, "no model call: {second}");
    for (reused, fresh) in second["answers"].as_array().unwrap().iter().zip(first["answers"].as_array().unwrap()) {
        assert_eq!(reused["reused"], true);
        assert_eq!(reused["computed_by"], "fleet-1");
        assert_eq!(reused["probability"], fresh["probability"]);
        assert!(reused["age_ms"].as_u64().unwrap() < 5_000);
    }
    // A pet walks in: B sees the change and asks the model.
    scene.maybe_change(1.0);
    let third = ask(&b, "cam-fleet", scene.frame().unwrap(), "fleet-3");
    assert_eq!(third["camera"]["frame"], "changed", "{third}");
    assert!(third["answers"].as_array().unwrap().iter().all(|a| a.get("reused").is_none()));

    // Redis goes away: every request is still answered, without reuse, and counted.
    redis.stop();
    for (i, server) in [&a, &b, &a, &b].into_iter().enumerate() {
        let answer = ask(server, "cam-fleet", scene.frame().unwrap(), &format!("outage-{i}"));
        assert_eq!(answer["camera"]["frame"], "store_unavailable", "{answer}");
    }
    for server in [&a, &b] {
        let errors = metrics::sum(&server.metrics_text(), "blipserve_camera_store_errors_total", &[]);
        assert!(errors >= 2.0, "store errors counted: {errors}");
    }

    // Back (empty): reuse resumes across the two servers.
    redis.restart();
    let mut n = 0;
    let resumed = eventually(Duration::from_secs(15), || {
        n += 1;
        let fresh = ask(&a, "cam-fleet", scene.frame().unwrap(), &format!("back-a-{n}"));
        if fresh["camera"]["frame"] == "store_unavailable" {
            return false;
        }
        eventually(Duration::from_secs(2), || redis.keys() >= 1);
        let again = ask(&b, "cam-fleet", scene.frame().unwrap(), &format!("back-b-{n}"));
        again["camera"]["frame"] == "unchanged" && again["camera"]["reused"] == 2
    });
    assert!(resumed, "reuse resumed after Redis came back");
}

#[test]
fn one_loud_camera_does_not_starve_the_others() {
    // Each quiet camera sends 2 frames/s; a camera may send 4/s (burst 6) and have 2 frames
    // waiting (a newer one supersedes the oldest), so the queue cannot fill with one camera's.
    let fps = 2.0;
    let protection = ["--camera-rate", "4", "--camera-burst", "6", "--camera-queue-limit", "2"];
    let server = Server::start(BIN, "tiny", &protection);
    let url = server.url("/v1/detect");
    // Capacity: a closed loop of frames without a camera.
    let frame = Scene::new(SIZE, 1, (0.02, 0.08)).frame().unwrap();
    let probe = Plan {
        url: url.clone(),
        load: Load::Closed { concurrency: 4 },
        max_requests: 2_000,
        max_duration: Duration::from_secs(5),
        frames: vec![frame],
        questions: blipserve_api::DEFAULT_QUESTIONS.map(String::from).to_vec(),
        api_key: None,
        timeout: Duration::from_secs(30),
        invalid_every: 0,
        id_prefix: loadtest::id_prefix(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let capacity = runtime.block_on(loadtest::run(probe, |_, _| {})).unwrap().throughput_per_s;
    // Quiet cameras at 60 % of the capacity measured without cameras (the simulator's own frame
    // encoding shares these cores); camera 0 silent, then at 20× their rate (the loud camera
    // alone would take 120 % of the capacity).
    let quiet = ((0.6 * capacity / fps) as usize).max(2);
    let plan = CameraPlan { reuse: false, seed: 3, ..fleet(&url, quiet + 1, fps, 8.0) };
    let alone = run(CameraPlan { loud_factor: 0.0, ..plan.clone() });
    let with_loud = run(CameraPlan { loud_factor: 20.0, ..plan.clone() });
    // The same beside a server without per-camera rates or queue limits: what they protect
    // against.
    let unlimited = Server::start(BIN, "tiny", &["--camera-rate", "0", "--camera-queue-limit", "0"]);
    let unprotected = run(CameraPlan {
        loud_factor: 20.0,
        url: unlimited.url("/v1/detect"),
        id_prefix: loadtest::id_prefix(),
        ..plan
    });
    drop(unlimited);
    let loud = with_loud.loud.as_ref().unwrap();
    let ratio = with_loud.quiet.ok_per_s / alone.quiet.ok_per_s;
    let limited = loud.errors.get("429 camera_rate_limited").copied().unwrap_or(0);
    eprintln!(
        "capacity {capacity:.1} frames/s; {quiet} quiet cameras at {fps}/s: {:.2} frames/s answered alone, {:.2} with \
         a camera at {}/s beside them (ratio {ratio:.3}); the loud camera: {} sent, {} answered ({:.2}/s), {limited} \
         refused 429 camera_rate_limited, {} without Retry-After; quiet errors alone {:?}, beside it {:?}; \
         without per-camera rates the quiet cameras got {:.2} frames/s (ratio {:.3}, errors {:?})",
        alone.quiet.ok_per_s,
        with_loud.quiet.ok_per_s,
        fps * 20.0,
        loud.sent,
        loud.ok,
        loud.ok_per_s,
        loud.refused_without_retry_after,
        alone.quiet.errors,
        with_loud.quiet.errors,
        unprotected.quiet.ok_per_s,
        unprotected.quiet.ok_per_s / alone.quiet.ok_per_s,
        unprotected.quiet.errors
    );
    assert_eq!(alone.quiet.sent, with_loud.quiet.sent, "the quiet cameras sent the same frames in both runs");
    assert!(ratio >= 0.9, "the quiet cameras kept {:.1} % of their throughput", ratio * 100.0);
    assert!(limited as f64 >= 0.5 * loud.sent as f64, "the loud camera was limited: {loud:?}");
    assert_eq!(loud.refused_without_retry_after, 0);
    assert_eq!(server.metric("blipserve_camera_rate_limited_total"), limited as f64);
}

#[test]
fn camera_ids_are_checked_and_requests_without_one_are_unchanged() {
    let server = Server::start(BIN, "tiny", &[]);
    let frame = Scene::new(SIZE, 2, (0.02, 0.08)).frame().unwrap();
    let post = |camera: Option<&str>, header: Option<&str>, reuse: Option<&str>| {
        let mut form = Form::new()
            .part("image", Part::bytes(frame.clone()).file_name("frame.jpg"))
            .text("question", "is the dog barking?");
        if let Some(c) = camera {
            form = form.text("camera", c.to_string());
        }
        if let Some(r) = reuse {
            form = form.text("reuse", r.to_string());
        }
        let mut request = client().post(server.url("/v1/detect")).multipart(form);
        if let Some(h) = header {
            request = request.header("x-camera-id", h);
        }
        let resp = request.send().unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    let long = "c".repeat(129);
    for (camera, header, reuse, code) in [
        (Some(long.as_str()), None, None, "bad_camera"),
        (Some("cam 1"), None, None, "bad_camera"),
        (Some(""), None, None, "bad_camera"),
        (None, Some("cam/1"), None, "bad_camera"),
        (Some("cam-1"), Some("cam-2"), None, "bad_camera"),
        (Some("cam-1"), None, Some("maybe"), "bad_reuse"),
    ] {
        let (status, body) = post(camera, header, reuse);
        assert_eq!((status, body["code"].as_str().unwrap()), (400, code), "{camera:?} {header:?} {reuse:?}: {body}");
    }
    // Without a camera: no camera object, nothing reused, whatever was sent before.
    let (status, body) = post(None, None, None);
    assert_eq!(status, 200);
    assert!(body.get("camera").is_none(), "{body}");
    // The header alone names the camera; the same frame again is reused unless reuse=false.
    let (_, first) = post(None, Some("cam-h"), None);
    assert_eq!(first["camera"]["id"], "cam-h");
    assert!(eventually(Duration::from_secs(5), || post(None, Some("cam-h"), None).1["camera"]["frame"] == "unchanged"));
    let (_, fresh) = post(Some("cam-h"), Some("cam-h"), Some("false"));
    assert_eq!(fresh["camera"]["frame"], "reuse_off");
    assert!(fresh["answers"][0].get("reused").is_none(), "{fresh}");
}

/// A detect form of `questions` and `behaviors` about `frame` from `camera`.
fn camera_form(frame: Vec<u8>, camera: &str, questions: &[&str], behaviors: &[&str]) -> Form {
    let mut form =
        Form::new().part("image", Part::bytes(frame).file_name("frame.jpg")).text("camera", camera.to_string());
    for q in questions {
        form = form.text("question", q.to_string());
    }
    for b in behaviors {
        form = form.text("behavior", b.to_string());
    }
    form
}

#[test]
fn the_gateway_answers_reused_questions_itself_and_forwards_only_the_new_ones() {
    let workers: Vec<Server> =
        (0..2).map(|_| Server::start_role(BIN, "worker", "tiny", 0, &["--threads", "1", "--replicas", "1"])).collect();
    let urls: Vec<&str> = workers.iter().map(|w| w.base.as_str()).collect();
    let (gateway, _config) = gateway(BIN, &urls, &[], &[]);
    let model_frames = || workers.iter().map(model_frames).sum::<f64>();
    let post = |form: Form, id: &str| -> Value {
        let resp = client().post(gateway.url("/v1/detect")).header("x-request-id", id).multipart(form).send().unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().unwrap()
    };
    let mut scene = Scene::new(SIZE, 9, (0.03, 0.05));
    let questions = ["is the dog barking?", "is the pet on the sofa?"];

    let start = model_frames();
    let first = post(camera_form(scene.frame().unwrap(), "gw-cam", &questions, &["barking"]), "gw-1");
    assert_eq!(first["camera"]["frame"], "new", "{first}");
    assert_eq!(model_frames(), start + 1.0);
    let answered = |body: &Value| body["answers"].as_array().unwrap().clone();
    // The state is stored just after the answer: soon the same scene is reused.
    assert!(eventually(Duration::from_secs(5), || {
        let again = post(camera_form(scene.frame().unwrap(), "gw-cam", &questions, &["barking"]), "gw-2");
        again["camera"]["frame"] == "unchanged" && again["batch_frames"] == 0
    }));
    let base = model_frames();
    let again = post(camera_form(scene.frame().unwrap(), "gw-cam", &questions, &["barking"]), "gw-2b");
    assert_eq!(again["camera"]["reused"], 3, "{again}");
    assert_eq!(model_frames(), base, "a reused frame is answered by the gateway alone");

    // One new question: only it goes to a worker; the others come back reused, in order.
    let more = ["is the dog barking?", "is the cat asleep?", "is the pet on the sofa?"];
    let mixed = post(camera_form(scene.frame().unwrap(), "gw-cam", &more, &["barking"]), "gw-3");
    assert_eq!(model_frames(), base + 1.0, "one frame, one question, to a worker");
    let answers = answered(&mixed);
    assert_eq!(answers.len(), 4, "{mixed}");
    assert_eq!(mixed["camera"]["reused"], 3, "{mixed}");
    let first_answers = answered(&first);
    for (got, (question, reused)) in answers.iter().zip([(more[0], true), (more[1], false), (more[2], true)]) {
        assert_eq!(got["question"], question);
        assert_eq!(got.get("reused").is_some(), reused, "{got}");
    }
    assert_eq!(answers[0]["probability"], first_answers[0]["probability"]);
    assert_eq!(answers[3]["behavior"], "barking");
    assert_eq!(answers[3]["computed_by"], first["request_id"]);
    // The fresh answer joins the camera's state: now all four are reused.
    assert!(eventually(Duration::from_secs(5), || {
        let all = post(camera_form(scene.frame().unwrap(), "gw-cam", &more, &["barking"]), "gw-4");
        all["camera"]["reused"] == 4
    }));
    let text = gateway.metrics_text();
    assert!(metrics::value(&text, "blipserve_camera_answers_reused_total") >= 7.0);
}
