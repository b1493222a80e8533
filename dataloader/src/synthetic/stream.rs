//! The synthetic training stream: global batches of the built-in dataset in a seeded
//! per-epoch order, produced on a background thread into a bounded queue, each rank taking
//! its rows of every global batch.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::{Split, SyntheticDataset};
use crate::batch::ImageBatch;
use crate::sampling::EpochPermutation;
use crate::tokenizer::Tokenizer;
use crate::DataError;

/// Where a training stream stands: the epoch and the samples of it already consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Current epoch.
    pub epoch: u64,
    /// Samples of this epoch already handed to the trainer.
    pub samples_in_epoch: u64,
}

/// One rank's rows of one global batch.
#[derive(Debug)]
pub struct SyntheticBatch {
    /// uint8 NHWC images.
    pub images: ImageBatch,
    /// Token ids, row-major [batch, context_length].
    pub tokens: Vec<i64>,
    /// Class labels.
    pub labels: Vec<u32>,
    /// The stream position after this batch: what a checkpoint taken after it stores.
    pub position_after: DataPosition,
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
    rx: Receiver<SyntheticBatch>,
    worker: Option<JoinHandle<()>>,
}

impl SyntheticStream {
    /// Starts producing from `start`.
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] when the global batch does not split over the ranks
    /// (`batch_size`) or an epoch is shorter than a global batch (`train_num_samples`);
    /// [`DataError::Producer`] when the thread cannot start.
    pub fn start(
        cfg: SyntheticStreamConfig,
        tokenizer: Arc<dyn Tokenizer>,
        start: DataPosition,
    ) -> Result<Self, DataError> {
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size || !cfg.batch_size.is_multiple_of(cfg.world_size) {
            return Err(DataError::InvalidArgument {
                name: "batch_size",
                value: format!(
                    "a global batch of {} over {} ranks (rank {})",
                    cfg.batch_size, cfg.world_size, cfg.rank
                ),
                allowed: "a global batch that splits evenly over the ranks".into(),
            });
        }
        if cfg.num_samples < cfg.batch_size as u64 {
            return Err(DataError::InvalidArgument {
                name: "train_num_samples",
                value: cfg.num_samples.to_string(),
                allowed: format!(
                    "at least the global batch, batch_size × accum_freq × world_size = {}",
                    cfg.batch_size
                ),
            });
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
                    let batch = SyntheticBatch { images, tokens, labels, position_after: pos };
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::Producer { name: "synthetic data", what: format!("could not start: {e}") })?;
        Ok(SyntheticStream { rx, worker: Some(worker) })
    }

    /// The next batch; blocks while the producer catches up.
    ///
    /// # Errors
    /// [`DataError::Producer`] when the producer thread has stopped (it panicked).
    pub fn next_batch(&mut self) -> Result<SyntheticBatch, DataError> {
        self.rx.recv().map_err(|_| DataError::Producer { name: "synthetic data", what: "stopped unexpectedly".into() })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::word::WordTokenizer;

    fn config(world_size: usize, rank: usize) -> SyntheticStreamConfig {
        SyntheticStreamConfig {
            image_size: 16,
            seed: 3,
            batch_size: 8,
            world_size,
            rank,
            num_samples: 20,
            context_length: 8,
            prefetch: 2,
        }
    }

    #[test]
    fn ranks_get_their_rows_of_the_same_global_batch() {
        let tokenizer: Arc<dyn Tokenizer> = Arc::new(WordTokenizer::new());
        let mut whole = SyntheticStream::start(config(1, 0), tokenizer.clone(), DataPosition::default()).unwrap();
        let mut second = SyntheticStream::start(config(2, 1), tokenizer, DataPosition::default()).unwrap();
        for _ in 0..3 {
            let (a, b) = (whole.next_batch().unwrap(), second.next_batch().unwrap());
            assert_eq!(&a.labels[4..], &b.labels[..]);
            assert_eq!(&a.tokens[4 * 8..], &b.tokens[..]);
            assert_eq!(a.position_after, b.position_after);
        }
    }

    #[test]
    fn an_epoch_drops_its_incomplete_last_batch() {
        let tokenizer: Arc<dyn Tokenizer> = Arc::new(WordTokenizer::new());
        let mut s = SyntheticStream::start(config(1, 0), tokenizer, DataPosition::default()).unwrap();
        let positions: Vec<DataPosition> = (0..3).map(|_| s.next_batch().unwrap().position_after).collect();
        assert_eq!(positions[1], DataPosition { epoch: 0, samples_in_epoch: 16 });
        assert_eq!(positions[2], DataPosition { epoch: 1, samples_in_epoch: 8 });
    }

    #[test]
    fn bad_splits_name_the_key() {
        let tokenizer: Arc<dyn Tokenizer> = Arc::new(WordTokenizer::new());
        let err = SyntheticStream::start(
            SyntheticStreamConfig { batch_size: 7, ..config(2, 0) },
            tokenizer.clone(),
            DataPosition::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("batch_size"), "{err}");
        let err = SyntheticStream::start(
            SyntheticStreamConfig { num_samples: 4, ..config(1, 0) },
            tokenizer,
            DataPosition::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("train_num_samples"), "{err}");
    }
}
