//! The closed sets of the config (loss, precision, device, process-group backend) as types,
//! each parsed once at the edge: TOML values and CLI flags alike, with errors that name the
//! key and list what it accepts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The contrastive loss of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum LossKind {
    /// Softmax cross-entropy in both directions (CLIP, OpenCLIP's `ClipLoss`).
    Clip,
    /// Pairwise sigmoid with a learnable bias (SigLIP).
    Siglip,
    /// FILIP's token-wise late interaction: InfoNCE on the mean over tokens of each token's
    /// best match in the other modality (ViT image towers).
    Filip,
}

impl LossKind {
    /// The name, as in the config.
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Clip => "clip",
            LossKind::Siglip => "siglip",
            LossKind::Filip => "filip",
        }
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision asked for: OpenCLIP's `--precision` names, plus `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum PrecisionMode {
    /// `amp_bf16` on CUDA, `fp32` on the CPU.
    Auto,
    /// float32 weights, CUDA autocast to bfloat16.
    AmpBf16,
    /// bfloat16 weights, optimizer moments and compute.
    PureBf16,
    /// float32 everywhere.
    Fp32,
}

impl PrecisionMode {
    /// The name, as in the config.
    pub fn name(self) -> &'static str {
        match self {
            PrecisionMode::Auto => "auto",
            PrecisionMode::AmpBf16 => "amp_bf16",
            PrecisionMode::PureBf16 => "pure_bf16",
            PrecisionMode::Fp32 => "fp32",
        }
    }
}

impl fmt::Display for PrecisionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The process group asked for. Parsed case-insensitively, as configs (and the checkpoints
/// that embed them) written before it was a type spelled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case", try_from = "String")]
#[value(rename_all = "snake_case")]
pub enum BackendChoice {
    /// `CLIPFLEET_DIST_BACKEND` (set by `clipfleet launch`), else `single` for one worker,
    /// `nccl` on a GPU, `mpi` for CPU workers under mpirun or `srun --mpi=pmix`.
    Auto,
    /// NCCL, for CUDA tensors.
    Nccl,
    /// MPI, for CPU tensors.
    Mpi,
    /// CPU tensors over the TCP rendezvous, without an MPI launcher (one worker per pod).
    Tcp,
    /// One process.
    Single,
}

impl BackendChoice {
    /// The named backend, `None` for `auto`.
    pub fn backend(self) -> Option<crate::dist::Backend> {
        use crate::dist::Backend;
        match self {
            BackendChoice::Auto => None,
            BackendChoice::Nccl => Some(Backend::Nccl),
            BackendChoice::Mpi => Some(Backend::Mpi),
            BackendChoice::Tcp => Some(Backend::Tcp),
            BackendChoice::Single => Some(Backend::Single),
        }
    }
}

impl TryFrom<String> for BackendChoice {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "nccl" => Ok(BackendChoice::Nccl),
            "mpi" => Ok(BackendChoice::Mpi),
            "tcp" => Ok(BackendChoice::Tcp),
            "single" => Ok(BackendChoice::Single),
            _ => Err(ConfigError::invalid("dist_backend", s, "auto, nccl, mpi, tcp, single")),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.backend().map_or("auto", |b| b.name()))
    }
}

/// A device as written in the config: `cpu`, `cuda`, `cuda:N` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// CUDA device 0 when available, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl DeviceSpec {
    /// The accepted spellings.
    pub const ALLOWED: &'static str = "cpu, cuda, cuda:N, auto";

    /// The libtorch device: `auto` is CUDA when available. Use
    /// [`crate::device::resolve_device`] to also check that a requested GPU exists.
    pub fn device(self) -> tch::Device {
        match self {
            DeviceSpec::Auto => tch::Device::cuda_if_available(),
            DeviceSpec::Cpu => tch::Device::Cpu,
            DeviceSpec::Cuda(n) => tch::Device::Cuda(n),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => Ok(DeviceSpec::Cuda(n)),
                None => Err(ConfigError::invalid("device", s, Self::ALLOWED)),
            },
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(0) => f.write_str("cuda"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_round_trip_and_bad_ones_name_the_key() {
        for s in ["cpu", "auto", "cuda", "cuda:3"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("device") && err.contains("cuda:N"), "{err}");
    }
}
