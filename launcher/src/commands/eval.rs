//! `clipfleet eval`: evaluate a committed checkpoint as its run evaluated, or classify labelled
//! images zero-shot with a checkpoint or OpenCLIP weights.

use anyhow::Context;
use clipfleet_trainer::data::tokenizer_for;
use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::eval::zero_shot::{evaluate_zero_shot, templates, LabelledSet, ZeroShotSpec};
use clipfleet_trainer::eval::{evaluate_checkpoint, load_checkpoint_model, log_eval, CheckpointEval};
use clipfleet_trainer::model::{resolve_model, Clip};

use crate::cli::EvalArgs;

pub(crate) fn run(args: EvalArgs) -> anyhow::Result<()> {
    if let Some(data) = &args.zero_shot {
        return zero_shot(&args, data);
    }
    let checkpoint = args.checkpoint.as_deref().context("--checkpoint is required")?;
    let request = CheckpointEval {
        val_data: args.val_data.clone(),
        samples: args.samples,
        device: Some(args.device),
        vocab: args.vocab.clone(),
    };
    let (dir, report) = evaluate_checkpoint(checkpoint, &request)?;
    if args.json {
        super::print_json(&report).context("writing the report")?;
    } else {
        log_eval(&report);
        println!("{}: {report}", dir.display());
    }
    Ok(())
}

fn zero_shot(args: &EvalArgs, data: &str) -> anyhow::Result<()> {
    let templates = templates(&args.templates, "--templates")?;
    let spec =
        ZeroShotSpec { data: data.to_owned(), classnames: args.classnames.clone(), templates: args.templates.clone() };
    let set = LabelledSet::open(&spec, "--zero-shot", "--classnames")?;
    let (model, tokenizer, what) = match (&args.checkpoint, &args.weights) {
        (Some(path), _) => {
            let loaded = load_checkpoint_model(path, Some(args.device), args.vocab.as_deref())?;
            (loaded.model, loaded.tokenizer, loaded.dir.display().to_string())
        }
        (None, Some(weights)) => {
            let config = resolve_model(args.model.as_deref(), args.model_config.as_deref())?;
            let mut model = Clip::new(&config, resolve_device(args.device)?)?;
            model.load_safetensors(weights)?;
            let tokenizer = tokenizer_for(&config, args.vocab.as_deref())?;
            (model, tokenizer, weights.display().to_string())
        }
        (None, None) => anyhow::bail!("give --checkpoint DIR, or --weights FILE with --model or --model-config"),
    };
    let report = evaluate_zero_shot(
        &model,
        tokenizer.as_ref(),
        &set,
        &templates,
        args.batch_size as usize,
        args.predictions.as_deref(),
    )?;
    if args.json {
        super::print_json(&report).context("writing the report")?;
    } else {
        println!("{what}: {report}");
    }
    Ok(())
}
