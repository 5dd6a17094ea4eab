//! Bakes libtorch's location into every binary (rpath), so `blipserve` runs without the user
//! setting LD_LIBRARY_PATH, and keeps libtorch_cuda linked so a CUDA host can use its GPUs.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys exports the directory it linked against through its `links = "tch"` key.
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=libtorch location unknown: set LD_LIBRARY_PATH at run time");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // Without this the linker's --as-needed drops libtorch_cuda (nothing references it by
    // symbol) and CUDA devices stay invisible to the process.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
