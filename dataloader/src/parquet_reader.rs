//! Reader for img2dataset's Parquet shards, streamed from any object store.
//!
//! img2dataset writes one row per sample: a binary image column named after the image format
//! (`jpg` by default), the caption in `caption`, the sample `key`, and metadata columns (`url`,
//! `status`, `width`, `exif`, ...). Rows that failed to download keep their metadata and have a
//! null image.
//!
//! Rows whose string column `status` holds anything but `success` (img2dataset's failed
//! downloads) are *not downloaded*: they are passed over, counted by
//! [`ParquetShardReader::not_downloaded`], and are neither samples nor skips.
//!
//! [`ParquetShardReader`] reads only the image, caption, key and status columns, plus an integer `cls`
//! label column when the file has one (clipfleet's `shards make` writes it; img2dataset does
//! not). It is a column projection, so the other column chunks are never fetched. It reads one
//! row group at a time, in record batches of a configurable size: memory stays bounded by one
//! row group's projected columns, whatever the file size. Each row becomes an [`EncodedPair`], or a [`SkipReason`] when its image is null
//! ([`SkipReason::MissingImage`]) or its caption null or blank ([`SkipReason::MissingCaption`]).
//! A file whose schema is wrong as a whole is a [`DataError::Schema`], fatal for that source.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, MetadataSuffixFetch, ParquetRecordBatchStream};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::sample::EncodedPair;
use crate::skip::SkipReason;
use crate::DataError;

/// Caption columns tried, in order, when [`ParquetColumns::caption`] is `None`.
pub const DEFAULT_CAPTION_COLUMNS: [&str; 2] = ["caption", "txt"];

/// The optional class-label column, read into [`EncodedPair::label`] when it is an integer
/// column (a column of another type under this name is ignored).
pub const LABEL_COLUMN: &str = "cls";

/// img2dataset's download-status column; rows whose value is not [`STATUS_SUCCESS`] are
/// not downloaded.
pub const STATUS_COLUMN: &str = "status";

/// The `status` of a downloaded row.
pub const STATUS_SUCCESS: &str = "success";

/// The outcome of one row: a pair to decode, or why the row was skipped.
pub type ParquetRow = Result<EncodedPair, SkipReason>;

/// Which columns of a Parquet shard hold the image, the caption and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetColumns {
    /// The binary image column; its lowercased name is the image format (`jpg`, `png`, `webp`).
    /// Default `jpg`, as img2dataset names it after `--output_format`'s encode format.
    pub image: String,
    /// The caption column (string, or binary holding UTF-8). `None` (the default) takes the
    /// first of [`DEFAULT_CAPTION_COLUMNS`] present: `caption`, then `txt`.
    pub caption: Option<String>,
    /// The key column (string or integer). `None` (the default) uses `key` when the file has
    /// one; rows without a key are named `<file name>#<row index>`. A named column must exist.
    pub key: Option<String>,
}

impl Default for ParquetColumns {
    fn default() -> Self {
        ParquetColumns { image: "jpg".to_string(), caption: None, key: None }
    }
}

/// How to read a Parquet shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetReadOptions {
    /// The columns to read.
    pub columns: ParquetColumns,
    /// Rows per decoded record batch (at least 1; default 1024). Memory use is about one row
    /// group's projected column chunks plus one batch of decoded values.
    pub batch_size: usize,
}

impl Default for ParquetReadOptions {
    fn default() -> Self {
        ParquetReadOptions { columns: ParquetColumns::default(), batch_size: 1024 }
    }
}

/// An [`AsyncFileReader`] over an [`ObjectStore`] object that counts the bytes it fetches.
///
/// (parquet 60 deprecates its own `ParquetObjectReader` in favour of implementing the trait.)
#[derive(Debug, Clone)]
struct ObjectStoreFileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    bytes_read: Arc<AtomicU64>,
}

impl ObjectStoreFileReader {
    fn count(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectStoreFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let bytes = self.store.get_range(&self.path, range).await.map_err(external)?;
            self.count(bytes.len() as u64);
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let parts = self.store.get_ranges(&self.path, &ranges).await.map_err(external)?;
            self.count(parts.iter().map(|b| b.len() as u64).sum());
            Ok(parts)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let reader = ParquetMetaDataReader::new().with_arrow_reader_options(options);
            Ok(Arc::new(reader.load_via_suffix_and_finish(self).await?))
        }
        .boxed()
    }
}

impl MetadataSuffixFetch for &mut ObjectStoreFileReader {
    fn fetch_suffix(&mut self, suffix: usize) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let options = GetOptions { range: Some(GetRange::Suffix(suffix as u64)), ..Default::default() };
        async move {
            let resp = self.store.get_opts(&self.path, options).await.map_err(external)?;
            let bytes = resp.bytes().await.map_err(external)?;
            self.count(bytes.len() as u64);
            Ok(bytes)
        }
        .boxed()
    }
}

/// Streams the rows of one Parquet shard as [`ParquetRow`]s, one row group at a time.
pub struct ParquetShardReader {
    url: String,
    file_name: String,
    image_format: String,
    stream: ParquetRecordBatchStream<ObjectStoreFileReader>,
    metadata: Arc<ParquetMetaData>,
    bytes_read: Arc<AtomicU64>,
    image_col: usize,
    caption_col: usize,
    key_col: Option<usize>,
    label_col: Option<usize>,
    status_col: Option<usize>,
    batch: Option<RecordBatch>,
    row_in_batch: usize,
    row: u64,
    not_downloaded: u64,
}

impl std::fmt::Debug for ParquetShardReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetShardReader")
            .field("url", &self.url)
            .field("schema", self.stream.schema())
            .field("row", &self.row)
            .field("bytes_read", &self.bytes_read())
            .finish_non_exhaustive()
    }
}

impl ParquetShardReader {
    /// Opens `path` in `store`: reads the footer, checks the schema, and projects the image,
    /// caption and key columns, and [`LABEL_COLUMN`] when it is an integer column. `url` names
    /// the shard in errors and in [`EncodedPair::shard`].
    ///
    /// Fails with [`DataError::Schema`] when the image column is absent or not binary, when no
    /// caption column is found, or when a named key column is absent; and with
    /// [`DataError::Parquet`] when the footer cannot be fetched or parsed.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        path: Path,
        url: impl Into<String>,
        options: &ParquetReadOptions,
    ) -> Result<Self, DataError> {
        let url = url.into();
        guarded(&url, Self::open_unguarded(store, path, url.clone(), options)).await
    }

    async fn open_unguarded(
        store: Arc<dyn ObjectStore>,
        path: Path,
        url: String,
        options: &ParquetReadOptions,
    ) -> Result<Self, DataError> {
        if options.batch_size == 0 {
            return Err(DataError::InvalidArgument {
                name: "batch_size",
                value: "0".to_string(),
                allowed: "1 or more rows".to_string(),
            });
        }
        let file_name = path.filename().unwrap_or(path.as_ref()).to_string();
        let bytes_read = Arc::new(AtomicU64::new(0));
        let reader = ObjectStoreFileReader { store, path, bytes_read: Arc::clone(&bytes_read) };
        let parquet_err = |source| DataError::Parquet { url: url.clone(), source };
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(parquet_err)?;
        let names = resolve_columns(&url, builder.schema(), &options.columns)?;
        let roots = names.all().filter_map(|n| builder.schema().index_of(n).ok()).collect::<Vec<_>>();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let metadata = Arc::clone(builder.metadata());
        let stream = builder.with_projection(mask).with_batch_size(options.batch_size).build().map_err(parquet_err)?;
        let projected = Arc::clone(stream.schema());
        let index = |name: &str| {
            projected.index_of(name).map_err(|_| DataError::Schema {
                url: url.clone(),
                reason: format!("column `{name}` is missing after projection; projected: {}", describe(&projected)),
            })
        };
        let image_col = index(&names.image)?;
        let caption_col = index(&names.caption)?;
        let key_col = names.key.as_deref().map(index).transpose()?;
        let label_col = names.label.as_deref().map(index).transpose()?;
        let status_col = names.status.as_deref().map(index).transpose()?;
        Ok(ParquetShardReader {
            image_format: options.columns.image.to_lowercase(),
            url,
            file_name,
            stream,
            metadata,
            bytes_read,
            image_col,
            caption_col,
            key_col,
            label_col,
            status_col,
            batch: None,
            row_in_batch: 0,
            row: 0,
            not_downloaded: 0,
        })
    }

    /// The Arrow schema of the projected columns: image, caption, key and label only, in file
    /// order.
    pub fn projected_schema(&self) -> &Arc<Schema> {
        self.stream.schema()
    }

    /// The file's Parquet metadata (row groups, column chunks), read from the footer.
    pub fn metadata(&self) -> &Arc<ParquetMetaData> {
        &self.metadata
    }

    /// Rows in the file, skipped ones included, from the footer.
    pub fn num_rows(&self) -> u64 {
        u64::try_from(self.metadata.file_metadata().num_rows()).unwrap_or(0)
    }

    /// Bytes fetched from the store so far (footer included), for
    /// `clipfleet_shard_bytes_read_total`.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Rows passed over so far because img2dataset could not download them (their `status`
    /// is not `success`).
    pub fn not_downloaded(&self) -> u64 {
        self.not_downloaded
    }

    /// Rows read so far, passed-over ones included (the index of the next row).
    pub fn rows_read(&self) -> u64 {
        self.row
    }

    /// The next row, `Ok(None)` at the end of the file. A [`DataError::Parquet`] means the rest
    /// of the file cannot be read (a fetch or decode failure); stop reading this reader then.
    pub async fn next_row(&mut self) -> Result<Option<ParquetRow>, DataError> {
        let url = self.url.clone();
        guarded(&url, self.next_row_unguarded()).await
    }

    async fn next_row_unguarded(&mut self) -> Result<Option<ParquetRow>, DataError> {
        loop {
            if let Some(batch) = &self.batch {
                if self.row_in_batch < batch.num_rows() {
                    let i = self.row_in_batch;
                    self.row_in_batch += 1;
                    if self.status_col.is_some_and(|c| !downloaded(batch.column(c).as_ref(), i)) {
                        self.row += 1;
                        self.not_downloaded += 1;
                        continue;
                    }
                    let row = self.extract(batch, i);
                    self.row += 1;
                    return Ok(Some(row));
                }
            }
            match self.stream.next().await {
                None => {
                    self.batch = None;
                    return Ok(None);
                }
                Some(Err(source)) => return Err(DataError::Parquet { url: self.url.clone(), source }),
                Some(Ok(batch)) => {
                    self.batch = Some(batch);
                    self.row_in_batch = 0;
                }
            }
        }
    }

    /// The rows as a stream, which ends after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<ParquetRow, DataError>> + Send {
        futures::stream::unfold(Some(self), |state| async move {
            let mut reader = state?;
            match reader.next_row().await {
                Ok(Some(row)) => Some((Ok(row), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    fn extract(&self, batch: &RecordBatch, i: usize) -> ParquetRow {
        let key = self
            .key_col
            .and_then(|c| key_value(batch.column(c).as_ref(), i))
            .unwrap_or_else(|| format!("{}#{}", self.file_name, self.row));
        let image = binary_value(batch.column(self.image_col).as_ref(), i).ok_or(SkipReason::MissingImage)?;
        let caption = caption_value(batch.column(self.caption_col).as_ref(), i)?;
        let label = self.label_col.and_then(|c| label_value(batch.column(c).as_ref(), i));
        Ok(EncodedPair {
            shard: self.url.clone(),
            key,
            image: image.to_vec(),
            image_format: self.image_format.clone(),
            caption,
            label,
        })
    }
}

/// The columns a reader projects.
struct ResolvedColumns {
    image: String,
    caption: String,
    key: Option<String>,
    label: Option<String>,
    status: Option<String>,
}

impl ResolvedColumns {
    fn all(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.image.as_str()),
            Some(self.caption.as_str()),
            self.key.as_deref(),
            self.label.as_deref(),
            self.status.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// Whether row `i` of a `status` column says the row was downloaded (a null says nothing).
fn downloaded(col: &dyn Array, i: usize) -> bool {
    col.is_null(i) || binary_value(col, i).is_none_or(|v| v == STATUS_SUCCESS.as_bytes())
}

/// Whether `schema` has a string `status` column.
fn status_column(schema: &Schema) -> Option<String> {
    let field = schema.field_with_name(STATUS_COLUMN).ok()?;
    matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        .then(|| STATUS_COLUMN.to_string())
}

/// Checks the file's schema and returns the columns to project: image, caption, the key when
/// there is one, and the label when there is an integer [`LABEL_COLUMN`].
fn resolve_columns(url: &str, schema: &Schema, columns: &ParquetColumns) -> Result<ResolvedColumns, DataError> {
    let field = |name: &str| schema.field_with_name(name).ok();
    let fail = |reason: String| DataError::Schema {
        url: url.to_string(),
        reason: format!("{reason}; columns found: {}", describe(schema)),
    };
    let image = &columns.image;
    match field(image).map(|f| f.data_type()) {
        None => return Err(fail(format!("no image column `{image}` (expected a binary column `{image}`)"))),
        Some(DataType::Binary | DataType::LargeBinary | DataType::BinaryView) => {}
        Some(other) => {
            return Err(fail(format!("image column `{image}` is {other}, expected binary or large_binary")));
        }
    }
    let candidates: Vec<&str> = match &columns.caption {
        Some(name) => vec![name.as_str()],
        None => DEFAULT_CAPTION_COLUMNS.to_vec(),
    };
    let Some(caption) = candidates.iter().find(|c| field(c).is_some()) else {
        return Err(fail(format!("no caption column (expected one of {candidates:?})")));
    };
    let caption_type = field(caption).map(|f| f.data_type().clone()).unwrap_or(DataType::Null);
    if !is_text(&caption_type) {
        return Err(fail(format!("caption column `{caption}` is {caption_type}, expected string or binary")));
    }
    let key = match &columns.key {
        Some(key) => match field(key).map(|f| f.data_type()) {
            None => return Err(fail(format!("no key column `{key}`"))),
            Some(t) if is_key(t) => Some(key.clone()),
            Some(t) => return Err(fail(format!("key column `{key}` is {t}, expected string or integer"))),
        },
        None => field("key").filter(|f| is_key(f.data_type())).map(|_| "key".to_string()),
    };
    let label = field(LABEL_COLUMN).filter(|f| is_integer(f.data_type())).map(|_| LABEL_COLUMN.to_string());
    Ok(ResolvedColumns {
        image: image.clone(),
        caption: caption.to_string(),
        key,
        label,
        status: status_column(schema),
    })
}

fn describe(schema: &Schema) -> String {
    let fields: Vec<String> = schema.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
    format!("[{}]", fields.join(", "))
}

fn is_text(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

fn is_key(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) || is_integer(t)
}

fn is_integer(t: &DataType) -> bool {
    matches!(t, DataType::Int32 | DataType::Int64 | DataType::UInt32 | DataType::UInt64)
}

/// The label of a row, `None` when null (or an unsigned value beyond `i64`).
fn label_value(col: &dyn Array, i: usize) -> Option<i64> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Int32 => col.as_primitive_opt::<Int32Type>().map(|a| i64::from(a.value(i))),
        DataType::Int64 => col.as_primitive_opt::<Int64Type>().map(|a| a.value(i)),
        DataType::UInt32 => col.as_primitive_opt::<UInt32Type>().map(|a| i64::from(a.value(i))),
        DataType::UInt64 => col.as_primitive_opt::<UInt64Type>().and_then(|a| i64::try_from(a.value(i)).ok()),
        _ => None,
    }
}

/// The bytes of a binary (or string) cell, `None` when null.
fn binary_value(col: &dyn Array, i: usize) -> Option<&[u8]> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Binary => col.as_binary_opt::<i32>().map(|a| a.value(i)),
        DataType::LargeBinary => col.as_binary_opt::<i64>().map(|a| a.value(i)),
        DataType::BinaryView => col.as_binary_view_opt().map(|a| a.value(i)),
        DataType::Utf8 => col.as_string_opt::<i32>().map(|a| a.value(i).as_bytes()),
        DataType::LargeUtf8 => col.as_string_opt::<i64>().map(|a| a.value(i).as_bytes()),
        DataType::Utf8View => col.as_string_view_opt().map(|a| a.value(i).as_bytes()),
        _ => None,
    }
}

/// The caption of a row: null or blank is `MissingCaption`, binary that is not UTF-8 is
/// `CaptionNotUtf8`.
fn caption_value(col: &dyn Array, i: usize) -> Result<String, SkipReason> {
    let bytes = binary_value(col, i).ok_or(SkipReason::MissingCaption)?;
    if bytes.len() > crate::skip::MAX_CAPTION_BYTES {
        return Err(SkipReason::OversizedCaption);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| SkipReason::CaptionNotUtf8)?;
    if text.trim().is_empty() {
        return Err(SkipReason::MissingCaption);
    }
    Ok(text.to_string())
}

/// The key of a row as text, `None` when null.
fn key_value(col: &dyn Array, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Int32 => col.as_primitive_opt::<Int32Type>().map(|a| a.value(i).to_string()),
        DataType::Int64 => col.as_primitive_opt::<Int64Type>().map(|a| a.value(i).to_string()),
        DataType::UInt32 => col.as_primitive_opt::<UInt32Type>().map(|a| a.value(i).to_string()),
        DataType::UInt64 => col.as_primitive_opt::<UInt64Type>().map(|a| a.value(i).to_string()),
        _ => binary_value(col, i).map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

/// Samples in a Parquet file: the rows in its footer, less the rows img2dataset could not
/// download when it has a `status` column (then that one column is read, nothing else).
/// Rows that will be skipped as bad samples are included.
pub async fn parquet_num_rows(store: Arc<dyn ObjectStore>, path: Path, url: &str) -> Result<u64, DataError> {
    guarded(url, num_rows_unguarded(store, path, url)).await
}

/// Runs `work` on a Parquet file, turning a panic of the parquet library on a malformed file
/// (it asserts on some footers: apache/arrow-rs#6255) into a [`DataError::Parquet`] for the
/// shard, so that a crafted or damaged file is a skipped shard, never a crashed run.
async fn guarded<T>(url: &str, work: impl std::future::Future<Output = Result<T, DataError>>) -> Result<T, DataError> {
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(DataError::Parquet {
                url: url.to_owned(),
                source: ParquetError::General(format!("malformed file (the parquet reader failed: {what})")),
            })
        }
    }
}

async fn num_rows_unguarded(store: Arc<dyn ObjectStore>, path: Path, url: &str) -> Result<u64, DataError> {
    let reader = ObjectStoreFileReader { store, path, bytes_read: Arc::new(AtomicU64::new(0)) };
    let parquet_err = |source| DataError::Parquet { url: url.to_string(), source };
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(parquet_err)?;
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let Some(status) = status_column(builder.schema()) else { return Ok(rows) };
    let Ok(root) = builder.schema().index_of(&status) else { return Ok(rows) };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [root]);
    let mut stream = builder.with_projection(mask).with_batch_size(8192).build().map_err(parquet_err)?;
    let mut downloaded_rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(parquet_err)?;
        let col = batch.column(0);
        downloaded_rows += (0..batch.num_rows()).filter(|&i| downloaded(col.as_ref(), i)).count() as u64;
    }
    Ok(downloaded_rows)
}

/// Reads every row of one shard on a private single-threaded runtime, for tools and tests.
/// Call it from synchronous code only: inside a tokio runtime it returns an error.
pub fn read_all_blocking(
    store: Arc<dyn ObjectStore>,
    path: Path,
    url: &str,
    options: &ParquetReadOptions,
) -> Result<Vec<ParquetRow>, DataError> {
    block_on(url, async {
        let mut reader = ParquetShardReader::open(store, path, url, options).await?;
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row().await? {
            rows.push(row);
        }
        Ok(rows)
    })
}

/// [`parquet_num_rows`] for synchronous code (not inside a tokio runtime).
pub fn parquet_num_rows_blocking(store: Arc<dyn ObjectStore>, path: Path, url: &str) -> Result<u64, DataError> {
    block_on(url, parquet_num_rows(store, path, url))
}

fn block_on<T>(url: &str, fut: impl std::future::Future<Output = Result<T, DataError>>) -> Result<T, DataError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(DataError::InvalidArgument {
            name: "blocking Parquet read",
            value: "called inside a tokio runtime".to_string(),
            allowed: "synchronous code; use ParquetShardReader in async code".to_string(),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DataError::Io { path: url.into(), source })?;
    runtime.block_on(fut)
}
