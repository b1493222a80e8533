//! Evaluation on the held-out synthetic split: zero-shot classification with prompt
//! templates, image↔text retrieval, and the validation loss.

use clipfleet_dataloader::synthetic::{class_names, zero_shot_templates, Split, SyntheticDataset};
use clipfleet_dataloader::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::{images_to_tensor, tokens_to_tensor};
use crate::loss::clip_loss_global;
use crate::model::{l2_normalize, Clip};

/// What `clipfleet eval --json` prints. Recalls and accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Zero-shot top-1 accuracy over [`EvalReport::num_classes`] classes.
    pub zero_shot_top1: f64,
    /// Zero-shot top-5 accuracy.
    pub zero_shot_top5: f64,
    /// Image→text recall@1 over the held-out captions.
    pub image_to_text_r1: f64,
    /// Image→text recall@5.
    pub image_to_text_r5: f64,
    /// Image→text recall@10.
    pub image_to_text_r10: f64,
    /// Text→image recall@1.
    pub text_to_image_r1: f64,
    /// Text→image recall@5.
    pub text_to_image_r5: f64,
    /// Text→image recall@10.
    pub text_to_image_r10: f64,
    /// Mean CLIP loss over held-out batches of `batch_size` pairs (weighted by batch size).
    pub val_loss: f64,
    /// Held-out pairs evaluated.
    pub num_samples: i64,
    /// Zero-shot classes.
    pub num_classes: i64,
    /// The optimizer step of the evaluated weights.
    pub step: i64,
}

/// Fraction of rows whose true item (`truth[i]`) ranks within the top `k` of `scores[i]`.
/// The rank is the number of candidates scoring strictly higher than the true one, so
/// exact ties (identical captions) do not count against it.
fn recall_at(scores: &Tensor, truth: &Tensor, ks: &[i64]) -> Vec<f64> {
    let true_scores = scores.gather(1, &truth.unsqueeze(1), false);
    let rank = scores.gt_tensor(&true_scores).sum_dim_intlist(1, false, Kind::Int64);
    ks.iter().map(|&k| rank.lt(k).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])).collect()
}

/// Runs the whole evaluation on the first `samples` held-out pairs.
pub fn evaluate(
    model: &Clip,
    dataset: &SyntheticDataset,
    tokenizer: &dyn Tokenizer,
    samples: i64,
    batch_size: i64,
    step: i64,
) -> EvalReport {
    let device = model.device();
    let ctx = model.config().text_cfg.context_length;
    tch::no_grad(|| {
        let mut image_feats = Vec::new();
        let mut text_feats = Vec::new();
        let mut labels = Vec::new();
        let mut losses = Vec::new();
        let scale = model.logit_scale().exp();
        let mut start = 0i64;
        while start < samples {
            let n = batch_size.min(samples - start);
            let indices: Vec<u64> = (start as u64..(start + n) as u64).collect();
            let (images, captions, batch_labels) = dataset.batch(Split::Val, &indices, None);
            let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
            let tokens = tokens_to_tensor(&tokenizer.tokenize_batch(&texts, ctx as usize), ctx, device);
            let (img, txt) = model.forward(&images_to_tensor(&images, device), &tokens);
            if n > 1 {
                losses.push((n as f64, clip_loss_global(&img, &txt, &scale).double_value(&[])));
            }
            image_feats.push(img.to_kind(Kind::Float));
            text_feats.push(txt.to_kind(Kind::Float));
            labels.extend(batch_labels.iter().map(|&l| l as i64));
            start += n;
        }
        let images = Tensor::cat(&image_feats, 0);
        let texts = Tensor::cat(&text_feats, 0);
        let labels = Tensor::from_slice(&labels).to_device(device);

        // Zero-shot: one classifier row per class, the renormalised mean of its prompts.
        let names = class_names();
        let templates = zero_shot_templates();
        let mut class_rows = Vec::with_capacity(names.len());
        for name in &names {
            let prompts: Vec<String> = templates.iter().map(|t| t.replace("{}", name)).collect();
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            let tokens = tokens_to_tensor(&tokenizer.tokenize_batch(&refs, ctx as usize), ctx, device);
            let emb = l2_normalize(&model.encode_text(&tokens)).to_kind(Kind::Float);
            class_rows.push(l2_normalize(&emb.mean_dim(0, false, Kind::Float)));
        }
        let classifier = Tensor::stack(&class_rows, 0);
        let logits = images.matmul(&classifier.tr());
        let zs = recall_at(&logits, &labels, &[1, 5]);

        let sims = images.matmul(&texts.tr());
        let diag = Tensor::arange(samples, (Kind::Int64, device));
        let i2t = recall_at(&sims, &diag, &[1, 5, 10]);
        let t2i = recall_at(&sims.tr(), &diag, &[1, 5, 10]);
        // Weighted by batch size; `samples >= 2` (validated) guarantees one batch of two or more.
        let weight: f64 = losses.iter().map(|(n, _)| n).sum();
        let val_loss = losses.iter().map(|(n, l)| n * l).sum::<f64>() / weight.max(1.0);
        EvalReport {
            zero_shot_top1: zs[0],
            zero_shot_top5: zs[1],
            image_to_text_r1: i2t[0],
            image_to_text_r5: i2t[1],
            image_to_text_r10: i2t[2],
            text_to_image_r1: t2i[0],
            text_to_image_r5: t2i[1],
            text_to_image_r10: t2i[2],
            val_loss,
            num_samples: samples,
            num_classes: names.len() as i64,
            step,
        }
    })
}
