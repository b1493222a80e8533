//! The OpenCLIP-compatible model zoo: configs and presets, the towers and the dual encoder.

pub mod clip;
pub mod coca;
pub mod config;
pub mod flops;
pub mod lock;
pub mod resnet;
pub mod text;
pub mod transformer;
pub mod vision;

pub use clip::{l2_normalize, Checkpoints, Clip, ModeGuard, Pretrained, SampleKeys};
pub use config::{resolve_model, ClipConfig, TextConfig, VisionConfig, VisionLayers, PRESET_NAMES};
