//! `clipfleet eval`: evaluate a committed checkpoint as its run evaluated.

use anyhow::Context;
use clipfleet_trainer::eval::{evaluate_checkpoint, log_eval, CheckpointEval};

use crate::cli::EvalArgs;

pub(crate) fn run(args: EvalArgs) -> anyhow::Result<()> {
    let request = CheckpointEval {
        val_data: args.val_data.clone(),
        samples: args.samples,
        device: Some(args.device),
        vocab: args.vocab.clone(),
    };
    let (dir, report) = evaluate_checkpoint(&args.checkpoint, &request)?;
    if args.json {
        super::print_json(&report).context("writing the report")?;
    } else {
        log_eval(&report);
        println!(
            "{}: {}image→text R@1/5/10 {:.1}/{:.1}/{:.1}%; text→image R@1/5/10 {:.1}/{:.1}/{:.1}% over {} pairs; val loss {:.4}",
            dir.display(),
            super::zero_shot_text(&report),
            100.0 * report.image_to_text_r1,
            100.0 * report.image_to_text_r5,
            100.0 * report.image_to_text_r10,
            100.0 * report.text_to_image_r1,
            100.0 * report.text_to_image_r5,
            100.0 * report.text_to_image_r10,
            report.num_samples,
            report.val_loss
        );
    }
    Ok(())
}
