//! The training configuration: a TOML file whose keys the CLI flags override.
//!
//! Every key is documented in `docs/configuration.md`. Unknown keys are rejected by the
//! parser with the key named; out-of-range values are rejected by [`TrainConfig::validate`]
//! with the key and the allowed values named.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result, TrainError};
use crate::model::{ClipConfig, PRESET_NAMES};
use crate::optim::{AdamWConfig, LrScheduler};

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
    /// Samples in one epoch of the synthetic training split.
    pub train_num_samples: u64,
    /// Synthetic batches prepared ahead of the trainer (bounded queue).
    pub prefetch: usize,
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
            train_num_samples: 1_000_000,
            prefetch: 4,
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
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay }
    }

    /// The parsed schedule.
    pub fn scheduler(&self) -> Result<LrScheduler, ConfigError> {
        LrScheduler::parse(&self.lr_scheduler)
    }

    /// The model config: the JSON file if given, else the preset.
    pub fn model_config(&self) -> Result<ClipConfig> {
        crate::model::resolve_model(Some(&self.model), self.model_config.as_deref())
    }

    /// Checks every value, naming the first bad key and what it accepts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model_config.is_none() && !PRESET_NAMES.contains(&self.model.as_str()) {
            return Err(ConfigError::invalid("model", &self.model, PRESET_NAMES.join(", ")));
        }
        let at_least_one = [("batch_size", self.batch_size), ("steps", self.steps), ("log_every", self.log_every)];
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
        if self.train_num_samples < self.batch_size as u64 {
            return Err(ConfigError::invalid(
                "train_num_samples",
                self.train_num_samples,
                format!("at least batch_size ({})", self.batch_size),
            ));
        }
        if self.prefetch < 1 {
            return Err(ConfigError::invalid("prefetch", self.prefetch, "an integer >= 1"));
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
