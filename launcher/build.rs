//! Build script: bakes the libtorch folder into the binaries (see build/link_libtorch.rs).

include!("../build/link_libtorch.rs");

fn main() {
    // Only the worker binary links libtorch; the `clipfleet` front end stays free of it so
    // that it can explain a missing libtorch instead of failing in the dynamic loader.
    // The integration tests read safetensors through tch, so they link it too.
    link_libtorch(&["cargo:rustc-link-arg-bin=clipfleet-core=", "cargo:rustc-link-arg-tests="]);
    // The front end gets only the run path, for its dlopen probe.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-bin=clipfleet=-Wl,-rpath,{dir}");
    }
}
