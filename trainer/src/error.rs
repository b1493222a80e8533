//! The trainer's error type. Every variant carries the context a user needs to act:
//! the file, the config key and its allowed values, the checkpoint and the step.

use std::path::PathBuf;

use thiserror::Error;

/// A configuration problem, naming the key and what it accepts.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A key has a value outside its allowed set.
    #[error("invalid value {value} for `{key}`: allowed {allowed}")]
    Invalid {
        /// The config key, e.g. `lr_scheduler` or `vision_cfg.width`.
        key: String,
        /// The offending value, as written.
        value: String,
        /// What the key accepts.
        allowed: String,
    },
    /// A config file could not be parsed (unknown keys land here, named by the parser).
    #[error("cannot parse config {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        reason: String,
    },
}

impl ConfigError {
    /// Builds [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, value: impl std::fmt::Display, allowed: impl Into<String>) -> Self {
        let value = value.to_string();
        ConfigError::Invalid { key: key.into(), value: format!("{value:?}"), allowed: allowed.into() }
    }
}

/// Everything that can go wrong in the trainer.
#[derive(Debug, Error)]
pub enum TrainError {
    /// See [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A checkpoint is missing, incomplete or corrupt.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint folder (or the run folder when none was found).
        path: PathBuf,
        /// What is wrong and, where possible, what to do.
        reason: String,
    },
    /// A weights file does not fit the model.
    #[error("weights {path}: {reason}")]
    Weights {
        /// The safetensors file.
        path: PathBuf,
        /// Missing, unexpected or mis-shaped tensors.
        reason: String,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] clipfleet_dataloader::DataError),
    /// The shard loader ended before the run's last step.
    #[error("the training data ended before the last step (set train_num_samples, or use dataset_resampled)")]
    DataEnded,
    /// A batch does not split into the parts the step needs.
    #[error("a batch of {batch} pairs does not split into {parts} {what}")]
    BatchSplit {
        /// Pairs in the batch.
        batch: i64,
        /// Parts asked for.
        parts: i64,
        /// What the parts are, e.g. `micro-batches (accum_freq)`.
        what: &'static str,
    },
    /// The SigLIP loss needs the model's learnable logit bias.
    #[error("the SigLIP loss needs a model with a logit bias: set init_logit_bias in the model config, or train with loss = \"siglip\" from the start")]
    MissingLogitBias,
    /// A parameter got no gradient from a step that should reach every parameter.
    #[error("parameter {parameter} got no gradient")]
    MissingGradient {
        /// The parameter's name (OpenCLIP's state-dict key).
        parameter: String,
    },
    /// The validation data holds too few pairs to evaluate.
    #[error("the validation data holds {pairs} usable pair(s); evaluation needs 2 or more (check val_data and eval_samples)")]
    TooFewEvalPairs {
        /// Pairs found.
        pairs: i64,
    },
    /// The workers' parameters have drifted apart (`check_params_every`).
    #[error("the parameters differ across ranks at step {step}: rank {rank} has checksums ({mine:?}), rank 0 ({rank0:?}); the workers no longer train the same model")]
    ParametersDiffer {
        /// The optimizer step.
        step: i64,
        /// The first rank that differs from rank 0.
        rank: usize,
        /// Its (sum, sum of squares).
        mine: (f64, f64),
        /// Rank 0's.
        rank0: (f64, f64),
    },
    /// The workers found different checkpoints to resume from.
    #[error("the workers disagree on where to resume: rank {rank} found {found}, rank 0 {rank0}; every worker reads --output, so it must be a folder that all nodes see (a shared filesystem)")]
    ResumeMismatch {
        /// The first rank that differs from rank 0.
        rank: usize,
        /// What it found.
        found: String,
        /// What rank 0 found.
        rank0: String,
    },
    /// A value could not be written or read as JSON.
    #[error("{what}: {source}")]
    Json {
        /// What was being written or read.
        what: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// The `fail-on-rank-R:N` test fault fired.
    #[error("injected fault: rank {rank} fails at step {step}")]
    InjectedFault {
        /// The failing rank.
        rank: usize,
        /// The step it fails at.
        step: i64,
    },
    /// The Prometheus exporter could not be set up or could not listen.
    #[error("metrics exporter: {0}")]
    Metrics(String),
    /// The distributed setup or a collective failed.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    /// Training diverged: some rank's loss or the gradient stayed NaN or infinite (every
    /// rank stops).
    #[error("the loss or gradient is not finite at step {step} on at least one rank (this rank's loss: {loss}): {why}; lower lr, set grad_clip_norm, or resume from an earlier checkpoint")]
    NonFiniteLoss {
        /// The optimizer step.
        step: i64,
        /// The value read back.
        loss: f64,
        /// Why the run stops rather than skip the step.
        why: String,
    },
}

/// Result alias for the trainer.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
