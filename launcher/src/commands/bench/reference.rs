//! Running an OpenCLIP reference script beside a clipfleet benchmark: the one runner for
//! every `bench` subcommand. A reference prints one JSON object on its last JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// A reference script under `scripts/`: in the current folder first (a checkout copied to
/// another machine), else in the checkout this binary was built from.
pub(crate) fn script(name: &str) -> PathBuf {
    let here = Path::new("scripts").join(name);
    if here.is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name)
}

/// The default python: `.venv/bin/python` of the checkout.
pub(crate) fn default_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Runs `python scripts/NAME ARGS…` and returns the JSON object it printed, which must hold
/// the number `key`.
///
/// # Errors
/// A missing script or python, a failed run (with the last line of its stderr), or output
/// without such an object.
pub(crate) fn run_json(python: &Path, name: &str, args: &[String], key: &str) -> anyhow::Result<serde_json::Value> {
    let script = script(name);
    anyhow::ensure!(script.is_file(), "the reference script {} is missing", script.display());
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {} (see --reference-python)", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the OpenCLIP reference failed: {}",
        String::from_utf8_lossy(&out.stderr).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    let value: serde_json::Value =
        serde_json::from_str(line).context("the OpenCLIP reference printed no JSON object")?;
    anyhow::ensure!(value[key].is_number(), "the reference's JSON lacks {key}: {line}");
    Ok(value)
}
