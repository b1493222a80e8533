//! Contrastive losses (DESIGN §3): CLIP's InfoNCE ([`clip`]) and SigLIP's sigmoid loss
//! ([`siglip`]) with autograd, and both again with exact analytic gradients in tiles of
//! bounded memory ([`blockwise`]) for the gather and for gradient caching.
//!
//! The API takes local rows and global columns, so that gathered features plug in
//! unchanged: a rank holding `b` local pairs scores them against all `N` gathered pairs,
//! and its labels start at `row_offset = rank * b`. On one process the local and the
//! global features are the same tensors and the offset is 0.

pub mod blockwise;
pub mod clip;
pub mod filip;
pub mod siglip;
#[cfg(test)]
pub(crate) mod test_support;

pub use blockwise::{clip_loss_blockwise, siglip_loss_blockwise, BlockSizes, LossGradients};
pub use clip::{clip_loss, clip_loss_global};
pub use siglip::{siglip_loss, SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE};

use tch::Tensor;

/// The features a loss needs: this rank's rows and everyone's columns.
#[derive(Debug)]
pub struct ContrastiveBatch<'a> {
    /// This rank's L2-normalised image features, [b, d].
    pub image_local: &'a Tensor,
    /// This rank's L2-normalised text features, [b, d].
    pub text_local: &'a Tensor,
    /// All ranks' image features, [N, d] (may be `image_local` itself).
    pub image_all: &'a Tensor,
    /// All ranks' text features, [N, d].
    pub text_all: &'a Tensor,
    /// Index in `0..N` of this rank's first row.
    pub row_offset: i64,
}

impl<'a> ContrastiveBatch<'a> {
    /// A batch where every pair is local (one process).
    pub fn local(image: &'a Tensor, text: &'a Tensor) -> Self {
        ContrastiveBatch { image_local: image, text_local: text, image_all: image, text_all: text, row_offset: 0 }
    }
}
