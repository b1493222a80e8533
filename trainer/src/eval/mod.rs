//! Evaluation: image↔text retrieval and the validation loss on held-out pairs (the synthetic
//! held-out split or `val_data` shards), and zero-shot classification with prompt templates
//! on the synthetic classes.
//!
//! [`EvalPlan`] is the one place that decides what an evaluation reads: the run evaluates
//! with [`EvalPlan::for_run`], `clipfleet eval` with [`EvalPlan::for_checkpoint`], and both
//! give the same data, batch and transform, so a run's `eval.json` equals `clipfleet eval`
//! on its checkpoint.

mod plan;
pub mod zero_shot;

pub use plan::{
    evaluate_checkpoint, load_checkpoint_model, log_eval, CheckpointEval, EvalData, EvalPlan, LoadedCheckpoint,
};

use std::sync::Arc;

use clipfleet_dataloader::batch::ImageBatch;
use clipfleet_dataloader::loader::{Loader, LoaderConfig};
use clipfleet_dataloader::store::ShardStore;
use clipfleet_dataloader::synthetic::{class_names, zero_shot_templates, Split, SyntheticDataset};
use clipfleet_dataloader::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::images_to_tensor;
use crate::error::{Result, TrainError};
use crate::loss::clip_loss_global;
use crate::loss::filip::{retrieval_scores, FilipLayout, TokenSet};
use crate::model::{l2_normalize, Clip};

/// What `clipfleet eval --json` prints. Recalls and accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Zero-shot top-1 accuracy over [`EvalReport::num_classes`] classes: on `zero_shot_data`
    /// when set, else on the synthetic held-out split (`None` on `val_data` shards).
    pub zero_shot_top1: Option<f64>,
    /// Zero-shot top-5 accuracy.
    pub zero_shot_top5: Option<f64>,
    /// Zero-shot mean per-class recall (with `zero_shot_data` only).
    #[serde(default)]
    pub zero_shot_mean_per_class_recall: Option<f64>,
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
    /// Mean CLIP loss over held-out batches of the plan's batch size (`batch_size × world_size` of
    /// the run), weighted by batch size.
    pub val_loss: f64,
    /// Held-out pairs evaluated.
    pub num_samples: i64,
    /// Zero-shot classes (0 without zero-shot classification).
    pub num_classes: i64,
    /// The optimizer step of the evaluated weights.
    pub step: i64,
}

/// One line for people: zero-shot accuracy with its chance level (when there are classes),
/// retrieval recalls in both directions with the chance level of R@1, and the loss.
impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (Some(top1), Some(top5)) = (self.zero_shot_top1, self.zero_shot_top5) {
            write!(
                f,
                "zero-shot top-1 {:.1}% top-5 {:.1}% over {} classes (chance {:.1}%); ",
                100.0 * top1,
                100.0 * top5,
                self.num_classes,
                100.0 / self.num_classes.max(1) as f64
            )?;
        }
        write!(
            f,
            "image→text R@1/5/10 {:.1}/{:.1}/{:.1}%, text→image R@1/5/10 {:.1}/{:.1}/{:.1}% over {} held-out pairs \
             (chance R@1 {:.2}%); val loss {:.4}",
            100.0 * self.image_to_text_r1,
            100.0 * self.image_to_text_r5,
            100.0 * self.image_to_text_r10,
            100.0 * self.text_to_image_r1,
            100.0 * self.text_to_image_r5,
            100.0 * self.text_to_image_r10,
            self.num_samples,
            100.0 / self.num_samples.max(1) as f64,
            self.val_loss
        )
    }
}

/// Fraction of rows whose true item (`truth[i]`) ranks within the top `k` of `scores[i]`.
/// The rank is the number of candidates scoring strictly higher than the true one, so
/// exact ties (identical captions) do not count against it.
fn recall_at(scores: &Tensor, truth: &Tensor, ks: &[i64]) -> Vec<f64> {
    let true_scores = scores.gather(1, &truth.unsqueeze(1), false);
    let rank = scores.gt_tensor(&true_scores).sum_dim_intlist(1, false, Kind::Int64);
    ks.iter().map(|&k| rank.lt(k).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])).collect()
}

/// How an evaluation scores an image against a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// Cosine similarity of the pooled embeddings (CLIP, SigLIP).
    #[default]
    Pooled,
    /// FILIP's token-wise scores: S^I ranks texts for an image, S^T images for a text, and
    /// the validation loss is FILIP's.
    Filip,
}

/// FILIP's (S^I, S^T) of every image row against every text row ([`crate::loss::filip::FilipLayout`]).
fn filip_scores(image_rows: &Tensor, text_rows: &Tensor, layout: FilipLayout) -> (Tensor, Tensor) {
    let (images, image_mask) = layout.images(image_rows);
    let (texts, text_mask) = layout.texts(text_rows);
    retrieval_scores(TokenSet { tokens: &images, mask: &image_mask }, TokenSet { tokens: &texts, mask: &text_mask })
}

/// FILIP's loss over a batch from its scores: ½[CE(s·S^I) + CE(s·(S^T)ᵀ)], labels the diagonal.
fn filip_scores_loss((s_image, s_text): &(Tensor, Tensor), scale: &Tensor) -> Tensor {
    let n = s_image.size()[0];
    let labels = Tensor::arange(n, (Kind::Int64, s_image.device()));
    let ce =
        |logits: Tensor| -logits.log_softmax(1, Kind::Float).gather(1, &labels.view([n, 1]), false).mean(Kind::Float);
    (ce(s_image * scale) + ce(s_text.tr() * scale)) / 2.0
}

/// One batch of held-out pairs.
#[derive(Debug)]
pub struct EvalBatch {
    /// uint8 NHWC images.
    pub images: ImageBatch,
    /// Token ids, row-major.
    pub tokens: Vec<i64>,
    /// Synthetic class labels, for zero-shot classification.
    pub labels: Option<Vec<i64>>,
}

/// Runs the whole evaluation on the first `samples` held-out synthetic pairs.
pub fn evaluate(
    model: &Clip,
    dataset: &SyntheticDataset,
    tokenizer: &dyn Tokenizer,
    samples: i64,
    batch_size: i64,
    step: i64,
    scoring: Scoring,
) -> Result<EvalReport> {
    let _eval = model.eval_mode();
    let ctx = model.config().text_cfg.context_length as usize;
    let starts = (0..samples).step_by(batch_size.max(1) as usize);
    let batches = starts.map(|start| {
        let n = batch_size.min(samples - start);
        let indices: Vec<u64> = (start as u64..(start + n) as u64).collect();
        let (images, captions, labels) = dataset.batch(Split::Val, &indices, None);
        let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
        let tokens = tokenizer.tokenize_batch(&texts, ctx);
        Ok(EvalBatch { images, tokens, labels: Some(labels.iter().map(|&l| i64::from(l)).collect()) })
    });
    evaluate_batches(model, batches, tokenizer, step, scoring)
}

/// Runs the evaluation on the first `samples` pairs of `val_data` shards, read in order with
/// the evaluation transform. Retrieval and loss only: shards carry no class names.
///
/// # Errors
/// Fatal data errors (a missing shard, skips over the limit).
pub fn evaluate_shards(
    model: &Clip,
    cfg: LoaderConfig,
    store: Arc<ShardStore>,
    tokenizer: Arc<dyn Tokenizer>,
    samples: i64,
    step: i64,
    scoring: Scoring,
) -> Result<EvalReport> {
    let _eval = model.eval_mode();
    let mut loader = Loader::new(cfg, store, Arc::clone(&tokenizer), None)?;
    let ctx = model.config().text_cfg.context_length as usize;
    let mut remaining = samples.max(0) as usize;
    let batches = std::iter::from_fn(move || {
        if remaining == 0 {
            return None;
        }
        match loader.next_batch() {
            Ok(None) => None,
            Ok(Some(mut b)) => {
                let n = b.keys.len().min(remaining);
                remaining -= n;
                let pixels = b.images.height * b.images.width * 3;
                b.images.data.truncate(n * pixels);
                b.images.batch = n;
                b.tokens.truncate(n * ctx);
                Some(Ok(EvalBatch { images: b.images, tokens: b.tokens, labels: None }))
            }
            Err(e) => Some(Err(e.into())),
        }
    });
    evaluate_batches(model, batches, tokenizer.as_ref(), step, scoring)
}

/// Runs the evaluation over `batches`; zero-shot classification when every batch has labels.
///
/// # Errors
/// The first error of `batches`; [`TrainError::TooFewEvalPairs`] when they hold fewer than 2 pairs.
pub fn evaluate_batches(
    model: &Clip,
    batches: impl Iterator<Item = Result<EvalBatch>>,
    tokenizer: &dyn Tokenizer,
    step: i64,
    scoring: Scoring,
) -> Result<EvalReport> {
    let _eval = model.eval_mode();
    let device = model.device();
    let filip = scoring == Scoring::Filip;
    let layout = model.filip_layout();
    let ctx = model.config().text_cfg.context_length;
    tch::no_grad(|| {
        let mut image_feats = Vec::new();
        let mut text_feats = Vec::new();
        let mut labels: Option<Vec<i64>> = Some(Vec::new());
        let mut losses = Vec::new();
        let scale = model.logit_scale().exp();
        for batch in batches {
            let batch = batch?;
            let n = batch.images.batch as i64;
            if n == 0 {
                continue;
            }
            let tokens = model.text_input(&batch.tokens);
            let images = images_to_tensor(&batch.images, device);
            let (img, txt) =
                if filip { model.forward_filip(&images, &tokens) } else { model.forward(&images, &tokens) };
            if n > 1 {
                let loss = match filip {
                    true => filip_scores_loss(&filip_scores(&img, &txt, layout), &scale),
                    false => clip_loss_global(&img, &txt, &scale),
                };
                losses.push((n as f64, loss.double_value(&[])));
            }
            image_feats.push(img.to_kind(Kind::Float));
            text_feats.push(txt.to_kind(Kind::Float));
            match (&mut labels, batch.labels) {
                (Some(all), Some(l)) => all.extend(l),
                _ => labels = None,
            }
        }
        let samples: i64 = image_feats.iter().map(|t| t.size()[0]).sum();
        if samples < 2 {
            return Err(TrainError::TooFewEvalPairs { pairs: samples });
        }
        let images = Tensor::cat(&image_feats, 0);
        let texts = Tensor::cat(&text_feats, 0);

        // Zero-shot: one classifier row per class, the renormalised mean of its prompts.
        let (zs, num_classes) = match labels {
            Some(labels) => {
                let labels = Tensor::from_slice(&labels).to_device(device);
                let names = class_names();
                let templates = zero_shot_templates();
                let mut class_rows = Vec::with_capacity(names.len());
                for name in &names {
                    let prompts: Vec<String> = templates.iter().map(|t| t.replace("{}", name)).collect();
                    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
                    let tokens = model.text_input(&tokenizer.tokenize_batch(&refs, ctx as usize));
                    if filip {
                        // FILIP: a class scores the mean of S^I over its prompts.
                        class_rows.push(model.encode_text_filip(&tokens));
                        continue;
                    }
                    let emb = l2_normalize(&model.encode_text(&tokens)).to_kind(Kind::Float);
                    class_rows.push(l2_normalize(&emb.mean_dim(0, false, Kind::Float)));
                }
                let logits = if filip {
                    let prompts = Tensor::cat(&class_rows, 0);
                    let (s_image, _) = filip_scores(&images, &prompts, layout);
                    s_image.view([samples, names.len() as i64, -1]).mean_dim(2, false, Kind::Float)
                } else {
                    images.matmul(&Tensor::stack(&class_rows, 0).tr())
                };
                let zs = recall_at(&logits, &labels, &[1, 5]);
                ((Some(zs[0]), Some(zs[1])), names.len() as i64)
            }
            None => ((None, None), 0),
        };

        let (i2t_scores, t2i_scores) = match filip {
            true => {
                let (s_image, s_text) = filip_scores(&images, &texts, layout);
                (s_image, s_text.tr())
            }
            false => {
                let sims = images.matmul(&texts.tr());
                (sims.shallow_clone(), sims.tr())
            }
        };
        let diag = Tensor::arange(samples, (Kind::Int64, device));
        let i2t = recall_at(&i2t_scores, &diag, &[1, 5, 10]);
        let t2i = recall_at(&t2i_scores, &diag, &[1, 5, 10]);
        let weight: f64 = losses.iter().map(|(n, _)| n).sum();
        let val_loss = losses.iter().map(|(n, l)| n * l).sum::<f64>() / weight.max(1.0);
        Ok(EvalReport {
            zero_shot_top1: zs.0,
            zero_shot_top5: zs.1,
            zero_shot_mean_per_class_recall: None,
            image_to_text_r1: i2t[0],
            image_to_text_r5: i2t[1],
            image_to_text_r10: i2t[2],
            text_to_image_r1: t2i[0],
            text_to_image_r5: t2i[1],
            text_to_image_r10: t2i[2],
            val_loss,
            num_samples: samples,
            num_classes,
            step,
        })
    })
}
