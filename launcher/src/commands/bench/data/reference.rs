//! Running OpenCLIP's data pipeline (`scripts/bench_data_reference.py`) on the same shards.

use std::path::Path;

use super::measure::LoaderRun;

/// Runs the reference with `run.threads` DataLoader workers (it inherits this process's CPU
/// affinity) and returns the JSON object it prints.
///
/// # Errors
/// See [`crate::commands::bench::reference::run_json`].
pub(crate) fn run_reference(python: &Path, run: &LoaderRun) -> anyhow::Result<serde_json::Value> {
    let mut args: Vec<String> = vec![
        "--train-data".into(),
        run.urls.clone(),
        "--workers".into(),
        run.threads.max(1).to_string(),
        "--batch-size".into(),
        run.batch_size.to_string(),
        "--batches".into(),
        run.batches.to_string(),
        "--seed".into(),
        run.seed.to_string(),
    ];
    if run.resampled {
        args.push("--dataset-resampled".into());
    }
    if let Some(n) = run.num_samples {
        args.extend(["--train-num-samples".into(), n.to_string()]);
    }
    super::super::reference::run_json(python, "bench_data_reference.py", &args, "images_per_second")
}
