//! The reader of one canonical partition: its segments in plan order, shuffled in windows.
//!
//! The partition's stream is the concatenation of its segments' samples (pass after pass, in
//! training). It is cut into windows
//! of `window_size` positions; a window is read whole, then handed out in the order of
//! [`window_permutation`]. Memory is one window of encoded samples per partition, and a
//! [`PartitionCursor`] (window number, where that window starts, how many of its samples were
//! consumed) is enough to resume exactly: re-read that one window, skip what was consumed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::plan::{window_permutation, EpochPlan, Segment, ShardEntry};
use super::source::{shard_events, RawSample, SampleFormat, ShardEvent};
use crate::skip::SkipReason;
use crate::store::ShardStore;
use crate::DataError;

/// Where a partition's stream stands, as stored in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PartitionCursor {
    /// The window being consumed (0-based).
    pub window: u64,
    /// Index, in the partition's segment sequence (counted across passes), of the segment
    /// where that window starts.
    pub shard: u64,
    /// Sample positions of that segment's shard before the window starts (counted from the
    /// shard's first sample, not the segment's).
    pub offset: u64,
    /// Samples of the window already consumed.
    pub taken: u64,
}

/// One sample handed out by a partition, in stream order.
#[derive(Debug)]
pub(crate) struct Emitted {
    /// The sample, or why it is skipped.
    pub sample: RawSample,
    /// Its raw position in the partition's stream (keys its augmentation).
    pub position: u64,
    /// The partition's cursor once this sample is consumed.
    pub cursor_after: PartitionCursor,
}

/// What a partition reader tells the pipeline.
#[derive(Debug)]
pub(crate) enum PartitionEvent {
    /// The next sample of the stream.
    Sample(Emitted),
    /// A shard ended early (counted and logged; not a stream position).
    ShardSkipped {
        /// Why.
        reason: SkipReason,
        /// The shard URL.
        shard: String,
        /// What went wrong.
        detail: String,
    },
    /// A Parquet row that img2dataset could not download (its `status` is not `success`): not
    /// a sample position, counted apart from skips.
    NotDownloaded,
    /// The stream ended: every segment of the partition was read (evaluation), or a whole
    /// pass gave no sample (training).
    Exhausted,
    /// The run must stop.
    Fatal(DataError),
}

/// Reads one partition's stream from a cursor.
pub(crate) struct PartitionReader {
    partition: usize,
    seed: u64,
    plan: Arc<EpochPlan>,
    shards: Arc<Vec<ShardEntry>>,
    store: Arc<ShardStore>,
    format: SampleFormat,
    window_size: u64,
    /// Next segment of the sequence to open, and the positions read from the open one's shard.
    shard_seq: u64,
    offset: u64,
    /// Where the open segment ends.
    end: Option<u64>,
    events: Option<Box<dyn Iterator<Item = ShardEvent> + Send>>,
    /// Whether the open segment gave a sample position.
    productive: bool,
    /// Segments closed in a row without a sample position (a whole idle pass ends the stream).
    idle_segments: u64,
    finished: bool,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReader")
            .field("partition", &self.partition)
            .field("shard_seq", &self.shard_seq)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl PartitionReader {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        partition: usize,
        seed: u64,
        plan: Arc<EpochPlan>,
        shards: Arc<Vec<ShardEntry>>,
        store: Arc<ShardStore>,
        format: SampleFormat,
        window_size: u64,
    ) -> PartitionReader {
        PartitionReader {
            partition,
            seed,
            plan,
            shards,
            store,
            format,
            window_size: window_size.max(1),
            shard_seq: 0,
            offset: 0,
            end: None,
            events: None,
            productive: false,
            idle_segments: 0,
            finished: false,
        }
    }

    /// Streams the partition from `cursor` into `emit` until the stream ends, `emit` returns
    /// `false` (the pipeline stopped), or a fatal error.
    pub(crate) fn run(mut self, cursor: PartitionCursor, mut emit: impl FnMut(PartitionEvent) -> bool) {
        // Re-position at the start of the cursor's window, silently: those samples and shard
        // failures were counted before the checkpoint.
        self.shard_seq = cursor.shard;
        self.offset = 0;
        while self.offset < cursor.offset && !self.finished {
            match self.next_position() {
                Ok(Some(_)) => {}
                Ok(None) if self.events.is_some() => {}
                Ok(None) => break,
                Err(e) => {
                    emit(PartitionEvent::Fatal(e));
                    return;
                }
            }
            // A shard shorter than the cursor says: its rest is gone, go on from the next.
            if self.events.is_none() && self.offset < cursor.offset {
                self.offset = cursor.offset;
            }
        }
        self.offset = cursor.offset;
        let mut window = cursor.window;
        let mut skip = cursor.taken;
        loop {
            let start = PartitionCursor { window, shard: self.shard_seq, offset: self.offset, taken: 0 };
            let mut slots: Vec<Option<RawSample>> = Vec::new();
            while (slots.len() as u64) < self.window_size {
                match self.next_position_reporting(&mut emit) {
                    Ok(Fill::Sample(sample)) => slots.push(Some(sample)),
                    // A window never mixes two passes, so that a pass gives each of its
                    // samples before the next pass gives any.
                    Ok(Fill::PassEnd) if slots.is_empty() => {}
                    Ok(Fill::PassEnd | Fill::End) => break,
                    Err(e) => {
                        emit(PartitionEvent::Fatal(e));
                        return;
                    }
                }
            }
            if slots.is_empty() {
                emit(PartitionEvent::Exhausted);
                return;
            }
            let len = slots.len() as u64;
            let perm = window_permutation(self.seed, self.plan.epoch(), self.partition, window, len);
            for j in skip..len {
                let slot = perm.index(j);
                let Some(sample) = slots[slot as usize].take() else { continue };
                let event = PartitionEvent::Sample(Emitted {
                    sample,
                    position: window * self.window_size + slot,
                    cursor_after: PartitionCursor { taken: j + 1, ..start },
                });
                if !emit(event) {
                    return;
                }
            }
            skip = 0;
            window += 1;
        }
    }

    /// The next sample position, reporting shard failures through `emit`; stops at the end
    /// of a pass.
    fn next_position_reporting(&mut self, emit: &mut impl FnMut(PartitionEvent) -> bool) -> Result<Fill, DataError> {
        loop {
            match self.next_event()? {
                Step::Sample(s) => return Ok(Fill::Sample(s)),
                Step::ShardDone(event) => {
                    if let Some(event) = event {
                        emit(event);
                    }
                    if self.at_pass_end() {
                        return Ok(Fill::PassEnd);
                    }
                }
                Step::NotDownloaded => {
                    emit(PartitionEvent::NotDownloaded);
                }
                Step::End => return Ok(Fill::End),
            }
        }
    }

    /// Whether the last segment of a pass was just closed (training streams only).
    fn at_pass_end(&self) -> bool {
        let pass_len = self.plan.segments(self.partition);
        self.plan.repeats() && self.events.is_none() && pass_len > 0 && self.shard_seq.is_multiple_of(pass_len)
    }

    /// The next sample position, ignoring shard failures; `Ok(None)` when a shard ended (with
    /// `events` cleared) or the stream ended (`finished`).
    fn next_position(&mut self) -> Result<Option<RawSample>, DataError> {
        loop {
            match self.next_event()? {
                Step::Sample(s) => return Ok(Some(s)),
                Step::NotDownloaded => {}
                Step::ShardDone(_) | Step::End => return Ok(None),
            }
        }
    }

    fn next_event(&mut self) -> Result<Step, DataError> {
        if self.finished {
            return Ok(Step::End);
        }
        if self.events.is_none() {
            let pass_len = self.plan.segments(self.partition);
            if self.plan.repeats() && self.idle_segments >= pass_len {
                // A whole pass without a sample: the partition has nothing to give.
                self.finished = true;
                return Ok(Step::End);
            }
            let Some(segment) = self.plan.segment(self.partition, self.shard_seq) else {
                self.finished = true;
                return Ok(Step::End);
            };
            if self.plan.repeats() && pass_len > 0 && self.shard_seq > 0 && self.shard_seq.is_multiple_of(pass_len) {
                tracing::info!(
                    partition = self.partition,
                    pass = self.shard_seq / pass_len,
                    "a data partition ran out of samples before the epoch's end: reading its shards again in a new order"
                );
            }
            self.open(segment)?;
            if self.events.is_none() {
                return Ok(Step::ShardDone(None));
            }
        }
        if self.end.is_some_and(|end| self.offset >= end) {
            self.close_shard();
            return Ok(Step::ShardDone(None));
        }
        let next = self.events.as_mut().and_then(|events| events.next());
        match next {
            Some(ShardEvent::Sample(s)) => {
                self.offset += 1;
                self.productive = true;
                Ok(Step::Sample(s))
            }
            Some(ShardEvent::NotDownloaded) => Ok(Step::NotDownloaded),
            Some(ShardEvent::Fatal(e)) => Err(e),
            Some(ShardEvent::ShardSkipped { reason, shard, detail }) => {
                self.close_shard();
                Ok(Step::ShardDone(Some(PartitionEvent::ShardSkipped { reason, shard, detail })))
            }
            None => {
                self.close_shard();
                Ok(Step::ShardDone(None))
            }
        }
    }

    /// Opens `segment`'s shard and reads past the positions before the segment, silently:
    /// they belong to another partition, which counts their skips. A shard that ends before
    /// the segment starts is closed.
    fn open(&mut self, segment: Segment) -> Result<(), DataError> {
        self.productive = false;
        let mut events = shard_events(&self.store, &self.shards[segment.shard].url, &self.format);
        let mut offset = 0;
        while offset < segment.start {
            match events.next() {
                Some(ShardEvent::Sample(_)) => offset += 1,
                Some(ShardEvent::NotDownloaded) => {}
                Some(ShardEvent::Fatal(e)) => return Err(e),
                Some(ShardEvent::ShardSkipped { .. }) | None => {
                    self.close_shard();
                    return Ok(());
                }
            }
        }
        self.events = Some(events);
        self.offset = offset;
        self.end = segment.end;
        Ok(())
    }

    fn close_shard(&mut self) {
        self.events = None;
        self.shard_seq += 1;
        self.offset = 0;
        self.end = None;
        self.idle_segments = if self.productive { 0 } else { self.idle_segments + 1 };
        self.productive = false;
    }
}

/// What filling a window gets next.
enum Fill {
    Sample(RawSample),
    /// A pass of a training stream ended.
    PassEnd,
    /// The stream ended.
    End,
}

enum Step {
    Sample(RawSample),
    NotDownloaded,
    ShardDone(Option<PartitionEvent>),
    End,
}
