//! The SigLIP sigmoid loss with autograd (DESIGN §3, OpenCLIP `SigLipLoss`), in the
//! all-gather form: a rank scores its own image rows against every rank's text rows, with
//! +1 labels on its own diagonal and −1 elsewhere. [`super::blockwise`] computes the same
//! loss and its gradients in tiles.
//!
//! OpenCLIP's `SigLipLoss(rank, world_size)` adds, to the own block's loss, the loss of the
//! own images against each other rank's text block with negative labels only. Whichever
//! exchange it uses (`bidir`, `shift`, `reduce`, `gather`), that sum equals this one b×N
//! loss. Summed over W ranks of b it is W times the loss of one process over N = W·b pairs.

use tch::Tensor;

use super::ContrastiveBatch;

pub use crate::model::config::{SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE};

/// The SigLIP loss of one rank: −Σ log σ(y·z) / b over z = s·I_r·Tᵀ + β, with y = +1 at
/// (i, row_offset + i) and −1 elsewhere. Only the image rows are local; `text_local` and
/// `image_all` are not used (OpenCLIP's loss is one-directional).
///
/// `logit_scale` is s = exp(θ), already exponentiated; `logit_bias` is β, as OpenCLIP
/// passes them.
///
/// # Shapes
/// features as in [`ContrastiveBatch`]; `logit_scale`, `logit_bias`: [] → [] (a sum over
/// the b×N logits divided by b).
pub fn siglip_loss(batch: &ContrastiveBatch<'_>, logit_scale: &Tensor, logit_bias: &Tensor) -> Tensor {
    let b = batch.image_local.size()[0];
    let n = batch.text_all.size()[0];
    let (kind, device) = (batch.image_local.kind(), batch.image_local.device());
    let logits = batch.image_local.matmul(&batch.text_all.tr()) * logit_scale + logit_bias;
    let labels = Tensor::full([b, n], -1.0, (kind, device));
    let _ = labels.narrow(1, batch.row_offset, b).diagonal(0, 0, 1).fill_(1.0);
    -(labels * logits).log_sigmoid().sum(kind) / b as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::test_support::{features, per_rank};
    use tch::Kind;

    /// DESIGN §3 parity target for SigLIP: Σ_r loss_r = W·L.
    #[test]
    fn siglip_rank_losses_sum_to_w_times_global() {
        tch::manual_seed(5);
        let (image, text) = (features(12, 8, Kind::Double), features(12, 8, Kind::Double));
        let (s, bias) = (Tensor::from(10.0f64), Tensor::from(-10.0f64));
        let global = siglip_loss(&ContrastiveBatch::local(&image, &text), &s, &bias).double_value(&[]);
        let w = 4;
        let sum: f64 = per_rank(&image, &text, w, |batch| siglip_loss(batch, &s, &bias).double_value(&[])).iter().sum();
        assert!((sum - w as f64 * global).abs() < 1e-5, "{sum} vs {}", w as f64 * global);
    }
}
