//! The shard loader: WebDataset and Parquet shards from any store, to uint8 batches, with a
//! sample order that is deterministic, independent of the world size, and resumable.
//!
//! # Guarantees
//! - The samples of global batch `s` of epoch `e` depend only on (seed, e, s, global batch,
//!   partition count) and on the shards' contents: not on the world size, the rank, the
//!   number of decode threads or timing. Rank `r` of `W` gets rows `[r·B/W, (r+1)·B/W)` of it.
//! - Augmentation randomness per sample is keyed by (seed, epoch, partition, position).
//! - A [`LoaderState`] taken after any batch resumes the stream exactly there: the samples
//!   before it plus the samples after it are one uninterrupted epoch.
//!
//! See [`plan`] for how shards are spread over the canonical partitions and [`partition`] for
//! the windowed shuffle inside one.

pub mod partition;
pub mod pipeline;
pub mod plan;
pub mod source;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use partition::PartitionCursor;
pub use plan::{Segment, ShardEntry, ShardOrder, Spread};
pub use source::{is_parquet, DatasetType, SampleFormat};

use crate::batch::ImageBatch;
use crate::decode::DEFAULT_MAX_PIXELS;
use crate::shards::{parse_sources, shard_basename, sizes_json_url};
use crate::skip::SkipCounts;
use crate::store::ShardStore;
use crate::tokenizer::Tokenizer;
use crate::DataError;
use futures::StreamExt;
use pipeline::EpochPipeline;

/// Default samples per shuffle window of a partition.
pub const DEFAULT_SHUFFLE_WINDOW: u64 = 1000;
/// Default largest fraction of skipped samples before the run stops.
pub const DEFAULT_MAX_SKIP_FRACTION: f64 = 0.01;

/// What the user asks for: the `--train-data` style settings, before any shard is looked at.
#[derive(Debug, Clone)]
pub struct DataSpec {
    /// Shard URLs: brace patterns joined with `::`.
    pub urls: String,
    /// Per-source weights joined with `::` (resampled mode only).
    pub upsampling_factors: Option<String>,
    /// Draw shards with replacement (OpenCLIP's `--dataset-resampled`).
    pub resampled: bool,
    /// Samples per epoch; otherwise from `sizes.json` (or Parquet footers).
    pub num_samples: Option<u64>,
    /// Canonical partitions; `None` picks one ([`plan::auto_partitions`]). A resumed run
    /// keeps its checkpoint's.
    pub partitions: Option<usize>,
    /// Samples per shuffle window of a partition.
    pub shuffle_window: u64,
    /// Caption and Parquet column settings.
    pub format: SampleFormat,
    /// Decode threads.
    pub decode_threads: usize,
    /// Batches prepared ahead.
    pub prefetch_batches: usize,
    /// The run stops when skipped / seen exceeds this.
    pub max_skip_fraction: f64,
    /// Decompression-bomb guard: largest width × height decoded.
    pub max_image_pixels: u64,
}

impl DataSpec {
    /// Defaults for `urls`.
    pub fn new(urls: impl Into<String>) -> DataSpec {
        DataSpec {
            urls: urls.into(),
            upsampling_factors: None,
            resampled: false,
            num_samples: None,
            partitions: None,
            shuffle_window: DEFAULT_SHUFFLE_WINDOW,
            format: SampleFormat::default(),
            decode_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            prefetch_batches: 2,
            max_skip_fraction: DEFAULT_MAX_SKIP_FRACTION,
            max_image_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// Where a rank's part of the sample stream stands: stored in checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoaderState {
    /// The epoch.
    pub epoch: u64,
    /// Batches of the epoch already handed out.
    pub step: u64,
    /// Canonical partitions of the run.
    pub partitions: usize,
    /// Cursor of each partition this rank reads (all of them with one rank).
    pub cursors: BTreeMap<usize, PartitionCursor>,
}

impl LoaderState {
    /// Joins the states of all ranks after the same step into one (for a checkpoint that
    /// may be resumed with another world size).
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] when the states are not from the same step.
    pub fn merge(states: &[LoaderState]) -> Result<LoaderState, DataError> {
        let mut out = states.first().cloned().unwrap_or_default();
        for s in states.iter().skip(1) {
            if (s.epoch, s.step, s.partitions) != (out.epoch, out.step, out.partitions) {
                return Err(DataError::InvalidArgument {
                    name: "data state",
                    value: format!("epoch {} step {} and epoch {} step {}", out.epoch, out.step, s.epoch, s.step),
                    allowed: "states of the same step".to_owned(),
                });
            }
            out.cursors.extend(s.cursors.iter().map(|(k, v)| (*k, *v)));
        }
        Ok(out)
    }
}

/// One batch of this rank's rows.
#[derive(Debug)]
pub struct LoadedBatch {
    /// uint8 NHWC images.
    pub images: ImageBatch,
    /// Token ids, row-major `[rows, context_length]`.
    pub tokens: Vec<i64>,
    /// `cls` labels, where the samples have them.
    pub labels: Vec<Option<i64>>,
    /// Sample keys, row by row.
    pub keys: Vec<String>,
    /// The stream position after this batch.
    pub state_after: LoaderState,
}

/// Everything a [`Loader`] needs, resolved.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// The shard list.
    pub shards: Vec<ShardEntry>,
    /// How epochs walk it.
    pub order: ShardOrder,
    /// Run seed.
    pub seed: u64,
    /// Rows per global batch.
    pub global_batch_size: usize,
    /// Ranks.
    pub world_size: usize,
    /// This rank.
    pub rank: usize,
    /// Canonical partitions.
    pub partitions: usize,
    /// Samples per shuffle window.
    pub shuffle_window: u64,
    /// Batches per epoch; `None` reads the shards once to their end (evaluation).
    pub steps_per_epoch: Option<u64>,
    /// Output side in pixels.
    pub image_size: u32,
    /// RandomResizedCrop (training) or resize + centre crop (evaluation).
    pub train_transform: bool,
    /// Tokens per caption.
    pub context_length: usize,
    /// Decode threads.
    pub decode_threads: usize,
    /// Batches prepared ahead.
    pub prefetch_batches: usize,
    /// Caption and Parquet settings.
    pub format: SampleFormat,
    /// The run stops when skipped / seen exceeds this.
    pub max_skip_fraction: f64,
    /// Decompression-bomb guard.
    pub max_image_pixels: u64,
}

impl LoaderConfig {
    /// The training configuration of rank `rank` of `world`.
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] naming the setting that does not fit (world size,
    /// batch size, partitions, samples per epoch), and whatever reading `sizes.json` gives.
    #[allow(clippy::too_many_arguments)]
    pub fn training(
        spec: &DataSpec,
        store: &ShardStore,
        world: usize,
        rank: usize,
        global_batch: usize,
        seed: u64,
        image_size: u32,
        context_length: usize,
        resume: Option<&LoaderState>,
    ) -> Result<LoaderConfig, DataError> {
        let invalid =
            |name: &'static str, value: String, allowed: String| DataError::InvalidArgument { name, value, allowed };
        if world == 0 || rank >= world {
            return Err(invalid("rank", format!("{rank} of {world}"), "0 ≤ rank < world size".into()));
        }
        if global_batch == 0 || !global_batch.is_multiple_of(world) {
            return Err(invalid(
                "batch_size",
                global_batch.to_string(),
                format!("a positive multiple of the world size {world}"),
            ));
        }
        if spec.upsampling_factors.is_some() && !spec.resampled {
            return Err(invalid(
                "train_data_upsampling_factors",
                spec.upsampling_factors.clone().unwrap_or_default(),
                "only with dataset_resampled = true (as in OpenCLIP)".into(),
            ));
        }
        if !(0.0..=1.0).contains(&spec.max_skip_fraction) {
            return Err(invalid("max_skip_fraction", spec.max_skip_fraction.to_string(), "0.0 to 1.0".into()));
        }
        if spec.shuffle_window == 0 {
            return Err(invalid("shuffle_window", "0".into(), "1 or more samples".into()));
        }
        let sources = parse_sources(&spec.urls, spec.upsampling_factors.as_deref())?;
        let shards = if spec.resampled {
            sources
                .iter()
                .enumerate()
                .flat_map(|(i, s)| {
                    s.urls.iter().map(move |u| ShardEntry {
                        url: u.clone(),
                        source: i,
                        weight: s.weight,
                        samples: None,
                    })
                })
                .collect()
        } else {
            resolve_shards(store, &sources, &spec.format, spec.num_samples.is_none())?
        };
        let spread = if spec.resampled {
            Spread::Resampled
        } else if shards.iter().all(|s| s.samples.is_some()) {
            Spread::Samples
        } else {
            Spread::Shards
        };
        let partitions = match resume.map(|s| s.partitions).or(spec.partitions) {
            Some(p) => {
                plan::check_partitions(p, shards.len(), world, global_batch, spread)?;
                p
            }
            None => plan::auto_partitions(shards.len(), world, global_batch, spread)?,
        };
        let order = if spec.resampled { ShardOrder::Resampled } else { ShardOrder::Shuffled };
        let rows = (global_batch / partitions) as u64;
        let steps = match spec.num_samples {
            Some(n) => {
                let steps = n / global_batch as u64;
                if steps == 0 {
                    return Err(invalid(
                        "train_num_samples",
                        n.to_string(),
                        format!("at least one global batch ({global_batch})"),
                    ));
                }
                steps
            }
            None if spec.resampled => {
                return Err(invalid(
                    "train_num_samples",
                    "unset".into(),
                    "a number of samples per epoch (needed with dataset_resampled)".into(),
                ))
            }
            None => {
                // Partitions differ by one sample at most; the smallest sets the epoch. Samples
                // skipped as corrupt are made up by a partition's next pass (see `plan`).
                let plan = plan::EpochPlan::new(&shards, partitions, seed, 0, order);
                let smallest = (0..partitions).filter_map(|p| plan.partition_samples(p, &shards)).min().unwrap_or(0);
                smallest / rows
            }
        };
        if steps == 0 {
            return Err(invalid(
                "batch_size",
                global_batch.to_string(),
                format!("at most {partitions} × the samples of the smallest partition; the shards are too few for one batch"),
            ));
        }
        Ok(LoaderConfig {
            order,
            seed,
            global_batch_size: global_batch,
            world_size: world,
            rank,
            partitions,
            shuffle_window: spec.shuffle_window,
            steps_per_epoch: Some(steps),
            train_transform: true,
            ..LoaderConfig::single_pass(spec, shards, global_batch, image_size, context_length)
        })
    }

    /// A single pass over `spec.urls` in order, for evaluation: one partition, no shuffle,
    /// the evaluation transform, and a last batch that may be short.
    ///
    /// # Errors
    /// Malformed URL patterns.
    pub fn evaluation(
        spec: &DataSpec,
        batch: usize,
        image_size: u32,
        context_length: usize,
    ) -> Result<LoaderConfig, DataError> {
        let sources = parse_sources(&spec.urls, None)?;
        let shards = sources
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.urls.iter().map(move |u| ShardEntry { url: u.clone(), source: i, weight: 1.0, samples: None })
            })
            .collect();
        Ok(LoaderConfig::single_pass(spec, shards, batch, image_size, context_length))
    }

    /// One process reading `shards` once, in order, with the evaluation transform; the
    /// pipeline settings (threads, prefetch, format, skip limit, pixel limit) from `spec`.
    fn single_pass(
        spec: &DataSpec,
        shards: Vec<ShardEntry>,
        batch: usize,
        image_size: u32,
        context_length: usize,
    ) -> LoaderConfig {
        LoaderConfig {
            shards,
            order: ShardOrder::Sequential,
            seed: 0,
            global_batch_size: batch.max(1),
            world_size: 1,
            rank: 0,
            partitions: 1,
            shuffle_window: 1,
            steps_per_epoch: None,
            image_size,
            train_transform: false,
            context_length,
            decode_threads: spec.decode_threads.max(1),
            prefetch_batches: spec.prefetch_batches.max(1),
            format: spec.format.clone(),
            max_skip_fraction: spec.max_skip_fraction,
            max_image_pixels: spec.max_image_pixels,
        }
    }

    /// The partitions this rank reads.
    pub fn local_partitions(&self) -> Range<usize> {
        let per_rank = self.partitions / self.world_size.max(1);
        self.rank * per_rank..(self.rank + 1) * per_rank
    }

    /// Rows of a global batch taken from each partition.
    pub fn rows_per_partition(&self) -> usize {
        self.global_batch_size / self.partitions.max(1)
    }

    /// Rows of this rank's batches.
    pub fn local_batch_size(&self) -> usize {
        self.rows_per_partition() * self.local_partitions().len()
    }
}

/// Shards whose counts are looked up at once.
const COUNT_LOOKUPS_IN_FLIGHT: usize = 32;

/// Expands the sources into the shard list, with each shard's sample count taken from, in
/// order: the `sizes.json` of its folder, img2dataset's `<shard stem>_stats.json` beside it
/// (its `successes`), and, for Parquet, the file's footer (less the rows whose `status` is not
/// `success`); a CSV dataset's count is its rows. The per-shard lookups run concurrently. With `required`, a shard whose count
/// cannot be found is an error that says to pass `--train-num-samples`; without it, its count
/// stays unknown.
///
/// # Errors
/// [`DataError::SizesJson`] (when `required`, or when a `sizes.json` or `_stats.json` is
/// malformed), and store errors other than a missing file: every rank must see the same
/// counts, so a failed lookup is never taken for a missing one.
pub fn resolve_shards(
    store: &ShardStore,
    sources: &[crate::shards::ShardSource],
    format: &SampleFormat,
    required: bool,
) -> Result<Vec<ShardEntry>, DataError> {
    let mut shards = Vec::new();
    let mut sizes_by_folder: BTreeMap<String, Option<crate::shards::SizesJson>> = BTreeMap::new();
    for (i, source) in sources.iter().enumerate() {
        for url in &source.urls {
            let folder = sizes_json_url(url);
            let sizes = match sizes_by_folder.get(&folder) {
                Some(sizes) => sizes.clone(),
                None => {
                    let sizes = optional(store.read_sizes_json_strict(url))?;
                    sizes_by_folder.insert(folder, sizes.clone());
                    sizes
                }
            };
            let samples = sizes.as_ref().and_then(|s| s.sizes.get(shard_basename(url)).copied());
            shards.push(ShardEntry { url: url.clone(), source: i, weight: source.weight, samples });
        }
    }
    let unknown: Vec<usize> = (0..shards.len()).filter(|&i| shards[i].samples.is_none()).collect();
    if !unknown.is_empty() {
        let lookups = unknown.iter().map(|&i| {
            count_from_shard_files(
                store,
                shards[i].url.clone(),
                format.is_csv(&shards[i].url).then_some(format.csv.separator),
            )
        });
        let counts: Vec<Result<Option<u64>, DataError>> = store
            .runtime()
            .block_on(futures::stream::iter(lookups).buffered(COUNT_LOOKUPS_IN_FLIGHT).collect::<Vec<_>>());
        for (&i, count) in unknown.iter().zip(counts) {
            shards[i].samples = count?;
        }
    }
    if required {
        if let Some(shard) = shards.iter().find(|s| s.samples.is_none()) {
            return Err(DataError::SizesJson {
                url: sizes_json_url(&shard.url),
                reason: format!(
                    "no sample count for {}: not in sizes.json, and no img2dataset {} beside it; add it to sizes.json or pass --train-num-samples",
                    shard_basename(&shard.url),
                    stats_json_name(shard_basename(&shard.url)),
                ),
            });
        }
    }
    Ok(shards)
}

/// `Ok(None)` for a file that does not exist.
fn optional<T>(result: Result<T, DataError>) -> Result<Option<T>, DataError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(DataError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// img2dataset's statistics file of a shard: `00012.tar` → `00012_stats.json`.
pub fn stats_json_name(shard_file: &str) -> String {
    let stem = shard_file.rsplit_once('.').map_or(shard_file, |(stem, _)| stem);
    format!("{stem}_stats.json")
}

/// A shard's count from img2dataset's `_stats.json` beside it, else (Parquet) its footer, or
/// (CSV) its rows. Reads are retried like shard reads.
async fn count_from_shard_files(store: &ShardStore, url: String, csv: Option<char>) -> Result<Option<u64>, DataError> {
    if let Some(sep) = csv {
        let bytes = store.read_optional(&url).await?.ok_or_else(|| DataError::NotFound { url: url.clone() })?;
        return Ok(Some(crate::csv_dataset::count_rows(&bytes, sep)));
    }
    let stats_url =
        format!("{}{}", &url[..url.len() - shard_basename(&url).len()], stats_json_name(shard_basename(&url)));
    if let Some(bytes) = store.read_optional(&stats_url).await? {
        let bad = |reason: String| DataError::SizesJson { url: stats_url.clone(), reason };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let successes = value.get("successes").and_then(serde_json::Value::as_u64);
        return successes.map(Some).ok_or_else(|| bad("no `successes` count (img2dataset writes one)".into()));
    }
    if is_parquet(&url) {
        // The footer reader has no retries of its own: retry it whole on transient errors.
        let mut failures = 0;
        loop {
            let (object_store, path) = store.resolve(&url)?;
            match crate::parquet_reader::parquet_num_rows(object_store, path, &url).await {
                Ok(n) => return Ok(Some(n)),
                Err(e) if failures + 1 < store.retry_policy().max_attempts && source::is_transient(&e) => {
                    failures += 1;
                    store.sleep(store.retry_policy().delay(failures, 0)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(None)
}

/// Streams batches for one rank; see the [module docs](self).
#[derive(Debug)]
pub struct Loader {
    cfg: Arc<LoaderConfig>,
    store: Arc<ShardStore>,
    tokenizer: Arc<dyn Tokenizer>,
    skips: Arc<SkipCounts>,
    state: LoaderState,
    pipeline: Option<EpochPipeline>,
}

impl Loader {
    /// A loader that starts at `resume`, or at the start of epoch 0. Threads start with the
    /// first [`next_batch`](Self::next_batch).
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] naming `data_partitions` when `resume` was written with
    /// another partition count.
    pub fn new(
        cfg: LoaderConfig,
        store: Arc<ShardStore>,
        tokenizer: Arc<dyn Tokenizer>,
        resume: Option<LoaderState>,
    ) -> Result<Loader, DataError> {
        let state = match resume {
            Some(s) if s.partitions != cfg.partitions => {
                return Err(DataError::InvalidArgument {
                    name: "data_partitions",
                    value: cfg.partitions.to_string(),
                    allowed: format!("{} (the checkpoint's)", s.partitions),
                })
            }
            Some(s) => s,
            None => LoaderState { epoch: 0, step: 0, partitions: cfg.partitions, cursors: BTreeMap::new() },
        };
        Ok(Loader {
            cfg: Arc::new(cfg),
            store,
            tokenizer,
            skips: Arc::new(SkipCounts::default()),
            state,
            pipeline: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Skips so far, by reason.
    pub fn skips(&self) -> Arc<SkipCounts> {
        Arc::clone(&self.skips)
    }

    /// Where the stream stands: the state after the last batch returned.
    pub fn state(&self) -> &LoaderState {
        &self.state
    }

    /// The next batch of this rank's rows. Training streams roll over into the next epoch;
    /// an evaluation pass returns `None` at its end.
    ///
    /// # Errors
    /// Fatal errors of the stream: a missing or forbidden shard, a wrong schema, a partition
    /// that ran dry, or skips over the limit.
    pub fn next_batch(&mut self) -> Result<Option<LoadedBatch>, DataError> {
        loop {
            if self.cfg.steps_per_epoch.is_some_and(|n| self.state.step >= n) {
                self.pipeline = None;
                self.state = LoaderState {
                    epoch: self.state.epoch + 1,
                    step: 0,
                    partitions: self.cfg.partitions,
                    cursors: BTreeMap::new(),
                };
            }
            if self.pipeline.is_none() {
                let pipeline = EpochPipeline::start(&self.cfg, &self.store, &self.tokenizer, &self.skips, &self.state)?;
                self.pipeline = Some(pipeline);
            }
            match self.pipeline.as_ref().and_then(EpochPipeline::next) {
                Some(Ok(batch)) => {
                    self.state = batch.state_after.clone();
                    return Ok(Some(batch));
                }
                Some(Err(e)) => {
                    self.pipeline = None;
                    return Err(e);
                }
                None if self.cfg.steps_per_epoch.is_none() => {
                    self.pipeline = None;
                    return Ok(None);
                }
                None => {
                    // The epoch's last batch was handed out; the loop rolls over.
                    self.state.step = self.state.step.max(self.cfg.steps_per_epoch.unwrap_or(0));
                }
            }
        }
    }
}
