//! The clipfleet trainer: an OpenCLIP-compatible CLIP in libtorch (through `tch`), its
//! contrastive losses, AdamW with OpenCLIP's defaults, crash-consistent checkpoints,
//! evaluation and the training loop.
//!
//! Every tensor path runs on the CPU; CUDA is chosen at run time through `device`.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod embed;
pub mod error;
pub mod eval;
pub mod fault;
pub mod loss;
pub mod metrics;
pub mod mim;
pub mod model;
pub mod optim;
pub mod precision;
pub mod run;
pub mod shim;
pub mod step;
pub mod tensorboard;

pub use config::TrainConfig;
pub use error::{ConfigError, Result, TrainError};
