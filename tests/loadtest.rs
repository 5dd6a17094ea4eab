//! `blipserve loadtest` against the real server.

mod common;

use std::process::Command;

use common::server::Server;
use common::*;
use serde_json::Value;

fn loadtest(server: &Server, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let frame = write(dir.path(), "frame.jpg", &jpeg(&synthetic_frame(640, 360, 3), 90, turbojpeg::Subsamp::Sub2x2));
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_blipserve"))
        .args(["loadtest", "--url", &server.url("/v1/detect"), "--image"])
        .arg(&frame)
        .arg("--json")
        .arg(&report)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("frames/s"));
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

#[test]
fn reported_requests_equal_the_servers_count() {
    let server = Server::start("tiny", &[]);
    let report = loadtest(&server, &["--concurrency", "4", "--requests", "40"]);
    assert_eq!(report["requests"], 40);
    assert_eq!(report["ok"], 40);
    assert_eq!(server.metric("blipserve_requests_total{outcome=\"ok\"}"), 40.0);
    for key in ["p50", "p90", "p99", "max"] {
        assert!(report["latency_ms"][key].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn open_loop_latency_exceeds_closed_loop_on_a_saturated_server() {
    let server = Server::start("tiny", &["--replicas", "1", "--max-batch-frames", "1", "--queue-capacity", "512"]);
    let closed = loadtest(&server, &["--concurrency", "1", "--requests", "30"]);
    let capacity = closed["throughput_per_s"].as_f64().unwrap();
    // Three times what the server sustains: its queue grows, and only the open loop sees it.
    let rate = format!("{:.1}", capacity * 3.0);
    let open = loadtest(&server, &["--rate", &rate, "--requests", "60"]);
    assert_eq!(open["ok"], 60, "{open}");
    let (closed_p50, open_p50) =
        (closed["latency_ms"]["p50"].as_f64().unwrap(), open["latency_ms"]["p50"].as_f64().unwrap());
    assert!(open_p50 > closed_p50, "open-loop p50 {open_p50} ms ≤ closed-loop p50 {closed_p50} ms");
    assert_eq!(server.metric("blipserve_requests_total{outcome=\"ok\"}"), 90.0);
}
