//! What blipserve's integration tests share, in one crate that does not link libtorch, so that
//! the root package's tests (which only start the binaries) and the model crate's tests (which
//! also load the model in-process) use the same helpers instead of copies.
//!
//! - [`paths`]: the workspace, the exported models, the pinned Python, the `blipserve` binary
//! - [`frames`]: synthetic camera frames and their JPEG/PNG encodings, and malformed images
//! - [`server`]: the real binary on a free port, and an HTTP client
//! - [`metrics`]: reading Prometheus samples, failing when a metric family does not exist
//! - [`forms`]: the multipart detect form
//! - [`checks`]: external validators (promtool, the OpenAPI validator)
//! - [`poll`]: bounded waiting for a condition
//! - [`localstack`]: the CloudWatch emulator as a child process
//! - [`redis`]: Redis as a child process (the camera store a fleet shares)
//! - [`otlp`]: an OTLP/HTTP trace receiver that keeps the spans it is sent
//!
//! The usual items are re-exported here: `use blipserve_testkit::*;`.

pub mod checks;
pub mod forms;
pub mod frames;
pub mod localstack;
pub mod metrics;
pub mod otlp;
pub mod paths;
pub mod poll;
pub mod redis;
pub mod server;

pub use checks::{openapi_validate, promtool_check};
pub use forms::detect_form;
pub use frames::{grey_jpeg, grey_png, jpeg, png, png_claiming, rgb_png, rgba_png, synthetic_frame, Frame, Subsamp};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use paths::{blipserve_exe, model_dir, op_fixtures, python, repo, run_python, tools_python, write};
pub use poll::{eventually, eventually_every};
pub use redis::Redis;
pub use server::{client, faulty_worker, gateway, Server};

/// Says, on the test process's own stderr, that a test (or a part of one) cannot run on this
/// host and why, as `SKIPPED: <reason>`; the caller then returns. The line bypasses libtest's
/// output capture, so `cargo test` always shows it; nextest shows it with the test's output
/// (`--success-output immediate`, or a `success-output` override for the test).
///
/// ```ignore
/// if blipserve_model::device::cuda_device_count() > 0 {
///     return skip("a CUDA device is present: the no-GPU error cannot be provoked here");
/// }
/// ```
pub fn skip(reason: impl std::fmt::Display) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
}
