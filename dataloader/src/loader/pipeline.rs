//! The threads of a running epoch: partition readers, a decode pool and the batch assembler.
//!
//! ```text
//!  partition readers (one thread each, I/O on the store's async runtime)
//!        │  jobs, at most `credits` in flight per partition (backpressure)
//!        ▼
//!  decode pool (N threads): decode → crop/resize → tokenize
//!        │  results, in any order
//!        ▼
//!  assembler: puts each partition's results back in stream order, skips holes, fills the
//!  partition's rows of the batch, counts skips, enforces the skip limit
//!        │  bounded queue of `prefetch` batches
//!        ▼
//!  Loader::next_batch
//! ```
//!
//! Which sample lands in which row depends only on the partition streams, never on thread
//! timing: results are reordered by their sequence number before they are placed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::partition::{Emitted, PartitionCursor, PartitionEvent, PartitionReader};
use super::plan::{augment_rng, EpochPlan};
use super::source::RawSample;
use super::{LoadedBatch, LoaderConfig, LoaderState};
use crate::batch::ImageBatch;
use crate::decode::decode_rgb;
use crate::sample::EncodedPair;
use crate::skip::{SkipCounts, SkipReason};
use crate::store::ShardStore;
use crate::tokenizer::Tokenizer;
use crate::transform::{resize_short_side_center_crop, RandomResizedCrop};
use crate::DataError;

/// Skips are judged against the limit once this many samples were seen (or at epoch end).
pub const MIN_SAMPLES_FOR_SKIP_LIMIT: u64 = 1000;

/// A counting semaphore that can be closed to wake and release every waiter.
#[derive(Debug)]
struct Credits {
    available: Mutex<usize>,
    ready: Condvar,
    closed: AtomicBool,
}

impl Credits {
    fn new(n: usize) -> Credits {
        Credits { available: Mutex::new(n), ready: Condvar::new(), closed: AtomicBool::new(false) }
    }

    /// Takes one credit; `false` once closed.
    fn acquire(&self) -> bool {
        let mut n = self.available.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if *n > 0 {
                *n -= 1;
                return true;
            }
            n = self.ready.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn release(&self) {
        *self.available.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.ready.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = self.available.lock().unwrap_or_else(PoisonError::into_inner);
        self.ready.notify_all();
    }
}

struct Job {
    part: usize,
    seq: u64,
    emitted: Emitted,
}

/// A decoded sample ready for its row.
#[derive(Debug)]
struct Decoded {
    pixels: Vec<u8>,
    tokens: Vec<i64>,
    label: Option<i64>,
    key: String,
}

enum Outcome {
    Ready(Decoded),
    Skipped { reason: SkipReason, shard: String, key: String },
}

enum Message {
    Item { part: usize, seq: u64, outcome: Outcome, cursor_after: PartitionCursor },
    ShardSkipped { reason: SkipReason, shard: String, detail: String },
    NotDownloaded,
    Exhausted { part: usize, seq: u64 },
    Fatal(DataError),
}

/// The threads of one epoch; dropping it stops them.
#[derive(Debug)]
pub(crate) struct EpochPipeline {
    batches: Receiver<Result<LoadedBatch, DataError>>,
    credits: Vec<Arc<Credits>>,
    stop: Arc<AtomicBool>,
}

impl EpochPipeline {
    /// Starts `epoch` from `state` (whose epoch must be `epoch`).
    pub(crate) fn start(
        cfg: &Arc<LoaderConfig>,
        store: &Arc<ShardStore>,
        tokenizer: &Arc<dyn Tokenizer>,
        skips: &Arc<SkipCounts>,
        state: &LoaderState,
    ) -> Result<EpochPipeline, DataError> {
        let plan = Arc::new(EpochPlan::new(&cfg.shards, cfg.partitions, cfg.seed, state.epoch, cfg.order));
        let local = cfg.local_partitions();
        let rows = cfg.rows_per_partition();
        let credit = (2 * rows).max(16);
        let stop = Arc::new(AtomicBool::new(false));
        let credits: Vec<Arc<Credits>> = local.clone().map(|_| Arc::new(Credits::new(credit))).collect();
        let (job_tx, job_rx) = channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (msg_tx, msg_rx) = channel::<Message>();
        let (batch_tx, batch_rx) = sync_channel(cfg.prefetch_batches.max(1));
        let spawn_err = |e: std::io::Error| DataError::Store {
            url: "(data pipeline)".to_owned(),
            reason: format!("cannot start a thread: {e}"),
        };

        let shards = Arc::new(cfg.shards.clone());
        for (part, partition) in local.clone().enumerate() {
            let reader = PartitionReader::new(
                partition,
                cfg.seed,
                Arc::clone(&plan),
                Arc::clone(&shards),
                Arc::clone(store),
                cfg.format.clone(),
                cfg.shuffle_window,
            );
            let cursor = state.cursors.get(&partition).copied().unwrap_or_default();
            let first_seq = cursor.window * cfg.shuffle_window + cursor.taken;
            let credits = Arc::clone(&credits[part]);
            let jobs = job_tx.clone();
            let msgs = msg_tx.clone();
            std::thread::Builder::new()
                .name(format!("clipfleet-part-{partition}"))
                .spawn(move || {
                    let mut seq = first_seq;
                    reader.run(cursor, |event| match event {
                        PartitionEvent::Sample(emitted) => {
                            if !credits.acquire() {
                                return false;
                            }
                            let ok = jobs.send(Job { part, seq, emitted }).is_ok();
                            seq += 1;
                            ok
                        }
                        PartitionEvent::ShardSkipped { reason, shard, detail } => {
                            msgs.send(Message::ShardSkipped { reason, shard, detail }).is_ok()
                        }
                        PartitionEvent::NotDownloaded => msgs.send(Message::NotDownloaded).is_ok(),
                        PartitionEvent::Exhausted => msgs.send(Message::Exhausted { part, seq }).is_ok(),
                        PartitionEvent::Fatal(e) => msgs.send(Message::Fatal(e)).is_ok(),
                    });
                })
                .map_err(spawn_err)?;
        }
        drop(job_tx);

        for i in 0..cfg.decode_threads.max(1) {
            let jobs = Arc::clone(&job_rx);
            let msgs = msg_tx.clone();
            let cfg = Arc::clone(cfg);
            let tokenizer = Arc::clone(tokenizer);
            let epoch = state.epoch;
            std::thread::Builder::new()
                .name(format!("clipfleet-decode-{i}"))
                .spawn(move || loop {
                    let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = job else { return };
                    let partition = cfg.local_partitions().start + job.part;
                    let outcome =
                        prepare(&cfg, tokenizer.as_ref(), epoch, partition, job.emitted.position, job.emitted.sample);
                    let message =
                        Message::Item { part: job.part, seq: job.seq, outcome, cursor_after: job.emitted.cursor_after };
                    if msgs.send(message).is_err() {
                        return;
                    }
                })
                .map_err(spawn_err)?;
        }
        drop(msg_tx);

        let assembler = Assembler {
            cfg: Arc::clone(cfg),
            skips: Arc::clone(skips),
            credits: credits.clone(),
            stop: Arc::clone(&stop),
            msgs: msg_rx,
            parts: local.clone().map(|p| PartState::new(state.cursors.get(&p).copied().unwrap_or_default())).collect(),
            seen: 0,
            skipped: 0,
        };
        let state = state.clone();
        std::thread::Builder::new()
            .name("clipfleet-assemble".into())
            .spawn(move || assembler.run(state, batch_tx))
            .map_err(spawn_err)?;
        Ok(EpochPipeline { batches: batch_rx, credits, stop })
    }

    /// The next batch, `None` when the epoch is over.
    pub(crate) fn next(&self) -> Option<Result<LoadedBatch, DataError>> {
        self.batches.recv().ok()
    }
}

impl Drop for EpochPipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for c in &self.credits {
            c.close();
        }
    }
}

/// Decodes, augments and tokenizes one sample on a pool thread.
fn prepare(
    cfg: &LoaderConfig,
    tokenizer: &dyn Tokenizer,
    epoch: u64,
    partition: usize,
    position: u64,
    sample: RawSample,
) -> Outcome {
    let pair = match sample {
        RawSample::Pair(pair) => pair,
        RawSample::Skip { reason, shard, key } => return Outcome::Skipped { reason, shard, key },
        RawSample::File { path, caption, shard, key } => {
            if caption.trim().is_empty() {
                return Outcome::Skipped { reason: SkipReason::MissingCaption, shard, key };
            }
            if caption.len() > crate::skip::MAX_CAPTION_BYTES {
                return Outcome::Skipped { reason: SkipReason::OversizedCaption, shard, key };
            }
            let Ok(image) = std::fs::read(&path) else {
                tracing::warn!(image = %path.display(), %shard, %key, "cannot read the image file of a CSV row");
                return Outcome::Skipped { reason: SkipReason::MissingImage, shard, key };
            };
            let image_format = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            EncodedPair { shard, key, image, image_format, caption, label: None }
        }
    };
    let size = cfg.image_size;
    let image = match decode_rgb(&pair.image, &pair.image_format, Some(size), cfg.max_image_pixels) {
        Ok(image) => image,
        Err(reason) => return Outcome::Skipped { reason, shard: pair.shard, key: pair.key },
    };
    let image = if cfg.train_transform {
        RandomResizedCrop::openclip(size).apply(&image, &mut augment_rng(cfg.seed, epoch, partition, position))
    } else {
        resize_short_side_center_crop(&image, size)
    };
    Outcome::Ready(Decoded {
        pixels: image.into_raw(),
        tokens: tokenizer.tokenize(&pair.caption, cfg.context_length),
        label: pair.label,
        key: pair.key,
    })
}

struct PartState {
    next_seq: u64,
    pending: BTreeMap<u64, (Outcome, PartitionCursor)>,
    exhausted_at: Option<u64>,
    cursor: PartitionCursor,
}

impl PartState {
    fn new(cursor: PartitionCursor) -> PartState {
        PartState { next_seq: 0, pending: BTreeMap::new(), exhausted_at: None, cursor }
    }
}

struct Assembler {
    cfg: Arc<LoaderConfig>,
    skips: Arc<SkipCounts>,
    credits: Vec<Arc<Credits>>,
    stop: Arc<AtomicBool>,
    msgs: Receiver<Message>,
    parts: Vec<PartState>,
    seen: u64,
    skipped: u64,
}

impl Assembler {
    fn run(mut self, mut state: LoaderState, out: SyncSender<Result<LoadedBatch, DataError>>) {
        let window = self.cfg.shuffle_window;
        for (part, p) in self.parts.iter_mut().enumerate() {
            let _ = part;
            p.next_seq = p.cursor.window * window + p.cursor.taken;
        }
        loop {
            if self.cfg.steps_per_epoch.is_some_and(|n| state.step >= n) || self.stop.load(Ordering::Acquire) {
                return;
            }
            let result = self.assemble();
            let last = self.cfg.steps_per_epoch.is_some_and(|n| state.step + 1 >= n);
            let result = result.and_then(|batch| {
                self.check_skip_limit(last || batch.is_none())?;
                Ok(batch)
            });
            match result {
                Ok(Some(mut batch)) => {
                    state.step += 1;
                    for (part, p) in self.parts.iter().enumerate() {
                        state.cursors.insert(self.cfg.local_partitions().start + part, p.cursor);
                    }
                    batch.state_after = state.clone();
                    if out.send(Ok(batch)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = out.send(Err(e));
                    return;
                }
            }
        }
    }

    /// The next batch; `None` when an evaluation pass ends (with nothing left to return).
    fn assemble(&mut self) -> Result<Option<LoadedBatch>, DataError> {
        let rows = self.cfg.rows_per_partition();
        let side = self.cfg.image_size as usize;
        let pixels = side * side * 3;
        let ctx = self.cfg.context_length;
        let capacity = rows * self.parts.len();
        let mut data = Vec::with_capacity(capacity * pixels);
        let mut tokens = Vec::with_capacity(capacity * ctx);
        let mut labels = Vec::with_capacity(capacity);
        let mut keys = Vec::with_capacity(capacity);
        for part in 0..self.parts.len() {
            let mut filled = 0;
            while filled < rows {
                let Some((outcome, cursor)) = self.next_item(part)? else {
                    if self.cfg.steps_per_epoch.is_some() {
                        let partition = self.cfg.local_partitions().start + part;
                        return Err(DataError::PartitionExhausted {
                            partition,
                            detail: format!(
                                "a whole pass over its shards gave no valid sample ({filled} rows into a batch); check the shards with `clipfleet shards inspect`"
                            ),
                        });
                    }
                    break;
                };
                self.parts[part].cursor = cursor;
                self.seen += 1;
                match outcome {
                    Outcome::Ready(d) => {
                        data.extend_from_slice(&d.pixels);
                        tokens.extend(d.tokens);
                        labels.push(d.label);
                        keys.push(d.key);
                        filled += 1;
                    }
                    Outcome::Skipped { reason, shard, key } => {
                        self.skipped += 1;
                        self.skips.record(reason);
                        tracing::warn!(%shard, %key, %reason, "skipped a sample");
                    }
                }
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let batch = keys.len();
        Ok(Some(LoadedBatch {
            images: ImageBatch { data, batch, height: side, width: side },
            tokens,
            labels,
            keys,
            state_after: LoaderState::default(),
        }))
    }

    /// The next result of partition `part` in stream order; `None` once it is exhausted.
    fn next_item(&mut self, part: usize) -> Result<Option<(Outcome, PartitionCursor)>, DataError> {
        loop {
            let p = &mut self.parts[part];
            if let Some(item) = p.pending.remove(&p.next_seq) {
                p.next_seq += 1;
                self.credits[part].release();
                return Ok(Some(item));
            }
            if p.exhausted_at == Some(p.next_seq) {
                return Ok(None);
            }
            match self.msgs.recv() {
                Ok(Message::Item { part, seq, outcome, cursor_after }) => {
                    self.parts[part].pending.insert(seq, (outcome, cursor_after));
                }
                Ok(Message::Exhausted { part, seq }) => self.parts[part].exhausted_at = Some(seq),
                Ok(Message::NotDownloaded) => self.skips.record_not_downloaded(),
                Ok(Message::ShardSkipped { reason, shard, detail }) => {
                    self.seen += 1;
                    self.skipped += 1;
                    self.skips.record(reason);
                    tracing::warn!(%shard, %reason, %detail, "skipped the rest of a shard");
                }
                Ok(Message::Fatal(e)) => return Err(e),
                Err(_) => {
                    return Err(DataError::Store {
                        url: "(data pipeline)".to_owned(),
                        reason: "the reader and decode threads stopped unexpectedly".to_owned(),
                    })
                }
            }
        }
    }

    fn check_skip_limit(&self, final_check: bool) -> Result<(), DataError> {
        if self.skipped == 0 || (self.seen < MIN_SAMPLES_FOR_SKIP_LIMIT && !final_check) {
            return Ok(());
        }
        let fraction = self.skipped as f64 / self.seen.max(1) as f64;
        if fraction <= self.cfg.max_skip_fraction {
            return Ok(());
        }
        let by_reason = self.skips.snapshot().iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(", ");
        Err(DataError::TooManySkips {
            skipped: self.skipped,
            seen: self.seen,
            limit: self.cfg.max_skip_fraction,
            by_reason,
        })
    }
}
