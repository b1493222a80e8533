//! `clipfleet train`: the config file, overridden by flags, then the training run.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clipfleet_trainer::run::{signals, train, Resume, TrainOptions, EXIT_CHECKPOINTED};
use clipfleet_trainer::TrainConfig;
use indicatif::ProgressBar;

use crate::cli::TrainArgs;

/// Trains; the exit status is 0 for a finished run and [`EXIT_CHECKPOINTED`] (75) for a run
/// that stopped on request with a checkpoint.
pub(crate) fn run(args: TrainArgs, bar: ProgressBar) -> anyhow::Result<ExitCode> {
    let cfg = TrainConfig::resolve(args.config.as_deref(), &args.overrides)?;
    let restarted = std::env::var("CLIPFLEET_RESTART_COUNT").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0) > 0;
    let opts = TrainOptions {
        resume: args.resume.as_deref().map(Resume::parse),
        progress: Some(bar),
        restarted,
        ..TrainOptions::default()
    };
    signals::install(args.stop_signal, Duration::from_secs_f64(args.stop_grace), opts.boundary.stop.clone())
        .context("installing the stop-signal handlers")?;
    let summary = train(&cfg, &opts).context("training failed")?;
    if summary.stopped {
        if summary.world.rank == 0 {
            let checkpoint = summary.checkpoint.display().to_string();
            if args.json {
                super::print_json(
                    &serde_json::json!({"stopped": true, "step": summary.step, "checkpoint": checkpoint}),
                )?;
            } else {
                println!("stopped at step {} on request; checkpoint: {checkpoint}", summary.step);
            }
        }
        tracing::info!(
            step = summary.step,
            "stopped on request with a checkpoint: exit status {EXIT_CHECKPOINTED} (resume with --resume latest)"
        );
        return Ok(ExitCode::from(EXIT_CHECKPOINTED));
    }
    // Rank 0 evaluates and reports; the other workers have nothing to add.
    let Some(e) = &summary.eval else { return Ok(ExitCode::SUCCESS) };
    if args.json {
        super::print_json(e)?;
    } else {
        println!("step {}: {e}", summary.step);
        println!("checkpoint: {}", summary.checkpoint.display());
        println!("throughput: {:.1} samples/s", summary.samples_per_second);
    }
    Ok(ExitCode::SUCCESS)
}
