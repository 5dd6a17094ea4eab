//! `blipserve loadtest` against the real server.

use std::process::Command;

use blipserve_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

fn loadtest(server: &Server, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let frame = write(dir.path(), "frame.jpg", &jpeg(&synthetic_frame(640, 360, 3), 90, Subsamp::Sub2x2));
    let report = dir.path().join("report.json");
    let out = Command::new(BIN)
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
    let server = Server::start(BIN, "tiny", &[]);
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
    let server = Server::start(
        BIN,
        "tiny",
        &["--replicas", "1", "--max-batch-frames", "1", "--queue-capacity", "512", "--request-timeout-ms", "120000"],
    );
    let closed = loadtest(&server, &["--concurrency", "1", "--requests", "30"]);
    let capacity = closed["throughput_per_s"].as_f64().unwrap();
    // Three times what the server sustains: its queue grows, and only the open loop sees it. Two
    // thirds of the requests pile up, so the count is sized to the measured capacity (a backlog
    // of about three seconds' work, however fast this machine is today), and no request may time
    // out: neither the server's deadline nor the client's is near.
    let rate = format!("{:.1}", capacity * 3.0);
    let requests = ((capacity * 4.5).round() as u64).clamp(12, 60);
    let open = loadtest(&server, &["--rate", &rate, "--requests", &requests.to_string(), "--timeout-s", "120"]);
    assert_eq!(open["ok"], requests, "{open}");
    let (closed_p50, open_p50) =
        (closed["latency_ms"]["p50"].as_f64().unwrap(), open["latency_ms"]["p50"].as_f64().unwrap());
    assert!(open_p50 > closed_p50, "open-loop p50 {open_p50} ms ≤ closed-loop p50 {closed_p50} ms");
    assert_eq!(server.metric("blipserve_requests_total{outcome=\"ok\"}"), 30.0 + requests as f64);
}

/// One CSV row of a sweep, by column name.
struct Row(std::collections::HashMap<String, String>);

impl Row {
    fn f(&self, column: &str) -> f64 {
        self.0[column].parse().unwrap_or_else(|_| panic!("{column} = {:?}", self.0[column]))
    }
}

fn read_csv(path: &std::path::Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{line}");
            Row(header.iter().zip(cells).map(|(h, c)| (h.to_string(), c.to_string())).collect())
        })
        .collect()
}

/// Runs `blipserve loadtest sweep` with a synthetic frame into a fresh folder; returns the folder,
/// stdout and the parsed JSON.
fn sweep(extra: &[&str]) -> (tempfile::TempDir, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let frame = write(dir.path(), "frame.jpg", &jpeg(&synthetic_frame(640, 360, 5), 90, Subsamp::Sub2x2));
    let out = Command::new(BIN)
        .args(["loadtest", "sweep", "--image"])
        .arg(&frame)
        .arg("--out")
        .arg(dir.path())
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let json = serde_json::from_str(&std::fs::read_to_string(dir.path().join("sweep.json")).unwrap()).unwrap();
    (dir, stdout, json)
}

/// The capacity rule, recomputed from the CSV: the highest throughput among the rows that
/// answered every request and kept p99 at or under the objective.
fn capacity_from_csv(rows: &[Row], slo_p99_ms: f64) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.f("ok") > 0.0 && r.f("ok") == r.f("requests") && r.f("p99_ms") <= slo_p99_ms)
        .max_by(|a, b| a.f("throughput_per_s").total_cmp(&b.f("throughput_per_s")))
}

#[test]
fn sweep_starts_servers_and_writes_csv_json_and_a_chart() {
    let model = model_dir("tiny");
    let slo = 150.0;
    let (dir, stdout, json) = sweep(&[
        "--model",
        model.to_str().unwrap(),
        "--replicas",
        "1,2",
        "--threads",
        "1",
        "--concurrency",
        "1,2",
        "--requests",
        "12",
        "--warmup",
        "2",
        "--slo-p99-ms",
        &slo.to_string(),
        "--headroom",
        "0.6",
        "--instance-type",
        "inf2.xlarge",
    ]);

    // One row per combination, in sweep order, with sane values.
    let rows = read_csv(&dir.path().join("sweep.csv"));
    let labels: Vec<&str> = rows.iter().map(|r| r.0["label"].as_str()).collect();
    assert_eq!(labels, ["1-1", "1-2", "2-1", "2-2"]);
    for r in &rows {
        assert_eq!(r.0["label"], format!("{}-{}", r.0["replicas"], r.0["concurrency"]));
        assert_eq!(r.f("requests"), 12.0);
        assert_eq!(r.f("ok") + r.f("errors"), 12.0);
        assert!(r.f("throughput_per_s") > 0.0);
        let (p50, p90, p99, max) = (r.f("p50_ms"), r.f("p90_ms"), r.f("p99_ms"), r.f("max_ms"));
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{:?}", r.0);
        let meets = r.f("ok") == r.f("requests") && p99 <= slo;
        assert_eq!(r.0["meets_slo"], meets.to_string(), "{:?}", r.0);
    }

    // The JSON holds the same points, and capacity and target follow the rule.
    assert_eq!(json["points"].as_array().unwrap().len(), 4);
    assert_eq!(json["slo_p99_ms"], slo);
    match capacity_from_csv(&rows, slo) {
        Some(best) => {
            let capacity = &json["capacity"];
            let reported = capacity["requests_per_s"].as_f64().unwrap();
            assert!((reported - best.f("throughput_per_s")).abs() < 2e-3, "{capacity} vs {:?}", best.0);
            let chosen = rows.iter().find(|r| r.0["label"] == capacity["label"].as_str().unwrap()).unwrap();
            assert_eq!(chosen.0["meets_slo"], "true");
            let target = &json["scaling_target"];
            assert!((target["value"].as_f64().unwrap() - reported * 0.6).abs() < 1e-9, "{target}");
            assert_eq!(target["unit"], "requests/s per instance");
            assert_eq!(target["metric"], "Requests");
            assert!(stdout.contains("scaling target:"), "{stdout}");
            // The cost at capacity is the chosen row's, and the fleet at its target pays 1/0.6 of it.
            let cost = &json["cost"];
            let at_capacity = cost["usd_per_million_frames_at_capacity"].as_f64().unwrap();
            assert!((at_capacity - chosen.f("usd_per_million_frames")).abs() < 1e-3 * at_capacity, "{cost}");
            let at_target = cost["usd_per_million_frames_at_scaling_target"].as_f64().unwrap();
            assert!((at_target - at_capacity / 0.6).abs() < 1e-9 * at_target, "{cost}");
            assert!(stdout.contains("USD per million frames at capacity"), "{stdout}");
        }
        None => {
            assert!(json["capacity"].is_null() && json["scaling_target"].is_null(), "{json}");
            assert!(stdout.contains("sustainable capacity: none"), "{stdout}");
        }
    }

    // Each row's cost per million frames is the instance's hourly price over the frames it
    // answered in an hour, at that row's throughput.
    let price = &json["price"];
    assert!(price["source"].as_str().unwrap().starts_with("inf2.xlarge, "), "{price}");
    let usd_per_hour = price["usd_per_hour"].as_f64().unwrap();
    for r in &rows {
        let expected = usd_per_hour / (r.f("throughput_per_s") * 3600.0) * 1e6;
        assert!((r.f("usd_per_million_frames") - expected).abs() <= 1e-3 * expected + 1e-4, "{:?}", r.0);
    }

    // The chart is well-formed SVG with one group of two bars per combination.
    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).unwrap();
    assert_eq!(svg.contains("USD per million frames"), !json["cost"].is_null());
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let groups: Vec<_> =
        doc.descendants().filter(|n| n.has_tag_name("g") && n.attribute("class") == Some("point")).collect();
    let chart_labels: Vec<&str> = groups.iter().map(|g| g.attribute("data-label").unwrap()).collect();
    assert_eq!(chart_labels, labels);
    for g in groups {
        let bars: Vec<_> =
            g.children().filter(|n| n.has_tag_name("rect")).filter_map(|n| n.attribute("class")).collect();
        assert_eq!(bars, ["p50", "p99"]);
    }
}

#[test]
fn sweep_against_a_running_server_reports_no_capacity_when_no_point_meets_the_objective() {
    let server = Server::start(BIN, "tiny", &["--replicas", "1"]);
    let (dir, stdout, json) = sweep(&[
        "--url",
        &server.url("/v1/detect"),
        "--concurrency",
        "1,2",
        "--requests",
        "6",
        "--warmup",
        "0",
        "--slo-p99-ms",
        "0.001",
    ]);
    let rows = read_csv(&dir.path().join("sweep.csv"));
    let labels: Vec<&str> = rows.iter().map(|r| r.0["label"].as_str()).collect();
    assert_eq!(labels, ["1", "2"]);
    assert!(rows.iter().all(|r| r.0["replicas"].is_empty() && r.0["meets_slo"] == "false"));
    assert!(json["capacity"].is_null() && json["scaling_target"].is_null(), "{json}");
    assert!(stdout.contains("sustainable capacity: none"), "{stdout}");
    // Every measured request reached the server (no warm-up here).
    assert_eq!(server.metric("blipserve_requests_total{outcome=\"ok\"}"), 12.0);
}
