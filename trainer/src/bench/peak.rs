//! The peak FLOP/s of a device in a precision, for MFU figures, with where each number
//! comes from. Dense tensor-core peaks from NVIDIA's datasheets; the matmuls of `fp32` with
//! TF32 allowed run at the TF32 peak.

use tch::Device;

use crate::precision::Precision;

/// A peak FLOP/s and its source.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakFlops {
    /// TFLOP/s.
    pub tflops: f64,
    /// Where the figure comes from.
    pub source: String,
}

/// (name fragment, bf16 dense, tf32 dense, fp32 non-tensor) TFLOP/s, from NVIDIA's datasheets.
const CARDS: [(&str, f64, f64, f64); 5] = [
    ("H200", 989.0, 494.5, 66.9),
    ("H100 PCIe", 756.0, 378.0, 51.2),
    ("H100", 989.0, 494.5, 66.9),
    ("A100", 312.0, 156.0, 19.5),
    ("L40S", 362.0, 183.0, 91.6),
];

/// The peak of `device` (named `device_name`) in `precision`; `None` on the CPU and for
/// cards not in the table (pass `--peak-tflops` there).
pub fn peak_tflops(device: Device, device_name: &str, precision: Precision, tf32: bool) -> Option<PeakFlops> {
    if !matches!(device, Device::Cuda(_)) {
        return None;
    }
    let (card, bf16, tf32_peak, fp32) = CARDS.iter().find(|(fragment, ..)| device_name.contains(fragment))?;
    let (tflops, kind) = match precision {
        Precision::AmpBf16 | Precision::PureBf16 => (*bf16, "dense BF16 tensor core"),
        Precision::Fp32 if tf32 => (*tf32_peak, "dense TF32 tensor core"),
        Precision::Fp32 => (*fp32, "FP32 (no tensor core)"),
    };
    Some(PeakFlops { tflops, source: format!("NVIDIA {card} datasheet, {kind}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_follow_the_card_and_the_precision() {
        let gpu = Device::Cuda(0);
        let h100 = peak_tflops(gpu, "NVIDIA H100 80GB HBM3", Precision::AmpBf16, true).unwrap();
        assert_eq!(h100.tflops, 989.0);
        assert!(h100.source.contains("H100") && h100.source.contains("BF16"), "{}", h100.source);
        assert_eq!(peak_tflops(gpu, "NVIDIA H100 PCIe", Precision::AmpBf16, true).unwrap().tflops, 756.0);
        assert_eq!(peak_tflops(gpu, "NVIDIA H200", Precision::Fp32, true).unwrap().tflops, 494.5);
        assert_eq!(peak_tflops(gpu, "NVIDIA H200", Precision::Fp32, false).unwrap().tflops, 66.9);
        assert!(peak_tflops(Device::Cpu, "NVIDIA H100", Precision::Fp32, true).is_none());
        assert!(peak_tflops(gpu, "Some other card", Precision::AmpBf16, true).is_none());
    }
}
