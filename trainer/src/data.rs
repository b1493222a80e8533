//! Feeding the trainer: the training stream (the synthetic stream or the shard loader, both
//! from `clipfleet-dataloader`), the tokenizer choice, and the host-to-device path (uint8
//! images in, normalised on the device).

use std::path::Path;
use std::sync::Arc;

use clipfleet_dataloader::batch::ImageBatch;
use clipfleet_dataloader::loader::{Loader, LoaderState};
use clipfleet_dataloader::skip::SkipCounts;
pub use clipfleet_dataloader::synthetic::stream::DataPosition;
use clipfleet_dataloader::synthetic::stream::SyntheticStream;
use clipfleet_dataloader::tokenizer::bpe::default_vocab_path;
use clipfleet_dataloader::tokenizer::word::{WordTokenizer, WORD_VOCAB_SIZE};
use clipfleet_dataloader::tokenizer::{BpeTokenizer, Tokenizer};
use tch::{Device, Kind, Tensor};

use crate::error::{ConfigError, Result, TrainError};
use crate::model::ClipConfig;

/// OpenCLIP's (OpenAI's) per-channel normalisation mean.
pub const OPENAI_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenCLIP's (OpenAI's) per-channel normalisation standard deviation.
pub const OPENAI_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// One batch on the host.
#[derive(Debug)]
pub struct HostBatch {
    /// uint8 NHWC images.
    pub images: ImageBatch,
    /// Token ids, row-major [batch, context_length].
    pub tokens: Vec<i64>,
    /// Class labels (synthetic data).
    pub labels: Vec<u32>,
    /// The stream position after this batch: what a checkpoint taken after it stores.
    pub position_after: DataPosition,
    /// The shard loader's exact position after this batch (shard data only).
    pub shards_after: Option<LoaderState>,
}

/// The training stream: the synthetic generator or the shard loader.
#[derive(Debug)]
pub enum TrainStream {
    /// The built-in synthetic data.
    Synthetic(SyntheticStream),
    /// `train_data` shards.
    Shards(Box<Loader>),
}

impl TrainStream {
    /// The next batch; blocks while the producers catch up.
    ///
    /// # Errors
    /// The data pipeline's errors; [`TrainError::DataEnded`] when the shard loader ends (it
    /// does when the epoch's length is unknown: no `sizes.json` and no `train_num_samples`).
    pub fn next_batch(&mut self) -> Result<HostBatch> {
        match self {
            TrainStream::Synthetic(s) => {
                let b = s.next_batch()?;
                Ok(HostBatch {
                    images: b.images,
                    tokens: b.tokens,
                    labels: b.labels,
                    position_after: b.position_after,
                    shards_after: None,
                })
            }
            TrainStream::Shards(loader) => {
                let batch = loader.next_batch()?.ok_or(TrainError::DataEnded)?;
                let state = batch.state_after;
                let global = loader.config().global_batch_size as u64;
                Ok(HostBatch {
                    images: batch.images,
                    tokens: batch.tokens,
                    labels: Vec::new(),
                    position_after: DataPosition { epoch: state.epoch, samples_in_epoch: state.step * global },
                    shards_after: Some(state),
                })
            }
        }
    }

    /// Skips so far (shards only).
    pub fn skips(&self) -> Option<Arc<SkipCounts>> {
        match self {
            TrainStream::Synthetic(_) => None,
            TrainStream::Shards(loader) => Some(loader.skips()),
        }
    }
}

/// Picks the tokenizer for a model. A `vocab` file wins: a Hugging Face `tokenizer.json` or
/// OpenCLIP's BPE merges, whose ids must fit the model's vocabulary. Without one: the built-in
/// word tokenizer for the synthetic 512-token vocabulary, OpenCLIP's BPE (from the default
/// path) for the 49,408-token vocabulary.
pub fn tokenizer_for(model: &ClipConfig, vocab: Option<&Path>) -> Result<Arc<dyn Tokenizer>> {
    let model_vocab = model.text_cfg.vocab_size as usize;
    if let Some(path) = vocab {
        let tokenizer = clipfleet_dataloader::tokenizer::load(path)?;
        if tokenizer.vocab_size() > model_vocab {
            return Err(ConfigError::invalid(
                "vocab",
                path.display(),
                format!(
                    "a tokenizer with at most text_cfg.vocab_size = {model_vocab} ids (this one has {})",
                    tokenizer.vocab_size()
                ),
            )
            .into());
        }
        return Ok(tokenizer);
    }
    match model_vocab {
        WORD_VOCAB_SIZE => Ok(Arc::new(WordTokenizer::new())),
        49408 => {
            let path = match default_vocab_path() {
                Some(p) => p,
                None => {
                    return Err(ConfigError::invalid(
                        "vocab",
                        "unset",
                        "the path of bpe_simple_vocab_16e6.txt.gz or a tokenizer.json (run scripts/setup.sh to fetch the former into .cache/, or set CLIPFLEET_BPE_VOCAB)",
                    )
                    .into())
                }
            };
            Ok(Arc::new(BpeTokenizer::from_file(&path)?))
        }
        other => Err(ConfigError::invalid(
            "text_cfg.vocab_size",
            other,
            format!("{WORD_VOCAB_SIZE} (synthetic word tokenizer) or 49408 (OpenCLIP BPE), or set vocab to a tokenizer file"),
        )
        .into()),
    }
}

/// Moves uint8 NHWC images to `device` and normalises them there.
///
/// # Shapes
/// `batch`: [b, H, W, 3] uint8 → [b, 3, H, W] float32.
pub fn images_to_tensor(batch: &ImageBatch, device: Device) -> Tensor {
    normalize_images(&images_to_device(batch, device))
}

/// Moves uint8 NHWC images to `device`, still uint8 (a quarter of the float size): gradient
/// caching keeps a whole local batch of them and normalises one micro-batch at a time.
///
/// # Shapes
/// `batch`: [b, H, W, 3] uint8 → [b, H, W, 3] uint8.
pub fn images_to_device(batch: &ImageBatch, device: Device) -> Tensor {
    let dims = [batch.batch as i64, batch.height as i64, batch.width as i64, 3];
    host_to_device(Tensor::from_slice(&batch.data).view(dims), device)
}

/// Copies a host tensor to `device`. To a GPU it goes through page-locked memory (libtorch's
/// caching host allocator) and the copy is queued without blocking the host, ordered on the
/// current stream before the kernels that read it.
pub fn host_to_device(host: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => host.pin_memory(device).to_device_(device, host.kind(), true, false),
        _ => host,
    }
}

/// Normalises uint8 NHWC images with OpenAI's mean and std, on their device.
///
/// # Shapes
/// `images`: [b, H, W, 3] uint8 → [b, 3, H, W] float32.
pub fn normalize_images(images: &Tensor) -> Tensor {
    let device = images.device();
    let x = images.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
    let mean = Tensor::from_slice(&OPENAI_MEAN).to_kind(Kind::Float).to_device(device).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&OPENAI_STD).to_kind(Kind::Float).to_device(device).view([1, 3, 1, 1]);
    (x - mean) / std
}
