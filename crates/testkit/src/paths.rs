//! Where things live: the workspace root, the exported model directories, the pinned Python
//! environment and the `blipserve` binary. Each one missing fails with the command that makes it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate lives in `crates/testkit`).
pub fn repo() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// An exported model directory; `make test` exports them before the tests run.
pub fn model_dir(name: &str) -> PathBuf {
    let dir = repo().join("models").join(name);
    assert!(dir.join("manifest.json").is_file(), "{} is missing: run `make models` (or `make test`)", dir.display());
    dir
}

/// The pinned Python environment (`make python`), or `BLIPSERVE_PYTHON`.
pub fn python() -> PathBuf {
    let python = std::env::var_os("BLIPSERVE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv").join("bin").join("python"));
    assert!(python.exists(), "{} is missing: run `make python` (or `make test`)", python.display());
    python
}

/// The tools environment's Python (`make python`: tritonclient, the OpenAPI validator).
pub fn tools_python() -> PathBuf {
    let tools = repo().join(".venv-tools").join("bin").join("python");
    assert!(tools.exists(), "{} is missing: run `make python`", tools.display());
    tools
}

/// Runs a script of models/ with the pinned Python, in the workspace root, and parses its JSON
/// output.
pub fn run_python(args: &[&OsStr]) -> serde_json::Value {
    let out = Command::new(python()).args(args).current_dir(repo()).output().expect("start python");
    assert!(out.status.success(), "python {:?} failed:\n{}", args, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// Writes a fixture file and returns its path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write fixture");
    path
}

/// The `blipserve` binary of the build the running test belongs to, for tests that have no
/// `CARGO_BIN_EXE_blipserve` (those outside the root package). A test executable is
/// `target/<profile>/deps/NAME-HASH`; the binary is `target/<profile>/blipserve`.
///
/// Cargo builds it for a test run that includes the root package (`cargo test --workspace`,
/// `cargo nextest run --workspace`); `cargo test -p blipserve-model` alone does not, so build it
/// first (`cargo build --bin blipserve`), or an older one is used.
pub fn blipserve_exe() -> PathBuf {
    let test = std::env::current_exe().expect("the running test's own path");
    let profile = test
        .parent()
        .filter(|deps| deps.file_name() == Some(OsStr::new("deps")))
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in a target/<profile>/deps directory", test.display()));
    let exe = profile.join(format!("blipserve{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.is_file(),
        "{} is missing: build it first (`cargo build --bin blipserve`, with the same profile as the tests), \
         or run the tests of the whole workspace (`cargo test --workspace`)",
        exe.display()
    );
    exe
}

/// Builds the test operator library and its models (models/fixtures/custom_op.py) into `out`;
/// `extra` asks for model variants (`--faulty-model DIR`, `--fake-neuron-model DIR`).
pub fn op_fixtures(out: &Path, extra: &[&OsStr]) -> serde_json::Value {
    let mut args: Vec<&OsStr> = vec!["models/fixtures/custom_op.py".as_ref(), out.as_os_str()];
    args.extend_from_slice(extra);
    run_python(&args)
}
