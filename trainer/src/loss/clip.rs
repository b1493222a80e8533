//! The CLIP InfoNCE loss with autograd (DESIGN §3): the local form of one rank and the
//! global form over N pairs. [`super::blockwise`] computes the same loss and its gradients
//! without holding the b×N logits.

use tch::{Kind, Tensor};

use super::ContrastiveBatch;

/// The symmetric CLIP InfoNCE loss, local form (OpenCLIP `ClipLoss` with
/// `local_loss=True, gather_with_grad=True`):
/// ½[CE(s·I_r·Tᵀ, labels) + CE(s·T_r·Iᵀ, labels)] with labels = row_offset + arange(b).
///
/// `logit_scale` is s = exp(θ), already exponentiated, as OpenCLIP passes it.
///
/// # Shapes
/// features as in [`ContrastiveBatch`]; `logit_scale`: [] → [] (the mean over local rows).
pub fn clip_loss(batch: &ContrastiveBatch<'_>, logit_scale: &Tensor) -> Tensor {
    let b = batch.image_local.size()[0];
    let labels =
        Tensor::arange_start(batch.row_offset, batch.row_offset + b, (Kind::Int64, batch.image_local.device()));
    let logits_per_image = batch.image_local.matmul(&batch.text_all.tr()) * logit_scale;
    let logits_per_text = batch.text_local.matmul(&batch.image_all.tr()) * logit_scale;
    (logits_per_image.cross_entropy_for_logits(&labels) + logits_per_text.cross_entropy_for_logits(&labels)) / 2.0
}

/// The global form L = ½[CE(s·I·Tᵀ) + CE(s·T·Iᵀ)] over N pairs on one device.
pub fn clip_loss_global(image: &Tensor, text: &Tensor, logit_scale: &Tensor) -> Tensor {
    clip_loss(&ContrastiveBatch::local(image, text), logit_scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::test_support::{features, per_rank};

    #[test]
    fn perfect_alignment_gives_small_loss() {
        let x = features(8, 16, Kind::Double);
        let loss = clip_loss_global(&x, &x, &Tensor::from(100.0f64)).double_value(&[]);
        assert!(loss < 1e-3, "{loss}");
    }

    #[test]
    fn local_rows_sum_to_global_loss() {
        // DESIGN §3 parity target: Σ_r loss_r = W·L (the cross-entropy runs in float32).
        tch::manual_seed(3);
        let (image, text, scale) = (features(12, 8, Kind::Double), features(12, 8, Kind::Double), Tensor::from(7.5f64));
        let global = clip_loss_global(&image, &text, &scale).double_value(&[]);
        let w = 3;
        let sum: f64 = per_rank(&image, &text, w, |batch| clip_loss(batch, &scale).double_value(&[])).iter().sum();
        assert!((sum - w as f64 * global).abs() < 1e-5, "{sum} vs {}", w as f64 * global);
    }
}
