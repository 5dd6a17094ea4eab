//! What the two tiers survive, bounded versions of docs/reliability.md's runs: a short soak, three
//! times the capacity, and chaos under load through the gateway (workers SIGKILLed and
//! restarted, a worker frozen with SIGSTOP, a slow worker, a worker that cannot read its model).
//! Each prints its figures; none asserts a time.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blipserve_testkit::metrics::sum;
use blipserve_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

fn frame_file(dir: &Path) -> std::path::PathBuf {
    write(dir, "frame.jpg", &jpeg(&synthetic_frame(640, 360, 5), 90, Subsamp::Sub2x2))
}

/// `blipserve loadtest MODE … --out DIR`; returns the exit status, stdout and the JSON it wrote.
fn loadtest(mode: &str, dir: &Path, extra: &[&str]) -> (bool, String, Value) {
    let out = Command::new(BIN)
        .args(["loadtest", mode, "--model"])
        .arg(model_dir("tiny"))
        .arg("--image")
        .arg(frame_file(dir))
        .arg("--out")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let json = std::fs::read_to_string(dir.join(format!("{mode}.json"))).unwrap_or_else(|_| "null".into());
    (out.status.success(), stdout, serde_json::from_str(&json).unwrap())
}

#[test]
fn a_short_soak_keeps_every_process_flat_and_every_request_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--duration-s", "20", "--warmup-s", "5", "--capacity-s", "3", "--sample-every-s", "1"];
    let (ok, _, report) = loadtest("soak", dir.path(), &args);
    assert!(ok, "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]));
    let (load, accounting) = (&report["load"], &report["accounting"]);
    let invalid: u64 = load["invalid"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(invalid > 0 && load["ok"].as_u64().unwrap() > 0, "{load}");
    assert_eq!(accounting["gateway_counted"].as_f64().unwrap(), load["requests"].as_f64().unwrap());
    assert_eq!(accounting["workers_ok"].as_f64().unwrap(), load["ok"].as_f64().unwrap());
    // Four quantities of three processes, sampled about every second.
    assert_eq!(report["growth"].as_array().unwrap().len(), 12);
    let csv = std::fs::read_to_string(dir.path().join("soak.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(rows.len() >= 3 * 10, "{csv}");
    for process in ["gateway", "worker-1", "worker-2"] {
        assert!(rows.iter().any(|r| r.split(',').nth(1) == Some(process)), "{process}: {csv}");
    }
    let svg = std::fs::read_to_string(dir.path().join("soak.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(doc.descendants().filter(|n| n.attribute("class") == Some("panel")).count(), 4);
}

#[test]
fn three_times_the_capacity_is_refused_with_retry_after_and_every_request_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    // A short queue, so that the overload reaches it within a few seconds on any machine.
    let args = ["--phase-s", "4", "--capacity-s", "3", "--worker-arg=--queue-capacity=8"];
    let (ok, stdout, report) = loadtest("overload", dir.path(), &args);
    assert!(ok, "{report:#}");
    assert!(stdout.contains("admitted p99 during the overload"));
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.iter().map(|p| p["name"].as_str().unwrap()).collect::<Vec<_>>(), ["before", "overload", "after"]);
    for phase in phases {
        let (r, a) = (&phase["report"], &phase["accounting"]);
        let errors = r["errors"].as_object().unwrap();
        if phase["name"] == "overload" {
            let refused: u64 = errors.values().map(|v| v.as_u64().unwrap()).sum();
            assert!(refused > 0, "three times the capacity was never refused: {r}");
            assert!(errors.keys().all(|s| s == "429" || s == "503"), "{r}");
        } else {
            assert!(errors.is_empty(), "{}: {r}", phase["name"]);
        }
        assert_eq!(r["refused_without_retry_after"], 0);
        assert_eq!((a["unanswered"].as_u64(), a["unmatched_ids"].as_u64()), (Some(0), Some(0)), "{a}");
        assert_eq!(a["gateway_counted"].as_f64().unwrap(), a["sent"].as_f64().unwrap(), "{a}");
        assert_eq!(a["workers_ok"].as_f64().unwrap(), a["client_ok"].as_f64().unwrap(), "{a}");
    }
}

// ---- chaos through the gateway ----

fn worker(port: u16) -> Server {
    Server::start_role(BIN, "worker", "tiny", port, &["--threads", "1", "--replicas", "1"])
}

/// A gateway with one pool of `urls`, fast health checks, and `extra` flags.
fn gateway(dir: &Path, urls: &[String], extra: &[&str]) -> Server {
    let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let text = format!("[[pools]]\nname = \"local\"\nbackend = \"cpu\"\nweight = 1\nurls = [{}]\n", list.join(", "));
    let config = write(dir, "gateway.toml", text.as_bytes());
    let mut args: Vec<OsString> =
        vec!["gateway".into(), "--config".into(), config.into(), "--listen".into(), "127.0.0.1".into()];
    for a in ["--port", "0", "--health-interval-ms", "100", "--health-timeout-ms", "500", "--eject-ms", "300"]
        .iter()
        .chain(extra)
    {
        args.push(a.into());
    }
    let gateway = Server::spawn(BIN, &args);
    gateway.wait_ready(Duration::from_secs(30));
    gateway
}

fn healthy_workers(gateway: &Server) -> f64 {
    sum(&gateway.metrics_text(), "blipserve_pool_healthy_workers", &[("pool", "local")])
}

/// Polls until the gateway sees `n` healthy workers; returns how long that took.
fn until_healthy(gateway: &Server, n: f64, limit: Duration) -> Duration {
    let started = Instant::now();
    assert!(eventually_every(limit, Duration::from_millis(20), || healthy_workers(gateway) == n), "never {n} healthy");
    started.elapsed()
}

/// One answer: its status (0: no answer at all) and the error body's code.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    code: Option<String>,
    retry_after: bool,
    latency: Duration,
}

/// `clients` threads sending detect requests back to back through `url`, each at most
/// `per_client`, while `during` runs on this thread (given the count of answers so far); they stop
/// when it returns.
fn under_load<R>(
    url: &str,
    clients: usize,
    per_client: usize,
    during: impl FnOnce(&AtomicUsize) -> R,
) -> (Vec<Answer>, R) {
    let image = jpeg(&synthetic_frame(640, 360, 9), 90, Subsamp::Sub2x2);
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (image, stop, done) = (&image, &stop, &done);
                s.spawn(move || {
                    let http = client();
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::SeqCst) && answers.len() < per_client {
                        let started = Instant::now();
                        let sent = http.post(url).multipart(detect_form(image, &["is the dog barking?"], &[])).send();
                        let answer = match sent {
                            Err(_) => Answer { status: 0, code: None, retry_after: false, latency: started.elapsed() },
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let retry_after = resp.headers().contains_key("retry-after");
                                let body: Value = resp.json().unwrap_or(Value::Null);
                                let code = body["code"].as_str().map(String::from);
                                Answer { status, code, retry_after, latency: started.elapsed() }
                            }
                        };
                        answers.push(answer);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    answers
                })
            })
            .collect();
        let result = during(&done);
        stop.store(true, Ordering::SeqCst);
        (handles.into_iter().flat_map(|h| h.join().unwrap()).collect(), result)
    })
}

/// Waits (at most two minutes) until `done` reaches `n`.
fn until_count(done: &AtomicUsize, n: usize) {
    eventually_every(Duration::from_secs(120), Duration::from_millis(5), || done.load(Ordering::SeqCst) >= n);
}

fn by_status(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        let key = match (&a.status, &a.code) {
            (0, _) => "no answer".to_string(),
            (s, Some(code)) => format!("{s} {code}"),
            (s, None) => s.to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn percentile(answers: &[Answer], q: f64) -> f64 {
    let mut ms: Vec<f64> = answers.iter().filter(|a| a.status == 200).map(|a| a.latency.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

#[test]
fn workers_killed_and_restarted_again_and_again_cost_no_client_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut workers = [worker(0), worker(0)];
    let ports = workers.each_ref().map(Server::port);
    let gateway = gateway(dir.path(), &workers.each_ref().map(|w| w.base.clone()), &["--max-attempts", "4"]);
    let url = gateway.url("/v1/detect");
    let (answers, recoveries) = under_load(&url, 4, 2000, |_| {
        let mut recoveries = Vec::new();
        for round in 0..4 {
            let i = round % 2;
            std::thread::sleep(Duration::from_millis(400));
            workers[i].signal(libc::SIGKILL);
            workers[i].wait_exit(Duration::from_secs(10));
            let restarted = Instant::now();
            workers[i] = worker(ports[i]);
            until_healthy(&gateway, 2.0, Duration::from_secs(30));
            recoveries.push(restarted.elapsed());
        }
        std::thread::sleep(Duration::from_millis(400));
        recoveries
    });
    let counts = by_status(&answers);
    eprintln!(
        "SIGKILL ×4, each worker restarted on its port: {} requests, by status {counts:?}; \
         restart to full service (the gateway sees both workers ready) {:?}",
        answers.len(),
        recoveries
    );
    assert!(answers.len() > 20);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["200"], "a client saw the kills: {counts:?}");
}

#[test]
fn a_frozen_worker_costs_only_clear_answers_and_service_returns_when_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let workers = [worker(0), worker(0)];
    let gateway = gateway(
        dir.path(),
        &workers.each_ref().map(|w| w.base.clone()),
        &["--max-attempts", "4", "--request-timeout-ms", "3000"],
    );
    let url = gateway.url("/v1/detect");
    let (answers, (ejected_after, recovered_after)) = under_load(&url, 4, 2000, |_| {
        std::thread::sleep(Duration::from_millis(500));
        let frozen = Instant::now();
        workers[0].signal(libc::SIGSTOP);
        let ejected = until_healthy(&gateway, 1.0, Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(3).saturating_sub(frozen.elapsed()));
        workers[0].signal(libc::SIGCONT);
        let recovered = until_healthy(&gateway, 2.0, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(500));
        (ejected, recovered)
    });
    let counts = by_status(&answers);
    eprintln!(
        "SIGSTOP for 3 s, then SIGCONT: {} requests, by status {counts:?}; out of the pool {:?} after the \
         freeze, back {:?} after the resume",
        answers.len(),
        ejected_after,
        recovered_after
    );
    // Every request answered: 200, or a clear JSON error (the deadline passed while the frozen
    // worker held it) with its code; never a dropped connection.
    for a in &answers {
        assert!(a.status == 200 || (a.status >= 400 && a.code.is_some()), "{a:?}");
        assert!(a.status != 503 || a.retry_after, "{a:?}");
    }
    assert!(counts.get("200").copied().unwrap_or(0) > 10, "{counts:?}");
    // After the resume, service is full again: both workers answer.
    let after = (0..10)
        .map(|_| {
            client().post(&url).multipart(detect_form(&frame_bytes(), &["is the cat asleep?"], &[])).send().unwrap()
        })
        .filter(|r| r.status() == 200)
        .count();
    assert_eq!(after, 10);
    for w in &workers {
        assert!(w.metric("blipserve_requests_total{outcome=\"ok\"}") > 0.0);
    }
}

fn frame_bytes() -> Vec<u8> {
    jpeg(&synthetic_frame(320, 240, 2), 90, Subsamp::Sub2x2)
}

/// A TCP proxy on 127.0.0.1 that holds every chunk from the client `delay` before passing it
/// on: a worker that answers slowly, without touching the worker.
fn slow_proxy(to: u16, delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", to)) else { continue };
            let (mut c_read, mut u_write) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut u_read, mut c_write) = (upstream, client);
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n @ 1..) = c_read.read(&mut buf) {
                    std::thread::sleep(delay);
                    if u_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = u_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn a_slow_worker_costs_latency_not_answers() {
    let dir = tempfile::tempdir().unwrap();
    let workers = [worker(0), worker(0)];
    let slow = slow_proxy(workers[1].port(), Duration::from_millis(250));
    let urls = [workers[0].base.clone(), format!("http://127.0.0.1:{slow}")];
    let gateway = gateway(dir.path(), &urls, &[]);
    until_healthy(&gateway, 2.0, Duration::from_secs(30));
    let (answers, ()) = under_load(&gateway.url("/v1/detect"), 4, 60, |done| until_count(done, 4 * 60));
    let counts = by_status(&answers);
    let ok = |w: &Server| w.try_metric("blipserve_requests_total{outcome=\"ok\"}").unwrap_or(0.0);
    let (fast, slow) = (ok(&workers[0]), ok(&workers[1]));
    eprintln!(
        "one worker behind 250 ms of added latency: {} requests, by status {counts:?}; answered by the fast \
         worker {fast}, by the slow one {slow}; p50 {:.0} ms, p99 {:.0} ms",
        answers.len(),
        percentile(&answers, 0.5),
        percentile(&answers, 0.99)
    );
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["200"], "{counts:?}");
    assert_eq!(fast + slow, answers.len() as f64);
}

#[test]
fn a_worker_that_cannot_read_its_model_exits_clearly_and_the_gateway_serves_with_the_other() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the model whose manifest cannot be read. (The tests may run as root, who reads a
    // file whatever its mode: a directory in its place fails the read the same way.)
    let model = dir.path().join("unreadable-model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(model_dir("tiny")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "manifest.json" && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir(model.join("manifest.json")).unwrap();

    let good = worker(0);
    let bad_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gateway = gateway(dir.path(), &[good.base.clone(), format!("http://127.0.0.1:{bad_port}")], &[]);
    let started = Instant::now();
    let mut bad = Command::new(BIN)
        .args(["worker", "--listen", "127.0.0.1", "--port", &bad_port.to_string(), "--model"])
        .arg(&model)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let (answers, ()) = under_load(&gateway.url("/v1/detect"), 2, 1000, |done| {
        assert!(eventually(Duration::from_secs(60), || {
            status = bad.try_wait().unwrap();
            status.is_some()
        }));
        until_count(done, done.load(Ordering::SeqCst) + 20);
    });
    let exited_after = started.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(bad.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let counts = by_status(&answers);
    eprintln!(
        "worker on an unreadable model: exited {:?} after {exited_after:?} with {:?}; through the gateway \
         meanwhile {} requests, by status {counts:?}",
        status.unwrap().code(),
        stderr.lines().last().unwrap_or_default(),
        answers.len()
    );
    assert_eq!(status.unwrap().code(), Some(1), "{stderr}");
    assert!(stderr.contains("manifest.json"), "the error names the file: {stderr}");
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["200"], "{counts:?}");
    assert_eq!(healthy_workers(&gateway), 1.0);
}
