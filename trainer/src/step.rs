//! One step's gradients across ranks: the gathered contrastive loss with exact gradients
//! (DESIGN §3), gradient caching over micro-batches, and the bucketed gradient all-reduce.
//!
//! Every rank calls [`ContrastiveStep::backward`] with its own rows of the global batch
//! (rank r holds rows `r·b .. (r+1)·b`, split into `k` micro-batches of `b/k`):
//!
//! 1. embed the micro-batches (with a graph when `k = 1`, without one otherwise);
//! 2. all-gather the detached features (one collective for both towers);
//! 3. compute loss_r over the local rows × the N gathered columns in blocks, with its
//!    analytic gradient G = ∂loss_r/∂F for all N rows, and ∂loss_r/∂s, ∂loss_r/∂β;
//! 4. reduce-scatter G (sum), giving g_r = Σ_q ∂loss_q/∂f_r for the local rows;
//! 5. back-propagate `(f_j · g_j).sum()` through each micro-batch j (re-embedding it with
//!    a graph when `k > 1`, after re-seeding libtorch's generator exactly as for the first
//!    pass), and s·∂loss_r/∂s into θ, ∂loss_r/∂β into β;
//! 6. all-reduce the parameter gradients in flat buckets and divide by W.
//!
//! The result equals the gradient of the one-process loss over all N pairs, for any W and
//! k, because Σ_r loss_r = W·L (CLIP and SigLIP alike). Peak memory is one micro-batch's
//! activations plus `3 · rows × N` loss tiles plus a few N×d feature matrices.

use std::time::Instant;

use tch::{Kind, Tensor};

use clipfleet_dataloader::rng::Rng;

use crate::config::LossKind;
use crate::data::normalize_images;
use crate::dist::{ProcessGroup, ReduceOp};
use crate::error::{Result, TrainError};
use crate::loss::blockwise::{clip_loss_blockwise, siglip_loss_blockwise, BlockSizes, LossGradients};
use crate::loss::filip::filip_loss_blockwise;
use crate::loss::ContrastiveBatch;
use crate::model::coca::{caption_loss_sum, CAPTION_LOSS_WEIGHT};
use crate::model::{Clip, SampleKeys};
use crate::precision::Precision;

/// Time spent in the step's collectives, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CollectiveTimes {
    /// Feature all-gather and gradient reduce-scatter.
    pub all_gather: f64,
    /// Parameter-gradient all-reduce.
    pub all_reduce: f64,
}

/// What one step's backward pass reports.
#[derive(Debug)]
pub struct StepOutput {
    /// This rank's loss_r, [] (no host synchronisation); its mean over the ranks is the
    /// one-process loss of the global batch.
    pub loss: Tensor,
    /// Time in collectives.
    pub times: CollectiveTimes,
}

/// One step's batch on the device, owned by the step that consumes it.
#[derive(Debug)]
pub struct DeviceBatch {
    /// This rank's images: uint8 [b, H, W, 3] (normalised by the step), or float
    /// [b, 3, H, W] already normalised.
    pub images: Tensor,
    /// This rank's token ids, int64 [b, L], L ≤ context_length ([`crate::model::Clip::text_input`]).
    pub tokens: Tensor,
}

impl DeviceBatch {
    /// Pairs in the batch.
    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }

    /// Whether the batch holds no pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The image tower's input: uint8 NHWC images are normalised on their device; float images
/// are taken as they are.
fn model_input(images: &Tensor) -> Tensor {
    if images.kind() == Kind::Uint8 {
        normalize_images(images)
    } else {
        images.shallow_clone()
    }
}

const TORCH_SEED_STREAM: u64 = 0x7463_685f_7365_6564; // "tch_seed"

/// How libtorch's generator is seeded before each micro-batch's forward pass: from (seed,
/// step, micro-batch), so stochastic ops replay identically in gradient caching's second
/// forward pass and after a resume, without storing generator state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngReplay {
    /// The run seed.
    pub seed: u64,
    /// The optimizer step.
    pub step: i64,
}

impl RngReplay {
    /// Seeds libtorch's generator for micro-batch `micro`.
    pub fn seed_micro(self, micro: i64) {
        let s = Rng::from_key(&[self.seed, self.step as u64, TORCH_SEED_STREAM, micro as u64]).next_u64();
        tch::manual_seed((s >> 1) as i64);
    }
}

/// The distributed contrastive step: the loss, its tiles and the process group.
pub struct ContrastiveStep<'a> {
    /// The precision of the forward passes (the loss is float32).
    pub precision: Precision,
    /// The workers of the job.
    pub group: &'a dyn ProcessGroup,
    /// CLIP or SigLIP.
    pub loss: LossKind,
    /// Tiles of the blockwise loss.
    pub blocks: BlockSizes,
    /// Bytes per gradient all-reduce bucket.
    pub bucket_bytes: usize,
}

impl std::fmt::Debug for ContrastiveStep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContrastiveStep")
            .field("world_size", &self.group.world_size())
            .field("loss", &self.loss)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl ContrastiveStep<'_> {
    /// CoCa's caption-loss factor: `2 · W / T`, T the non-padding targets (`tokens[:, 1:] ≠ 0`)
    /// of the global batch (one all-reduce of a count).
    fn caption_weight(&self, tokens: &Tensor) -> Result<f64> {
        let l = tokens.size()[1];
        let local = tokens.narrow(1, 1, l - 1).ne(0).sum(Kind::Double).view([1]);
        let mut total = local.to_device(tokens.device());
        if self.group.world_size() > 1 {
            self.group.all_reduce(&mut total, ReduceOp::Sum)?;
        }
        let total = total.double_value(&[0]);
        let world = self.group.world_size() as f64;
        Ok(if total > 0.0 { CAPTION_LOSS_WEIGHT * world / total } else { 0.0 })
    }

    /// Accumulates into the parameters' gradients (zero them first) the gradient of the
    /// global batch's loss, and all-reduces them over the ranks. `batch` holds this rank's
    /// rows, split into `accum` equal micro-batches; its images are normalised on the device
    /// one micro-batch at a time (so only the micro-batch is held in float), and `replay`
    /// re-seeds libtorch's generator before each forward pass of a micro-batch, so stochastic
    /// ops replay identically in gradient caching's second pass.
    ///
    /// # Shapes
    /// `batch.images`: [b, H, W, 3] uint8 (or [b, 3, H, W] float, taken as normalised),
    /// `batch.tokens`: [b, L] int64 (L ≤ context_length), b divisible by `accum`.
    pub fn backward(&self, model: &Clip, batch: &DeviceBatch, accum: i64, replay: RngReplay) -> Result<StepOutput> {
        let (images, tokens) = (&batch.images, &batch.tokens);
        let b = images.size()[0];
        if accum < 1 || b % accum != 0 {
            return Err(TrainError::BatchSplit { batch: b, parts: accum, what: "micro-batches (accum_freq)" });
        }
        let micro = b / accum;
        let slice = |t: &Tensor, j: i64| t.narrow(0, j * micro, micro);
        let mut times = CollectiveTimes::default();

        // Patch dropout draws by the sample's row in the global batch, so that every split of
        // the batch over ranks and micro-batches draws the same patches for the same sample.
        let first_row = self.group.rank() as i64 * b;
        let set_keys = |j: i64| {
            model.set_sample_keys(Some(SampleKeys {
                seed: replay.seed,
                step: replay.step,
                first_row: first_row + j * micro,
            }))
        };
        let checkpointed = model.grad_checkpointing();
        let filip = self.loss == LossKind::Filip;
        // CoCa: the caption loss of the global batch is 2 · (Σ token cross-entropy) / (its
        // non-padding targets), so each rank back-propagates its sum times 2·W / total, and
        // the average over ranks is one process's gradient.
        let coca = model.config().is_coca();
        let caption_weight = if coca { self.caption_weight(tokens)? } else { 0.0 };
        let embed = |images: &Tensor, tokens: &Tensor| -> (Tensor, Tensor, Option<Tensor>) {
            self.precision.forward(|| {
                if coca {
                    let out = model.forward_coca(&model_input(images), tokens);
                    let (sum, _) = caption_loss_sum(&out.logits, &out.labels);
                    return (out.image_features, out.text_features, Some(sum));
                }
                let (fi, ft) = match filip {
                    true => model.forward_filip(&model_input(images), tokens),
                    false => model.forward(&model_input(images), tokens),
                };
                (fi, ft, None)
            })
        };
        let mut caption_sum = 0.0f64;

        // 1. Features: with a graph (or the blocks' inputs, with gradient checkpointing) to
        // reuse when there is one micro-batch, else cached without.
        let mut kept = None;
        let (image_local, text_local) = if accum == 1 {
            replay.seed_micro(0);
            set_keys(0);
            if checkpointed {
                let (fi, ft, ckpt) = model.forward_checkpointed(self.precision, &model_input(images), tokens, filip);
                kept = Some(Kept::Checkpoints(ckpt));
                (fi, ft)
            } else {
                let (fi, ft, caption) = embed(images, tokens);
                let detached = (fi.detach(), ft.detach());
                if let Some(c) = &caption {
                    caption_sum += c.double_value(&[]);
                }
                kept = Some(Kept::Graph(fi, ft, caption));
                detached
            }
        } else {
            let mut fis = Vec::with_capacity(accum as usize);
            let mut fts = Vec::with_capacity(accum as usize);
            tch::no_grad(|| {
                for j in 0..accum {
                    replay.seed_micro(j);
                    set_keys(j);
                    let (fi, ft, caption) = embed(&slice(images, j), &slice(tokens, j));
                    if let Some(c) = &caption {
                        caption_sum += c.double_value(&[]);
                    }
                    fis.push(fi);
                    fts.push(ft);
                }
            });
            (Tensor::cat(&fis, 0), Tensor::cat(&fts, 0))
        };
        let (di, dt) = (image_local.size()[1], text_local.size()[1]);

        // 2. Gather both towers' features in one collective.
        let world = self.group.world_size() as i64;
        let t = Instant::now();
        let (image_all, text_all) = if world > 1 {
            let both = Tensor::cat(&[&image_local, &text_local], 1);
            let all = self.group.all_gather(&both)?;
            (all.narrow(1, 0, di).contiguous(), all.narrow(1, di, dt).contiguous())
        } else {
            (image_local.shallow_clone(), text_local.shallow_clone())
        };
        times.all_gather += t.elapsed().as_secs_f64();

        // 3. The loss and its analytic gradients.
        let batch = ContrastiveBatch {
            image_local: &image_local,
            text_local: &text_local,
            image_all: &image_all,
            text_all: &text_all,
            row_offset: self.group.rank() as i64 * b,
        };
        let scale = model.logit_scale().detach().to_kind(Kind::Float).exp();
        let grads: LossGradients = match self.loss {
            LossKind::Clip => clip_loss_blockwise(&batch, &scale, self.blocks)?,
            LossKind::Siglip => {
                let bias = model.logit_bias().ok_or(TrainError::MissingLogitBias)?;
                siglip_loss_blockwise(&batch, &scale, &bias.detach().to_kind(Kind::Float), self.blocks)?
            }
            LossKind::Filip => filip_loss_blockwise(&batch, model.filip_layout(), &scale, self.blocks)?,
        };
        drop((image_all, text_all));

        // 4. g_r: the sum over ranks of every loss's gradient, this rank's rows.
        let t = Instant::now();
        let g = if world > 1 {
            let both = Tensor::cat(&[&grads.grad_image, &grads.grad_text], 1);
            self.group.reduce_scatter(&both, ReduceOp::Sum)?
        } else {
            Tensor::cat(&[&grads.grad_image, &grads.grad_text], 1)
        };
        times.all_gather += t.elapsed().as_secs_f64();
        let (g_image, g_text) = (g.narrow(1, 0, di), g.narrow(1, di, dt));

        // 5. Back into the towers, one micro-batch at a time.
        match kept {
            Some(Kept::Graph(fi, ft, caption)) => {
                backward_through_towers(with_caption(surrogate(&fi, &ft, &g_image, &g_text), caption, caption_weight))
            }
            Some(Kept::Checkpoints(ckpt)) => model.backward_checkpointed(self.precision, ckpt, &g_image, &g_text),
            None => {
                for j in 0..accum {
                    replay.seed_micro(j);
                    set_keys(j);
                    let (gi, gt) = (slice(&g_image, j), slice(&g_text, j));
                    if checkpointed {
                        let (_, _, ckpt) = model.forward_checkpointed(
                            self.precision,
                            &model_input(&slice(images, j)),
                            &slice(tokens, j),
                            filip,
                        );
                        model.backward_checkpointed(self.precision, ckpt, &gi, &gt);
                    } else {
                        let (fi, ft, caption) = embed(&slice(images, j), &slice(tokens, j));
                        backward_through_towers(with_caption(surrogate(&fi, &ft, &gi, &gt), caption, caption_weight));
                    }
                }
            }
        }
        model.set_sample_keys(None);
        // θ (s = exp θ, so ∂/∂θ = s·∂/∂s) and β, through the same autograd accumulation.
        let theta = model.logit_scale();
        let mut scalars = theta.exp() * grads.grad_logit_scale.detach().to_kind(theta.kind());
        if let (Some(bias), Some(gb)) = (model.logit_bias(), &grads.grad_logit_bias) {
            scalars += bias * gb.detach().to_kind(bias.kind());
        }
        scalars.backward();

        // 6. Average the parameter gradients over the ranks.
        let t = Instant::now();
        all_reduce_gradients(self.group, &model.named_parameters(), self.bucket_bytes)?;
        times.all_reduce += t.elapsed().as_secs_f64();
        // CoCa: loss_r = its contrastive loss + its share of the caption loss; their mean over
        // the ranks is the one-process loss.
        let loss = if coca { grads.loss + caption_sum * caption_weight } else { grads.loss };
        Ok(StepOutput { loss, times })
    }
}

/// What the first forward pass keeps for the backward pass when there is one micro-batch.
enum Kept {
    /// The features with their autograd graph (and CoCa's caption cross-entropy sum).
    Graph(Tensor, Tensor, Option<Tensor>),
    /// The blocks' inputs (gradient checkpointing).
    Checkpoints(crate::model::Checkpoints),
}

/// Backpropagates the surrogate into whatever tower parameters are trainable: nothing when both
/// towers are locked whole.
fn backward_through_towers(surrogate: Tensor) {
    if surrogate.requires_grad() {
        surrogate.backward();
    }
}

/// The surrogate plus CoCa's weighted caption cross-entropy sum, when there is one.
fn with_caption(surrogate: Tensor, caption: Option<Tensor>, weight: f64) -> Tensor {
    match caption {
        Some(c) => surrogate + c * weight,
        None => surrogate,
    }
}

/// Σ f·g over both towers: its gradient with respect to f is g.
fn surrogate(fi: &Tensor, ft: &Tensor, gi: &Tensor, gt: &Tensor) -> Tensor {
    (fi * gi.detach()).sum(Kind::Float) + (ft * gt.detach()).sum(Kind::Float)
}

/// Averages every defined parameter gradient over the ranks, packing them into flat buckets
/// of about `bucket_bytes` (one collective per bucket, in parameter order; every rank has
/// the same parameters with the same gradients defined).
pub fn all_reduce_gradients(group: &dyn ProcessGroup, params: &[(String, Tensor)], bucket_bytes: usize) -> Result<()> {
    if group.world_size() == 1 {
        return Ok(());
    }
    let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).filter(Tensor::defined).collect();
    let mut start = 0;
    while start < grads.len() {
        let mut end = start;
        let mut bytes = 0usize;
        while end < grads.len() && (end == start || bytes < bucket_bytes) {
            bytes += grads[end].numel() * grads[end].kind().elt_size_in_bytes();
            end += 1;
        }
        let bucket = &grads[start..end];
        tch::no_grad(|| -> Result<()> {
            let flat: Vec<Tensor> = bucket.iter().map(|g| g.reshape([-1])).collect();
            let mut flat = Tensor::cat(&flat, 0);
            group.all_reduce(&mut flat, ReduceOp::Avg)?;
            let mut offset = 0;
            for g in bucket {
                let n = g.numel() as i64;
                g.shallow_clone().copy_(&flat.narrow(0, offset, n).view_as(g));
                offset += n;
            }
            Ok(())
        })?;
        start = end;
    }
    Ok(())
}

/// Copies rank 0's parameters and batch-norm statistics to every rank.
pub fn broadcast_parameters(group: &dyn ProcessGroup, model: &Clip) -> Result<()> {
    if group.world_size() == 1 {
        return Ok(());
    }
    for (_, p) in model.state_dict().into_iter().filter(|(_, p)| p.is_floating_point()) {
        // A flat view of the same storage (0-dim parameters such as θ included).
        let mut flat = p.view([-1]);
        group.broadcast(&mut flat, 0)?;
    }
    Ok(())
}

/// Two checksums of the parameters (the sum and the sum of squares, in fp64), gathered from
/// every rank; an error names the first rank whose parameters differ from rank 0's.
pub fn check_parameters_agree(group: &dyn ProcessGroup, model: &Clip, step: i64) -> Result<()> {
    let (mut sum, mut squares) = (0.0f64, 0.0f64);
    tch::no_grad(|| {
        for (_, p) in model.named_parameters() {
            let p = p.to_kind(Kind::Double);
            sum += p.sum(Kind::Double).double_value(&[]);
            squares += p.square().sum(Kind::Double).double_value(&[]);
        }
    });
    let local = Tensor::from_slice(&[sum, squares]).view([1, 2]).to_device(model.device());
    let all = group.all_gather(&local)?.to_device(tch::Device::Cpu);
    let all: Vec<f64> = Vec::<f64>::try_from(all.reshape([-1]))?;
    for (rank, pair) in all.chunks(2).enumerate().skip(1) {
        if pair[0].to_bits() != all[0].to_bits() || pair[1].to_bits() != all[1].to_bits() {
            return Err(TrainError::ParametersDiffer { step, rank, mine: (pair[0], pair[1]), rank0: (all[0], all[1]) });
        }
    }
    tracing::debug!(step, checksum = sum, "parameters agree across ranks");
    Ok(())
}

/// Every rank's `bytes`, in rank order (through an all-gather of their lengths, then of the
/// bytes padded to the longest, each byte carried exactly as a float).
pub fn all_gather_bytes(group: &dyn ProcessGroup, bytes: &[u8], device: tch::Device) -> Result<Vec<Vec<u8>>> {
    if group.world_size() == 1 {
        return Ok(vec![bytes.to_vec()]);
    }
    let len = Tensor::from_slice(&[bytes.len() as f64]).to_device(device);
    let lens = Vec::<f64>::try_from(group.all_gather(&len)?.to_device(tch::Device::Cpu))?;
    let longest = lens.iter().fold(0.0f64, |a, &b| a.max(b)) as usize;
    let mut padded: Vec<f32> = bytes.iter().map(|&b| b as f32).collect();
    padded.resize(longest.max(1), 0.0);
    let all = group.all_gather(&Tensor::from_slice(&padded).to_device(device))?.to_device(tch::Device::Cpu);
    let all = Vec::<f32>::try_from(all)?;
    Ok(all
        .chunks(longest.max(1))
        .zip(lens)
        .map(|(chunk, n)| chunk[..n as usize].iter().map(|&v| v as u8).collect())
        .collect())
}
