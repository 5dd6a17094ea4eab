//! The model crate's own tests and benches link libtorch: bake its location in (rpath) so they
//! run without LD_LIBRARY_PATH, as the `blipserve` binary does.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
}
