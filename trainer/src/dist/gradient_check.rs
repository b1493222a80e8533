//! The acceptance check of DESIGN §3: the parameter gradients of the distributed step
//! ([`crate::step::ContrastiveStep`]) across W ranks, each holding b pairs split into k
//! micro-batches, against plain autograd on the one-process loss over all N = W·b pairs.
//!
//! Every rank builds the same tiny model and the same global batch from fixed seeds, takes
//! its rows, runs the distributed step, then computes the one-process reference itself.

use tch::{Device, Kind, Tensor};

use crate::config::LossKind;
use crate::dist::ProcessGroup;
use crate::error::{Result, TrainError};
use crate::loss::blockwise::BlockSizes;
use crate::loss::filip::filip_loss_global;
use crate::loss::{clip_loss_global, siglip_loss, ContrastiveBatch};
use crate::model::{Clip, ClipConfig, SampleKeys};
use crate::step::{broadcast_parameters, ContrastiveStep, DeviceBatch, RngReplay};

/// What the check measured on one rank.
#[derive(Debug, Clone, Copy)]
pub struct GradientReport {
    /// The largest ‖g_dist − g_ref‖ / ‖g_ref‖ over the parameter tensors.
    pub max_relative_error: f64,
    /// The parameter tensors compared.
    pub tensors: usize,
    /// The distributed loss (mean of loss_r over the ranks).
    pub loss: f64,
    /// The one-process loss over the global batch.
    pub reference_loss: f64,
}

/// Model options of the check: the distributed step runs with them, the one-process reference
/// with plain autograd (the same patch-dropout draws, no checkpointing).
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// FLIP patch dropout in the image tower.
    pub patch_dropout: f64,
    /// Gradient checkpointing in the distributed step.
    pub grad_checkpointing: bool,
    /// The tiny CoCa (contrastive + caption loss) instead of the tiny CLIP.
    pub coca: bool,
}

/// Runs the check with `local_batch` pairs per rank in `accum` micro-batches, loss tiles of
/// `blocks`, on the CPU.
pub fn check_gradients(
    group: &dyn ProcessGroup,
    loss: LossKind,
    local_batch: i64,
    accum: i64,
    blocks: BlockSizes,
    options: CheckOptions,
) -> Result<GradientReport> {
    let device = Device::Cpu;
    let mut config = if options.coca { ClipConfig::tiny_coca() } else { tiny_config(loss) };
    config.vision_cfg.patch_dropout = options.patch_dropout;
    tch::manual_seed(7);
    let model = Clip::new(&config, device)?;
    model.set_grad_checkpointing(options.grad_checkpointing);
    broadcast_parameters(group, &model)?;
    let (rank, world) = (group.rank() as i64, group.world_size() as i64);
    let n = local_batch * world;
    let (images, tokens) = fixed_batch(&config, n, device);

    // The distributed step on this rank's rows.
    let step =
        ContrastiveStep { precision: crate::precision::Precision::Fp32, group, loss, blocks, bucket_bytes: 1 << 20 };
    let rows = |t: &Tensor| t.narrow(0, rank * local_batch, local_batch);
    zero_grads(&model);
    let batch = DeviceBatch { images: rows(&images), tokens: rows(&tokens) };
    let out = step.backward(&model, &batch, accum, RngReplay { seed: 3, step: 0 })?;
    let mut dist_loss = out.loss.to_kind(Kind::Double).view([1]);
    group.all_reduce(&mut dist_loss, crate::dist::ReduceOp::Avg)?;
    let mut dist_grads = Vec::new();
    for (name, p) in model.named_parameters() {
        let g = p.grad();
        if !g.defined() {
            return Err(TrainError::MissingGradient { parameter: name });
        }
        dist_grads.push(g.copy());
    }

    // The reference: autograd through the one-process loss over all N pairs, each sample
    // keeping the patches it kept in the distributed step.
    zero_grads(&model);
    model.set_sample_keys(Some(SampleKeys { seed: 3, step: 0, first_row: 0 }));
    let mut caption = None;
    let (fi, ft) = if options.coca {
        let out = model.forward_coca(&images, &tokens);
        caption = Some(model.coca_loss(&out).1);
        (out.image_features, out.text_features)
    } else if loss == LossKind::Filip {
        model.forward_filip(&images, &tokens)
    } else {
        model.forward(&images, &tokens)
    };
    model.set_sample_keys(None);
    let scale = model.logit_scale().exp();
    let reference = match loss {
        LossKind::Clip => clip_loss_global(&fi, &ft, &scale),
        LossKind::Siglip => {
            let bias = model.logit_bias().ok_or(TrainError::MissingLogitBias)?;
            siglip_loss(&ContrastiveBatch::local(&fi, &ft), &scale, bias)
        }
        LossKind::Filip => filip_loss_global(&fi, &ft, model.filip_layout(), &scale),
    };
    let reference = match caption {
        Some(c) => reference + c,
        None => reference,
    };
    reference.backward();
    let mut max_relative_error = 0.0f64;
    let params = model.named_parameters();
    for ((name, p), got) in params.iter().zip(&dist_grads) {
        let want = p.grad();
        if !want.defined() || !got.defined() {
            return Err(TrainError::MissingGradient { parameter: name.clone() });
        }
        let denom = want.to_kind(Kind::Double).norm().double_value(&[]).max(1e-30);
        let err = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).norm().double_value(&[]) / denom;
        max_relative_error = max_relative_error.max(err);
    }
    Ok(GradientReport {
        max_relative_error,
        tensors: params.len(),
        loss: dist_loss.double_value(&[0]),
        reference_loss: reference.double_value(&[]),
    })
}

/// The tiny model's config for `loss` (SigLIP gets its logit bias and initial values).
fn tiny_config(loss: LossKind) -> ClipConfig {
    match loss {
        LossKind::Clip | LossKind::Filip => ClipConfig::tiny(),
        LossKind::Siglip => ClipConfig::tiny().with_siglip_init(),
    }
}

/// `n` random images and token rows for `config`, the same on every rank (fixed seed, CPU
/// generator), placed on `device`.
fn fixed_batch(config: &ClipConfig, n: i64, device: Device) -> (Tensor, Tensor) {
    let side = config.vision_cfg.image_size;
    let (ctx, vocab) = (config.text_cfg.context_length, config.text_cfg.vocab_size);
    tch::manual_seed(11);
    let images = Tensor::randn([n, 3, side, side], (Kind::Float, Device::Cpu));
    // Captions of 3..=ctx tokens, then padding (0), as the tokenizer pads.
    let tokens = Tensor::randint_low(1, vocab, [n, ctx], (Kind::Int64, Device::Cpu));
    let lens = Tensor::randint_low(3, ctx + 1, [n, 1], (Kind::Int64, Device::Cpu));
    let tokens = tokens * Tensor::arange(ctx, (Kind::Int64, Device::Cpu)).view([1, ctx]).lt_tensor(&lens);
    (images.to_device(device), tokens.to_device(device))
}

fn zero_grads(model: &Clip) {
    for (_, mut p) in model.named_parameters() {
        p.zero_grad();
    }
}

/// What [`compare_devices`] measured.
#[derive(Debug, Clone, Copy)]
pub struct DeviceReport {
    /// The largest ‖g_dev − g_cpu‖ / ‖g_cpu‖ over the parameter tensors.
    pub max_relative_error: f64,
    /// |loss_dev − loss_cpu| / |loss_cpu|.
    pub loss_relative_error: f64,
}

/// The one-process step (`ContrastiveStep` with the single group) of the tiny model on
/// `device` in `precision`, against the same step on the CPU in fp32: the GPU correctness
/// check of `scripts/gpu-check.sh`. TF32 is off for fp32, so only kernel differences remain.
pub fn compare_devices(
    loss: LossKind,
    batch: i64,
    device: Device,
    precision: crate::precision::Precision,
) -> Result<DeviceReport> {
    let config = tiny_config(loss);
    let single = crate::dist::SingleGroup;
    let (images, tokens) = fixed_batch(&config, batch, Device::Cpu);
    let run = |device: Device, precision: crate::precision::Precision| -> Result<(f64, Vec<Tensor>)> {
        precision.configure(false)?;
        tch::manual_seed(7);
        let mut model = Clip::new(&config, Device::Cpu)?;
        let on_device = Clip::new(&config, device)?;
        tch::no_grad(|| {
            for ((_, dst), (_, src)) in on_device.named_parameters().iter().zip(model.named_parameters()) {
                dst.shallow_clone().copy_(&src);
            }
        });
        model = on_device;
        model.set_parameter_kind(precision.parameter_kind());
        let step =
            ContrastiveStep { precision, group: &single, loss, blocks: BlockSizes::default(), bucket_bytes: 1 << 20 };
        zero_grads(&model);
        let batch = DeviceBatch { images: images.to_device(device), tokens: tokens.to_device(device) };
        let out = step.backward(&model, &batch, 1, RngReplay { seed: 3, step: 0 })?;
        let grads = model
            .named_parameters()
            .iter()
            .map(|(_, p)| p.grad().to_device(Device::Cpu).to_kind(Kind::Double))
            .collect();
        Ok((out.loss.to_kind(Kind::Double).double_value(&[]), grads))
    };
    let (cpu_loss, cpu_grads) = run(Device::Cpu, crate::precision::Precision::Fp32)?;
    let (dev_loss, dev_grads) = run(device, precision)?;
    let mut max_relative_error = 0.0f64;
    for (got, want) in dev_grads.iter().zip(&cpu_grads) {
        let denom = want.norm().double_value(&[]).max(1e-30);
        max_relative_error = max_relative_error.max((got - want).norm().double_value(&[]) / denom);
    }
    Ok(DeviceReport {
        max_relative_error,
        loss_relative_error: (dev_loss - cpu_loss).abs() / cpu_loss.abs().max(1e-30),
    })
}
