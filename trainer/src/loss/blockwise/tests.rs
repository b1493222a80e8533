//! The blockwise losses against autograd on the plain forms, over ranks, and through a
//! model with gradient caching.

use super::*;
use crate::loss::test_support::{features, per_rank};
use crate::loss::{clip_loss, siglip_loss};
use tch::Device;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// [`crate::loss::clip_loss`] in the features' dtype (tch's cross-entropy runs in fp32).
fn clip_reference(batch: &ContrastiveBatch<'_>, s: &Tensor) -> Tensor {
    let kind = batch.image_all.kind();
    let b = batch.image_local.size()[0];
    let ce = |rows: &Tensor, cols: &Tensor| {
        let logp = (rows.matmul(&cols.tr()) * s).log_softmax(-1, kind);
        -logp.narrow(1, batch.row_offset, b).diagonal(0, 0, 1).mean(kind)
    };
    (ce(batch.image_local, batch.text_all) + ce(batch.text_local, batch.image_all)) / 2.0
}

/// Autograd on the plain b×N form, with the gathered features as leaves and the local
/// ones as their rows: (loss, ∂I, ∂T, ∂s, ∂β).
fn autograd(image: &Tensor, text: &Tensor, offset: i64, b: i64, siglip: bool) -> [Tensor; 5] {
    let kind = image.kind();
    let ia = image.copy().set_requires_grad(true);
    let ta = text.copy().set_requires_grad(true);
    let (il, tl) = (ia.narrow(0, offset, b), ta.narrow(0, offset, b));
    let s = Tensor::from(7.3f64).to_kind(kind).set_requires_grad(true);
    let beta = Tensor::from(-2.5f64).to_kind(kind).set_requires_grad(true);
    let batch =
        ContrastiveBatch { image_local: &il, text_local: &tl, image_all: &ia, text_all: &ta, row_offset: offset };
    let loss = if siglip {
        siglip_loss(&batch, &s, &beta)
    } else if kind == Kind::Float {
        clip_loss(&batch, &s)
    } else {
        clip_reference(&batch, &s)
    };
    loss.backward();
    let gb = if siglip { beta.grad() } else { Tensor::zeros([], (kind, Device::Cpu)) };
    [loss.detach(), ia.grad(), ta.grad(), s.grad(), gb]
}

fn check(kind: Kind, tol: f64, siglip: bool) {
    tch::manual_seed(17);
    let (n, d, b) = (18, 8, 7);
    let (image, text) = (features(n, d, kind), features(n, d, kind));
    // Offsets 0, inside and at the end; block sizes that divide neither b nor N, and tiles.
    for offset in [0, 5, n - b] {
        let want = autograd(&image, &text, offset, b, siglip);
        for blocks in [
            BlockSizes::rows(1),
            BlockSizes::rows(3),
            BlockSizes::rows(64),
            BlockSizes::tiles(2, 5),
            BlockSizes::tiles(4, 1),
            BlockSizes::tiles(7, 17),
        ] {
            let (il, tl) = (image.narrow(0, offset, b), text.narrow(0, offset, b));
            let batch = ContrastiveBatch {
                image_local: &il,
                text_local: &tl,
                image_all: &image,
                text_all: &text,
                row_offset: offset,
            };
            let s = Tensor::from(7.3f64);
            let got = if siglip {
                siglip_loss_blockwise(&batch, &s, &Tensor::from(-2.5f64), blocks).unwrap()
            } else {
                clip_loss_blockwise(&batch, &s, blocks).unwrap()
            };
            assert_eq!(got.grad_image.kind(), kind);
            let gb = got.grad_logit_bias.unwrap_or_else(|| Tensor::zeros([], (kind, Device::Cpu)));
            let diffs = [
                max_diff(&got.loss, &want[0]),
                max_diff(&got.grad_image, &want[1]),
                max_diff(&got.grad_text, &want[2]),
                max_diff(&got.grad_logit_scale, &want[3]),
                max_diff(&gb, &want[4]),
            ];
            assert!(diffs.iter().all(|d| *d < tol), "{kind:?} siglip={siglip} offset {offset} {blocks:?}: {diffs:?}");
        }
    }
}

/// Equals autograd on the plain b×N CLIP loss: fp64 within 1e-12, fp32 within 1e-5.
#[test]
fn clip_blockwise_equals_autograd() {
    check(Kind::Double, 1e-12, false);
    check(Kind::Float, 1e-5, false);
}

/// Equals autograd on the plain b×N SigLIP loss: fp64 within 1e-12, fp32 within 1e-5.
#[test]
fn siglip_blockwise_equals_autograd() {
    check(Kind::Double, 1e-12, true);
    check(Kind::Float, 1e-5, true);
}

/// W ranks' gradients, summed, equal one process's gradient over N (DESIGN §3 parity
/// target), and the rank losses sum to W·L.
#[test]
fn rank_gradients_sum_to_single_process_gradients() {
    tch::manual_seed(23);
    let (w, b, d) = (3, 5, 6);
    let n = w * b;
    let (image, text) = (features(n, d, Kind::Double), features(n, d, Kind::Double));
    let s = Tensor::from(4.0f64);
    let blocks = BlockSizes::tiles(2, 4);
    let single = clip_loss_blockwise(&ContrastiveBatch::local(&image, &text), &s, blocks).unwrap();
    let (mut gi, mut gt, mut loss) = (image.zeros_like(), text.zeros_like(), 0.0);
    for g in per_rank(&image, &text, w, |batch| clip_loss_blockwise(batch, &s, blocks).unwrap()) {
        gi += g.grad_image;
        gt += g.grad_text;
        loss += g.loss.double_value(&[]);
    }
    let wf = w as f64;
    assert!((loss - wf * single.loss.double_value(&[])).abs() < 1e-12);
    assert!(max_diff(&gi, &(&single.grad_image * wf)) < 1e-12);
    assert!(max_diff(&gt, &(&single.grad_text * wf)) < 1e-12);
}

/// DESIGN §3 steps 3–5 with gradient caching: embed two micro-batches without a graph,
/// take G from the blockwise loss, re-run each micro-batch and back-propagate
/// `(f·g).sum()` plus `s·∂s` (and `β·∂β`): every parameter gradient, θ's and β's included,
/// equals plain autograd through the loss on the whole batch (CLIP, and SigLIP with
/// OpenCLIP's initial θ and β).
#[test]
fn cached_feature_gradients_reach_the_encoders_like_autograd() {
    use crate::loss::clip_loss_global;
    use crate::model::{Clip, ClipConfig};
    for siglip in [false, true] {
        tch::manual_seed(29);
        let cfg = if siglip { ClipConfig::tiny().with_siglip_init() } else { ClipConfig::tiny() };
        let model = Clip::new(&cfg, Device::Cpu).unwrap();
        let (b, micro) = (8, 4);
        let size = cfg.vision_cfg.image_size;
        let images = Tensor::randn([b, 3, size, size], (Kind::Float, Device::Cpu));
        let tokens = Tensor::randint_low(
            1,
            cfg.text_cfg.vocab_size,
            [b, cfg.text_cfg.context_length],
            (Kind::Int64, Device::Cpu),
        );
        let params = model.named_parameters();
        let grads = || -> Vec<Tensor> { params.iter().map(|(_, p)| p.grad().copy()).collect() };
        let zero = || params.iter().for_each(|(_, p)| p.shallow_clone().zero_grad());
        let s = || model.logit_scale().exp();

        let (i, t) = model.forward(&images, &tokens);
        let loss = match model.logit_bias() {
            Some(bias) => siglip_loss(&ContrastiveBatch::local(&i, &t), &s(), bias),
            None => clip_loss_global(&i, &t, &s()),
        };
        loss.backward();
        let want = grads();
        zero();

        let (i_all, t_all) = tch::no_grad(|| model.forward(&images, &tokens));
        let batch = ContrastiveBatch::local(&i_all, &t_all);
        let blocks = BlockSizes::tiles(3, 5);
        let g = match model.logit_bias() {
            Some(bias) => siglip_loss_blockwise(&batch, &s(), bias, blocks).unwrap(),
            None => clip_loss_blockwise(&batch, &s(), blocks).unwrap(),
        };
        for j in 0..b / micro {
            let (fi, ft) = model.forward(&images.narrow(0, j * micro, micro), &tokens.narrow(0, j * micro, micro));
            let (gi, gt) = (g.grad_image.narrow(0, j * micro, micro), g.grad_text.narrow(0, j * micro, micro));
            ((fi * gi).sum(Kind::Float) + (ft * gt).sum(Kind::Float)).backward();
        }
        let mut scalars = s() * &g.grad_logit_scale;
        if let (Some(bias), Some(gb)) = (model.logit_bias(), &g.grad_logit_bias) {
            scalars += bias * gb;
        }
        scalars.backward();
        for ((name, _), (got, want)) in params.iter().zip(grads().iter().zip(&want)) {
            let scale = want.abs().max().double_value(&[]).max(1e-3);
            let d = max_diff(got, want);
            assert!(d <= 1e-4 * scale, "siglip={siglip} {name}: max |Δ| {d:.3e} against max |grad| {scale:.3e}");
        }
    }
}

#[test]
fn rejects_bad_blocks_and_offsets() {
    let x = features(4, 3, Kind::Float);
    let s = Tensor::from(1.0f64);
    let batch = ContrastiveBatch::local(&x, &x);
    assert!(clip_loss_blockwise(&batch, &s, BlockSizes::rows(0)).is_err());
    assert!(clip_loss_blockwise(&batch, &s, BlockSizes::tiles(1, 0)).is_err());
    let local = x.narrow(0, 0, 2);
    let bad = ContrastiveBatch { image_local: &local, text_local: &local, image_all: &x, text_all: &x, row_offset: 3 };
    assert!(clip_loss_blockwise(&bad, &s, BlockSizes::default()).is_err());
}
