//! Helpers shared by the trainer's integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

/// The committed fixtures folder.
pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The project venv's python, which holds the oracle (open_clip_torch 3.3.0).
pub(crate) fn oracle_python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(py.is_file(), "{} is missing: run `scripts/setup.sh --test` first", py.display());
    py
}

/// Runs an oracle script and returns its stdout; panics with its stderr on failure.
pub(crate) fn run_oracle(args: &[&str]) -> String {
    let out = Command::new(oracle_python()).args(args).output().expect("running the oracle python");
    assert!(
        out.status.success(),
        "oracle {:?} failed: {}\n{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a safetensors file into a map.
pub(crate) fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

/// max |a - b|.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs().max().double_value(&[])
}
