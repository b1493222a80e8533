//! Helpers: run the binary, small training runs, file fingerprints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `clipfleet` front-end binary built with these tests.
pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clipfleet"))
}

/// Runs `clipfleet ARGS` with JSON logs and returns its output.
pub(crate) fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// Runs `clipfleet ARGS` with extra environment variables.
pub(crate) fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).arg("--log-format").arg("json").env("OMP_NUM_THREADS", "2");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running clipfleet")
}

/// stderr as text.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success, showing stderr otherwise.
pub(crate) fn ok(out: Output) -> Output {
    assert!(out.status.success(), "clipfleet failed ({:?}):\n{}", out.status, stderr(&out));
    out
}

/// Flags for a quick run of the tiny model into `output`.
pub(crate) fn tiny_args(output: &Path, steps: i64, checkpoint_every: i64) -> Vec<String> {
    [
        "train",
        "--model",
        "tiny",
        "--batch-size",
        "16",
        "--steps",
        &steps.to_string(),
        "--warmup",
        "2",
        "--checkpoint-every",
        &checkpoint_every.to_string(),
        "--keep-checkpoints",
        "0",
        "--eval-samples",
        "32",
        "--log-every",
        "1",
        "--seed",
        "7",
        "--device",
        "cpu",
        "--output",
        output.to_str().expect("utf-8 path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Converts owned args for [`run`].
pub(crate) fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Every file under `dir` with its bytes, to prove nothing was modified.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}
