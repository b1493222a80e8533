//! Device selection. GPU code paths are always compiled; the device is chosen at run time.

use tch::{Cuda, Device};

use crate::error::ConfigError;

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU). Asking for
/// CUDA on a machine without it is an error, never a silent fall-back.
pub fn parse_device(spec: &str) -> Result<Device, ConfigError> {
    let allowed = "cpu, cuda, cuda:N, auto";
    let device = match spec {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(),
        "cuda" => Device::Cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Device::Cuda(n),
            None => return Err(ConfigError::invalid("device", spec, allowed)),
        },
    };
    Ok(device)
}

/// Like [`parse_device`], and also checks that a requested GPU exists.
pub fn resolve_device(spec: &str) -> Result<Device, ConfigError> {
    let device = parse_device(spec)?;
    if let Device::Cuda(n) = device {
        let count = Cuda::device_count() as usize;
        if n >= count {
            return Err(ConfigError::invalid(
                "device",
                spec,
                format!("cpu or auto: this machine has {count} CUDA device(s) visible to libtorch"),
            ));
        }
    }
    Ok(device)
}
