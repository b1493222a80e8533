//! One shard as a forward stream of raw samples, whatever its format and store.
//!
//! Every sample the shard holds is one *position* of its partition's stream, valid or not, so
//! a corrupt sample leaves a hole at a fixed place instead of shifting the ones after it.
//! Shard-level failures (a truncated tar, a shard unreadable after retries) end the shard and
//! are reported once; errors no retry can fix (404, 403, a wrong Parquet schema) are fatal.

use std::sync::Arc;

use crate::csv_dataset::{is_csv, read_rows, CsvColumns};
use crate::parquet_reader::{ParquetReadOptions, ParquetShardReader};
use crate::sample::EncodedPair;
use crate::shards::shard_basename;
use crate::skip::SkipReason;
use crate::store::{ShardReader, ShardStore};
use crate::webdataset::{to_pair, CaptionSource, TarSamples};
use crate::DataError;

/// One sample position: a pair to decode, or why it cannot be used.
#[derive(Debug)]
pub(crate) enum RawSample {
    /// An image–caption pair, not yet decoded.
    Pair(EncodedPair),
    /// A CSV row: an image file still to read (by a decode thread) and its caption.
    File {
        /// The image file.
        path: std::path::PathBuf,
        /// The caption.
        caption: String,
        /// The CSV URL.
        shard: String,
        /// `<file>#<row>`.
        key: String,
    },
    /// A sample that is skipped, with its shard and key for the warning.
    Skip {
        /// Why.
        reason: SkipReason,
        /// The shard URL.
        shard: String,
        /// The sample key, or `<file>#<row>` for Parquet rows.
        key: String,
    },
}

/// What reading a shard yields next.
#[derive(Debug)]
pub(crate) enum ShardEvent {
    /// The next sample position.
    Sample(RawSample),
    /// A row img2dataset could not download: not a sample position.
    NotDownloaded,
    /// The shard ended early; no more positions come from it.
    ShardSkipped {
        /// [`SkipReason::TruncatedShard`] or [`SkipReason::UnreadableShard`].
        reason: SkipReason,
        /// The shard URL.
        shard: String,
        /// What went wrong.
        detail: String,
    },
    /// An error no retry can fix; the run stops.
    Fatal(DataError),
}

/// How to read samples out of shards.
#[derive(Debug, Clone, Default)]
pub struct SampleFormat {
    /// Where a WebDataset caption comes from.
    pub caption: CaptionSource,
    /// Parquet columns and batch size.
    pub parquet: ParquetReadOptions,
    /// CSV columns and separator.
    pub csv: CsvColumns,
    /// How URLs map to formats.
    pub dataset_type: DatasetType,
}

/// How URLs map to formats (OpenCLIP's `--dataset-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DatasetType {
    /// By extension: `.csv`/`.tsv` CSV, `.parquet` Parquet, the rest WebDataset tars.
    #[default]
    Auto,
    /// Parquet by extension, every other URL a WebDataset tar.
    WebDataset,
    /// Every URL a CSV dataset, whatever its extension.
    Csv,
}

impl SampleFormat {
    /// Whether `url` is read as a CSV dataset.
    pub fn is_csv(&self, url: &str) -> bool {
        match self.dataset_type {
            DatasetType::Auto => is_csv(url),
            DatasetType::WebDataset => false,
            DatasetType::Csv => true,
        }
    }
}

/// Whether `url` names a Parquet shard (by its extension).
pub fn is_parquet(url: &str) -> bool {
    url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase().ends_with(".parquet")
}

/// Opens `url` and returns its events, in order. The iterator ends after a
/// [`ShardEvent::ShardSkipped`] or [`ShardEvent::Fatal`].
pub(crate) fn shard_events(
    store: &Arc<ShardStore>,
    url: &str,
    format: &SampleFormat,
) -> Box<dyn Iterator<Item = ShardEvent> + Send> {
    if format.is_csv(url) {
        csv_events(store, url, &format.csv)
    } else if is_parquet(url) {
        parquet_events(Arc::clone(store), url.to_owned(), format.parquet.clone())
    } else {
        match store.open(url) {
            Ok(reader) => Box::new(TarEvents::new(reader, url, format.caption.clone())),
            Err(e) => Box::new(std::iter::once(open_failure(url, e))),
        }
    }
}

/// The rows of a CSV dataset as sample positions; the images are read by the decode threads.
fn csv_events(store: &Arc<ShardStore>, url: &str, columns: &CsvColumns) -> Box<dyn Iterator<Item = ShardEvent> + Send> {
    let rows = store.read_all(url).and_then(|bytes| read_rows(&bytes, url, columns));
    match rows {
        Err(e) => Box::new(std::iter::once(open_failure(url, e))),
        Ok(rows) => {
            let shard = url.to_owned();
            let file = shard_basename(url).to_owned();
            Box::new(rows.into_iter().enumerate().map(move |(i, row)| {
                ShardEvent::Sample(RawSample::File {
                    path: row.image,
                    caption: row.caption,
                    shard: shard.clone(),
                    key: format!("{file}#{i}"),
                })
            }))
        }
    }
}

fn open_failure(url: &str, e: DataError) -> ShardEvent {
    match e {
        DataError::NotFound { .. } | DataError::Forbidden { .. } | DataError::Schema { .. } => ShardEvent::Fatal(e),
        DataError::ShardPattern { .. } | DataError::InvalidArgument { .. } => ShardEvent::Fatal(e),
        other => ShardEvent::ShardSkipped {
            reason: SkipReason::UnreadableShard,
            shard: url.to_owned(),
            detail: other.to_string(),
        },
    }
}

struct TarEvents {
    samples: TarSamples<ShardReader>,
    url: String,
    caption: CaptionSource,
}

impl TarEvents {
    fn new(reader: ShardReader, url: &str, caption: CaptionSource) -> TarEvents {
        TarEvents { samples: TarSamples::new(reader, url), url: url.to_owned(), caption }
    }
}

impl Iterator for TarEvents {
    type Item = ShardEvent;

    fn next(&mut self) -> Option<ShardEvent> {
        Some(match self.samples.next()? {
            Ok(sample) => {
                let key = sample.key.clone();
                ShardEvent::Sample(match to_pair(sample, &self.url, &self.caption) {
                    Ok(pair) => RawSample::Pair(pair),
                    Err(reason) => RawSample::Skip { reason, shard: self.url.clone(), key },
                })
            }
            Err(e) => ShardEvent::ShardSkipped { reason: e.reason, shard: e.shard.clone(), detail: e.to_string() },
        })
    }
}

fn parquet_events(
    store: Arc<ShardStore>,
    url: String,
    options: ParquetReadOptions,
) -> Box<dyn Iterator<Item = ShardEvent> + Send> {
    match open_parquet(&store, &url, &options, 0) {
        Err(e) => Box::new(std::iter::once(open_failure(&url, e))),
        Ok(reader) => Box::new(ParquetEvents {
            store,
            reader,
            options,
            file: shard_basename(&url).to_owned(),
            url,
            done: false,
            not_downloaded: 0,
            held: None,
        }),
    }
}

/// Opens a Parquet shard and reads past its first `rows` rows, retrying transient store errors
/// (a 5xx, a reset) with the store's back-off, as tar shards are: the async Parquet reader has
/// no retries of its own.
fn open_parquet(
    store: &Arc<ShardStore>,
    url: &str,
    options: &ParquetReadOptions,
    rows: u64,
) -> Result<ParquetShardReader, DataError> {
    let mut failures = 0;
    loop {
        let attempt = store.resolve(url).and_then(|(object_store, path)| {
            store.runtime().block_on(async {
                let mut reader = ParquetShardReader::open(object_store, path, url.to_owned(), options).await?;
                while reader.rows_read() < rows && reader.next_row().await?.is_some() {}
                Ok(reader)
            })
        });
        match attempt {
            Err(e) if failures + 1 < store.retry_policy().max_attempts && is_transient(&e) => {
                failures += 1;
                tracing::warn!(shard = url, failures, "retrying a Parquet read: {e}");
                store.runtime().block_on(store.sleep(store.retry_policy().delay(failures, rows)));
            }
            other => return other,
        }
    }
}

/// Whether a Parquet read failed on a transient object-store error (a 5xx, a reset).
pub(crate) fn is_transient(e: &DataError) -> bool {
    let DataError::Parquet { source: parquet::errors::ParquetError::External(inner), .. } = e else { return false };
    inner
        .downcast_ref::<object_store::Error>()
        .is_some_and(|e| crate::store::classify(e) == crate::store::ErrorClass::Transient)
}

struct ParquetEvents {
    store: Arc<ShardStore>,
    reader: ParquetShardReader,
    options: ParquetReadOptions,
    url: String,
    file: String,
    done: bool,
    /// Not-downloaded rows still to report before `held`.
    not_downloaded: u64,
    /// The event read after them.
    held: Option<ShardEvent>,
}

impl Iterator for ParquetEvents {
    type Item = ShardEvent;

    fn next(&mut self) -> Option<ShardEvent> {
        if self.not_downloaded > 0 {
            self.not_downloaded -= 1;
            return Some(ShardEvent::NotDownloaded);
        }
        if let Some(event) = self.held.take() {
            return Some(event);
        }
        if self.done {
            return None;
        }
        let before = self.reader.not_downloaded();
        let event = self.read_row();
        let passed = self.reader.not_downloaded() - before;
        if passed == 0 {
            return event;
        }
        self.not_downloaded = passed - 1;
        self.held = event;
        Some(ShardEvent::NotDownloaded)
    }
}

impl ParquetEvents {
    fn read_row(&mut self) -> Option<ShardEvent> {
        let at = self.reader.rows_read();
        let mut row = self.store.runtime().block_on(self.reader.next_row());
        if row.as_ref().is_err_and(is_transient) {
            // Reopen and read past the rows already given (the not-downloaded count is the
            // same at the same row), then take the row again.
            match open_parquet(&self.store, &self.url, &self.options, at) {
                Ok(reader) => {
                    self.reader = reader;
                    row = self.store.runtime().block_on(self.reader.next_row());
                }
                Err(e) => row = Err(e),
            }
        }
        let key = format!("{}#{}", self.file, self.reader.rows_read().saturating_sub(1));
        match row {
            Ok(None) => {
                self.done = true;
                None
            }
            Ok(Some(Ok(pair))) => Some(ShardEvent::Sample(RawSample::Pair(pair))),
            Ok(Some(Err(reason))) => Some(ShardEvent::Sample(RawSample::Skip { reason, shard: self.url.clone(), key })),
            Err(e) => {
                self.done = true;
                Some(ShardEvent::ShardSkipped {
                    reason: SkipReason::UnreadableShard,
                    shard: self.url.clone(),
                    detail: e.to_string(),
                })
            }
        }
    }
}
