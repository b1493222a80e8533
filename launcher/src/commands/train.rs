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
    set!(keep_checkpoints, eval_every, eval_samples, log_every, device, threads, shuffle_window, workers);
    set!(max_skip_fraction, caption_key, parquet_image_column, metrics_host, job_name);
    set!(precision, loss, accum_freq, loss_block_rows, dist_backend, grad_bucket_mb, check_params_every);
    macro_rules! set_option {
        ($($field:ident),*) => { $( if a.$field.is_some() { cfg.$field = a.$field.clone(); } )* };
    }
    set_option!(train_num_samples, train_data, val_data, train_data_upsampling_factors, data_partitions);
    set_option!(parquet_caption_column, metrics_port, loss_block_cols);
    if a.dataset_resampled {
        cfg.dataset_resampled = true;
    }
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
    let restarted = std::env::var("CLIPFLEET_RESTART_COUNT").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0) > 0;
    let opts = TrainOptions { resume: args.resume.as_deref().map(Resume::parse), progress: Some(bar), restarted };
    let summary = train(&cfg, &opts).context("training failed")?;
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
