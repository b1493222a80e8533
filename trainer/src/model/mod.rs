//! The OpenCLIP-compatible model zoo: configs and presets, the towers and the dual encoder.

pub mod clip;
pub mod config;
pub mod flops;
pub mod lock;
pub mod text;
pub mod transformer;
pub mod vision;

pub use clip::{l2_normalize, Clip};
pub use config::{resolve_model, ClipConfig, TextConfig, VisionConfig, PRESET_NAMES};
