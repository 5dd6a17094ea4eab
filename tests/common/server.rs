//! The real `blipserve` binary (`serve`, `worker` or `gateway`) on a free port, for the
//! service tests.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub base: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `blipserve serve` on 127.0.0.1 with an OS-chosen port and waits (at most 60 s)
    /// until /ready says yes.
    pub fn start(model: &str, extra: &[&str]) -> Server {
        Server::start_role("serve", model, 0, extra)
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args: Vec<OsString> = vec!["serve".into(), "--listen".into(), "127.0.0.1".into(), "--port".into()];
        args.extend(["0".into(), "--model".into(), super::model_dir(model).into()]);
        args.extend(extra.iter().map(OsString::from));
        let server = Server::spawn_with_env(&args, env);
        server.wait_ready(Duration::from_secs(60));
        server
    }

    /// Starts `blipserve ROLE` (serve or worker) on 127.0.0.1:`port` (0: OS-chosen) and waits
    /// until /ready says yes.
    pub fn start_role(role: &str, model: &str, port: u16, extra: &[&str]) -> Server {
        let mut args: Vec<OsString> = vec![role.into(), "--listen".into(), "127.0.0.1".into()];
        args.extend(["--port".into(), port.to_string().into(), "--model".into(), super::model_dir(model).into()]);
        args.extend(extra.iter().map(OsString::from));
        let server = Server::spawn(&args);
        server.wait_ready(Duration::from_secs(60));
        server
    }

    /// Starts `blipserve ARGS` and waits (at most 60 s) until it says where it listens.
    pub fn spawn(args: &[OsString]) -> Server {
        Server::spawn_with_env(args, &[])
    }

    /// [`Server::spawn`] with extra environment variables.
    pub fn spawn_with_env(args: &[OsString], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blipserve"))
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start blipserve");
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
            panic!("blipserve {args:?} did not start: {:?}", stderr.lock().unwrap());
        });
        Server { child, base: format!("http://{addr}"), stderr }
    }

    /// Waits (bounded) until /ready answers 200.
    pub fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if client().get(self.url("/ready")).send().is_ok_and(|r| r.status() == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server never became ready: {:?}", self.stderr.lock().unwrap());
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// One Prometheus sample's value, e.g. `blipserve_requests_total{outcome="ok"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = client().get(self.url("/metrics")).send().unwrap().text().unwrap();
        text.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client")
}
