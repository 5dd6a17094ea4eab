//! The two tiers as real processes on 127.0.0.1: one `blipserve gateway` in front of two pools
//! (labelled neuron and gpu) of CPU `blipserve worker`s on the tiny model, spoken to over HTTP.
//!
//! Every loop is bounded in count and time; no assertion is about timing. (Over 500 lines: one
//! scenario per test, each starting its own cluster; the shared set-up is at the top.)

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use blipserve_testkit::metrics::sum;
use blipserve_testkit::*;
use reqwest::blocking::multipart::Form;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");
const ADMIN_KEY: &str = "test-admin-key";

/// A small frame: the tests are about routing, not inference.
fn frame() -> Vec<u8> {
    jpeg(&synthetic_frame(160, 120, 5), 90, Subsamp::Sub2x2)
}

fn form(image: &[u8], questions: &[&str]) -> Form {
    detect_form(image, questions, &[])
}

/// A CPU worker sized to share two cores with the others; `port` 0: any.
fn worker(port: u16) -> Server {
    Server::start_role(BIN, "worker", "tiny", port, &["--threads", "1", "--replicas", "1"])
}

struct PoolDef<'a> {
    name: &'a str,
    backend: &'a str,
    weight: u32,
    workers: &'a [&'a Server],
}

fn config_text(pools: &[PoolDef]) -> String {
    let mut text = String::from("listen = \"127.0.0.1\"\nport = 0\n");
    for p in pools {
        let urls: Vec<String> = p.workers.iter().map(|w| format!("\"{}\"", w.base)).collect();
        text.push_str(&format!(
            "\n[[pools]]\nname = \"{}\"\nbackend = \"{}\"\nweight = {}\nurls = [{}]\n",
            p.name,
            p.backend,
            p.weight,
            urls.join(", ")
        ));
    }
    text
}

/// The gateway on `config`, with fast health checks and a short ejection.
fn gateway(config: &Path, extra: &[&str]) -> Server {
    let mut args: Vec<OsString> = vec!["gateway".into(), "--config".into(), config.into()];
    for a in [
        "--health-interval-ms",
        "100",
        "--health-timeout-ms",
        "2000",
        "--eject-ms",
        "300",
        "--max-attempts",
        "4",
        "--admin-key",
        ADMIN_KEY,
    ]
    .iter()
    .chain(extra)
    {
        args.push(a.into());
    }
    Server::spawn(BIN, &args)
}

/// A configuration file, a gateway on it, and the workers' pools.
struct Cluster {
    gateway: Server,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(pools: &[PoolDef], extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let config = write(dir.path(), "gateway.toml", config_text(pools).as_bytes());
        let gateway = gateway(&config, extra);
        gateway.wait_ready(Duration::from_secs(30));
        Cluster { gateway, config, _dir: dir }
    }

    fn admin(&self) -> Value {
        client().get(self.gateway.url("/admin/pools")).bearer_auth(ADMIN_KEY).send().unwrap().json().unwrap()
    }

    fn metrics(&self) -> String {
        client().get(self.gateway.url("/metrics")).send().unwrap().text().unwrap()
    }

    /// Attempts the gateway forwarded to `pool`, by outcome (all outcomes: None).
    fn forwarded(&self, pool: &str, outcome: Option<&str>) -> f64 {
        let mut labels = vec![("pool", pool)];
        labels.extend(outcome.map(|o| ("outcome", o)));
        sum(&self.metrics(), "blipserve_upstream_requests_total", &labels)
    }
}

/// Detect requests a worker answered with 200, from its own /metrics.
fn worker_ok(worker: &Server) -> f64 {
    worker.metric("blipserve_requests_total{outcome=\"ok\"}")
}

/// What one client request got: the status and the pool that answered.
#[derive(Debug, Clone)]
struct Got {
    status: Result<u16, String>,
    pool: Option<String>,
}

fn detect(http: &reqwest::blocking::Client, url: &str, image: &[u8]) -> Got {
    match http.post(url).multipart(form(image, &["is the dog barking?"])).send() {
        Err(e) => Got { status: Err(e.to_string()), pool: None },
        Ok(resp) => {
            let pool = resp.headers().get("x-blipserve-pool").map(|v| v.to_str().unwrap().to_string());
            let status = resp.status().as_u16();
            match resp.bytes() {
                Ok(_) => Got { status: Ok(status), pool },
                Err(e) => Got { status: Err(format!("reading the body: {e}")), pool },
            }
        }
    }
}

/// `threads` clients each sending `per_thread` requests back to back; `during` runs on this
/// thread meanwhile, given the count of finished requests.
fn load<R>(url: &str, threads: usize, per_thread: usize, during: impl FnOnce(&AtomicUsize) -> R) -> (Vec<Got>, R) {
    let image = frame();
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (image, done) = (&image, &done);
                s.spawn(move || {
                    let http = client();
                    (0..per_thread)
                        .map(|_| {
                            let got = detect(&http, url, image);
                            done.fetch_add(1, Ordering::SeqCst);
                            got
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let during = during(&done);
        (handles.into_iter().flat_map(|h| h.join().unwrap()).collect(), during)
    })
}

/// Waits (at most `limit`) until `done` reaches `n`.
fn wait_for_count(done: &AtomicUsize, n: usize, limit: Duration) {
    eventually_every(limit, Duration::from_millis(5), || done.load(Ordering::SeqCst) >= n);
}

fn assert_all_ok(results: &[Got]) {
    let failed: Vec<&Got> = results.iter().filter(|g| g.status != Ok(200)).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), results.len());
}

fn by_pool(results: &[Got]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for g in results {
        *counts.entry(g.pool.clone().unwrap_or_default()).or_default() += 1;
    }
    counts
}

#[test]
fn the_split_follows_the_weights() {
    let (n1, g1) = (worker(0), worker(0));
    let cluster = Cluster::start(
        &[
            PoolDef { name: "inf2", backend: "neuron", weight: 70, workers: &[&n1] },
            PoolDef { name: "gpu", backend: "gpu", weight: 30, workers: &[&g1] },
        ],
        &[],
    );
    let (results, ()) = load(&cluster.gateway.url("/v1/detect"), 4, 60, |_| ());
    assert_eq!(results.len(), 240);
    assert_all_ok(&results);
    let counts = by_pool(&results);
    let neuron_share = counts.get("inf2").copied().unwrap_or(0) as f64 / results.len() as f64;
    assert!((neuron_share - 0.70).abs() <= 0.10, "neuron pool got {:.1} % for weight 70 %", neuron_share * 100.0);

    // The gateway's metrics and the workers' own agree with what the clients saw.
    for (pool, worker) in [("inf2", &n1), ("gpu", &g1)] {
        let seen = counts.get(pool).copied().unwrap_or(0) as f64;
        assert_eq!(cluster.forwarded(pool, Some("ok")), seen, "{pool}: gateway metric");
        assert_eq!(worker_ok(worker), seen, "{pool}: the worker's own count");
    }
    let metrics = cluster.metrics();
    assert_eq!(sum(&metrics, "blipserve_requests_total", &[("outcome", "ok")]), 240.0);
    assert_eq!(sum(&metrics, "blipserve_pool_weight", &[("pool", "inf2"), ("backend", "neuron")]), 70.0);
    assert_eq!(sum(&metrics, "blipserve_pool_healthy_workers", &[("pool", "gpu"), ("backend", "gpu")]), 1.0);
    assert_eq!(sum(&metrics, "blipserve_upstream_duration_seconds_count", &[("pool", "gpu")]), counts["gpu"] as f64);

    let admin = cluster.admin();
    assert_eq!(admin["pools"][0]["name"], "inf2");
    assert_eq!(admin["pools"][0]["backend"], "neuron");
    assert_eq!(admin["pools"][0]["share"], 0.7);
    assert_eq!(admin["pools"][0]["workers"][0]["healthy"], true);
    assert_eq!(admin["pools"][0]["requests_1m"].as_u64(), Some(counts["inf2"] as u64));
    assert_eq!(admin["pools"][1]["error_rate_1m"], 0.0);
}

#[test]
fn weights_moved_through_the_admin_api_shift_live_traffic_with_no_failed_request() {
    let (n1, g1) = (worker(0), worker(0));
    let cluster = Cluster::start(
        &[
            PoolDef { name: "inf2", backend: "neuron", weight: 50, workers: &[&n1] },
            PoolDef { name: "gpu", backend: "gpu", weight: 50, workers: &[&g1] },
        ],
        &[],
    );
    let admin_url = cluster.gateway.url("/admin/pools");
    // The admin API wants its key.
    let refused = client().put(&admin_url).json(&json!({"weights": {"inf2": 0}})).send().unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.json::<Value>().unwrap()["code"], "unauthorized");
    let wrong = client().get(&admin_url).bearer_auth("not-the-key").send().unwrap();
    assert_eq!(wrong.status(), 401);
    let unknown = client().put(&admin_url).bearer_auth(ADMIN_KEY).json(&json!({"weights": {"tpu": 1}})).send().unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().unwrap()["code"], "unknown_pool");
    let all_zero = client()
        .put(&admin_url)
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"weights": {"inf2": 0, "gpu": 0}}))
        .send()
        .unwrap();
    assert_eq!(all_zero.status(), 400);
    assert_eq!(cluster.admin()["pools"][0]["weight"], 50, "a refused change changes nothing");

    let threads = 4;
    let (results, neuron_at_shift) = load(&cluster.gateway.url("/v1/detect"), threads, 60, |done| {
        wait_for_count(done, 60, Duration::from_secs(120));
        let resp = client()
            .put(&admin_url)
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"weights": {"inf2": 0, "gpu": 100}}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let pools: Value = resp.json().unwrap();
        assert_eq!(pools["pools"][0]["weight"], 0);
        assert_eq!(pools["pools"][1]["share"], 1.0);
        cluster.forwarded("inf2", None)
    });
    assert_all_ok(&results);
    let neuron_total = cluster.forwarded("inf2", None);
    // Only requests already sent to the neuron pool when the weights changed may finish there.
    assert!(
        neuron_total - neuron_at_shift <= threads as f64,
        "{} requests went to the neuron pool after its weight became 0",
        neuron_total - neuron_at_shift
    );
    assert!(neuron_at_shift >= 10.0, "the neuron pool had traffic before the change ({neuron_at_shift})");
    let counts = by_pool(&results);
    assert!(counts["gpu"] >= 240 - neuron_total as usize, "{counts:?}");
    assert_eq!(worker_ok(&n1) + worker_ok(&g1), 240.0);

    // One pool's weight alone, with POST.
    let resp = client()
        .post(cluster.gateway.url("/admin/pools/inf2"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"weight": 100}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(cluster.admin()["pools"][0]["weight"], 100);
}

#[test]
fn a_worker_killed_with_sigkill_during_load_costs_no_client_request() {
    let (mut n1, n2, g1) = (worker(0), worker(0), worker(0));
    let killed = n1.base.clone();
    let cluster = Cluster::start(
        &[
            PoolDef { name: "inf2", backend: "neuron", weight: 50, workers: &[&n1, &n2] },
            PoolDef { name: "gpu", backend: "gpu", weight: 50, workers: &[&g1] },
        ],
        &[],
    );
    let (results, ()) = load(&cluster.gateway.url("/v1/detect"), 4, 60, |done| {
        wait_for_count(done, 50, Duration::from_secs(120));
        n1.kill();
    });
    assert_eq!(results.len(), 240);
    assert_all_ok(&results);
    // The survivors answered everything after the kill, and the gateway saw the worker go.
    assert!(worker_ok(&n2) + worker_ok(&g1) >= 190.0);
    let dead_is_out = || {
        let admin = cluster.admin();
        let workers = admin["pools"][0]["workers"].as_array().unwrap().clone();
        workers.iter().any(|w| w["url"] == killed && w["healthy"] == false) && admin["pools"][0]["healthy_workers"] == 1
    };
    assert!(eventually(Duration::from_secs(10), dead_is_out), "{}", cluster.admin());
    // The requests the killed worker could not answer were retried, and counted against its pool.
    let metrics = cluster.metrics();
    let transport = sum(&metrics, "blipserve_upstream_requests_total", &[("pool", "inf2"), ("outcome", "transport")]);
    let retries = sum(&metrics, "blipserve_upstream_retries_total", &[("pool", "inf2"), ("backend", "neuron")]);
    eprintln!("attempts on the killed pool that failed in transport: {transport}, its retries: {retries}");
    assert!(retries > 0.0, "no retry counted for the pool of the killed worker:\n{metrics}");
}

#[test]
fn with_every_worker_down_clients_get_a_clear_503_and_traffic_resumes_when_one_is_back() {
    let (mut n1, mut g1) = (worker(0), worker(0));
    let neuron_port = n1.port();
    let cluster = Cluster::start(
        &[
            PoolDef { name: "inf2", backend: "neuron", weight: 50, workers: &[&n1] },
            PoolDef { name: "gpu", backend: "gpu", weight: 50, workers: &[&g1] },
        ],
        &[],
    );
    let url = cluster.gateway.url("/v1/detect");
    let image = frame();
    let http = client();
    assert_eq!(detect(&http, &url, &image).status, Ok(200));
    n1.kill();
    g1.kill();

    // At once (the gateway may still think them healthy) and once the probes have seen it.
    for _ in 0..2 {
        let resp = http.post(&url).multipart(form(&image, &["is it?"])).send().unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let body: Value = resp.json().unwrap();
        assert_eq!(body["code"], "no_upstream", "{body}");
        assert!(body["error"].as_str().unwrap().contains("no inference worker"));
        assert!(eventually(Duration::from_secs(10), || {
            client().get(cluster.gateway.url("/ready")).send().unwrap().status() == 503
        }));
    }
    let ready: Value = client().get(cluster.gateway.url("/ready")).send().unwrap().json().unwrap();
    assert_eq!(ready["status"], "no_upstream");
    assert_eq!(cluster.admin()["pools"][1]["healthy_workers"], 0);

    // The neuron worker comes back on its address: traffic resumes there.
    let _n1 = worker(neuron_port);
    let mut got = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            got = Some(detect(&http, &url, &image));
            got.as_ref().unwrap().status == Ok(200)
        }),
        "no answer after a worker came back: {got:?}"
    );
    assert_eq!(got.unwrap().pool.as_deref(), Some("inf2"));
    for _ in 0..5 {
        assert_eq!(detect(&http, &url, &image).status, Ok(200));
    }
    assert_eq!(client().get(cluster.gateway.url("/ready")).send().unwrap().status(), 200);
    assert!(sum(&cluster.metrics(), "blipserve_requests_total", &[("outcome", "no_upstream")]) >= 2.0);
}

#[test]
fn sighup_applies_a_changed_configuration_with_no_failed_request_and_refuses_a_broken_one() {
    let (n1, g1, g2) = (worker(0), worker(0), worker(0));
    let pools = |neuron: u32, gpu: u32, gpu_workers: &[&Server]| {
        config_text(&[
            PoolDef { name: "inf2", backend: "neuron", weight: neuron, workers: &[&n1] },
            PoolDef { name: "gpu", backend: "gpu", weight: gpu, workers: gpu_workers },
        ])
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "gateway.toml", pools(100, 0, &[&g1]).as_bytes());
    let gw = gateway(&config, &[]);
    gw.wait_ready(Duration::from_secs(30));
    let cluster = Cluster { gateway: gw, config, _dir: dir };
    let generation = cluster.admin()["generation"].as_u64().unwrap();

    let threads = 4;
    let (results, neuron_at_reload) = load(&cluster.gateway.url("/v1/detect"), threads, 60, |done| {
        wait_for_count(done, 60, Duration::from_secs(120));
        // New weights, and a second worker in the gpu pool.
        std::fs::write(&cluster.config, pools(0, 100, &[&g1, &g2])).unwrap();
        cluster.gateway.signal(libc::SIGHUP);
        assert!(
            eventually(Duration::from_secs(10), || cluster.admin()["generation"].as_u64() > Some(generation)),
            "the reload never applied: {:?}",
            cluster.gateway.stderr.lock().unwrap()
        );
        cluster.forwarded("inf2", None)
    });
    assert_all_ok(&results);
    let neuron_total = cluster.forwarded("inf2", None);
    assert!(neuron_total - neuron_at_reload <= threads as f64, "{neuron_total} vs {neuron_at_reload}");
    let admin = cluster.admin();
    assert_eq!(admin["pools"][0]["weight"], 0);
    assert_eq!(admin["pools"][1]["weight"], 100);
    assert_eq!(admin["pools"][1]["workers"].as_array().unwrap().len(), 2);
    assert!(cluster.gateway.logged("reloaded"));
    // The reloaded gpu pool spreads over both its workers.
    let (more, ()) = load(&cluster.gateway.url("/v1/detect"), 2, 20, |_| ());
    assert_all_ok(&more);
    assert!(worker_ok(&g2) > 0.0, "the worker added by the reload got nothing");
    assert!(by_pool(&more).keys().all(|p| p == "gpu"));

    // A broken file is refused, with a log line, and the running pools stay.
    let generation = cluster.admin()["generation"].clone();
    std::fs::write(&cluster.config, "listen = \"127.0.0.1\"\n[[pools]]\nname = \"gpu\"\nbackend = \"tpu\"\n").unwrap();
    cluster.gateway.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || cluster.gateway.logged("refused")));
    assert_eq!(cluster.admin()["generation"], generation);
    let image = frame();
    assert_eq!(detect(&client(), &cluster.gateway.url("/v1/detect"), &image).status, Ok(200));
}

#[test]
fn the_gateway_refuses_what_a_worker_refuses_with_the_same_errors_and_passes_the_rest_through() {
    let limits = ["--max-questions", "3", "--max-question-chars", "40", "--max-body-bytes", "300000"];
    let w1 =
        Server::start_role(BIN, "worker", "tiny", 0, &[&["--threads", "1", "--replicas", "1"][..], &limits].concat());
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "gateway.toml",
        config_text(&[PoolDef { name: "cpu", backend: "cpu", weight: 1, workers: &[&w1] }]).as_bytes(),
    );
    let gw = gateway(&config, &limits);
    gw.wait_ready(Duration::from_secs(30));

    let image = frame();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut truncated = image.clone();
    truncated.truncate(image.len() / 2);
    type Sender = Box<dyn Fn(&str) -> reqwest::blocking::Response>;
    let form_case = |f: fn(&[u8]) -> Form, bytes: Vec<u8>| -> Sender {
        Box::new(move |url: &str| client().post(url).multipart(f(&bytes)).send().unwrap())
    };
    let json_case =
        |body: Value| -> Sender { Box::new(move |url: &str| client().post(url).json(&body).send().unwrap()) };
    // (name, request, status, code, refused by the gateway itself)
    let cases: Vec<(&str, Sender, u16, &str, bool)> = vec![
        (
            "too many questions",
            form_case(|i| form(i, &["a?", "b?", "c?", "d?"]), image.clone()),
            400,
            "too_many_questions",
            true,
        ),
        (
            "question too long",
            form_case(|i| form(i, &[&"why ".repeat(20)]), image.clone()),
            400,
            "question_too_long",
            true,
        ),
        ("no question", form_case(|i| form(i, &[]), image.clone()), 400, "no_question", true),
        ("empty question", form_case(|i| form(i, &["  "]), image.clone()), 400, "empty_question", true),
        (
            "missing image",
            Box::new(|url: &str| client().post(url).multipart(Form::new().text("question", "is it?")).send().unwrap()),
            400,
            "missing_image",
            true,
        ),
        ("body too large", form_case(|i| form(i, &["q?"]), vec![0xFF; 400_000]), 413, "body_too_large", true),
        (
            "wrong content type",
            Box::new(|url: &str| client().post(url).header("content-type", "image/jpeg").body(frame()).send().unwrap()),
            415,
            "unsupported_media_type",
            true,
        ),
        (
            "bad json",
            Box::new(|url: &str| {
                client().post(url).header("content-type", "application/json").body("{\"image\": ").send().unwrap()
            }),
            400,
            "bad_json",
            true,
        ),
        ("bad base64", json_case(json!({"image": "not*base64!", "questions": ["is it?"]})), 400, "bad_base64", true),
        (
            "bad mode",
            json_case(json!({"image": b64(&image), "questions": ["is it?"], "mode": "poetry"})),
            400,
            "bad_mode",
            true,
        ),
        (
            "unsupported image format",
            json_case(json!({"image": b64(b"II*\0tiff body"), "questions": ["is it?"]})),
            415,
            "unsupported_image_format",
            true,
        ),
        (
            "image too large",
            json_case(json!({"image": b64(&png_claiming(20_000, 20_000)), "questions": ["is it?"]})),
            413,
            "image_too_large",
            true,
        ),
        ("garbage image", form_case(|i| form(i, &["q?"]), b"\xFF\xD8\xFFgarbage".to_vec()), 400, "bad_image", true),
        // Past the header: only decoding finds these, on the worker.
        ("truncated image", form_case(|i| form(i, &["q?"]), truncated.clone()), 400, "bad_image", false),
        (
            "unknown behaviour",
            json_case(json!({"image": b64(&image), "behaviors": ["juggling"]})),
            400,
            "unknown_behavior",
            false,
        ),
    ];
    for (name, send, status, code, at_gateway) in &cases {
        // The worker may have counted no request yet: then it has no blipserve_requests_total.
        let before = w1.try_metric(&format!("blipserve_requests_total{{outcome=\"{code}\"}}")).unwrap_or(0.0);
        for (tier, url) in [("worker", w1.url("/v1/detect")), ("gateway", gw.url("/v1/detect"))] {
            let resp = send(&url);
            assert_eq!(resp.status().as_u16(), *status, "{name} via the {tier}");
            assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{name}");
            let body: Value = resp.json().unwrap();
            assert_eq!(body["code"], *code, "{name} via the {tier}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}");
        }
        // Refused at the gateway: the worker saw only the direct request.
        let reached = w1.metric(&format!("blipserve_requests_total{{outcome=\"{code}\"}}")) - before;
        assert_eq!(reached, if *at_gateway { 1.0 } else { 2.0 }, "{name}: requests that reached the worker");
        let counted = sum(
            &client().get(gw.url("/metrics")).send().unwrap().text().unwrap(),
            "blipserve_requests_total",
            &[("outcome", code)],
        );
        assert!(counted >= 1.0, "{name}: not counted by the gateway");
    }

    // The request id goes through; the JSON body is forwarded byte for byte.
    let resp = client()
        .post(gw.url("/v1/detect"))
        .header("x-request-id", "camera-7-frame-9")
        .json(&json!({"image": b64(&image), "questions": ["is the dog barking?"], "behaviors": ["barking"]}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "camera-7-frame-9");
    assert_eq!(resp.headers()["x-blipserve-backend"], "cpu");
    for h in ["x-total-ms", "server-timing"] {
        assert!(resp.headers().contains_key(h), "the worker's {h} header was dropped");
    }
    let body: Value = resp.json().unwrap();
    assert_eq!(body["request_id"], "camera-7-frame-9");
    assert_eq!(body["answers"][1]["behavior"], "barking");

    // The client's deadline travels with the request: a worker never works past it.
    let resp = client()
        .post(gw.url("/v1/detect"))
        .header("x-request-timeout-ms", "0")
        .multipart(form(&image, &["is it?"]))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.json::<Value>().unwrap()["code"], "deadline_exceeded");

    // /v1/behaviors comes from a worker; /v1/info says which tier answers.
    let behaviors: Value = client().get(gw.url("/v1/behaviors")).send().unwrap().json().unwrap();
    assert!(behaviors["behaviors"].as_array().unwrap().iter().any(|b| b["name"] == "barking"));
    let info: Value = client().get(gw.url("/v1/info")).send().unwrap().json().unwrap();
    assert_eq!(info["role"], "gateway");
    assert_eq!(info["limits"]["max_questions"], 3);
    assert_eq!(info["pools"][0]["backend"], "cpu");
    let info: Value = client().get(w1.url("/v1/info")).send().unwrap().json().unwrap();
    assert_eq!(info["role"], "worker");
}

#[test]
fn gateway_metrics_pass_promtool_and_its_openapi_passes_a_validator() {
    let (n1, g1) = (worker(0), worker(0));
    let cluster = Cluster::start(
        &[
            PoolDef { name: "inf2", backend: "neuron", weight: 1, workers: &[&n1] },
            PoolDef { name: "gpu", backend: "gpu", weight: 1, workers: &[&g1] },
        ],
        &[],
    );
    let (results, ()) = load(&cluster.gateway.url("/v1/detect"), 2, 5, |_| ());
    assert_all_ok(&results);
    client().post(cluster.gateway.url("/v1/detect")).multipart(form(b"nope", &["is it?"])).send().unwrap();
    let metrics = cluster.metrics();
    for name in [
        "blipserve_requests_total",
        "blipserve_request_duration_seconds",
        "blipserve_in_flight_requests",
        "blipserve_upstream_requests_total",
        "blipserve_upstream_duration_seconds",
        "blipserve_upstream_in_flight_requests",
        "blipserve_pool_workers",
        "blipserve_pool_healthy_workers",
        "blipserve_pool_weight",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    promtool_check(&metrics);

    let spec = client().get(cluster.gateway.url("/openapi.json")).send().unwrap().bytes().unwrap();
    openapi_validate(&spec);
    let spec: Value = serde_json::from_slice(&spec).unwrap();
    for (path, method) in [
        ("/v1/detect", "post"),
        ("/admin/pools", "get"),
        ("/admin/pools", "put"),
        ("/admin/pools/{name}", "put"),
        ("/ready", "get"),
    ] {
        assert!(spec["paths"][path][method].is_object(), "{method} {path} undocumented");
    }
}

#[test]
fn sigterm_drains_the_gateway_and_its_requests_finish() {
    let w1 = worker(0);
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "gateway.toml",
        config_text(&[PoolDef { name: "cpu", backend: "cpu", weight: 1, workers: &[&w1] }]).as_bytes(),
    );
    let mut gw = gateway(&config, &["--drain-delay-ms", "2000"]);
    gw.wait_ready(Duration::from_secs(30));
    let url = gw.url("/v1/detect");
    // Requests sent while /ready says draining (before the listener closes) are still answered.
    let (results, ()) = load(&url, 6, 2, |done| {
        wait_for_count(done, 1, Duration::from_secs(60));
        gw.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(200));
        let ready = client().get(gw.url("/ready")).send().unwrap();
        assert_eq!(ready.status(), 503, "/ready must turn false while draining");
        assert_eq!(ready.json::<Value>().unwrap()["status"], "draining");
    });
    assert_all_ok(&results);
    assert_eq!(gw.wait_exit(Duration::from_secs(30)), Some(0));
}
