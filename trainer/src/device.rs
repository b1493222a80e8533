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

/// The UUID of CUDA device `ordinal` as `nvidia-smi -L` and the DCGM exporter print it
/// (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`), from the CUDA driver (loaded at run time);
/// `None` without a driver or such a device. The ordinal counts the devices this process
/// sees, after `CUDA_VISIBLE_DEVICES`, as libtorch's do.
pub fn gpu_uuid(ordinal: usize) -> Option<String> {
    use cudarc::driver::result as cu;
    // SAFETY: dlopen of the CUDA driver by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    cu::init().ok()?;
    let dev = cu::device::get(i32::try_from(ordinal).ok()?).ok()?;
    let uuid = cu::device::get_uuid(dev).ok()?;
    Some(format_gpu_uuid(&uuid.bytes.map(|b| b as u8)))
}

/// `GPU-` and the 16 bytes in groups of 4-2-2-2-6, lower-case hex.
fn format_gpu_uuid(bytes: &[u8; 16]) -> String {
    let hex = |range: std::ops::Range<usize>| bytes[range].iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

/// This machine's host name (the pod name on Kubernetes), or `unknown`.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match (rc, std::str::from_utf8(&buf[..end])) {
        (0, Ok(name)) if !name.is_empty() => name.to_owned(),
        _ => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_uuids_read_like_nvidia_smi_and_the_host_name_is_the_kernels() {
        let bytes = [0x5f, 0xd4, 0xc2, 0xb1, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5];
        assert_eq!(format_gpu_uuid(&bytes), "GPU-5fd4c2b1-0a1b-2c3d-4e5f-60718293a4b5");
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        if !kernel.trim().is_empty() {
            assert_eq!(host_name(), kernel.trim());
        }
        // No CUDA driver on a CPU machine: no UUID, and no error.
        if !tch::Cuda::is_available() {
            assert_eq!(gpu_uuid(0), None);
        }
    }
}
