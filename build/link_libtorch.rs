// Shared by the build scripts of the crates whose binaries and tests link libtorch.
//
// torch-sys (links = "tch") exports the libtorch folder it linked against as
// DEP_TCH_LIBTORCH_LIB to crates that depend on it directly. We bake that folder
// into the binaries as a RUNPATH, so `clipfleet` finds libtorch without the user
// exporting anything; LD_LIBRARY_PATH still takes precedence (as on the GPU
// machine). Debian's linker drops libtorch_cuda.so because no symbol from it is
// referenced; force it in when it exists so CUDA is visible at run time (DESIGN §2).

use std::path::Path;

/// `keys`: the cargo instructions that carry the link arguments, e.g.
/// `cargo:rustc-link-arg=` (every target) or `cargo:rustc-link-arg-bin=NAME=`.
fn link_libtorch(keys: &[&str]) {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-env=CLIPFLEET_LIBTORCH_DIR={dir}");
    let cuda = Path::new(&dir).join("libtorch_cuda.so").exists();
    for key in keys {
        println!("{key}-Wl,-rpath,{dir}");
        if cuda {
            println!("{key}-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
