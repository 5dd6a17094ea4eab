//! Health that follows inference, with batches that fail on demand: a copy of the tiny model whose
//! image encoder calls the test operator library's `fail_if_exists`, which throws while a flag
//! file exists (models/fixtures/custom_op.py --faulty-model). Real worker, real libtorch errors.

use std::time::Duration;

use blipserve_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

fn detect_status(server: &Server, image: &[u8]) -> u16 {
    server.detect(image, &["is the dog barking?"]).status().as_u16()
}

fn ready(server: &Server) -> (u16, Value) {
    let r = client().get(server.url("/ready")).send().unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

#[test]
fn failing_batches_turn_ready_503_until_a_self_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, flag) = faulty_worker(BIN, dir.path(), &["--unhealthy-after-failed-batches", "2"]);
    let image = jpeg(&synthetic_frame(320, 240, 9), 90, Subsamp::Sub2x2);
    assert_eq!(detect_status(&server, &image), 200);
    assert_eq!(server.metric("blipserve_inference_failing"), 0.0);

    // Inference breaks: each request fails with a 500, and after two failed batches in a row the
    // worker says so on /ready, with the reason, for the load balancer to route around it.
    std::fs::write(&flag, b"").unwrap();
    assert_eq!(detect_status(&server, &image), 500);
    assert_eq!(ready(&server).0, 200, "one failed batch is not yet a failing worker");
    assert_eq!(detect_status(&server, &image), 500);
    let (status, body) = ready(&server);
    assert_eq!((status, body["status"].as_str()), (503, Some("inference_failing")), "{body}");
    assert_eq!(server.metric("blipserve_inference_failing"), 1.0);
    assert_eq!(server.metric("blipserve_inference_failing_total"), 1.0);

    // While it stays broken the replica re-checks with back-off and, after a few failed checks,
    // reloads its model (which fails too: loading runs a forward pass).
    let reloaded = eventually(Duration::from_secs(20), || server.logged("model reload failed"));
    assert!(reloaded, "no reload attempt: {:?}", server.stderr.lock().unwrap());
    assert_eq!(ready(&server).0, 503);

    // Fixed: the next self-check passes and the worker takes traffic again.
    std::fs::remove_file(&flag).unwrap();
    let recovered = eventually(Duration::from_secs(40), || ready(&server).0 == 200);
    assert!(recovered, "still not ready: {:?}", server.stderr.lock().unwrap());
    assert_eq!(server.metric("blipserve_inference_failing"), 0.0);
    assert_eq!(detect_status(&server, &image), 200);
}
