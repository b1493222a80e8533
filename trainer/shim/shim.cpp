// The few libtorch entry points that tch 0.24 does not bind (DESIGN §2), behind a C ABI:
// the autocast dtype, the TF32 switches, the fused AdamW kernel and the CUDA allocator's
// peak-memory statistics.
//
// Tensors arrive as tch's `C_tensor` pointers, which are `at::Tensor*`. Every function catches
// C++ exceptions and returns them as a message (NUL-terminated, truncated to `err_len`),
// so nothing unwinds into Rust.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/_fused_adamw.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstring>
#include <exception>
#include <vector>

namespace {

int fail(const char* what, char* err, size_t err_len) {
  if (err != nullptr && err_len > 0) {
    std::strncpy(err, what, err_len - 1);
    err[err_len - 1] = '\0';
  }
  return 1;
}

std::vector<at::Tensor> tensors(at::Tensor* const* ptrs, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ptrs[i]);
  return out;
}

}  // namespace

extern "C" {

// CUDA autocast's dtype: 0 float16 (libtorch's default), 1 bfloat16.
int clipfleet_set_autocast_dtype(int dtype, char* err, size_t err_len) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, dtype == 1 ? at::kBFloat16 : at::kHalf);
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, err_len);
  }
}

// The current CUDA autocast dtype: 0 float16, 1 bfloat16, -1 other.
int clipfleet_get_autocast_dtype() {
  auto t = at::autocast::get_autocast_dtype(at::kCUDA);
  return t == at::kBFloat16 ? 1 : (t == at::kHalf ? 0 : -1);
}

// TF32 in cuBLAS matmuls and cuDNN convolutions (torch.backends.*.allow_tf32).
int clipfleet_set_tf32(int enabled, char* err, size_t err_len) {
  try {
    at::globalContext().setAllowTF32CuBLAS(enabled != 0);
    at::globalContext().setAllowTF32CuDNN(enabled != 0);
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, err_len);
  }
}

int clipfleet_get_tf32() { return at::globalContext().allowTF32CuBLAS() ? 1 : 0; }

// One fused AdamW update (torch.optim.AdamW(fused=True)) of `n` parameters, in place:
// params, exp_avgs and exp_avg_sqs are updated; grads and the per-parameter float step
// counters (already incremented for this step, as torch.optim.AdamW does) are read.
int clipfleet_fused_adamw(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                          at::Tensor* const* exp_avg_sqs, at::Tensor* const* steps, size_t n, double lr,
                          double beta1, double beta2, double weight_decay, double eps, char* err,
                          size_t err_len) {
  try {
    at::NoGradGuard no_grad;
    auto p = tensors(params, n), g = tensors(grads, n), m = tensors(exp_avgs, n), v = tensors(exp_avg_sqs, n),
         s = tensors(steps, n);
    at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false);
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, err_len);
  }
}

// Peak bytes allocated by libtorch's CUDA caching allocator on `device` since the last reset
// (torch.cuda.max_memory_allocated), or -1 with a message when there is no CUDA allocator.
int64_t clipfleet_cuda_max_memory_allocated(int device, char* err, size_t err_len) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  } catch (const std::exception& e) {
    fail(e.what(), err, err_len);
    return -1;
  }
}

// The bytes libtorch's CUDA caching allocator has allocated to tensors and reserved from the
// device on `device` now (torch.cuda.memory_allocated / memory_reserved); 0 on success, else
// nonzero with a message.
int clipfleet_cuda_memory(int device, int64_t* allocated, int64_t* reserved, char* err, size_t err_len) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *reserved = stats.reserved_bytes[all].current;
    return 0;
  } catch (const std::exception& e) {
    fail(e.what(), err, err_len);
    return 1;
  }
}

// torch.cuda.reset_peak_memory_stats(device).
int clipfleet_cuda_reset_peak_memory(int device, char* err, size_t err_len) {
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, err_len);
  }
}

}  // extern "C"
