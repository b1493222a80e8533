//! The training configuration: a TOML file whose keys the CLI flags override.
//!
//! Every key is documented in `docs/configuration.md`. Unknown keys are rejected by the
//! parser with the key named; out-of-range values are rejected by [`TrainConfig::validate`]
//! with the key and the allowed values named.

use std::path::{Path, PathBuf};

use clipfleet_dataloader::loader::DataSpec;
use clipfleet_dataloader::webdataset::CaptionSource;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result, TrainError};
use crate::model::{ClipConfig, PRESET_NAMES};
use crate::optim::{AdamWConfig, LrScheduler};

/// The contrastive loss of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Softmax cross-entropy in both directions (CLIP).
    Clip,
    /// Pairwise sigmoid with a learnable bias (SigLIP).
    Siglip,
}

/// Everything `clipfleet train` needs. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// A built-in model preset (see `PRESET_NAMES`). Ignored when `model_config` is set.
    pub model: String,
    /// An OpenCLIP model-config JSON file, instead of a preset.
    pub model_config: Option<PathBuf>,
    /// The BPE vocabulary (`bpe_simple_vocab_16e6.txt.gz`) for models with OpenCLIP's 49,408-token vocabulary.
    pub vocab: Option<PathBuf>,
    /// Pairs per worker per step (OpenCLIP's `--batch-size`).
    pub batch_size: i64,
    /// Optimizer steps to train for.
    pub steps: i64,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: i64,
    /// `cosine` or `const`.
    pub lr_scheduler: String,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Decoupled weight decay (not applied to gains, biases and the logit scale).
    pub weight_decay: f64,
    /// `auto` (amp_bf16 on CUDA, fp32 on the CPU), `amp_bf16`, `pure_bf16` or `fp32`.
    pub precision: String,
    /// Allow TF32 in cuBLAS matmuls and cuDNN convolutions (CUDA only).
    pub tf32: bool,
    /// Run AdamW as libtorch's fused kernel (`torch.optim.AdamW(fused=True)`) rather than
    /// per-parameter ops.
    pub fused_adamw: bool,
    /// Clip the global gradient norm to this value; unset means no clipping.
    pub grad_clip_norm: Option<f64>,
    /// Seed for initialisation, data order and augmentation.
    pub seed: u64,
    /// Run folder: checkpoints, the resolved config and the evaluation results go here.
    pub output: PathBuf,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: i64,
    /// Keep the newest K checkpoints (0: keep all).
    pub keep_checkpoints: usize,
    /// Evaluate every N steps (0: only at the end).
    pub eval_every: i64,
    /// Held-out samples used by the evaluation.
    pub eval_samples: i64,
    /// Log training metrics every N steps.
    pub log_every: i64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: i64,
    /// Samples per epoch. Synthetic data: default 1,000,000. Shards: default from the
    /// `sizes.json` beside them (or Parquet footers); required with `dataset_resampled`.
    pub train_num_samples: Option<u64>,
    /// Batches prepared ahead of the trainer (bounded queue).
    pub prefetch: usize,
    /// Training shards: brace patterns (`/data/shard-{000000..000099}.tar`) joined with `::`,
    /// local paths or s3://, gs://, az://, http(s):// URLs. Unset: the built-in synthetic data.
    pub train_data: Option<String>,
    /// Validation shards, read in order with the evaluation transform (retrieval and loss;
    /// zero-shot classification needs the synthetic classes). Unset: the synthetic held-out split.
    pub val_data: Option<String>,
    /// Draw shards with replacement, weighted per source (OpenCLIP's `--dataset-resampled`).
    pub dataset_resampled: bool,
    /// Per-source sampling weights joined with `::` (with `dataset_resampled`).
    pub train_data_upsampling_factors: Option<String>,
    /// Canonical data partitions (a multiple of the world size dividing the global batch).
    /// Unset: chosen from the shard count; a resumed run keeps its checkpoint's.
    pub data_partitions: Option<usize>,
    /// Samples per shuffle window of a data partition.
    pub shuffle_window: u64,
    /// Decode threads (0: the cores divided by the local world size).
    pub workers: usize,
    /// Stop the run when more than this fraction of samples is skipped as bad input.
    pub max_skip_fraction: f64,
    /// Where WebDataset captions come from: `txt`, or `json:FIELD` for a field of the `json` member.
    pub caption_key: String,
    /// The binary image column of Parquet shards.
    pub parquet_image_column: String,
    /// The caption column of Parquet shards (unset: `caption`, then `txt`).
    pub parquet_caption_column: Option<String>,
    /// Serve Prometheus metrics on this TCP port (0: any free port, logged). Unset: no exporter.
    pub metrics_port: Option<u16>,
    /// The address the exporter binds.
    pub metrics_host: String,
    /// The `job` label of every metric.
    pub job_name: String,
    /// The contrastive loss: `clip` (softmax, OpenCLIP's `ClipLoss`) or `siglip` (sigmoid,
    /// with a learnable bias; the model gets OpenCLIP's SigLIP initial scale and bias).
    pub loss: String,
    /// Micro-batches per step (OpenCLIP's `--accum-freq`): the step's loss and gradients are
    /// those of `batch_size × accum_freq × world_size` pairs, computed by gradient caching.
    pub accum_freq: i64,
    /// Rows per block of the blockwise loss: memory is about three `rows × N` fp32 matrices.
    pub loss_block_rows: i64,
    /// Gathered columns per tile of the blockwise loss (unset: all N in one tile).
    pub loss_block_cols: Option<i64>,
    /// The process group: `auto`, `nccl`, `mpi` or `single`. `auto` takes
    /// `CLIPFLEET_DIST_BACKEND` (set by `clipfleet launch`), else `single` for one worker,
    /// `nccl` on a GPU, `mpi` for CPU workers under mpirun or `srun --mpi=pmix`.
    pub dist_backend: String,
    /// Parameter gradients are all-reduced in flat buckets of this many MiB.
    pub grad_bucket_mb: usize,
    /// Every N steps, compare a checksum of the parameters across ranks and stop on a
    /// mismatch (0: never).
    pub check_params_every: i64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        let adamw = AdamWConfig::default();
        TrainConfig {
            model: "tiny".into(),
            model_config: None,
            vocab: None,
            batch_size: 128,
            steps: 1000,
            lr: 5e-4,
            warmup: 100,
            lr_scheduler: "cosine".into(),
            beta1: adamw.beta1,
            beta2: adamw.beta2,
            eps: adamw.eps,
            weight_decay: adamw.weight_decay,
            fused_adamw: true,
            precision: "auto".into(),
            tf32: true,
            grad_clip_norm: None,
            seed: 0,
            output: PathBuf::from("runs/default"),
            checkpoint_every: 500,
            keep_checkpoints: 3,
            eval_every: 0,
            eval_samples: 1000,
            log_every: 20,
            device: "auto".into(),
            threads: 0,
            train_num_samples: None,
            prefetch: 4,
            train_data: None,
            val_data: None,
            dataset_resampled: false,
            train_data_upsampling_factors: None,
            data_partitions: None,
            shuffle_window: clipfleet_dataloader::loader::DEFAULT_SHUFFLE_WINDOW,
            workers: 0,
            max_skip_fraction: clipfleet_dataloader::loader::DEFAULT_MAX_SKIP_FRACTION,
            caption_key: "txt".into(),
            parquet_image_column: "jpg".into(),
            parquet_caption_column: None,
            metrics_port: None,
            metrics_host: "0.0.0.0".into(),
            job_name: "clipfleet".into(),
            loss: "clip".into(),
            accum_freq: 1,
            loss_block_rows: 1024,
            loss_block_cols: None,
            dist_backend: "auto".into(),
            grad_bucket_mb: 64,
            check_params_every: 0,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; unknown keys are an error that names them.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), reason: e.to_string() }.into())
    }

    /// The AdamW hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            fused: self.fused_adamw,
        }
    }

    /// The parsed schedule.
    pub fn scheduler(&self) -> Result<LrScheduler, ConfigError> {
        LrScheduler::parse(&self.lr_scheduler)
    }

    /// Where WebDataset captions come from, parsed from `caption_key`.
    pub fn caption_source(&self) -> Result<CaptionSource, ConfigError> {
        match self.caption_key.as_str() {
            "txt" => Ok(CaptionSource::Txt),
            other => match other.strip_prefix("json:") {
                Some(field) if !field.is_empty() => Ok(CaptionSource::Json { field: field.to_string() }),
                _ => Err(ConfigError::invalid("caption_key", other, "txt, or json:FIELD")),
            },
        }
    }

    /// The shard-reading settings shared by training and validation data, for `urls`.
    pub fn data_spec(&self, urls: &str, local_world: usize) -> Result<DataSpec, ConfigError> {
        let mut spec = DataSpec::new(urls);
        spec.upsampling_factors = self.train_data_upsampling_factors.clone();
        spec.resampled = self.dataset_resampled;
        spec.num_samples = self.train_num_samples;
        spec.partitions = self.data_partitions;
        spec.shuffle_window = self.shuffle_window;
        spec.format.caption = self.caption_source()?;
        spec.format.parquet.columns.image = self.parquet_image_column.clone();
        spec.format.parquet.columns.caption = self.parquet_caption_column.clone();
        if self.workers > 0 {
            spec.decode_threads = self.workers;
        } else {
            spec.decode_threads = (spec.decode_threads / local_world.max(1)).max(1);
        }
        spec.prefetch_batches = self.prefetch;
        spec.max_skip_fraction = self.max_skip_fraction;
        Ok(spec)
    }

    /// The model config: the JSON file if given, else the preset; with `loss = "siglip"`, a
    /// config without a logit bias gets OpenCLIP's SigLIP initial scale and bias.
    pub fn model_config(&self) -> Result<ClipConfig> {
        let cfg = crate::model::resolve_model(Some(&self.model), self.model_config.as_deref())?;
        Ok(match self.loss_kind()? {
            LossKind::Siglip if cfg.init_logit_bias.is_none() => cfg.with_siglip_init(),
            _ => cfg,
        })
    }

    /// The parsed `loss`.
    pub fn loss_kind(&self) -> Result<LossKind, ConfigError> {
        match self.loss.as_str() {
            "clip" => Ok(LossKind::Clip),
            "siglip" => Ok(LossKind::Siglip),
            other => Err(ConfigError::invalid("loss", other, "clip, siglip")),
        }
    }

    /// The blockwise loss's tile sizes.
    pub fn loss_blocks(&self) -> crate::loss::blockwise::BlockSizes {
        crate::loss::blockwise::BlockSizes::tiles(self.loss_block_rows, self.loss_block_cols.unwrap_or(i64::MAX))
    }

    /// Pairs per worker per step: `batch_size × accum_freq`.
    pub fn local_batch(&self) -> i64 {
        self.batch_size * self.accum_freq
    }

    /// Checks every value, naming the first bad key and what it accepts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model_config.is_none() && !PRESET_NAMES.contains(&self.model.as_str()) {
            return Err(ConfigError::invalid("model", &self.model, PRESET_NAMES.join(", ")));
        }
        let at_least_one = [
            ("batch_size", self.batch_size),
            ("steps", self.steps),
            ("log_every", self.log_every),
            ("accum_freq", self.accum_freq),
            ("loss_block_rows", self.loss_block_rows),
        ];
        for (key, v) in at_least_one {
            if v < 1 {
                return Err(ConfigError::invalid(key, v, "an integer >= 1"));
            }
        }
        let non_negative = [
            ("warmup", self.warmup),
            ("checkpoint_every", self.checkpoint_every),
            ("eval_every", self.eval_every),
            ("threads", self.threads),
            ("check_params_every", self.check_params_every),
        ];
        for (key, v) in non_negative {
            if v < 0 {
                return Err(ConfigError::invalid(key, v, "an integer >= 0"));
            }
        }
        if self.eval_samples < 2 {
            return Err(ConfigError::invalid("eval_samples", self.eval_samples, "an integer >= 2"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ConfigError::invalid("lr", self.lr, "a finite number > 0"));
        }
        for (key, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(ConfigError::invalid(key, v, "a number in [0, 1)"));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(ConfigError::invalid("eps", self.eps, "a finite number > 0"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(ConfigError::invalid("weight_decay", self.weight_decay, "a finite number >= 0"));
        }
        if let Some(c) = self.grad_clip_norm {
            if !(c > 0.0 && c.is_finite()) {
                return Err(ConfigError::invalid("grad_clip_norm", c, "a finite number > 0, or unset"));
            }
        }
        self.scheduler()?;
        crate::device::parse_device(&self.device)?;
        if let Some(n) = self.train_num_samples {
            if n < self.batch_size as u64 {
                return Err(ConfigError::invalid(
                    "train_num_samples",
                    n,
                    format!("at least batch_size ({})", self.batch_size),
                ));
            }
        }
        if self.train_data.is_none() && (self.dataset_resampled || self.train_data_upsampling_factors.is_some()) {
            return Err(ConfigError::invalid(
                "train_data",
                "unset",
                "shard URLs (dataset_resampled and train_data_upsampling_factors apply to shards)",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_skip_fraction) {
            return Err(ConfigError::invalid("max_skip_fraction", self.max_skip_fraction, "a number in [0, 1]"));
        }
        if self.shuffle_window < 1 {
            return Err(ConfigError::invalid("shuffle_window", self.shuffle_window, "an integer >= 1"));
        }
        if self.data_partitions == Some(0) {
            return Err(ConfigError::invalid("data_partitions", 0, "an integer >= 1 dividing batch_size, or unset"));
        }
        self.caption_source()?;
        if self.metrics_host.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::invalid(
                "metrics_host",
                &self.metrics_host,
                "an IP address, such as 0.0.0.0 or 127.0.0.1",
            ));
        }
        if self.job_name.is_empty() {
            return Err(ConfigError::invalid("job_name", "", "a non-empty label value"));
        }
        if self.prefetch < 1 {
            return Err(ConfigError::invalid("prefetch", self.prefetch, "an integer >= 1"));
        }
        self.loss_kind()?;
        crate::precision::Precision::resolve(&self.precision, tch::Device::Cuda(0))?;
        if let Some(c) = self.loss_block_cols {
            if c < 1 {
                return Err(ConfigError::invalid("loss_block_cols", c, "an integer >= 1, or unset"));
            }
        }
        if self.dist_backend != "auto" {
            self.dist_backend
                .parse::<crate::dist::Backend>()
                .map_err(|_| ConfigError::invalid("dist_backend", &self.dist_backend, "auto, nccl, mpi, single"))?;
        }
        if self.grad_bucket_mb < 1 {
            return Err(ConfigError::invalid("grad_bucket_mb", self.grad_bucket_mb, "an integer >= 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "batch_size = 4\nlearning_rate = 0.1\n").unwrap();
        let err = TrainConfig::from_toml_file(&path).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_allowed_values() {
        let cfg = TrainConfig { lr_scheduler: "step".into(), ..Default::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("lr_scheduler") && err.contains("cosine, const"), "{err}");
        let cfg = TrainConfig { device: "tpu".into(), ..Default::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("device") && err.contains("cuda"), "{err}");
    }
}
