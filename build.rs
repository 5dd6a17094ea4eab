//! Bakes libtorch's location into the `blipserve` binary (rpath), so it runs without the user
//! setting LD_LIBRARY_PATH, and keeps libtorch_cuda linked so a CUDA host can use its GPUs.
//! Only that binary gets these link arguments: `blipserve-api` and the tests link no libtorch.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys exports the directory it linked against through its `links = "tch"` key (present
    // only with the `model` feature).
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg-bin=blipserve=-Wl,-rpath,{lib_dir}");
    // Without this the linker's --as-needed drops libtorch_cuda (nothing references it by
    // symbol) and CUDA devices stay invisible to the process.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bin=blipserve=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
