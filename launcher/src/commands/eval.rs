//! `clipfleet eval`: evaluate a committed checkpoint on validation shards (`--val-data`, or the
//! run's `val_data`) or on the held-out synthetic split.

use std::sync::Arc;

use anyhow::{bail, Context};
use clipfleet_dataloader::loader::LoaderConfig;
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::synthetic::SyntheticDataset;
use clipfleet_trainer::checkpoint::{self, Checkpoint};
use clipfleet_trainer::data::tokenizer_for;
use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::eval::{evaluate, evaluate_shards};
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
    let image_size = ck.state.model_config.vision_cfg.image_size as u32;
    let report = match args.val_data.as_ref().or(cfg.val_data.as_ref()) {
        Some(urls) => {
            let ctx = ck.state.model_config.text_cfg.context_length as usize;
            let spec = cfg.data_spec(urls, 1)?;
            let loader_cfg = LoaderConfig::evaluation(&spec, cfg.batch_size as usize, image_size, ctx)?;
            let store = Arc::new(ShardStore::new(ShardStoreOptions::default())?);
            evaluate_shards(&model, loader_cfg, store, tokenizer, samples, ck.state.step)?
        }
        None => {
            let data = SyntheticDataset::new(image_size, cfg.seed);
            evaluate(&model, &data, tokenizer.as_ref(), samples, cfg.batch_size, ck.state.step)?
        }
    };
    if args.json {
        super::print_json(&report).context("writing the report")?;
    } else {
        clipfleet_trainer::train::log_eval(&report);
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
