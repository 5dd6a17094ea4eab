//! A pool that is a load balancer, as on AWS (an internal ALB in front of the workers): a real
//! haproxy (Debian's package, installed by scripts/system-deps.sh) on 127.0.0.1 in front of two
//! `blipserve worker`s, as the gateway's one pool URL, marked `load_balancer = true`.
//!
//! Every loop is bounded in count and time; no assertion is about timing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blipserve_testkit::metrics::sum;
use blipserve_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

fn frame() -> Vec<u8> {
    jpeg(&synthetic_frame(160, 120, 5), 90, Subsamp::Sub2x2)
}

fn worker() -> Server {
    Server::start_role(BIN, "worker", "tiny", 0, &["--threads", "1", "--replicas", "1"])
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// haproxy as a child process, killed when dropped.
struct Haproxy {
    child: Child,
    url: String,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// haproxy on a free port in front of `workers`, health-checking their /ready every 200 ms.
/// `keep_alive_ms`: how long it keeps an idle client connection (the gateway's) open. A request
/// whose id starts with `fail-` gets a 500 from haproxy itself: a load balancer's 5xx on demand.
fn haproxy(dir: &Path, workers: &[&Server], keep_alive_ms: u64) -> Haproxy {
    let port = free_port();
    let servers: String =
        workers.iter().enumerate().map(|(i, w)| format!("  server w{i} 127.0.0.1:{} check\n", w.port())).collect();
    let config = format!(
        "global\n  maxconn 2000\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  \
         timeout http-keep-alive {keep_alive_ms}ms\n  retries 2\n  option redispatch\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  \
         http-request return status 500 content-type application/json string \
         \"{{\\\"code\\\":\\\"internal\\\",\\\"error\\\":\\\"injected by the load balancer\\\"}}\" \
         if {{ req.hdr(x-request-id) -m beg fail- }}\n  default_backend workers\n\
         backend workers\n  option httpchk GET /ready\n  default-server inter 200ms fall 2 rise 1\n{servers}"
    );
    let path = write(dir, "haproxy.cfg", config.as_bytes());
    let check =
        Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().expect("haproxy (make setup installs it)");
    assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let haproxy = Haproxy { child, url: format!("http://127.0.0.1:{port}") };
    let ready = eventually(Duration::from_secs(20), || {
        client().get(format!("{}/ready", haproxy.url)).send().is_ok_and(|r| r.status() == 200)
    });
    assert!(ready, "haproxy did not answer on {}", haproxy.url);
    haproxy
}

/// The gateway with the load balancer as its one pool, probing it every `probe_ms`.
fn gateway(dir: &Path, lb: &Haproxy, probe_ms: u64, extra: &[&str]) -> Server {
    let config = format!(
        "listen = \"127.0.0.1\"\nport = 0\n[[pools]]\nname = \"inf2\"\nbackend = \"neuron\"\nweight = 1\n\
         urls = [\"{}\"]\nload_balancer = true\n",
        lb.url
    );
    let path = write(dir, "gateway.toml", config.as_bytes());
    let mut args: Vec<std::ffi::OsString> = vec!["gateway".into(), "--config".into(), path.into()];
    let probe_ms = probe_ms.to_string();
    for a in ["--health-interval-ms", &probe_ms, "--eject-ms", "5000", "--max-attempts", "4"].iter().chain(extra) {
        args.push(a.into());
    }
    let gw = Server::spawn(BIN, &args);
    gw.wait_ready(Duration::from_secs(30));
    gw
}

fn gateway_metric(gw: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum(&gw.metrics_text(), name, labels)
}

#[test]
fn a_worker_killed_behind_the_load_balancer_costs_no_request_and_the_pool_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (w1, mut w2) = (worker(), worker());
    let lb = haproxy(dir.path(), &[&w1, &w2], 10_000);
    let gw = gateway(dir.path(), &lb, 100, &[]);
    let image = frame();
    let url = gw.url("/v1/detect");
    let (clients, per_client) = (4, 40);
    let done = AtomicUsize::new(0);
    let statuses: Vec<Result<u16, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let http = client();
                    (0..per_client)
                        .map(|_| {
                            let got = http
                                .post(&url)
                                .multipart(detect_form(&image, &["is the dog barking?"], &[]))
                                .send()
                                .map(|r| r.status().as_u16())
                                .map_err(|e| e.to_string());
                            done.fetch_add(1, Ordering::SeqCst);
                            got
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // SIGKILL one worker a quarter of the way through, with requests in flight on it.
        let started = Instant::now();
        while done.load(Ordering::SeqCst) < clients * per_client / 4 && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        w2.kill();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<_> = statuses.iter().filter(|s| **s != Ok(200)).collect();
    let retries = gateway_metric(&gw, "blipserve_upstream_retries_total", &[("pool", "inf2")]);
    let transport = gateway_metric(&gw, "blipserve_upstream_requests_total", &[("outcome", "transport")]);
    eprintln!(
        "load balancer failover: {} requests, {} not 200, {retries} retries ({transport} transport errors)",
        statuses.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "every client request must get 200: {failed:?}");
    assert_eq!(gateway_metric(&gw, "blipserve_upstream_ejections_total", &[("pool", "inf2")]), 0.0);
    let admin_ready: serde_json::Value = client().get(gw.url("/v1/info")).send().unwrap().json().unwrap();
    assert_eq!(admin_ready["pools"][0]["healthy_workers"], 1, "the pool was never ejected: {admin_ready}");
    assert!(w1.metric("blipserve_requests_total{outcome=\"ok\"}") > 0.0);
}

#[test]
fn a_workers_5xx_or_the_load_balancers_does_not_eject_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    // A worker whose inference can be made to fail: its image encoder throws while `fail` exists
    // (the test operator library's fail_if_exists, models/fixtures/custom_op.py).
    let (w1, flag) = faulty_worker(BIN, dir.path(), &["--threads", "1"]);
    let lb = haproxy(dir.path(), &[&w1], 10_000);
    let gw = gateway(dir.path(), &lb, 100, &[]);
    let image = frame();
    let send = |id: &str| {
        client()
            .post(gw.url("/v1/detect"))
            .header("x-request-id", id)
            .multipart(detect_form(&image, &["is the dog barking?"], &[]))
            .send()
            .unwrap()
    };
    let failed = send("fail-1");
    assert_eq!(failed.status(), 500, "the load balancer's 500 is passed through");
    std::fs::write(&flag, b"").unwrap();
    let failed = send("worker-fails");
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(failed.status(), 500, "the worker's 500 is passed through");
    let body: serde_json::Value = failed.json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("injected inference failure"), "{body}");
    for i in 0..5 {
        assert_eq!(send(&format!("ok-{i}")).status(), 200, "request {i} after the 5xx");
    }
    assert_eq!(gateway_metric(&gw, "blipserve_upstream_ejections_total", &[("pool", "inf2")]), 0.0);
    assert_eq!(
        gateway_metric(&gw, "blipserve_upstream_requests_total", &[("pool", "inf2"), ("outcome", "server_error")]),
        2.0
    );
}

/// Established TCP connections to 127.0.0.1:`port`, from /proc/net/tcp (state 01).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[3] == "01"
                && fields[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
        })
        .count()
}

#[test]
fn idle_connections_to_the_load_balancer_are_closed_before_it_would_close_them() {
    let dir = tempfile::tempdir().unwrap();
    let w1 = worker();
    // haproxy would keep an idle client connection 5 s; the gateway lets its own go after 150 ms.
    let lb = haproxy(dir.path(), &[&w1], 5_000);
    let lb_port: u16 = lb.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap();
    // Probes once a minute: a probe connection would be idle-closed just the same, but the
    // check below should see the detect connections alone.
    let gw = gateway(dir.path(), &lb, 60_000, &["--upstream-idle-timeout-ms", "150"]);
    let image = frame();
    for i in 0..3 {
        let status = gw.detect(&image, &["is the dog barking?"]).status();
        assert_eq!(status, 200, "request {i}");
        let closed = eventually(Duration::from_secs(3), || established_to(lb_port) == 0);
        assert!(closed, "the gateway kept an idle connection to the load balancer open past its idle limit");
    }
    let transport = gateway_metric(&gw, "blipserve_upstream_requests_total", &[("outcome", "transport")]);
    assert_eq!(transport, 0.0);
}
