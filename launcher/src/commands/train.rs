//! `clipfleet train`: the config file, overridden by flags, then the training run.

use anyhow::Context;
use clipfleet_trainer::run::{train, Resume, TrainOptions};
use clipfleet_trainer::TrainConfig;
use indicatif::ProgressBar;

use crate::cli::TrainArgs;

pub(crate) fn run(args: TrainArgs, bar: ProgressBar) -> anyhow::Result<()> {
    let cfg = TrainConfig::resolve(args.config.as_deref(), &args.overrides)?;
    let restarted = std::env::var("CLIPFLEET_RESTART_COUNT").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0) > 0;
    let opts = TrainOptions {
        resume: args.resume.as_deref().map(Resume::parse),
        progress: Some(bar),
        restarted,
        ..TrainOptions::default()
    };
    let summary = train(&cfg, &opts).context("training failed")?;
    if summary.stopped && summary.world.rank == 0 {
        println!("stopped at step {} on request; checkpoint: {}", summary.step, summary.checkpoint.display());
        return Ok(());
    }
    // Rank 0 evaluates and reports; the other workers have nothing to add.
    let Some(e) = &summary.eval else { return Ok(()) };
    if args.json {
        super::print_json(e)?;
    } else {
        println!(
            "step {}: {}image→text R@1 {:.1}% R@5 {:.1}%, text→image R@1 {:.1}% R@5 {:.1}% over {} held-out pairs (chance R@1 {:.2}%); val loss {:.4}",
            summary.step,
            super::zero_shot_text(e),
            100.0 * e.image_to_text_r1,
            100.0 * e.image_to_text_r5,
            100.0 * e.text_to_image_r1,
            100.0 * e.text_to_image_r5,
            e.num_samples,
            100.0 / e.num_samples as f64,
            e.val_loss
        );
        println!("checkpoint: {}", summary.checkpoint.display());
        println!("throughput: {:.1} samples/s", summary.samples_per_second);
    }
    Ok(())
}
