//! The real `blipserve` binary (`serve`, `worker` or `gateway`) as a child process on a free
//! port of 127.0.0.1, for the tests that speak to it over HTTP. The binary is passed in: the
//! root package's tests give `env!("CARGO_BIN_EXE_blipserve")`, others
//! [`blipserve_exe`](crate::blipserve_exe)`()`.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::forms::detect_form;
use crate::metrics;
use crate::paths::{model_dir, op_fixtures};
use crate::poll::{eventually, eventually_every};

pub struct Server {
    child: Child,
    pub base: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `EXE serve` on 127.0.0.1 with an OS-chosen port and waits (at most 60 s) until
    /// /ready says yes.
    pub fn start(exe: impl AsRef<Path>, model: &str, extra: &[&str]) -> Server {
        Server::start_role(exe, "serve", model, 0, extra)
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(exe: impl AsRef<Path>, model: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_role_with_env(exe, "serve", model, 0, extra, env)
    }

    /// Starts `EXE ROLE` (serve or worker) on 127.0.0.1:`port` (0: OS-chosen) and waits (at
    /// most 60 s) until /ready says yes.
    pub fn start_role(exe: impl AsRef<Path>, role: &str, model: &str, port: u16, extra: &[&str]) -> Server {
        Server::start_role_with_env(exe, role, model, port, extra, &[])
    }

    /// [`Server::start_role`] with extra environment variables.
    pub fn start_role_with_env(
        exe: impl AsRef<Path>,
        role: &str,
        model: &str,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let server = Server::spawn_with_env(exe, &role_args(role, model, port, extra), env);
        server.wait_ready(Duration::from_secs(60));
        server
    }

    /// Starts `EXE ARGS` and waits (at most 60 s) until it says where it listens.
    pub fn spawn(exe: impl AsRef<Path>, args: &[OsString]) -> Server {
        Server::spawn_with_env(exe, args, &[])
    }

    /// [`Server::spawn`] with extra environment variables.
    pub fn spawn_with_env(exe: impl AsRef<Path>, args: &[OsString], env: &[(&str, &str)]) -> Server {
        let exe = exe.as_ref();
        assert!(exe.is_file(), "{} is missing: build it first (`cargo build --bin blipserve`)", exe.display());
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} did not start: {:?}", exe.display(), stderr.lock().unwrap());
        });
        Server { child, base: format!("http://{addr}"), stderr }
    }

    /// Waits (bounded) until /ready answers 200; fails the test otherwise.
    pub fn wait_ready(&self, limit: Duration) {
        let ready = || client().get(self.url("/ready")).send().is_ok_and(|r| r.status() == 200);
        assert!(eventually(limit, ready), "server never became ready: {:?}", self.stderr.lock().unwrap());
    }

    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether a line of the process's stderr so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// HOST:PORT of its gRPC door (`--grpc-port`), as its log says.
    pub fn grpc_addr(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        let addr = lines.iter().find_map(|l| l.split("grpc listening on ").nth(1).map(|a| a.trim().to_string()));
        addr.unwrap_or_else(|| panic!("no gRPC port in the log of {}: {lines:?}", self.base))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `image` with `questions` to /v1/detect as a multipart form ([`detect_form`], no
    /// behaviours), with [`client`]'s 30 s timeout.
    pub fn detect(&self, image: &[u8], questions: &[&str]) -> reqwest::blocking::Response {
        client().post(self.url("/v1/detect")).multipart(detect_form(image, questions, &[])).send().unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sockets the process has open (from /proc/PID/fd).
    pub fn open_sockets(&self) -> usize {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).expect("the server's /proc entry");
        fds.filter_map(Result::ok)
            .filter(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
            .count()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits (bounded) for the process to exit and returns its exit code (None: still running,
    /// or killed by a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut code = None;
        eventually_every(limit, Duration::from_millis(20), || match self.child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            _ => false,
        });
        code
    }

    /// The /metrics text.
    pub fn metrics_text(&self) -> String {
        let resp = client().get(self.url("/metrics")).send().expect("GET /metrics");
        assert_eq!(resp.status(), 200, "GET /metrics");
        resp.text().expect("the /metrics body")
    }

    /// One Prometheus sample's value, e.g. `blipserve_requests_total{outcome="ok"}`: 0 when
    /// that label set has not been touched yet, a failed test when no sample of the metric is
    /// there at all (see [`metrics`]).
    pub fn metric(&self, sample: &str) -> f64 {
        metrics::value(&self.metrics_text(), sample)
    }

    /// [`Server::metric`], `None` when no sample of the metric is there (yet).
    pub fn try_metric(&self, sample: &str) -> Option<f64> {
        metrics::try_value(&self.metrics_text(), sample)
    }

    /// Polls (every 100 ms, at most `limit`) until `ok` holds for a sample's value, and returns
    /// the last value read. Fails the test when the metric never appeared at all.
    pub fn wait_metric(&self, sample: &str, ok: impl Fn(f64) -> bool, limit: Duration) -> f64 {
        let mut last = None;
        eventually_every(limit, Duration::from_millis(100), || {
            last = self.try_metric(sample);
            last.is_some_and(&ok)
        });
        last.unwrap_or_else(|| metrics::value(&self.metrics_text(), sample))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ready gateway on 127.0.0.1 (`extra` flags, `env`) with one pool, `cpu`, of the given worker
/// (or load balancer) URLs; and the folder of its config file, to keep while it runs.
pub fn gateway(
    exe: impl AsRef<Path>,
    urls: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a folder for the gateway's config");
    let urls: Vec<String> = urls.iter().map(|url| format!("\"{url}\"")).collect();
    let text = format!(
        "listen = \"127.0.0.1\"\nport = 0\n\n[[pools]]\nname = \"cpu\"\nbackend = \"cpu\"\nweight = 100\nurls = [{}]\n",
        urls.join(", ")
    );
    let config = crate::write(dir.path(), "gateway.toml", text.as_bytes());
    let mut args: Vec<OsString> = vec!["gateway".into(), "--config".into(), config.into_os_string()];
    args.extend(extra.iter().map(OsString::from));
    let gateway = Server::spawn_with_env(exe, &args, env);
    gateway.wait_ready(Duration::from_secs(30));
    (gateway, dir)
}

/// A ready worker (`--replicas 1`, then `extra`) whose inference fails while a flag file exists:
/// the copy of the tiny model that models/fixtures/custom_op.py `--faulty-model` builds into
/// `dir`, its image encoder calling the test operator library's `fail_if_exists`. Returns the
/// worker and the flag's path.
pub fn faulty_worker(exe: impl AsRef<Path>, dir: &Path, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let tiny = model_dir("tiny");
    let built = op_fixtures(dir, &["--faulty-model".as_ref(), tiny.as_os_str()]);
    let field = |name: &str| built[name].as_str().unwrap_or_else(|| panic!("{name} in {built}")).to_string();
    let mut args: Vec<OsString> =
        ["worker", "--listen", "127.0.0.1", "--port", "0", "--replicas", "1"].iter().map(Into::into).collect();
    args.extend(["--model".into(), field("faulty_model").into(), "--op-library".into(), field("library").into()]);
    args.extend(extra.iter().map(OsString::from));
    let server = Server::spawn(exe, &args);
    server.wait_ready(Duration::from_secs(60));
    (server, field("fail_flag").into())
}

/// `ROLE --listen 127.0.0.1 --port PORT --model models/MODEL EXTRA…`.
fn role_args(role: &str, model: &str, port: u16, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![role.into(), "--listen".into(), "127.0.0.1".into(), "--port".into()];
    args.extend([port.to_string().into(), "--model".into(), model_dir(model).into()]);
    args.extend(extra.iter().map(OsStr::new).map(OsString::from));
    args
}

/// A blocking HTTP client with a 30 s timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client")
}
