//! Embeddings for retrieval indexes (`clipfleet embed`): L2-normalised float32 image and
//! caption embeddings on the CPU, in input order, computed in batches.

use clipfleet_dataloader::batch::ImageBatch;
use clipfleet_dataloader::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

use crate::data::images_to_tensor;
use crate::model::{l2_normalize, Clip};

/// Embeds each batch of images (uint8, already resized and centre-cropped to the model's
/// size; normalised here as in training).
///
/// # Shapes
/// Batches of [b_i, S, S, 3] uint8 → [Σ b_i, embed_dim] float32 on the CPU.
/// Batches are read one at a time, so a caller that decodes them lazily holds one batch of
/// images at a time; the first error of `batches` is returned.
pub fn embed_images<E>(model: &Clip, batches: impl IntoIterator<Item = Result<ImageBatch, E>>) -> Result<Tensor, E> {
    let _eval = model.eval_mode();
    let mut chunks = Vec::new();
    for batch in batches {
        let batch = batch?;
        let emb = tch::no_grad(|| l2_normalize(&model.encode_image(&images_to_tensor(&batch, model.device()))));
        chunks.push(emb.to_kind(Kind::Float).to_device(Device::Cpu));
    }
    Ok(Tensor::cat(&chunks, 0))
}

/// Embeds `captions`, `batch_size` at a time.
///
/// # Shapes
/// n captions → [n, embed_dim] float32 on the CPU.
pub fn embed_texts(model: &Clip, tokenizer: &dyn Tokenizer, captions: &[&str], batch_size: usize) -> Tensor {
    let _eval = model.eval_mode();
    let ctx = model.config().text_cfg.context_length;
    let chunks: Vec<Tensor> = captions
        .chunks(batch_size.max(1))
        .map(|batch| {
            let tokens = model.text_input(&tokenizer.tokenize_batch(batch, ctx as usize));
            let emb = tch::no_grad(|| l2_normalize(&model.encode_text(&tokens)));
            emb.to_kind(Kind::Float).to_device(Device::Cpu)
        })
        .collect();
    Tensor::cat(&chunks, 0)
}
