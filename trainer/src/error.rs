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
    /// The data pipeline's worker stopped or could not start.
    #[error("data pipeline: {0}")]
    Pipeline(String),
    /// The Prometheus exporter could not be set up or could not listen.
    #[error("metrics exporter: {0}")]
    Metrics(String),
    /// The distributed setup or a collective failed.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    /// Training diverged.
    #[error("loss is not finite at step {step}: {loss}")]
    NonFiniteLoss {
        /// The optimizer step.
        step: i64,
        /// The value read back.
        loss: f64,
    },
}

/// Result alias for the trainer.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
