//! Device selection. GPU code paths are always compiled; the device is chosen at run time.

use tch::{Cuda, Device};

use crate::config::DeviceSpec;
use crate::error::ConfigError;

/// The libtorch device of `spec` (`auto`: CUDA when available, else the CPU), checking that
/// a requested GPU exists: asking for CUDA on a machine without it is an error, never a
/// silent fall-back.
pub fn resolve_device(spec: DeviceSpec) -> Result<Device, ConfigError> {
    let device = spec.device();
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
