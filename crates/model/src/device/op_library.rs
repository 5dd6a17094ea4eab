//! Loading operator libraries into the process so TorchScript can resolve their operators.
//!
//! tch has no API for this: libtorch registers a library's operators from static initialisers
//! when the shared object is loaded, and TorchScript looks them up in the process-wide registry.
//! So the library is `dlopen`ed with `RTLD_GLOBAL` before any module that uses it is loaded, and
//! never unloaded (its operators must outlive every module).

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Environment variable naming libtorchneuron.so explicitly (the `--neuron-lib` twin).
pub const NEURON_LIB_ENV: &str = "BLIPSERVE_NEURON_LIB";
const NEURON_LIB_NAME: &str = "libtorchneuron.so";
const NEURON_RUNTIME: &str = "/opt/aws/neuron/lib/libnrt.so.1";

#[derive(Debug, thiserror::Error)]
pub enum OpLibraryError {
    #[error("operator library {0} does not exist")]
    Missing(PathBuf),
    #[error("cannot load operator library {path}: {message}")]
    Dlopen { path: PathBuf, message: String },
    #[error(
        "device neuron needs {NEURON_LIB_NAME} (from the torch-neuronx package) and none was found; \
         pass --neuron-lib or set {NEURON_LIB_ENV}. Looked in: {}",
        tried.join(", ")
    )]
    NeuronLibraryNotFound { tried: Vec<String> },
}

static LOADED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Loads `path` globally (idempotent per canonical path).
pub fn load_op_library(path: &Path) -> Result<PathBuf, OpLibraryError> {
    let canonical = path.canonicalize().map_err(|_| OpLibraryError::Missing(path.to_path_buf()))?;
    let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let loaded = loaded.get_or_insert_with(HashSet::new);
    if loaded.contains(&canonical) {
        return Ok(canonical);
    }
    let c_path = CString::new(canonical.as_os_str().as_bytes())
        .map_err(|_| OpLibraryError::Dlopen { path: canonical.clone(), message: "path contains a NUL byte".into() })?;
    // SAFETY: dlopen with a valid NUL-terminated path; the handle is deliberately leaked so the
    // library (and the operators it registered) stays loaded for the life of the process.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err(OpLibraryError::Dlopen { path: canonical, message: dlerror() });
    }
    tracing::info!(library = %canonical.display(), "operator library loaded");
    loaded.insert(canonical.clone());
    Ok(canonical)
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a pointer to a NUL-terminated string owned by libc.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
        unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    }
}

/// Loads the Neuron runtime (`libnrt.so.1`) globally when it is installed where the Neuron
/// packages put it, so libtorchneuron.so resolves it without LD_LIBRARY_PATH.
pub fn load_neuron_runtime() -> Result<(), OpLibraryError> {
    let runtime = Path::new(NEURON_RUNTIME);
    if runtime.exists() {
        load_op_library(runtime)?;
    }
    Ok(())
}

/// Finds libtorchneuron.so: the explicit path (flag or environment), else the torch_neuronx
/// package of a Python environment (the active virtualenv, `python3` on PATH, the Neuron DLC and
/// AMI environments under /opt).
pub fn find_neuron_library(explicit: Option<&Path>) -> Result<PathBuf, OpLibraryError> {
    if let Some(path) = explicit {
        return if path.exists() { Ok(path.to_path_buf()) } else { Err(OpLibraryError::Missing(path.into())) };
    }
    let mut tried = Vec::new();
    for python in candidate_pythons() {
        tried.push(format!("{} (import torch_neuronx)", python.display()));
        if let Some(lib) = ask_python(&python) {
            return Ok(lib);
        }
    }
    for site in neuron_site_packages() {
        let lib = site.join("torch_neuronx").join("lib").join(NEURON_LIB_NAME);
        tried.push(lib.display().to_string());
        if lib.exists() {
            return Ok(lib);
        }
    }
    Err(OpLibraryError::NeuronLibraryNotFound { tried })
}

fn candidate_pythons() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        out.push(PathBuf::from(venv).join("bin").join("python"));
    }
    out.push(PathBuf::from("python3"));
    out
}

fn ask_python(python: &Path) -> Option<PathBuf> {
    let script = "import os, torch_neuronx; \
                  print(os.path.join(os.path.dirname(torch_neuronx.__file__), 'lib', 'libtorchneuron.so'))";
    let out = Command::new(python).args(["-c", script]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.exists().then_some(path)
}

/// site-packages folders of the Python environments the Neuron AMIs and containers ship.
fn neuron_site_packages() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(opt) = std::fs::read_dir("/opt") else {
        return out;
    };
    for env in opt.flatten() {
        let name = env.file_name();
        if !name.to_string_lossy().starts_with("aws_neuronx_venv") && name != "conda" {
            continue;
        }
        let Ok(libs) = std::fs::read_dir(env.path().join("lib")) else {
            continue;
        };
        for py in libs.flatten() {
            if py.file_name().to_string_lossy().starts_with("python3") {
                out.push(py.path().join("site-packages"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_clear_error() {
        let err = load_op_library(Path::new("/nonexistent/libnothing.so")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn a_file_that_is_no_library_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("libfake.so");
        std::fs::write(&fake, b"not an ELF file").unwrap();
        let err = load_op_library(&fake).unwrap_err();
        assert!(matches!(err, OpLibraryError::Dlopen { .. }), "{err}");
    }

    #[test]
    fn explicit_neuron_library_must_exist() {
        let err = find_neuron_library(Some(Path::new("/nonexistent/libtorchneuron.so"))).unwrap_err();
        assert!(matches!(err, OpLibraryError::Missing(_)), "{err}");
    }
}
