//! Bakes libtorch's location into the fuzz targets (rpath), as the root build.rs does for the
//! `blipserve` binary: the targets of the model crate link libtorch.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
}
