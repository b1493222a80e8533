//! FILIP has no open reference implementation: the blockwise loss is checked against a direct
//! dense computation written here pair by pair (real tokens selected, no masking tricks),
//! across simulated ranks, and against finite differences.

use tch::{Device, Kind, Tensor};

use super::*;

const D: i64 = 6;
const LI: i64 = 4;
const LT: i64 = 5;

/// N random pairs in double precision: image tokens [N, LI, D], text tokens [N, LT, D] with
/// 2..=LT real tokens per text, all L2-normalised.
fn pairs(n: i64, seed: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(seed);
    let norm = |t: Tensor| &t / t.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true);
    let images = norm(Tensor::randn([n, LI, D], (Kind::Double, Device::Cpu)));
    let texts = norm(Tensor::randn([n, LT, D], (Kind::Double, Device::Cpu)));
    let lens = Tensor::randint_low(2, LT + 1, [n, 1], (Kind::Int64, Device::Cpu));
    let mask = Tensor::arange(LT, (Kind::Int64, Device::Cpu)).view([1, LT]).lt_tensor(&lens).to_kind(Kind::Double);
    (images, texts * mask.unsqueeze(-1), mask)
}

/// The global FILIP loss by definition, pair by pair, with autograd.
fn dense_loss(images: &Tensor, texts: &Tensor, mask: &Tensor, scale: &Tensor) -> Tensor {
    let n = images.size()[0];
    let mut s_image = Vec::new();
    let mut s_text = Vec::new();
    for i in 0..n {
        for j in 0..n {
            let len = mask.get(j).sum(Kind::Double).int64_value(&[]);
            let y = texts.get(j).narrow(0, 0, len);
            let sim = images.get(i).matmul(&y.tr()); // [LI, len]
            s_image.push(sim.amax([1i64].as_slice(), false).mean(Kind::Double));
            s_text.push(sim.amax([0i64].as_slice(), false).mean(Kind::Double));
        }
    }
    let s_i = Tensor::stack(&s_image, 0).view([n, n]);
    let s_t = Tensor::stack(&s_text, 0).view([n, n]);
    let labels = Tensor::arange(n, (Kind::Int64, Device::Cpu));
    let ce =
        |logits: Tensor| -logits.log_softmax(1, Kind::Double).gather(1, &labels.view([n, 1]), false).mean(Kind::Double);
    (ce(&s_i * scale) + ce(s_t.tr() * scale)) / 2.0
}

fn layout() -> FilipLayout {
    FilipLayout { dim: D, text_tokens: LT }
}

/// The rows a step gathers.
fn rows(images: &Tensor, texts: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
    let n = images.size()[0];
    (images.reshape([n, -1]), layout().text_rows(texts, mask))
}

/// W simulated ranks of b pairs (tiles of `blocks`): the mean of loss_r is the dense loss, and
/// the sum over ranks of the gathered-row gradients is W × the dense gradient.
fn check_ranks(world: i64, b: i64, blocks: BlockSizes) {
    let n = world * b;
    let (images, texts, mask) = pairs(n, 3);
    let s = Tensor::from(7.5f64);
    let (image_rows, text_rows) = rows(&images, &texts, &mask);
    let mut loss = 0.0;
    let mut g_image = Tensor::zeros_like(&image_rows);
    let mut g_text = Tensor::zeros_like(&text_rows);
    let mut g_scale = 0.0;
    for r in 0..world {
        let local = |t: &Tensor| t.narrow(0, r * b, b);
        let batch = ContrastiveBatch {
            image_local: &local(&image_rows),
            text_local: &local(&text_rows),
            image_all: &image_rows,
            text_all: &text_rows,
            row_offset: r * b,
        };
        let out = filip_loss_blockwise(&batch, layout(), &s, blocks).unwrap();
        loss += out.loss.double_value(&[]) / world as f64;
        g_image += out.grad_image;
        g_text += out.grad_text;
        g_scale += out.grad_logit_scale.double_value(&[]);
    }
    let (leaf_i, leaf_t, leaf_s) = (
        images.detach().set_requires_grad(true),
        texts.detach().set_requires_grad(true),
        s.detach().set_requires_grad(true),
    );
    let dense = dense_loss(&leaf_i, &leaf_t, &mask, &leaf_s);
    dense.backward();
    let w = world as f64;
    assert!((loss - dense.double_value(&[])).abs() < 1e-12, "loss {loss} vs dense {}", dense.double_value(&[]));
    let text_grad = layout().texts(&g_text);
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(diff(&g_image.view([n, LI, D]), &(leaf_i.grad() * w)) < 1e-12, "image token gradients");
    assert!(diff(&text_grad.0, &(leaf_t.grad() * mask.unsqueeze(-1) * w)) < 1e-12, "text token gradients");
    assert_eq!(text_grad.1.abs().sum(Kind::Double).double_value(&[]), 0.0, "no gradient into the mask");
    let padded = (&text_grad.0 * (mask.unsqueeze(-1) * -1.0 + 1.0)).abs().max().double_value(&[]);
    assert_eq!(padded, 0.0, "padding tokens get no gradient");
    assert!((g_scale - leaf_s.grad().double_value(&[]) * w).abs() < 1e-12, "scale gradient");
}

#[test]
fn one_process_matches_the_dense_loss() {
    check_ranks(1, 7, BlockSizes::default());
    check_ranks(1, 7, BlockSizes::tiles(3, 2));
}

#[test]
fn ranks_sum_to_the_dense_gradient() {
    check_ranks(3, 3, BlockSizes::default());
    check_ranks(2, 4, BlockSizes::tiles(3, 5));
}

/// Central differences of the blockwise loss (one process) against its gradients, for a few
/// token coordinates and the scale.
#[test]
fn gradients_match_finite_differences() {
    let n = 5;
    let (images, texts, mask) = pairs(n, 8);
    let s = Tensor::from(4.0f64);
    let loss_at = |images: &Tensor, texts: &Tensor, s: &Tensor| {
        let (ir, tr) = rows(images, texts, &mask);
        let batch = ContrastiveBatch::local(&ir, &tr);
        filip_loss_blockwise(&batch, layout(), s, BlockSizes::tiles(2, 3)).unwrap()
    };
    let base = loss_at(&images, &texts, &s);
    let g_image = base.grad_image.view([n, LI, D]);
    let (g_text, _) = layout().texts(&base.grad_text);
    let h = 1e-6;
    let bump = |t: &Tensor, idx: [i64; 3], by: f64| {
        let t = t.copy();
        let _ = t.get(idx[0]).get(idx[1]).get(idx[2]).g_add_scalar_(by);
        t
    };
    for idx in [[0, 0, 0], [2, 3, 5], [4, 1, 2]] {
        let fd = (loss_at(&bump(&images, idx, h), &texts, &s).loss.double_value(&[])
            - loss_at(&bump(&images, idx, -h), &texts, &s).loss.double_value(&[]))
            / (2.0 * h);
        let got = g_image.double_value(&idx);
        assert!((fd - got).abs() < 1e-7, "image {idx:?}: {fd} vs {got}");
    }
    for idx in [[0, 0, 1], [1, 1, 0], [3, 0, 4]] {
        let fd = (loss_at(&images, &bump(&texts, idx, h), &s).loss.double_value(&[])
            - loss_at(&images, &bump(&texts, idx, -h), &s).loss.double_value(&[]))
            / (2.0 * h);
        let got = g_text.double_value(&idx);
        assert!((fd - got).abs() < 1e-7, "text {idx:?}: {fd} vs {got}");
    }
    let fd = (loss_at(&images, &texts, &(&s + h)).loss.double_value(&[])
        - loss_at(&images, &texts, &(&s - h)).loss.double_value(&[]))
        / (2.0 * h);
    let got = base.grad_logit_scale.double_value(&[]);
    assert!((fd - got).abs() < 1e-7, "scale: {fd} vs {got}");
}

/// Retrieval scores equal the loss's pair scores, whatever the tiling.
#[test]
fn retrieval_scores_equal_pair_scores() {
    let (images, texts, mask) = pairs(9, 2);
    let ones = Tensor::ones([9, LI], (Kind::Double, Device::Cpu));
    let a = TokenSet { tokens: &images, mask: &ones };
    let b = TokenSet { tokens: &texts, mask: &mask };
    let (s_i, s_t) = retrieval_scores(a, b);
    let (d_i, d_t) = pair_scores(a, b);
    assert!(s_i.to_kind(Kind::Double).allclose(&d_i, 1e-6, 1e-6, false));
    assert!(s_t.to_kind(Kind::Double).allclose(&d_t, 1e-6, 1e-6, false));
}
