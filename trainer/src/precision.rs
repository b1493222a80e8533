//! Numerical precision of training, as OpenCLIP's `--precision`: `amp_bf16` (fp32 weights,
//! CUDA autocast to bfloat16), `pure_bf16` (bfloat16 weights and compute) or `fp32`, with TF32
//! allowed in cuBLAS/cuDNN unless turned off. The loss and its gradients are always fp32: the
//! model's features are cast to fp32 before the loss.

use tch::{Device, Kind};

use crate::config::PrecisionMode;
use crate::error::{ConfigError, Result};
use crate::shim::{self, AutocastDtype};

/// A training precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// float32 everywhere.
    Fp32,
    /// float32 weights and optimizer; the forward pass under CUDA autocast to bfloat16.
    AmpBf16,
    /// bfloat16 weights, optimizer moments and compute.
    PureBf16,
}

impl Precision {
    /// Resolves `mode` for `device`: `auto` is `amp_bf16` on CUDA and `fp32` on the CPU;
    /// `amp_bf16` on the CPU is an error (libtorch's CPU autocast is not bound by tch).
    pub fn resolve(mode: PrecisionMode, device: Device) -> Result<Self, ConfigError> {
        let cuda = matches!(device, Device::Cuda(_));
        match mode {
            PrecisionMode::Auto if cuda => Ok(Precision::AmpBf16),
            PrecisionMode::Auto | PrecisionMode::Fp32 => Ok(Precision::Fp32),
            PrecisionMode::AmpBf16 if cuda => Ok(Precision::AmpBf16),
            PrecisionMode::AmpBf16 => Err(ConfigError::invalid(
                "precision",
                mode,
                "fp32 or pure_bf16 on the CPU (amp_bf16 is CUDA autocast), or a CUDA device",
            )),
            PrecisionMode::PureBf16 => Ok(Precision::PureBf16),
        }
    }

    /// The name, as in the config.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::AmpBf16 => "amp_bf16",
            Precision::PureBf16 => "pure_bf16",
        }
    }

    /// Process-wide settings: the autocast dtype (bfloat16 for `amp_bf16`) and TF32.
    pub fn configure(self, tf32: bool) -> Result<()> {
        if self == Precision::AmpBf16 {
            shim::set_autocast_dtype(AutocastDtype::BFloat16)?;
        }
        shim::set_tf32(tf32)
    }

    /// The dtype of the model's parameters.
    pub fn parameter_kind(self) -> Kind {
        match self {
            Precision::PureBf16 => Kind::BFloat16,
            _ => Kind::Float,
        }
    }

    /// Runs a forward pass `f` in this precision (under autocast for `amp_bf16`).
    pub fn forward<T>(self, f: impl FnOnce() -> T) -> T {
        match self {
            Precision::AmpBf16 => tch::autocast(true, f),
            _ => f(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_resolve_per_device() {
        let (cpu, gpu) = (Device::Cpu, Device::Cuda(0));
        assert_eq!(Precision::resolve(PrecisionMode::Auto, cpu).unwrap(), Precision::Fp32);
        assert_eq!(Precision::resolve(PrecisionMode::Auto, gpu).unwrap(), Precision::AmpBf16);
        assert_eq!(Precision::resolve(PrecisionMode::PureBf16, cpu).unwrap(), Precision::PureBf16);
        let msg = Precision::resolve(PrecisionMode::AmpBf16, cpu).unwrap_err().to_string();
        assert!(msg.contains("precision") && msg.contains("CUDA"), "{msg}");
    }

    #[test]
    fn configure_sets_the_autocast_dtype_and_tf32() {
        Precision::AmpBf16.configure(false).unwrap();
        assert_eq!(shim::autocast_dtype(), Some(AutocastDtype::BFloat16));
        assert!(!shim::tf32());
        Precision::Fp32.configure(true).unwrap();
        assert!(shim::tf32());
    }
}
