//! Validators run on what a live server serves, for the tests of `serve` and of the gateway:
//! Prometheus's own `promtool check metrics` on /metrics, and `openapi_spec_validator` (from the
//! `.venv-tools` environment) on /openapi.json. A failure fails the test with the tool's output.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::paths::{tools_python, write};

/// Fails the test unless `promtool check metrics` accepts `text` (a /metrics body).
pub fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (make setup installs it)");
    promtool.stdin.take().expect("promtool's stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool's output");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails the test unless `openapi_spec_validator` accepts `spec` (an /openapi.json body).
pub fn openapi_validate(spec: &[u8]) {
    let tools = tools_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "openapi.json", spec);
    let out =
        Command::new(tools).args(["-m", "openapi_spec_validator"]).arg(&path).output().expect("run the validator");
    assert!(
        out.status.success(),
        "openapi_spec_validator refused the spec:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
