//! Running OpenCLIP's data pipeline (`scripts/bench_data_reference.py`) on the same shards.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::measure::LoaderRun;

/// The reference script, in the checkout this binary was built from.
pub(crate) fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_data_reference.py")
}

/// The default python: `.venv/bin/python` of the checkout.
pub(crate) fn default_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Runs the reference with `run.threads` DataLoader workers (it inherits this process's CPU
/// affinity) and returns the JSON object it prints.
///
/// # Errors
/// A missing script or python, a failed run (with the last line of its stderr), or output
/// that is not JSON with `images_per_second`.
pub(crate) fn run_reference(python: &Path, run: &LoaderRun) -> anyhow::Result<serde_json::Value> {
    let script = script();
    anyhow::ensure!(script.is_file(), "the reference script {} is missing", script.display());
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(["--train-data", &run.urls])
        .args(["--workers", &run.threads.max(1).to_string()])
        .args(["--batch-size", &run.batch_size.to_string()])
        .args(["--batches", &run.batches.to_string()])
        .args(["--seed", &run.seed.to_string()]);
    if run.resampled {
        cmd.arg("--dataset-resampled");
    }
    if let Some(n) = run.num_samples {
        cmd.args(["--train-num-samples", &n.to_string()]);
    }
    let out = cmd.output().with_context(|| format!("cannot run {} (see --reference-python)", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the OpenCLIP reference failed: {}",
        String::from_utf8_lossy(&out.stderr).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    let value: serde_json::Value =
        serde_json::from_str(line).context("the OpenCLIP reference printed no JSON object")?;
    anyhow::ensure!(value["images_per_second"].is_number(), "the reference's JSON lacks images_per_second: {line}");
    Ok(value)
}
