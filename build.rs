//! Bakes libtorch's location into the `blipserve` binary (rpath), so it runs without the user
//! setting LD_LIBRARY_PATH.
//! Only that binary gets these link arguments: `blipserve-api` and the tests link no libtorch.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys exports the directory it linked against through its `links = "tch"` key (present
    // only with the `model` feature).
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg-bin=blipserve=-Wl,-rpath,{lib_dir}");
    // libtorch_cuda is not linked (the linker's --as-needed drops it: nothing references it by
    // symbol); blipserve loads it from beside libtorch_cpu when a CUDA device is asked for, so a CPU
    // server does not map the CUDA libraries.
}
