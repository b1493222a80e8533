//! `clipfleet`: the front end. It checks that libtorch can be found, then replaces itself
//! (exec) with `clipfleet-core`, which sits beside it and does the work.
//!
//! A binary that links libtorch cannot explain a missing libtorch: the dynamic loader
//! fails before `main`. This front end links nothing from libtorch, so it can.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The libtorch folder the build linked against (baked in as the core binary's RUNPATH).
const BUILT_AGAINST: Option<&str> = option_env!("CLIPFLEET_LIBTORCH_DIR");
const PROBE: &str = "libtorch_cpu.so";

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("LD_LIBRARY_PATH").map(|v| std::env::split_paths(&v).collect()).unwrap_or_default();
    dirs.extend(BUILT_AGAINST.map(PathBuf::from));
    dirs.extend(
        ["/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"].map(PathBuf::from),
    );
    dirs
}

/// Cheap check first (a file in the usual folders); otherwise ask the dynamic loader, which
/// also knows ld.so.conf and the run path.
fn libtorch_found() -> bool {
    if search_dirs().iter().any(|d| d.join(PROBE).is_file()) {
        return true;
    }
    let name = c"libtorch_cpu.so";
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is closed right away.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
    }
    true
}

fn main() -> ExitCode {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("clipfleet"));
    let core = exe.with_file_name("clipfleet-core");
    if !core.is_file() {
        eprintln!(
            "error: {} is missing; clipfleet needs the worker binary beside it (build both with `cargo build --release -p clipfleet-launcher`)",
            core.display()
        );
        return ExitCode::from(127);
    }
    if !libtorch_found() {
        let built = BUILT_AGAINST.unwrap_or("(unknown)");
        eprintln!(
            "error: libtorch not found: no {PROBE} in LD_LIBRARY_PATH or in {built}, the folder this binary was built against.\n\
             clipfleet needs the libraries of PyTorch 2.11.0. Fix it with one of:\n  \
             - in the clipfleet checkout, run `scripts/setup.sh` (installs torch==2.11.0 into .venv and rebuilds);\n  \
             - or `pip install torch==2.11.0` and export LD_LIBRARY_PATH=\"$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), \"lib\"))')\""
        );
        return ExitCode::from(127);
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let err = Command::new(Path::new(&core)).arg0("clipfleet").args(args).exec();
    eprintln!("error: cannot start {}: {err}", core.display());
    ExitCode::from(126)
}
