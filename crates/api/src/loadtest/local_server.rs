//! A `blipserve` server (serve, worker or gateway) as a child process on a free local port, for
//! sweeps that vary the server's replica count and for the two tiers of a soak: start it, wait
//! until it is ready, stop it with SIGTERM as a deployment would.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The last lines of the server's log kept for error messages.
const LOG_LINES: usize = 40;

pub struct LocalServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl LocalServer {
    /// Runs `exe serve --listen 127.0.0.1 --port 0 ARGS…`, reads the bound address from its log
    /// and waits until `/ready` answers 200, all within `ready_within`.
    pub async fn start(exe: &Path, args: &[String], ready_within: Duration) -> anyhow::Result<LocalServer> {
        LocalServer::start_role(exe, "serve", args, ready_within).await
    }

    /// [`LocalServer::start`] for any role: `exe ROLE --listen 127.0.0.1 --port 0 ARGS…`.
    pub async fn start_role(
        exe: &Path,
        role: &str,
        args: &[String],
        ready_within: Duration,
    ) -> anyhow::Result<LocalServer> {
        let mut command = Command::new(exe);
        command.args([role, "--listen", "127.0.0.1", "--port", "0"]).args(args);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // A load tester stopped by a signal runs no destructors: the kernel sends its servers
        // SIGTERM when it dies, so that none is left behind holding a port and the CPU.
        // SAFETY: prctl(2) is async-signal-safe, and the closure touches nothing else.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = command.spawn().with_context(|| format!("starting {} {role}", exe.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let pipe = child.stderr.take().context("the server's stderr")?;
        // A plain thread: the pipe is read with blocking calls until the server exits, and must
        // be drained all along or a chatty server would stall on a full pipe.
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                    }
                }
                let mut lines = lines.lock().unwrap_or_else(|p| p.into_inner());
                if lines.len() == LOG_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        let mut server = LocalServer { child, base_url: String::new(), log };
        let deadline = Instant::now() + ready_within;
        let addr = match tokio::time::timeout(ready_within, addr_rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => anyhow::bail!("the server exited before listening:\n{}", server.log_tail()),
            Err(_) => anyhow::bail!("the server did not listen within {ready_within:?}:\n{}", server.log_tail()),
        };
        server.base_url = format!("http://{addr}");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        loop {
            let ready = client.get(format!("{}/ready", server.base_url)).send().await;
            if ready.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                anyhow::bail!("the server exited ({status}):\n{}", server.log_tail());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("the server was not ready within {ready_within:?}:\n{}", server.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the graceful exit; kills the server if it takes longer than
    /// `within`.
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "the server exited with {status}:\n{}", self.log_tail());
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                anyhow::bail!("the server did not stop within {within:?} of SIGTERM and was killed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let lines = self.log.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for LocalServer {
    /// A server left behind by an error is killed, never orphaned.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
