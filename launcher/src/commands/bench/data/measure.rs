//! Timing the Rust data pipeline: the shard loader that `clipfleet train` reads from
//! (`clipfleet_dataloader::loader`), configured as training configures it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clipfleet_dataloader::loader::{DataSpec, Loader, LoaderConfig};
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::tokenizer::Tokenizer;
use serde::Serialize;

/// Side of the training crops, in pixels.
pub(crate) const IMAGE_SIZE: u32 = 224;
/// Tokens per caption (OpenCLIP's text context).
pub(crate) const CONTEXT_LENGTH: usize = 77;

/// What to time.
#[derive(Debug, Clone)]
pub(crate) struct LoaderRun {
    /// Shard URLs (brace patterns joined with `::`).
    pub(crate) urls: String,
    /// Draw shards with replacement.
    pub(crate) resampled: bool,
    /// Samples per epoch, if not from `sizes.json`.
    pub(crate) num_samples: Option<u64>,
    /// Decode threads.
    pub(crate) threads: usize,
    /// Images per batch.
    pub(crate) batch_size: usize,
    /// Timed batches, after one warm-up batch.
    pub(crate) batches: usize,
    /// Loader seed.
    pub(crate) seed: u64,
}

/// The outcome of a timed run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Timing {
    /// Batches taken before the clock started.
    pub(crate) warmup_batches: usize,
    /// Batches timed.
    pub(crate) timed_batches: usize,
    /// Images in the timed batches.
    pub(crate) images: u64,
    /// Seconds from the end of the warm-up to the last timed batch.
    pub(crate) seconds: f64,
    /// `images / seconds`.
    pub(crate) images_per_second: f64,
    /// Samples the loader skipped (undecodable, ...), warm-up included.
    pub(crate) skipped: u64,
}

/// Runs the loader for one warm-up batch (thread start-up, the first shuffle window), then
/// times `run.batches` batches of uint8 224×224 images and 77-token captions.
///
/// # Errors
/// Loader configuration and stream errors, and batches of the wrong shape.
pub(crate) fn time_loader(run: &LoaderRun, tokenizer: Arc<dyn Tokenizer>) -> anyhow::Result<Timing> {
    let store = Arc::new(ShardStore::new(ShardStoreOptions::default())?);
    let mut spec = DataSpec::new(run.urls.clone());
    spec.decode_threads = run.threads.max(1);
    spec.resampled = run.resampled;
    spec.num_samples = run.num_samples;
    let cfg = LoaderConfig::training(&spec, &store, 1, 0, run.batch_size, run.seed, IMAGE_SIZE, CONTEXT_LENGTH, None)?;
    let mut loader = Loader::new(cfg, store, tokenizer, None)?;
    let mut next = || -> anyhow::Result<u64> {
        let batch = loader.next_batch()?.context("the loader stopped before the last timed batch")?;
        let (n, side) = (batch.images.batch, IMAGE_SIZE as usize);
        anyhow::ensure!(
            batch.images.height == side && batch.images.width == side && batch.tokens.len() == n * CONTEXT_LENGTH,
            "a batch of {n} has {}x{} images and {} token ids",
            batch.images.width,
            batch.images.height,
            batch.tokens.len()
        );
        Ok(n as u64)
    };
    next()?;
    let start = Instant::now();
    let mut images = 0;
    for _ in 0..run.batches {
        images += next()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Timing {
        warmup_batches: 1,
        timed_batches: run.batches,
        images,
        seconds,
        images_per_second: images as f64 / seconds,
        skipped: loader.skips().total(),
    })
}
