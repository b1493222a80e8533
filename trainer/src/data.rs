//! Feeding the trainer: the synthetic training stream with a bounded prefetch queue, the
//! tokenizer choice, and the host-to-device image path (uint8 in, normalised on the device).

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use clipfleet_dataloader::batch::ImageBatch;
use clipfleet_dataloader::loader::{Loader, LoaderState};
use clipfleet_dataloader::sampling::EpochPermutation;
use clipfleet_dataloader::skip::SkipCounts;
use clipfleet_dataloader::synthetic::{Split, SyntheticDataset};
use clipfleet_dataloader::tokenizer::bpe::default_vocab_path;
use clipfleet_dataloader::tokenizer::word::{WordTokenizer, WORD_VOCAB_SIZE};
use clipfleet_dataloader::tokenizer::{BpeTokenizer, Tokenizer};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{ConfigError, Result, TrainError};
use crate::model::ClipConfig;

/// OpenCLIP's (OpenAI's) per-channel normalisation mean.
pub const OPENAI_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenCLIP's (OpenAI's) per-channel normalisation standard deviation.
pub const OPENAI_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Where the training stream stands: the epoch and the samples of it already consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Current epoch.
    pub epoch: u64,
    /// Samples of this epoch already handed to the trainer.
    pub samples_in_epoch: u64,
}

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
    pub fn next_batch(&mut self) -> Result<HostBatch> {
        match self {
            TrainStream::Synthetic(s) => s.next_batch(),
            TrainStream::Shards(loader) => {
                let batch =
                    loader.next_batch()?.ok_or_else(|| TrainError::Pipeline("the training stream ended".into()))?;
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

/// Token ids to a [b, context_length] int64 tensor on `device`.
pub fn tokens_to_tensor(tokens: &[i64], context_length: i64, device: Device) -> Tensor {
    host_to_device(Tensor::from_slice(tokens).view([-1, context_length]), device)
}

/// The settings of the synthetic training stream.
#[derive(Debug, Clone)]
pub struct SyntheticStreamConfig {
    /// Image side in pixels.
    pub image_size: u32,
    /// Run seed.
    pub seed: u64,
    /// Pairs per global batch (all ranks).
    pub batch_size: usize,
    /// Workers sharing each global batch; this stream yields only `rank`'s rows.
    pub world_size: usize,
    /// This worker's rank: it gets rows `rank·b .. (rank+1)·b` of each global batch, b =
    /// `batch_size / world_size`.
    pub rank: usize,
    /// Samples per epoch; an epoch is a seeded permutation of `0..num_samples`.
    pub num_samples: u64,
    /// Tokens per caption.
    pub context_length: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
}

/// The synthetic training stream, produced on a background thread into a bounded queue
/// (backpressure: the producer blocks when `prefetch` batches are waiting).
///
/// Global batch `s` of epoch `e` holds the samples at positions `[s·B, (s+1)·B)` of the
/// permutation drawn from (seed, e); an incomplete last batch is dropped. Rank r of W gets
/// the r-th of W equal slices. The content and augmentation of each sample depend only on
/// (seed, epoch, sample index), so the global batch does not depend on W.
#[derive(Debug)]
pub struct SyntheticStream {
    rx: Receiver<HostBatch>,
    worker: Option<JoinHandle<()>>,
}

impl SyntheticStream {
    /// Starts producing from `start`.
    pub fn start(cfg: SyntheticStreamConfig, tokenizer: Arc<dyn Tokenizer>, start: DataPosition) -> Result<Self> {
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size || !cfg.batch_size.is_multiple_of(cfg.world_size) {
            return Err(TrainError::Pipeline(format!(
                "a global batch of {} does not split over {} ranks (rank {})",
                cfg.batch_size, cfg.world_size, cfg.rank
            )));
        }
        if cfg.num_samples < cfg.batch_size as u64 {
            return Err(ConfigError::invalid(
                "train_num_samples",
                cfg.num_samples,
                format!("at least the global batch, batch_size × accum_freq × world_size = {}", cfg.batch_size),
            )
            .into());
        }
        let (tx, rx) = sync_channel(cfg.prefetch);
        let worker = std::thread::Builder::new()
            .name("clipfleet-synthetic".into())
            .spawn(move || {
                let dataset = SyntheticDataset::new(cfg.image_size, cfg.seed);
                let b = cfg.batch_size as u64;
                let local = b / cfg.world_size as u64;
                let first = local * cfg.rank as u64;
                let mut pos = start;
                loop {
                    if pos.samples_in_epoch + b > cfg.num_samples {
                        pos = DataPosition { epoch: pos.epoch + 1, samples_in_epoch: 0 };
                    }
                    let perm = EpochPermutation::new(cfg.seed, pos.epoch, cfg.num_samples);
                    let indices: Vec<u64> =
                        (first..first + local).map(|p| perm.index(pos.samples_in_epoch + p)).collect();
                    let (images, captions, labels) = dataset.batch(Split::Train, &indices, Some(pos.epoch));
                    let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
                    let tokens = tokenizer.tokenize_batch(&texts, cfg.context_length);
                    pos.samples_in_epoch += b;
                    let batch = HostBatch { images, tokens, labels, position_after: pos, shards_after: None };
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| TrainError::Pipeline(format!("cannot start the data thread: {e}")))?;
        Ok(SyntheticStream { rx, worker: Some(worker) })
    }

    /// The next batch; blocks while the producer catches up.
    pub fn next_batch(&mut self) -> Result<HostBatch> {
        self.rx.recv().map_err(|_| TrainError::Pipeline("the synthetic data thread stopped unexpectedly".into()))
    }
}

impl Drop for SyntheticStream {
    fn drop(&mut self) {
        // Unblock the producer by dropping the receiver first, then join it.
        let (_tx, rx) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
