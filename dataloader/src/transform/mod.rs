//! Image transforms with the semantics of OpenCLIP's preprocessing.
//!
//! OpenCLIP trains with torchvision's `RandomResizedCrop(size, scale=(0.9, 1.0),
//! interpolation=BICUBIC)` and evaluates with `Resize(size, BICUBIC)` followed
//! by `CenterCrop(size)`, both on PIL images. The resampler here follows
//! Pillow's `ImagingResample` (separable bicubic, a = −0.5, support widened by
//! the scale factor when downscaling, 22-bit fixed-point weights, a uint8
//! intermediate between the horizontal and the vertical pass) and gives Pillow's
//! pixels bit for bit; its inner loops are vectorised (AVX2 where the CPU has it),
//! which changes no result (`kernels`).

mod crop;
mod kernels;
mod resample;

pub use crop::{resize_short_side_center_crop, RandomResizedCrop};
pub use resample::{resize_bicubic, resize_box_bicubic};
