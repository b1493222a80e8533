//! `clipfleet train`: the config file, overridden by flags, then the training loop.

use anyhow::Context;
use clipfleet_trainer::train::{train, Resume, TrainOptions};
use clipfleet_trainer::TrainConfig;
use indicatif::ProgressBar;

use crate::cli::TrainArgs;

/// Applies every flag that was given on top of `cfg`.
fn apply_flags(mut cfg: TrainConfig, a: &TrainArgs) -> TrainConfig {
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { cfg.$field = v; } )* };
    }
    set!(model, batch_size, steps, lr, warmup, lr_scheduler, weight_decay, seed, output, checkpoint_every);
    set!(keep_checkpoints, eval_every, eval_samples, log_every, device, threads, train_num_samples);
    if a.model_config.is_some() {
        cfg.model_config = a.model_config.clone();
    }
    if a.vocab.is_some() {
        cfg.vocab = a.vocab.clone();
    }
    if a.grad_clip_norm.is_some() {
        cfg.grad_clip_norm = a.grad_clip_norm;
    }
    if a.model.is_some() && a.model_config.is_none() {
        cfg.model_config = None;
    }
    cfg
}

pub(crate) fn run(args: TrainArgs, bar: ProgressBar) -> anyhow::Result<()> {
    let base = match &args.config {
        Some(path) => TrainConfig::from_toml_file(path)?,
        None => TrainConfig::default(),
    };
    let cfg = apply_flags(base, &args);
    cfg.validate()?;
    let opts = TrainOptions { resume: args.resume.as_deref().map(Resume::parse), progress: Some(bar) };
    let summary = train(&cfg, &opts).context("training failed")?;
    if args.json {
        super::print_json(&summary.eval)?;
    } else {
        let e = &summary.eval;
        println!(
            "step {}: zero-shot top-1 {:.1}% top-5 {:.1}% over {} classes (chance {:.1}%); image→text R@1 {:.1}% R@5 {:.1}%, text→image R@1 {:.1}% R@5 {:.1}% over {} held-out pairs (chance R@1 {:.2}%); val loss {:.4}",
            summary.step,
            100.0 * e.zero_shot_top1,
            100.0 * e.zero_shot_top5,
            e.num_classes,
            100.0 / e.num_classes as f64,
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
