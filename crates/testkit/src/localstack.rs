//! LocalStack's CloudWatch emulator as a child process on 127.0.0.1 (no Docker), from the
//! `.venv-localstack` environment that `make setup` creates, for the CloudWatch publisher's
//! tests: they read back what was published through the AWS SDK, across an outage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalStack {
    child: Option<Child>,
    pub port: u16,
    root: PathBuf,
}

impl LocalStack {
    /// Starts the emulator with its state and caches under `root`, on a free port, and waits
    /// (at most 90 s) until CloudWatch answers.
    pub fn start(root: &Path) -> LocalStack {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut ls = LocalStack { child: None, port, root: root.to_path_buf() };
        ls.restart();
        ls
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (its data lived in the old process and is gone).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let python = crate::paths::repo().join(".venv-localstack/bin/python");
        assert!(python.exists(), "{} is missing: run `make setup`", python.display());
        for dir in ["fs", "tmp", "cache"] {
            std::fs::create_dir_all(self.root.join(dir)).unwrap();
        }
        let log = std::fs::File::create(self.root.join("localstack.log")).unwrap();
        let child = Command::new(python)
            .args(["-m", "localstack.runtime.main"])
            .current_dir(&self.root)
            .env("OVERRIDE_IN_DOCKER", "0")
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{}", self.port))
            // The default server binds every interface whatever GATEWAY_LISTEN says.
            .env("GATEWAY_SERVER", "hypercorn")
            .env("SERVICES", "cloudwatch")
            .env("EAGER_SERVICE_LOADING", "1")
            .env("DNS_ADDRESS", "0")
            .env("DISABLE_EVENTS", "1")
            .env("SKIP_SSL_CERT_DOWNLOAD", "1")
            .env("FILESYSTEM_ROOT", self.root.join("fs"))
            .env("TMPDIR", self.root.join("tmp"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start LocalStack");
        self.child = Some(child);
        let health = format!("{}/_localstack/health", self.endpoint());
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            let up = client.get(&health).send().ok().and_then(|r| r.text().ok());
            if up.is_some_and(|body| body.contains("\"cloudwatch\": \"running\"")) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("LocalStack exited with {status}: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("LocalStack not ready in 90 s: {}", self.log_tail());
    }

    /// Stops it: SIGTERM, then SIGKILL after 5 s (SIGTERM alone sometimes leaves it running).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.join("localstack.log")).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.stop();
    }
}
