//! Safe wrappers over the C++ shim (`trainer/shim/shim.cpp`): what tch 0.24 does not bind
//! (DESIGN §2) — the CUDA autocast dtype, the TF32 switches, libtorch's fused AdamW kernel and
//! the CUDA allocator's peak memory.

use std::ffi::{c_char, c_int, CStr};

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Result, TrainError};

extern "C" {
    fn clipfleet_set_autocast_dtype(dtype: c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn clipfleet_get_autocast_dtype() -> c_int;
    fn clipfleet_set_tf32(enabled: c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn clipfleet_get_tf32() -> c_int;
    fn clipfleet_cuda_max_memory_allocated(device: c_int, err: *mut c_char, err_len: usize) -> i64;
    fn clipfleet_cuda_reset_peak_memory(device: c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn clipfleet_cuda_memory(
        device: c_int,
        allocated: *mut i64,
        reserved: *mut i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn clipfleet_fused_adamw(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Runs a shim call that reports failure as a message.
fn checked(what: &str, call: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut buf = [0 as c_char; 1024];
    if call(buf.as_mut_ptr(), buf.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim NUL-terminates the message within the buffer.
    let message = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    Err(TrainError::Torch(tch::TchError::Torch(format!("{what}: {message}"))))
}

/// The dtype CUDA autocast computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDtype {
    /// float16, libtorch's default.
    Float16,
    /// bfloat16, OpenCLIP's `amp_bf16`.
    BFloat16,
}

/// Sets the dtype of CUDA autocast (`tch::autocast`) for the whole process.
pub fn set_autocast_dtype(dtype: AutocastDtype) -> Result<()> {
    let code = match dtype {
        AutocastDtype::Float16 => 0,
        AutocastDtype::BFloat16 => 1,
    };
    // SAFETY: plain C call with a valid buffer.
    checked("set_autocast_dtype", |err, len| unsafe { clipfleet_set_autocast_dtype(code, err, len) })
}

/// The dtype of CUDA autocast (`None` for one other than float16 and bfloat16).
pub fn autocast_dtype() -> Option<AutocastDtype> {
    // SAFETY: plain C call.
    match unsafe { clipfleet_get_autocast_dtype() } {
        0 => Some(AutocastDtype::Float16),
        1 => Some(AutocastDtype::BFloat16),
        _ => None,
    }
}

/// Allows TF32 in cuBLAS matmuls and cuDNN convolutions (`torch.backends.cuda.matmul.allow_tf32`
/// and `torch.backends.cudnn.allow_tf32`).
pub fn set_tf32(enabled: bool) -> Result<()> {
    // SAFETY: plain C call with a valid buffer.
    checked("set_tf32", |err, len| unsafe { clipfleet_set_tf32(enabled as c_int, err, len) })
}

/// Whether TF32 is allowed in cuBLAS matmuls.
pub fn tf32() -> bool {
    // SAFETY: plain C call.
    unsafe { clipfleet_get_tf32() != 0 }
}

/// Peak bytes allocated by libtorch's CUDA caching allocator on `device` since the last
/// [`reset_cuda_peak_memory`] (`torch.cuda.max_memory_allocated`).
pub fn cuda_max_memory_allocated(device: usize) -> Result<u64> {
    let mut peak = -1i64;
    // SAFETY: plain C call with a valid buffer.
    checked("cuda_max_memory_allocated", |err, len| {
        peak = unsafe { clipfleet_cuda_max_memory_allocated(device as c_int, err, len) };
        if peak < 0 {
            1
        } else {
            0
        }
    })?;
    Ok(peak as u64)
}

/// The bytes libtorch's CUDA caching allocator has allocated to tensors and reserved on
/// `device` now (`torch.cuda.memory_allocated`, `torch.cuda.memory_reserved`).
pub fn cuda_memory(device: usize) -> Result<(u64, u64)> {
    let (mut allocated, mut reserved) = (0i64, 0i64);
    // SAFETY: plain C call with valid out-pointers and buffer.
    checked("cuda_memory", |err, len| unsafe {
        clipfleet_cuda_memory(device as c_int, &mut allocated, &mut reserved, err, len)
    })?;
    Ok((allocated.max(0) as u64, reserved.max(0) as u64))
}

/// Resets the CUDA allocator's peak statistics on `device` (`torch.cuda.reset_peak_memory_stats`).
pub fn reset_cuda_peak_memory(device: usize) -> Result<()> {
    // SAFETY: plain C call with a valid buffer.
    checked("reset_cuda_peak_memory", |err, len| unsafe { clipfleet_cuda_reset_peak_memory(device as c_int, err, len) })
}

/// The tensors of one fused AdamW call, index-aligned.
#[derive(Debug, Default)]
pub struct FusedAdamWGroup<'a> {
    /// Parameters, updated in place.
    pub params: Vec<&'a Tensor>,
    /// Their gradients, read.
    pub grads: Vec<Tensor>,
    /// First moments, updated in place.
    pub exp_avgs: Vec<&'a Tensor>,
    /// Second moments, updated in place.
    pub exp_avg_sqs: Vec<&'a Tensor>,
    /// Float step counters, one per parameter, already incremented for this step (the
    /// kernel reads them for the bias corrections, as `torch.optim.AdamW` arranges).
    pub steps: Vec<&'a Tensor>,
}

/// One step of libtorch's fused AdamW (`torch.optim.AdamW(fused=True)`) over `group`.
pub fn fused_adamw(
    group: &FusedAdamWGroup<'_>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    eps: f64,
) -> Result<()> {
    let n = group.params.len();
    let lists = [group.grads.len(), group.exp_avgs.len(), group.exp_avg_sqs.len(), group.steps.len()];
    if lists.iter().any(|&l| l != n) {
        return Err(TrainError::Torch(tch::TchError::Torch(format!(
            "fused_adamw: lists of different lengths ({n} and {lists:?})"
        ))));
    }
    if n == 0 {
        return Ok(());
    }
    let ptrs = |ts: &[&Tensor]| ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect::<Vec<_>>();
    let grads: Vec<&Tensor> = group.grads.iter().collect();
    let (p, g, m, v, s) =
        (ptrs(&group.params), ptrs(&grads), ptrs(&group.exp_avgs), ptrs(&group.exp_avg_sqs), ptrs(&group.steps));
    // SAFETY: every pointer is a live tch tensor (an `at::Tensor*`) borrowed for the call; the
    // kernel updates the tensors' storage in place and keeps no reference.
    checked("fused_adamw", |err, len| unsafe {
        clipfleet_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
            err,
            len,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a GPU the peak follows an allocation; without one the call reports an error (or
    /// zeros) instead of crashing the process.
    #[test]
    fn cuda_peak_memory_is_safe_to_ask_for() {
        if tch::Cuda::device_count() == 0 {
            let _ = reset_cuda_peak_memory(0);
            let _ = cuda_max_memory_allocated(0);
            return;
        }
        reset_cuda_peak_memory(0).unwrap();
        let t = Tensor::zeros([64 << 20], (tch::Kind::Uint8, tch::Device::Cuda(0)));
        assert!(cuda_max_memory_allocated(0).unwrap() >= 64 << 20);
        drop(t);
    }
}
