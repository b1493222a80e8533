//! Image transforms with the semantics of OpenCLIP's preprocessing.
//!
//! OpenCLIP trains with torchvision's `RandomResizedCrop(size, scale=(0.9, 1.0),
//! interpolation=BICUBIC)` and evaluates with `Resize(size, BICUBIC)` followed
//! by `CenterCrop(size)`, both on PIL images. The resampler here follows
//! Pillow's `ImagingResample` (separable bicubic, a = −0.5, support widened by
//! the scale factor when downscaling, 22-bit fixed-point weights, a uint8
//! intermediate between the horizontal and the vertical pass), so that it
//! agrees with Pillow to within rounding of the coefficients.

mod crop;
mod resample;

pub use crop::{resize_short_side_center_crop, RandomResizedCrop};
pub use resample::{resize_bicubic, resize_box_bicubic};
