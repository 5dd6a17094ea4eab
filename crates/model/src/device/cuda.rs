//! CUDA support, loaded only when a CUDA device is asked for.
//!
//! libtorch's CUDA kernels live in libtorch_cuda.so, which pulls in cuBLAS, cuDNN, cuSPARSELt,
//! NCCL and the rest. The binary does not link it: with PyPI's CUDA build of torch, linking it made
//! a CPU server hold about 230 MB more resident memory (the libraries' pages plus what their
//! initialisers allocate) for devices it never used. It is `dlopen`ed globally, once, from the
//! folder libtorch_cpu.so was loaded from, the first time the process counts its CUDA devices —
//! before anything asks libtorch about CUDA, since libtorch settles its CUDA hooks on the first
//! question.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::op_library::load_op_library;

const CUDA_LIBRARY: &str = "libtorch_cuda.so";

static SUPPORT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// libtorch_cuda.so as loaded, or why there is none.
fn support() -> &'static Result<PathBuf, String> {
    SUPPORT.get_or_init(|| {
        let dir = libtorch_dir().ok_or_else(|| "libtorch_cpu.so is not loaded in this process".to_string())?;
        let library = dir.join(CUDA_LIBRARY);
        if !library.exists() {
            return Err(format!("{} does not exist: this libtorch is a CPU build", library.display()));
        }
        let loaded = load_op_library(&library).map_err(|e| e.to_string())?;
        tracing::info!(library = %loaded.display(), "CUDA support loaded");
        Ok(loaded)
    })
}

/// CUDA devices this process sees (0 with a CPU build of libtorch). The first call loads CUDA
/// support.
pub fn cuda_device_count() -> usize {
    match support() {
        Ok(_) => tch::Cuda::device_count().max(0) as usize,
        Err(_) => 0,
    }
}

/// Where CUDA support came from, or why there is none: for error messages. Loads CUDA support if
/// nothing has yet.
pub fn cuda_support() -> String {
    match support() {
        Ok(library) => format!("CUDA support from {}", library.display()),
        Err(why) => format!("no CUDA support: {why}"),
    }
}

/// The folder libtorch_cpu.so was mapped from.
fn libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    mapped_from(&maps, "libtorch_cpu.so")
}

/// The folder of the first mapping in `maps` (/proc/PID/maps text) whose file is named `file`.
fn mapped_from(maps: &str, file: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|path| path.file_name().is_some_and(|name| name == file))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_folder_a_library_was_mapped_from() {
        let maps = "7f00-7f10 r--p 00000000 08:01 42 /opt/x/lib/libc10.so\n\
                    7f10-7f20 r-xp 00001000 08:01 43 /opt/torch/lib/libtorch_cpu.so\n\
                    7f20-7f30 rw-p 00000000 00:00 0 \n";
        assert_eq!(mapped_from(maps, "libtorch_cpu.so"), Some(PathBuf::from("/opt/torch/lib")));
        assert_eq!(mapped_from(maps, "libtorch_cuda.so"), None);
    }
}
