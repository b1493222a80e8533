//! Memory-bounded contrastive losses with analytic gradients (DESIGN §3, steps 3–4, and
//! gradient caching).
//!
//! A rank's loss needs b×N logits; held whole, with what autograd saves for the backward
//! pass, that is several b×N matrices (one fp32 N×N is 4 GiB at N = 32,768). Here the
//! logits are computed in tiles of `rows × cols`, turned at once into their gradient
//! (softmax − one-hot for cross-entropy, σ(z) − [y = 1] for the sigmoid loss), and folded
//! into the N×d feature gradients with two matmuls per tile. No autograd graph is built.
//! Extra memory is a few `rows × cols` tiles plus the two N×d gradients.
//!
//! With `cols ≥ N` each row block is one pass. With `cols < N` the cross-entropy needs each
//! row's log-sum-exp over all N columns before any tile's softmax, so the logits are
//! computed twice (one more matmul per tile); the sigmoid loss is element-wise and is always
//! one pass.
//!
//! Both directions of the CLIP loss are row blocks: in the local form, text→image is its own
//! b×N matrix s·T_r·Iᵀ with the local texts as rows, which is the transpose trick of DESIGN
//! §3 applied from the start.

use tch::{Kind, Tensor};

use super::ContrastiveBatch;
use crate::error::{ConfigError, Result};

/// Tile sizes for the blockwise losses. Peak extra memory is about three `rows × cols`
/// matrices of the features' dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Local rows per block (≥ 1); clamped to b.
    pub rows: i64,
    /// Gathered columns per tile (≥ 1); clamped to N. Below N the cross-entropy takes two passes.
    pub cols: i64,
}

impl BlockSizes {
    /// Blocks of `rows` full rows (one pass over each row block).
    pub fn rows(rows: i64) -> Self {
        BlockSizes { rows, cols: i64::MAX }
    }

    /// Tiles of `rows × cols`.
    pub fn tiles(rows: i64, cols: i64) -> Self {
        BlockSizes { rows, cols }
    }

    /// Bytes of one `rows × cols` tile for `b` local rows and `n` columns at `bytes_per_value`.
    pub fn tile_bytes(&self, b: i64, n: i64, bytes_per_value: i64) -> i64 {
        self.rows.clamp(1, b.max(1)) * self.cols.clamp(1, n.max(1)) * bytes_per_value
    }

    fn validate(&self) -> Result<()> {
        if self.rows < 1 {
            return Err(ConfigError::invalid("loss_block_rows", self.rows, "an integer >= 1").into());
        }
        if self.cols < 1 {
            return Err(ConfigError::invalid("loss_block_cols", self.cols, "an integer >= 1").into());
        }
        Ok(())
    }
}

impl Default for BlockSizes {
    /// 1,024 full rows: 128 MiB per fp32 tile at N = 32,768.
    fn default() -> Self {
        BlockSizes::rows(1024)
    }
}

/// A rank's loss and its exact gradients with respect to the gathered features, the logit
/// scale and (SigLIP) the logit bias. The local features count as their rows of the
/// gathered ones (DESIGN §3 step 3): their gradient is inside `grad_image`/`grad_text` at
/// rows `row_offset..row_offset + b`.
///
/// Summing `grad_image`/`grad_text` over ranks and taking rank r's rows gives
/// g_r = Σ_q ∂loss_q/∂f_r (step 4); `(f_r * g_r).sum().backward()` then reaches the encoders.
#[derive(Debug)]
pub struct LossGradients {
    /// loss_r, [] in the features' dtype.
    pub loss: Tensor,
    /// ∂loss_r/∂I over all N gathered image rows, [N, d].
    pub grad_image: Tensor,
    /// ∂loss_r/∂T over all N gathered text rows, [N, d].
    pub grad_text: Tensor,
    /// ∂loss_r/∂s with respect to the exponentiated scale s = exp(θ), []; ∂loss_r/∂θ = s·this.
    pub grad_logit_scale: Tensor,
    /// ∂loss_r/∂β, [], for SigLIP; `None` for CLIP.
    pub grad_logit_bias: Option<Tensor>,
}

/// Running sums of the scalar outputs, in fp64.
struct ScalarSums {
    loss: Tensor,
    scale: Tensor,
    bias: Tensor,
}

impl ScalarSums {
    fn new(device: tch::Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        ScalarSums { loss: zero(), scale: zero(), bias: zero() }
    }

    fn add(acc: &mut Tensor, x: &Tensor) {
        let _ = acc.g_add_(&x.to_kind(Kind::Double));
    }
}

/// The features of one direction: local rows scored against gathered columns, and the
/// N×d gradients each side accumulates into.
struct Direction<'a> {
    rows: &'a Tensor,
    cols: &'a Tensor,
    row_offset: i64,
    grad_rows: &'a Tensor,
    grad_cols: &'a Tensor,
    /// s, [] in the features' dtype.
    scale: &'a Tensor,
}

fn validate(batch: &ContrastiveBatch<'_>, blocks: BlockSizes) -> Result<()> {
    blocks.validate()?;
    let bad = |what: &str, got: String| -> Result<()> { Err(ConfigError::invalid("loss features", got, what).into()) };
    let (il, tl, ia, ta) =
        (batch.image_local.size(), batch.text_local.size(), batch.image_all.size(), batch.text_all.size());
    if il.len() != 2 || il != tl || ia.len() != 2 || ia != ta || il[1] != ia[1] {
        return bad("local [b, d] and gathered [N, d] image and text features", format!("{il:?} {tl:?} {ia:?} {ta:?}"));
    }
    if batch.row_offset < 0 || batch.row_offset + il[0] > ia[0] {
        return bad(
            "0 <= row_offset and row_offset + b <= N",
            format!("row_offset {} b {} N {}", batch.row_offset, il[0], ia[0]),
        );
    }
    Ok(())
}

/// Half-open ranges of `step` covering `0..n`.
fn ranges(n: i64, step: i64) -> impl Iterator<Item = (i64, i64)> {
    let step = step.clamp(1, n.max(1));
    (0..n).step_by(step as usize).map(move |start| (start, step.min(n - start)))
}

/// The diagonal of the positives inside a `k × m` tile whose rows are labelled
/// `label0..label0 + k` and whose columns are `j0..j0 + m`, as a view; `None` if none falls in it.
fn positives(tile: &Tensor, label0: i64, k: i64, j0: i64, m: i64) -> Option<Tensor> {
    let (lo, hi) = (j0.max(label0), (j0 + m).min(label0 + k));
    (lo < hi).then(|| tile.narrow(0, lo - label0, hi - lo).narrow(1, lo - j0, hi - lo).diagonal(0, 0, 1))
}

/// Folds a tile's logit gradient `dz` = ∂loss/∂z (z = s·r·cᵀ + β) into the feature and
/// scale gradients. Consumes `dz` (scaled in place).
fn accumulate_tile(
    mut dz: Tensor,
    r: &Tensor,
    c: &Tensor,
    dir: &Direction<'_>,
    rows: (i64, i64),
    j0: i64,
    sums: &mut ScalarSums,
) {
    let scale = dir.scale;
    let g_r = dz.matmul(c); // ∂loss/∂r ÷ s, [k, d]
    ScalarSums::add(&mut sums.scale, &(&g_r * r).sum(g_r.kind()));
    let _ = dir.grad_rows.narrow(0, dir.row_offset + rows.0, rows.1).g_add_(&(g_r * scale));
    let _ = dz.g_mul_(scale);
    let m = c.size()[0];
    let _ = dir.grad_cols.narrow(0, j0, m).addmm_(&dz.tr(), r);
}

/// One direction of the CLIP loss, weighted by `weight` (½): cross-entropy of s·rows·colsᵀ
/// with labels row_offset + i, as a mean over rows.
fn clip_direction(dir: &Direction<'_>, weight: f64, blocks: BlockSizes, sums: &mut ScalarSums) {
    let (b, n) = (dir.rows.size()[0], dir.cols.size()[0]);
    let coef = weight / b as f64;
    let (one_pass, scale) = (blocks.cols >= n, dir.scale);
    for (i0, k) in ranges(b, blocks.rows) {
        let r = dir.rows.narrow(0, i0, k);
        let label0 = dir.row_offset + i0;
        let logits = |j0: i64, m: i64| {
            let mut z = r.matmul(&dir.cols.narrow(0, j0, m).tr());
            let _ = z.g_mul_(scale);
            z
        };
        // Pass 1 (tiled columns only): each row's log-sum-exp over all N columns.
        let full_lse = (!one_pass).then(|| {
            let mut lse = Tensor::full([k], f64::NEG_INFINITY, (r.kind(), r.device()));
            for (j0, m) in ranges(n, blocks.cols) {
                lse = lse.logaddexp(&logits(j0, m).logsumexp(1, false));
            }
            lse
        });
        let mut lse = full_lse.as_ref().map(Tensor::shallow_clone);
        for (j0, m) in ranges(n, blocks.cols) {
            let c = dir.cols.narrow(0, j0, m);
            let mut z = logits(j0, m);
            if let Some(pos) = positives(&z, label0, k, j0, m) {
                ScalarSums::add(&mut sums.loss, &(pos.sum(z.kind()) * -coef));
            }
            let row_lse = lse.get_or_insert_with(|| z.logsumexp(1, false)).shallow_clone();
            // dz = (softmax − one-hot)·coef, in z's buffer.
            let _ = z.g_sub_(&row_lse.unsqueeze(1));
            let _ = z.exp_();
            let _ = z.g_mul_scalar_(coef);
            if let Some(mut pos) = positives(&z, label0, k, j0, m) {
                let _ = pos.g_sub_scalar_(coef);
            }
            accumulate_tile(z, &r, &c, dir, (i0, k), j0, sums);
        }
        if let Some(lse) = lse {
            ScalarSums::add(&mut sums.loss, &(lse.sum(lse.kind()) * coef));
        }
    }
}

/// The CLIP loss of one rank, local form (equal to [`super::clip_loss`]), with its exact
/// gradients, computed in tiles without an autograd graph. On one process (or for the k
/// micro-batches of gradient caching) pass [`ContrastiveBatch::local`] of the whole batch.
///
/// `logit_scale` is s = exp(θ), already exponentiated. Inputs are detached; nothing needs or
/// gets a gradient.
///
/// # Shapes
/// features as in [`ContrastiveBatch`] ([b, d] local, [N, d] gathered); `logit_scale`: [] →
/// [`LossGradients`] with `grad_image`, `grad_text`: [N, d]. Extra memory is a few
/// `blocks.rows × blocks.cols` tiles.
///
/// # Errors
/// [`ConfigError::Invalid`] for block sizes below 1, mismatched shapes, or a row offset
/// that puts the local rows outside `0..N`.
pub fn clip_loss_blockwise(
    batch: &ContrastiveBatch<'_>,
    logit_scale: &Tensor,
    blocks: BlockSizes,
) -> Result<LossGradients> {
    validate(batch, blocks)?;
    Ok(tch::no_grad(|| {
        let (kind, device) = (batch.image_all.kind(), batch.image_all.device());
        let scale = logit_scale.detach().to_kind(kind).to_device(device);
        let (ia, ta) = (batch.image_all.detach(), batch.text_all.detach());
        let (il, tl) = (batch.image_local.detach(), batch.text_local.detach());
        let (grad_image, grad_text) = (ia.zeros_like(), ta.zeros_like());
        let mut sums = ScalarSums::new(device);
        let off = batch.row_offset;
        let image_to_text = Direction {
            rows: &il,
            cols: &ta,
            row_offset: off,
            grad_rows: &grad_image,
            grad_cols: &grad_text,
            scale: &scale,
        };
        clip_direction(&image_to_text, 0.5, blocks, &mut sums);
        let text_to_image = Direction {
            rows: &tl,
            cols: &ia,
            row_offset: off,
            grad_rows: &grad_text,
            grad_cols: &grad_image,
            scale: &scale,
        };
        clip_direction(&text_to_image, 0.5, blocks, &mut sums);
        LossGradients {
            loss: sums.loss.to_kind(kind),
            grad_image,
            grad_text,
            grad_logit_scale: sums.scale.to_kind(kind),
            grad_logit_bias: None,
        }
    }))
}

/// The SigLIP loss of one rank, all-gather form (equal to [`super::siglip_loss`] and to
/// OpenCLIP's `SigLipLoss(rank, world_size)`), with its exact gradients, in tiles (always
/// one pass) without an autograd graph.
///
/// `logit_scale` is s = exp(θ), already exponentiated; `logit_bias` is β.
///
/// # Shapes
/// features as in [`ContrastiveBatch`]; `logit_scale`, `logit_bias`: [] → [`LossGradients`]
/// with `grad_image` (non-zero only in the local rows), `grad_text`: [N, d] and
/// `grad_logit_bias` set.
///
/// # Errors
/// As [`clip_loss_blockwise`].
pub fn siglip_loss_blockwise(
    batch: &ContrastiveBatch<'_>,
    logit_scale: &Tensor,
    logit_bias: &Tensor,
    blocks: BlockSizes,
) -> Result<LossGradients> {
    validate(batch, blocks)?;
    Ok(tch::no_grad(|| {
        let (kind, device) = (batch.image_all.kind(), batch.image_all.device());
        let scale = logit_scale.detach().to_kind(kind).to_device(device);
        let bias = logit_bias.detach().to_kind(kind).to_device(device);
        let (il, ta) = (batch.image_local.detach(), batch.text_all.detach());
        let (grad_image, grad_text) = (batch.image_all.zeros_like(), ta.zeros_like());
        let mut sums = ScalarSums::new(device);
        let dir = Direction {
            rows: &il,
            cols: &ta,
            row_offset: batch.row_offset,
            grad_rows: &grad_image,
            grad_cols: &grad_text,
            scale: &scale,
        };
        let (b, n) = (il.size()[0], ta.size()[0]);
        let coef = 1.0 / b as f64;
        for (i0, k) in ranges(b, blocks.rows) {
            let r = il.narrow(0, i0, k);
            let label0 = batch.row_offset + i0;
            for (j0, m) in ranges(n, blocks.cols) {
                let c = ta.narrow(0, j0, m);
                let mut z = r.matmul(&c.tr());
                let _ = z.g_mul_(&scale);
                let _ = z.g_add_(&bias);
                // −log σ(y·z) = softplus(−y·z): softplus(z) for negatives, softplus(−z) on the diagonal.
                let per_logit = z.softplus();
                if let (Some(mut sp), Some(zd)) =
                    (positives(&per_logit, label0, k, j0, m), positives(&z, label0, k, j0, m))
                {
                    sp.copy_(&(-zd).softplus());
                }
                ScalarSums::add(&mut sums.loss, &(per_logit.sum(kind) * coef));
                drop(per_logit);
                // ∂/∂z = (σ(z) − [y = 1]) / b, in z's buffer.
                let _ = z.sigmoid_();
                let _ = z.g_mul_scalar_(coef);
                if let Some(mut pos) = positives(&z, label0, k, j0, m) {
                    let _ = pos.g_sub_scalar_(coef);
                }
                ScalarSums::add(&mut sums.bias, &z.sum(kind));
                accumulate_tile(z, &r, &c, &dir, (i0, k), j0, &mut sums);
            }
        }
        LossGradients {
            loss: sums.loss.to_kind(kind),
            grad_image,
            grad_text,
            grad_logit_scale: sums.scale.to_kind(kind),
            grad_logit_bias: Some(sums.bias.to_kind(kind)),
        }
    }))
}

#[cfg(test)]
mod tests;
