//! `clipfleet eval`: evaluate a committed checkpoint on the held-out synthetic split.

use anyhow::{bail, Context};
use clipfleet_dataloader::synthetic::SyntheticDataset;
use clipfleet_trainer::checkpoint::{self, Checkpoint};
use clipfleet_trainer::data::tokenizer_for;
use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::eval::evaluate;
use clipfleet_trainer::model::Clip;

use crate::cli::EvalArgs;

pub(crate) fn run(args: EvalArgs) -> anyhow::Result<()> {
    let Some(dir) = checkpoint::resolve(&args.checkpoint)? else {
        bail!("{} holds no committed checkpoint", args.checkpoint.display());
    };
    let ck = Checkpoint::open(&dir)?;
    let device = resolve_device(&args.device)?;
    let cfg = &ck.state.train_config;
    let mut model = Clip::new(&ck.state.model_config, device)?;
    ck.load_model(&mut model)?;
    let vocab = args.vocab.clone().or_else(|| cfg.vocab.clone());
    let tokenizer = tokenizer_for(&ck.state.model_config, vocab.as_deref())?;
    let samples = args.samples.unwrap_or(cfg.eval_samples);
    if samples < 2 {
        bail!("invalid value {samples} for `--samples`: allowed an integer >= 2");
    }
    let data = SyntheticDataset::new(ck.state.model_config.vision_cfg.image_size as u32, cfg.seed);
    let report = evaluate(&model, &data, tokenizer.as_ref(), samples, cfg.batch_size, ck.state.step);
    if args.json {
        super::print_json(&report).context("writing the report")?;
    } else {
        clipfleet_trainer::train::log_eval(&report);
        println!(
            "{}: zero-shot top-1 {:.1}% top-5 {:.1}% ({} classes); image→text R@1/5/10 {:.1}/{:.1}/{:.1}%; text→image R@1/5/10 {:.1}/{:.1}/{:.1}%; val loss {:.4}",
            dir.display(),
            100.0 * report.zero_shot_top1,
            100.0 * report.zero_shot_top5,
            report.num_classes,
            100.0 * report.image_to_text_r1,
            100.0 * report.image_to_text_r5,
            100.0 * report.image_to_text_r10,
            100.0 * report.text_to_image_r1,
            100.0 * report.text_to_image_r5,
            100.0 * report.text_to_image_r10,
            report.val_loss
        );
    }
    Ok(())
}
