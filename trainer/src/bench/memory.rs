//! Peak memory of a benchmark, measured one way for every benchmark: on the CPU the
//! process's peak resident set (`VmHWM`, reset through `/proc/self/clear_refs`), on CUDA the
//! peak bytes of libtorch's caching allocator (as `torch.cuda.max_memory_allocated` after
//! `reset_peak_memory_stats`).

use tch::Device;

use crate::error::Result;

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// A window over which the peak memory of `device` is measured.
#[derive(Debug, Clone, Copy)]
pub struct PeakMemory {
    device: Device,
    /// The resident set when the window opened (CPU), to report the peak above it.
    baseline: Option<u64>,
    /// Whether the peak could be reset when the window opened.
    reset: bool,
}

impl PeakMemory {
    /// Opens the window: resets the peak of `device` to its current use.
    ///
    /// # Errors
    /// The shim's error when CUDA's statistics cannot be reset.
    pub fn start(device: Device) -> Result<Self> {
        let reset = match device {
            Device::Cuda(n) => {
                crate::shim::reset_cuda_peak_memory(n)?;
                true
            }
            _ => std::fs::write("/proc/self/clear_refs", "5").is_ok(),
        };
        Ok(PeakMemory { device, baseline: proc_status_bytes("VmRSS"), reset })
    }

    /// Resets the peak again, keeping the baseline of [`PeakMemory::start`].
    ///
    /// # Errors
    /// As [`PeakMemory::start`].
    pub fn reset_peak(&mut self) -> Result<()> {
        self.reset = Self::start(self.device)?.reset;
        Ok(())
    }

    /// The peak bytes in use since the window opened: the whole resident set on the CPU, the
    /// allocator's peak on CUDA; `None` where it cannot be measured.
    ///
    /// # Errors
    /// The shim's error when CUDA's statistics cannot be read.
    pub fn peak_bytes(&self) -> Result<Option<u64>> {
        Ok(match self.device {
            Device::Cuda(n) => Some(crate::shim::cuda_max_memory_allocated(n)?),
            _ if self.reset => proc_status_bytes("VmHWM"),
            _ => None,
        })
    }

    /// The peak bytes above what was in use when the window opened (CPU only).
    pub fn peak_extra_bytes(&self) -> Option<u64> {
        match (self.device, self.reset, self.baseline, proc_status_bytes("VmHWM")) {
            (Device::Cpu, true, Some(base), Some(peak)) => Some(peak.saturating_sub(base)),
            _ => None,
        }
    }
}

/// The CPU model from `/proc/cpuinfo` (`model name`), or `unknown`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The name of CUDA device `n` as `nvidia-smi` reports it (e.g. `NVIDIA H100 80GB HBM3`).
pub fn cuda_device_name(n: usize) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", &n.to_string()])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}
