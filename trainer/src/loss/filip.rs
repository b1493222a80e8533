//! FILIP's token-wise late-interaction loss (Yao et al., 2021), over the gathered batch with
//! exact gradients and bounded memory.
//!
//! Each image i has patch tokens x_ik and each text j has tokens y_jr (padding masked out),
//! all L2-normalised in the shared embedding space. The image-to-text similarity is the mean
//! over image tokens of their best text token, and the text-to-image similarity the mean
//! over text tokens of their best image token:
//!
//! s^I_ij = (1/|i|) Σ_k max_r ⟨x_ik, y_jr⟩,   s^T_ij = (1/|j|) Σ_r max_k ⟨x_ik, y_jr⟩.
//!
//! The loss is CLIP's InfoNCE on them: ½[CE(s·S^I) + CE(s·(S^T)ᵀ)], rows of the first the
//! images, of the second the texts. In the local form on rank r (b local pairs of N):
//! image→text over rows (local images × all texts), text→image over rows (local texts × all
//! images), labels r·b + arange(b), so that Σ_r loss_r = W·L as for CLIP (DESIGN §3).
//!
//! Memory: the token similarities of a tile of pairs are `pairs × L_i × L_t` values; the
//! whole b × N × L_i × L_t tensor is never held. Pass 1 scores the tiles without a graph and
//! gives the b × N score matrices, hence the loss and ∂loss/∂S analytically (softmax −
//! one-hot). Pass 2 re-scores each tile with autograd on the tile's tokens and
//! back-propagates ∂loss/∂S into them, accumulating the gathered token gradients.

use tch::{Kind, Tensor};

use super::blockwise::{BlockSizes, LossGradients};
use super::ContrastiveBatch;
use crate::error::{ConfigError, Result};

/// Fills masked-out similarities before a max: below any cosine similarity.
const MASKED: f64 = -1e4;

/// Bytes of token similarities one tile may hold (with the copies of the masked max and,
/// in pass 2, autograd's saved tensors: about four tiles' worth).
pub const FILIP_TILE_BYTES: i64 = 64 << 20;

/// Token features of some samples: `tokens` [n, L, d] L2-normalised, `mask` [n, L] (1 for a
/// real token, 0 for padding).
#[derive(Debug, Clone, Copy)]
pub struct TokenSet<'a> {
    /// [n, L, d].
    pub tokens: &'a Tensor,
    /// [n, L], 0 or 1.
    pub mask: &'a Tensor,
}

impl TokenSet<'_> {
    fn narrow(&self, start: i64, len: i64) -> (Tensor, Tensor) {
        (self.tokens.narrow(0, start, len), self.mask.narrow(0, start, len))
    }
}

/// FILIP's two similarities for every (image, text) pair: (S^I, S^T), each [n_images,
/// n_texts], differentiable through the tokens.
pub fn pair_scores(images: TokenSet<'_>, texts: TokenSet<'_>) -> (Tensor, Tensor) {
    let (ni, li, d) = images.tokens.size3().expect("image tokens are [n, L, d]");
    let (nt, lt, _) = texts.tokens.size3().expect("text tokens are [n, L, d]");
    let sim =
        images.tokens.reshape([ni * li, d]).matmul(&texts.tokens.reshape([nt * lt, d]).tr()).view([ni, li, nt, lt]);
    let im = images.mask.to_kind(sim.kind());
    let tm = texts.mask.to_kind(sim.kind());
    // Each image token's best real text token, averaged over the image's real tokens.
    let best_text = sim.masked_fill(&tm.eq(0.0).view([1, 1, nt, lt]), MASKED).amax([3i64].as_slice(), false);
    let s_image = (best_text * im.view([ni, li, 1])).sum_dim_intlist([1i64].as_slice(), false, sim.kind())
        / im.sum_dim_intlist([1i64].as_slice(), false, sim.kind()).view([ni, 1]);
    // Each text token's best real image token, averaged over the text's real tokens.
    let best_image = sim.masked_fill(&im.eq(0.0).view([ni, li, 1, 1]), MASKED).amax([1i64].as_slice(), false);
    let s_text = (best_image * tm.view([1, nt, lt])).sum_dim_intlist([2i64].as_slice(), false, sim.kind())
        / tm.sum_dim_intlist([1i64].as_slice(), false, sim.kind()).view([1, nt]);
    (s_image, s_text)
}

/// How a FILIP step lays token features out in the rows it gathers: images as [n, L_i·d],
/// texts as [n, L_t·d + L_t] (the tokens, then the mask), so that the step's all-gather and
/// reduce-scatter of [n, ·] rows carry them unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilipLayout {
    /// Embedding width d.
    pub dim: i64,
    /// Text positions L_t (the context length: every rank pads to it).
    pub text_tokens: i64,
}

impl FilipLayout {
    /// Image tokens [n, L_i, d] and an all-ones mask from gathered rows.
    pub fn images(&self, rows: &Tensor) -> (Tensor, Tensor) {
        let n = rows.size()[0];
        let tokens = rows.view([n, -1, self.dim]);
        let mask = Tensor::ones([n, tokens.size()[1]], (rows.kind(), rows.device()));
        (tokens, mask)
    }

    /// Text tokens [n, L_t, d] and their mask [n, L_t] from gathered rows.
    pub fn texts(&self, rows: &Tensor) -> (Tensor, Tensor) {
        let n = rows.size()[0];
        let width = self.text_tokens * self.dim;
        (rows.narrow(1, 0, width).view([n, self.text_tokens, self.dim]), rows.narrow(1, width, self.text_tokens))
    }

    /// Text rows from tokens [n, L, d] (L ≤ L_t, padded with masked zeros) and mask [n, L].
    pub fn text_rows(&self, tokens: &Tensor, mask: &Tensor) -> Tensor {
        let (n, l, d) = tokens.size3().expect("text tokens are [n, L, d]");
        let pad = self.text_tokens - l;
        let (tokens, mask) = if pad > 0 {
            let zeros = Tensor::zeros([n, pad, d], (tokens.kind(), tokens.device()));
            let mask_zeros = Tensor::zeros([n, pad], (mask.kind(), mask.device()));
            (Tensor::cat(&[tokens, &zeros], 1), Tensor::cat(&[mask, &mask_zeros], 1))
        } else {
            (tokens.shallow_clone(), mask.shallow_clone())
        };
        Tensor::cat(&[tokens.reshape([n, -1]), mask.to_kind(tokens.kind())], 1)
    }
}

/// Tile sides for `pairs_per_tile` pairs: rows up to `blocks.rows` (and b), columns filling
/// the rest up to `blocks.cols` (and N).
fn tile(blocks: BlockSizes, b: i64, n: i64, image_tokens: i64, text_tokens: i64) -> (i64, i64) {
    let pairs = (FILIP_TILE_BYTES / (4 * image_tokens * text_tokens * 4)).max(1);
    let rows = blocks.rows.min(b).min((pairs as f64).sqrt().ceil() as i64).max(1);
    let cols = blocks.cols.min(n).min((pairs / rows).max(1)).max(1);
    (rows, cols)
}

/// The rank's FILIP loss and its gradients with respect to the gathered rows (in `layout`),
/// and ∂loss/∂s. `batch` holds the rows the step gathers: local and all images, local and
/// all texts.
pub fn filip_loss_blockwise(
    batch: &ContrastiveBatch<'_>,
    layout: FilipLayout,
    scale: &Tensor,
    blocks: BlockSizes,
) -> Result<LossGradients> {
    let (n, b, off) = (batch.image_all.size()[0], batch.image_local.size()[0], batch.row_offset);
    if blocks.rows < 1 || blocks.cols < 1 {
        return Err(ConfigError::invalid("loss_block_rows", blocks.rows, "an integer >= 1").into());
    }
    let device = batch.image_all.device();
    // float32 (double stays double, for the finite-difference tests).
    let ck = if batch.image_all.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    let (images, image_mask) = layout.images(&batch.image_all.to_kind(ck));
    let (texts, text_mask) = layout.texts(&batch.text_all.to_kind(ck));
    let image_set = TokenSet { tokens: &images, mask: &image_mask };
    let text_set = TokenSet { tokens: &texts, mask: &text_mask };
    let (rows, cols) = tile(blocks, b, n, images.size()[1], layout.text_tokens);
    // One process: the two directions score the same pairs, so one sweep gives both.
    let same_pairs = b == n && off == 0;
    let tiles: Vec<(i64, i64, i64, i64)> = (0..b)
        .step_by(rows as usize)
        .flat_map(|r0| (0..n).step_by(cols as usize).map(move |c0| (r0, (rows).min(b - r0), c0, cols.min(n - c0))))
        .collect();

    // Pass 1: A = S^I[local images, all texts] and B = S^T[all images, local texts]ᵀ, both b × N.
    let a = Tensor::zeros([b, n], (ck, device));
    let bt = Tensor::zeros([b, n], (ck, device));
    tch::no_grad(|| {
        for &(r0, rb, c0, cb) in &tiles {
            let (li, lm) = image_set.narrow(off + r0, rb);
            let (tj, tm) = text_set.narrow(c0, cb);
            let (s_i, s_t) = pair_scores(TokenSet { tokens: &li, mask: &lm }, TokenSet { tokens: &tj, mask: &tm });
            a.narrow(0, r0, rb).narrow(1, c0, cb).copy_(&s_i);
            if same_pairs {
                bt.narrow(1, r0, rb).narrow(0, c0, cb).copy_(&s_t.tr());
            } else {
                let (ci, cm) = image_set.narrow(c0, cb);
                let (lt, ltm) = text_set.narrow(off + r0, rb);
                let (_, s_t) = pair_scores(TokenSet { tokens: &ci, mask: &cm }, TokenSet { tokens: &lt, mask: &ltm });
                bt.narrow(0, r0, rb).narrow(1, c0, cb).copy_(&s_t.tr());
            }
        }
    });

    // The loss and ∂loss/∂A, ∂loss/∂B analytically.
    let s = scale.to_kind(ck);
    let labels = Tensor::arange_start(off, off + b, (Kind::Int64, device));
    let one_hot = Tensor::zeros([b, n], (ck, device)).scatter_value(1, &labels.view([b, 1]), 1.0);
    let direction = |scores: &Tensor| {
        let logits = scores * &s;
        let log_p = logits.log_softmax(1, ck);
        let loss = -(&log_p * &one_hot).sum(ck) / b as f64;
        let d_logits = (log_p.exp() - &one_hot) / (2.0 * b as f64);
        let d_scale = (&d_logits * scores).sum(ck);
        (loss, &d_logits * &s, d_scale)
    };
    let (loss_i, grad_a, ds_i) = direction(&a);
    let (loss_t, grad_bt, ds_t) = direction(&bt);
    let loss = (loss_i + loss_t) / 2.0;

    // Pass 2: back-propagate each tile's share into its tokens.
    // The gradients in the gathered rows' layout, written in place (mask columns stay 0).
    let grad_image_rows = Tensor::zeros([n, images.size()[1] * layout.dim], (ck, device));
    let grad_text_rows = Tensor::zeros([n, layout.text_tokens * (layout.dim + 1)], (ck, device));
    let grad_images = layout.images(&grad_image_rows).0;
    let grad_texts = layout.texts(&grad_text_rows).0;
    tch::with_grad(|| {
        let leaf = |t: Tensor| t.detach().set_requires_grad(true);
        for &(r0, rb, c0, cb) in &tiles {
            let (li, lm) = image_set.narrow(off + r0, rb);
            let (tj, tm) = text_set.narrow(c0, cb);
            let (li, tj) = (leaf(li), leaf(tj));
            let (s_i, s_t) = pair_scores(TokenSet { tokens: &li, mask: &lm }, TokenSet { tokens: &tj, mask: &tm });
            let mut surrogate = (s_i * grad_a.narrow(0, r0, rb).narrow(1, c0, cb)).sum(ck);
            if same_pairs {
                surrogate += (s_t * grad_bt.narrow(1, r0, rb).narrow(0, c0, cb).tr()).sum(ck);
            }
            surrogate.backward();
            let _ = grad_images.narrow(0, off + r0, rb).g_add_(&li.grad());
            let _ = grad_texts.narrow(0, c0, cb).g_add_(&tj.grad());
            if !same_pairs {
                let (ci, cm) = image_set.narrow(c0, cb);
                let (lt, ltm) = text_set.narrow(off + r0, rb);
                let (ci, lt) = (leaf(ci), leaf(lt));
                let (_, s_t) = pair_scores(TokenSet { tokens: &ci, mask: &cm }, TokenSet { tokens: &lt, mask: &ltm });
                (s_t * grad_bt.narrow(0, r0, rb).narrow(1, c0, cb).tr()).sum(ck).backward();
                let _ = grad_images.narrow(0, c0, cb).g_add_(&ci.grad());
                let _ = grad_texts.narrow(0, off + r0, rb).g_add_(&lt.grad());
            }
        }
    });
    let kind = batch.image_all.kind();
    drop((grad_images, grad_texts));
    Ok(LossGradients {
        loss: loss.to_kind(kind),
        grad_image: grad_image_rows.to_kind(kind),
        grad_text: grad_text_rows.to_kind(batch.text_all.kind()),
        grad_logit_scale: (ds_i + ds_t).to_kind(kind),
        grad_logit_bias: None,
    })
}

/// The one-process FILIP loss over all N pairs with autograd, the whole N × N × L_i × L_t
/// similarity at once: the reference for small batches (tests and the gradient check).
pub fn filip_loss_global(image_rows: &Tensor, text_rows: &Tensor, layout: FilipLayout, scale: &Tensor) -> Tensor {
    let (images, image_mask) = layout.images(image_rows);
    let (texts, text_mask) = layout.texts(text_rows);
    let (s_i, s_t) =
        pair_scores(TokenSet { tokens: &images, mask: &image_mask }, TokenSet { tokens: &texts, mask: &text_mask });
    let n = s_i.size()[0];
    let labels = Tensor::arange(n, (Kind::Int64, s_i.device()));
    let ce = |logits: Tensor| {
        -logits.log_softmax(1, logits.kind()).gather(1, &labels.view([n, 1]), false).mean(logits.kind())
    };
    (ce(&s_i * scale) + ce(s_t.tr() * scale)) / 2.0
}

/// FILIP retrieval scores of every image against every text, in tiles of bounded memory:
/// (S^I, S^T), each [n_images, n_texts]; rank texts for an image by S^I's row, images for a
/// text by S^T's column.
pub fn retrieval_scores(images: TokenSet<'_>, texts: TokenSet<'_>) -> (Tensor, Tensor) {
    let (ni, li, _) = images.tokens.size3().expect("image tokens are [n, L, d]");
    let (nt, lt, _) = texts.tokens.size3().expect("text tokens are [n, L, d]");
    let (rows, cols) = tile(BlockSizes::default(), ni, nt, li, lt);
    let device = images.tokens.device();
    let s_image = Tensor::zeros([ni, nt], (Kind::Float, device));
    let s_text = Tensor::zeros([ni, nt], (Kind::Float, device));
    tch::no_grad(|| {
        for r0 in (0..ni).step_by(rows as usize) {
            let rb = rows.min(ni - r0);
            let (ti, mi) = images.narrow(r0, rb);
            for c0 in (0..nt).step_by(cols as usize) {
                let cb = cols.min(nt - c0);
                let (tj, mj) = texts.narrow(c0, cb);
                let (a, b) = pair_scores(TokenSet { tokens: &ti, mask: &mi }, TokenSet { tokens: &tj, mask: &mj });
                s_image.narrow(0, r0, rb).narrow(1, c0, cb).copy_(&a);
                s_text.narrow(0, r0, rb).narrow(1, c0, cb).copy_(&b);
            }
        }
    });
    (s_image, s_text)
}

#[cfg(test)]
mod tests;
