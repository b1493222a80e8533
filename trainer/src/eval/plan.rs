//! The evaluation plan: what a run's evaluation reads, and the evaluation of a committed
//! checkpoint as its run evaluated (`clipfleet eval`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clipfleet_dataloader::loader::LoaderConfig;
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::synthetic::SyntheticDataset;
use clipfleet_dataloader::tokenizer::Tokenizer;

use super::zero_shot::{evaluate_zero_shot, templates, LabelledSet, ZeroShotSpec};
use super::{evaluate, evaluate_shards, EvalReport, Scoring};
use crate::checkpoint::{self, CheckpointState};
use crate::config::{DeviceSpec, TrainConfig};
use crate::data::tokenizer_for;
use crate::device::resolve_device;
use crate::error::{ConfigError, Result, TrainError};
use crate::model::Clip;
use crate::precision::Precision;

/// What an evaluation reads: held-out pairs, how many, and in batches of what size.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    /// Where the pairs come from.
    pub data: EvalData,
    /// Held-out pairs to evaluate.
    pub samples: i64,
    /// Pairs per forward pass, and per validation-loss batch: `batch_size × world_size` of
    /// the run, so that the loss does not depend on how a global batch was spread over
    /// workers.
    pub batch_size: i64,
    /// Zero-shot classification on labelled images (`zero_shot_data`), whose results replace
    /// the synthetic split's, in batches of the run's per-worker batch size.
    pub zero_shot: Option<(ZeroShotSpec, i64)>,
    /// How images and texts are scored: FILIP's token-wise scores for a FILIP run.
    pub scoring: Scoring,
}

/// The held-out pairs of an evaluation.
#[derive(Debug, Clone)]
pub enum EvalData {
    /// The synthetic held-out split (with zero-shot classification over its classes).
    Synthetic {
        /// Image side in pixels.
        image_size: u32,
        /// The run seed.
        seed: u64,
    },
    /// `val_data` shards, read in order with the evaluation transform.
    Shards {
        /// The run's config, for its shard-reading settings.
        config: Box<TrainConfig>,
        /// The shard URLs.
        urls: String,
        /// Image side in pixels.
        image_size: u32,
    },
}

impl EvalPlan {
    /// The evaluation of a run of `world_size` workers with `cfg`.
    pub fn for_run(cfg: &TrainConfig, image_size: u32, world_size: usize) -> Self {
        let data = match &cfg.val_data {
            Some(urls) => EvalData::Shards { config: Box::new(cfg.clone()), urls: urls.clone(), image_size },
            None => EvalData::Synthetic { image_size, seed: cfg.seed },
        };
        let zero_shot = cfg.zero_shot_data.as_ref().map(|data| {
            let spec = ZeroShotSpec {
                data: data.clone(),
                classnames: cfg.zero_shot_classnames.clone(),
                templates: cfg.zero_shot_templates.clone(),
            };
            (spec, cfg.batch_size)
        });
        let scoring = if cfg.loss == crate::config::LossKind::Filip { Scoring::Filip } else { Scoring::Pooled };
        EvalPlan {
            data,
            samples: cfg.eval_samples,
            batch_size: cfg.batch_size * world_size.max(1) as i64,
            zero_shot,
            scoring,
        }
    }

    /// The evaluation of the run that wrote `state`, as its training evaluated; `val_data`
    /// and `samples` override the run's.
    ///
    /// # Errors
    /// [`ConfigError`] naming `--samples` when it is below 2.
    pub fn for_checkpoint(state: &CheckpointState, val_data: Option<&str>, samples: Option<i64>) -> Result<Self> {
        let mut cfg = state.train_config.clone();
        if let Some(urls) = val_data {
            cfg.val_data = Some(urls.to_owned());
        }
        if let Some(n) = samples {
            if n < 2 {
                return Err(ConfigError::invalid("--samples", n, "an integer >= 2").into());
            }
            cfg.eval_samples = n;
        }
        let image_size = state.model_config.vision_cfg.image_size as u32;
        Ok(Self::for_run(&cfg, image_size, state.world_size.unwrap_or(1)))
    }

    /// Evaluates `model` (its weights at optimizer step `step`); shards are read through
    /// `store`, or a store of default options when `None`.
    ///
    /// # Errors
    /// The data pipeline's fatal errors; [`TrainError::TooFewEvalPairs`].
    pub fn evaluate(
        &self,
        model: &Clip,
        tokenizer: Arc<dyn Tokenizer>,
        store: Option<Arc<ShardStore>>,
        step: i64,
    ) -> Result<EvalReport> {
        let ctx = model.config().text_cfg.context_length as usize;
        let mut report = match &self.data {
            EvalData::Synthetic { image_size, seed } => {
                let data = SyntheticDataset::new(*image_size, *seed);
                evaluate(model, &data, tokenizer.as_ref(), self.samples, self.batch_size, step, self.scoring)
            }
            EvalData::Shards { config, urls, image_size } => {
                let spec = config.data_spec(urls, 1)?;
                let loader_cfg = LoaderConfig::evaluation(&spec, self.batch_size as usize, *image_size, ctx)?;
                let store = match store {
                    Some(store) => store,
                    None => Arc::new(ShardStore::new(ShardStoreOptions::default())?),
                };
                evaluate_shards(model, loader_cfg, store, Arc::clone(&tokenizer), self.samples, step, self.scoring)
            }
        }?;
        if let Some((spec, batch)) = &self.zero_shot {
            let set = LabelledSet::open(spec, "zero_shot_data", "zero_shot_classnames")?;
            let templates = templates(&spec.templates, "zero_shot_templates")?;
            let zs = evaluate_zero_shot(model, tokenizer.as_ref(), &set, &templates, *batch as usize, None)?;
            report.zero_shot_top1 = Some(zs.zero_shot_top1);
            report.zero_shot_top5 = Some(zs.zero_shot_top5);
            report.zero_shot_mean_per_class_recall = Some(zs.zero_shot_mean_per_class_recall);
            report.num_classes = zs.num_classes;
        }
        Ok(report)
    }
}

/// Logs an evaluation report.
pub fn log_eval(r: &EvalReport) {
    tracing::info!(
        step = r.step,
        zero_shot_top1 = format_args!("{:.3}", r.zero_shot_top1.unwrap_or(f64::NAN)),
        zero_shot_top5 = format_args!("{:.3}", r.zero_shot_top5.unwrap_or(f64::NAN)),
        image_to_text_r1 = format_args!("{:.3}", r.image_to_text_r1),
        text_to_image_r1 = format_args!("{:.3}", r.text_to_image_r1),
        val_loss = format_args!("{:.4}", r.val_loss),
        classes = r.num_classes,
        samples = r.num_samples,
        "eval"
    );
}

/// What `clipfleet eval` asks for beyond the checkpoint; unset fields take the run's values.
#[derive(Debug, Clone, Default)]
pub struct CheckpointEval {
    /// Validation shards instead of the run's `val_data`.
    pub val_data: Option<String>,
    /// Held-out pairs instead of the run's `eval_samples`.
    pub samples: Option<i64>,
    /// The device (default `auto`).
    pub device: Option<DeviceSpec>,
    /// A tokenizer file instead of the run's `vocab`.
    pub vocab: Option<PathBuf>,
}

/// Evaluates the newest committed checkpoint under `path` (a run, `checkpoints/` or
/// `step_N/` folder) as its run evaluated: the same plan, the run's precision and TF32
/// setting. Returns the checkpoint folder and the report.
///
/// # Errors
/// [`TrainError::Checkpoint`] when `path` holds no committed checkpoint; the errors of
/// loading it and of the evaluation.
pub fn evaluate_checkpoint(path: &Path, request: &CheckpointEval) -> Result<(PathBuf, EvalReport)> {
    let loaded = load_checkpoint_model(path, request.device, request.vocab.as_deref())?;
    let plan = EvalPlan::for_checkpoint(&loaded.state, request.val_data.as_deref(), request.samples)?;
    let report = plan.evaluate(&loaded.model, loaded.tokenizer, None, loaded.state.step)?;
    Ok((loaded.dir, report))
}

/// A committed checkpoint's model, ready to evaluate.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Its state (step, configs).
    pub state: CheckpointState,
    /// The model with its weights, in the run's evaluation precision.
    pub model: Clip,
    /// The run's tokenizer (or `vocab`).
    pub tokenizer: Arc<dyn Tokenizer>,
}

/// Loads the newest committed checkpoint under `path` (a run, `checkpoints/` or `step_N/`
/// folder) on `device` (default `auto`), with the run's precision and TF32 setting, and the
/// run's tokenizer unless `vocab` is given.
///
/// # Errors
/// [`TrainError::Checkpoint`] when `path` holds no committed checkpoint; the errors of
/// loading it.
pub fn load_checkpoint_model(
    path: &Path,
    device: Option<DeviceSpec>,
    vocab: Option<&Path>,
) -> Result<LoadedCheckpoint> {
    let found = checkpoint::find(path)?.ok_or_else(|| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: "holds no committed checkpoint".into(),
    })?;
    let ck = found.open(&std::env::temp_dir())?;
    let dir = PathBuf::from(&ck.source);
    let cfg = &ck.state.train_config;
    let device = resolve_device(device.unwrap_or(DeviceSpec::Auto))?;
    // The evaluation never autocasts: an amp_bf16 run's fp32 weights evaluate on a CPU too.
    let precision = Precision::resolve(cfg.precision, device).unwrap_or(Precision::Fp32);
    precision.configure(cfg.tf32)?;
    let mut model = Clip::new(&ck.state.model_config, device)?;
    model.set_parameter_kind(precision.parameter_kind());
    ck.load_model(&mut model)?;
    let vocab = vocab.map(Path::to_path_buf).or_else(|| cfg.vocab.clone());
    let tokenizer = tokenizer_for(&ck.state.model_config, vocab.as_deref())?;
    Ok(LoadedCheckpoint { dir, state: ck.state.clone(), model, tokenizer })
}
