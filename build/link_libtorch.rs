// Shared by the build scripts of the crates whose binaries and tests link libtorch.
//
// torch-sys (links = "tch") exports the libtorch folder it linked against as
// DEP_TCH_LIBTORCH_LIB to crates that depend on it directly. We bake that folder
// into the binaries as a RUNPATH, so `clipfleet` finds libtorch without the user
// exporting anything; LD_LIBRARY_PATH still takes precedence (as on the GPU
// machine). Debian's linker drops libtorch_cuda.so because no symbol from it is
// referenced; force it in when it exists so CUDA is visible at run time (DESIGN §2).

use std::path::Path;

/// `bin`: `None` applies the link arguments to every target of the package (tests
/// included); `Some(name)` to that one binary only.
fn link_libtorch(bin: Option<&str>) {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-env=CLIPFLEET_LIBTORCH_DIR={dir}");
    let key = match bin {
        None => "cargo:rustc-link-arg=".to_string(),
        Some(name) => format!("cargo:rustc-link-arg-bin={name}="),
    };
    println!("{key}-Wl,-rpath,{dir}");
    if Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("{key}-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
