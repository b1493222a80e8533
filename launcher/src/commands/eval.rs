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
        println!("{}: {report}", dir.display());
    }
    Ok(())
}
