//! Build script: bakes the libtorch folder into the binaries (see build/link_libtorch.rs), and
//! compiles the C++ shim (`shim/shim.cpp`) against the same libtorch's headers.

include!("../build/link_libtorch.rs");

fn main() {
    link_libtorch(&["cargo:rustc-link-arg="]);
    compile_shim();
}

/// The shim calls into libtorch through its C++ API, so it must see the headers of the
/// libtorch that torch-sys links (`<lib>/../include`) and use the same C++ ABI.
fn compile_shim() {
    println!("cargo:rerun-if-changed=shim/shim.cpp");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not export DEP_TCH_LIBTORCH_LIB: build with scripts/env.sh (LIBTORCH_USE_PYTORCH=1)");
    };
    let include = std::path::Path::new(&lib).join("../include");
    // PyPI's torch 2.x wheels use the C++11 ABI; LIBTORCH_CXX11_ABI overrides, as for torch-sys.
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("shim/shim.cpp")
        .compile("clipfleet_shim");
}
