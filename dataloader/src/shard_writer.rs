//! Writing datasets: WebDataset tars and img2dataset-style Parquet files, N samples per
//! shard, plus the `sizes.json` that readers use to count samples.
//!
//! Each sample's metadata follows img2dataset: `key`, `caption`, `status`, `width`, `height`,
//! `original_width`, `original_height` and `sha256` (hex SHA-256 of the image bytes as
//! stored). Class labels go in `<key>.cls` (WebDataset) or a nullable int64 `cls` column
//! (Parquet).
//!
//! Each shard is written under a hidden temporary name (`.NAME.tmp`) in the output folder
//! and renamed once complete, so a final shard name never holds a half-written shard. A
//! writer dropped before [`ShardWriter::finish`] removes its temporary file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use sha2::{Digest, Sha256};

use crate::DataError;

/// Digits of a sample key (`000000042`), as img2dataset writes them.
pub const KEY_DIGITS: usize = 9;

/// Rows per Parquet row group (and per Arrow batch handed to the writer).
const PARQUET_ROWS_PER_GROUP: usize = 256;

/// The on-disk layout of the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardFormat {
    /// WebDataset tars: `<key>.<ext>`, `<key>.txt`, `<key>.json` and `<key>.cls` per sample.
    WebDataset,
    /// img2dataset Parquet: columns `key`, `caption`, `width`, `height`, `sha256`, the image
    /// bytes in a column named after the image format (`jpg`, `png`, `webp`), and a nullable
    /// int64 `cls` when the dataset's first sample has a label.
    Parquet,
}

impl ShardFormat {
    /// The shard file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ShardFormat::WebDataset => "tar",
            ShardFormat::Parquet => "parquet",
        }
    }
}

/// Where and how a [`ShardWriter`] writes.
#[derive(Debug, Clone)]
pub struct ShardWriterOptions {
    /// The output folder (created if missing).
    pub output: PathBuf,
    /// The shard layout.
    pub format: ShardFormat,
    /// Samples per shard (at least 1); the last shard may hold fewer.
    pub samples_per_shard: u64,
    /// Shard names are `PREFIX-000000.tar`, `PREFIX-000001.tar`, ... (an empty prefix gives
    /// `000000.tar`, as img2dataset names them).
    pub prefix: String,
}

/// One sample to write. The writer assigns its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRecord {
    /// Encoded image bytes, written as they are.
    pub image: Vec<u8>,
    /// The image's extension (`jpg`, `jpeg`, `png`, `webp`), lowercase.
    pub image_ext: String,
    /// The caption (UTF-8, non-empty).
    pub caption: String,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Integer class label: `<key>.cls` in WebDataset shards, the `cls` column in Parquet.
    pub label: Option<i64>,
}

/// What a finished [`ShardWriter`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSummary {
    /// Samples per shard, by shard file name, as in `sizes.json`.
    pub sizes: BTreeMap<String, u64>,
    /// All samples written.
    pub samples: u64,
}

/// Writes samples into shards of a fixed size; see the [module docs](self).
#[derive(Debug)]
pub struct ShardWriter {
    options: ShardWriterOptions,
    current: Option<OpenShard>,
    sizes: BTreeMap<String, u64>,
    samples: u64,
    parquet_image_column: Option<String>,
    /// Whether the Parquet files have a `cls` column: decided by the first sample.
    parquet_labels: Option<bool>,
}

impl ShardWriter {
    /// A writer into `options.output`, which is created if missing.
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] for zero samples per shard, [`DataError::Io`] when the
    /// folder cannot be created.
    pub fn new(options: ShardWriterOptions) -> Result<ShardWriter, DataError> {
        if options.samples_per_shard == 0 {
            return Err(DataError::InvalidArgument {
                name: "samples_per_shard",
                value: "0".to_string(),
                allowed: "1 or more".to_string(),
            });
        }
        std::fs::create_dir_all(&options.output).map_err(|source| io(&options.output, source))?;
        Ok(ShardWriter {
            options,
            current: None,
            sizes: BTreeMap::new(),
            samples: 0,
            parquet_image_column: None,
            parquet_labels: None,
        })
    }

    /// Appends one sample, starting a new shard when the current one is full.
    ///
    /// # Errors
    /// [`DataError::Io`] or [`DataError::Parquet`] when writing fails, and
    /// [`DataError::InvalidArgument`] when a Parquet dataset mixes image formats (one
    /// image column holds one format), or has a labelled sample after a first sample without
    /// a label (the first sample decides whether the files have a `cls` column; later samples
    /// without a label get a null).
    pub fn write(&mut self, record: ShardRecord) -> Result<(), DataError> {
        if self.options.format == ShardFormat::Parquet {
            let column = parquet_image_column(&record.image_ext);
            match &self.parquet_image_column {
                None => self.parquet_image_column = Some(column),
                Some(first) if *first != column => {
                    return Err(DataError::InvalidArgument {
                        name: "image format",
                        value: record.image_ext.clone(),
                        allowed: format!("{first} only: a Parquet dataset holds one image format (its column name)"),
                    })
                }
                Some(_) => {}
            }
            let labels = *self.parquet_labels.get_or_insert(record.label.is_some());
            if !labels && record.label.is_some() {
                return Err(DataError::InvalidArgument {
                    name: "label",
                    value: format!("{:?}", record.label),
                    allowed: "none: the dataset's first sample had no label, so its Parquet files have no `cls` column"
                        .to_string(),
                });
            }
        }
        if self.current.is_none() {
            self.current = Some(self.open_next()?);
        }
        let key = format!("{:0width$}", self.samples, width = KEY_DIGITS);
        let shard = self.current.as_mut().ok_or_else(|| unreachable_state(&self.options.output))?;
        shard.write(&key, record)?;
        self.samples += 1;
        if shard.count >= self.options.samples_per_shard {
            self.close_current()?;
        }
        Ok(())
    }

    /// Completes the last shard and writes `sizes.json`.
    ///
    /// # Errors
    /// As [`ShardWriter::write`].
    pub fn finish(mut self) -> Result<ShardSummary, DataError> {
        self.close_current()?;
        let sizes_path = self.options.output.join("sizes.json");
        let tmp = self.options.output.join(".sizes.json.tmp");
        let text = serde_json::to_string_pretty(&self.sizes).map_err(|e| DataError::InvalidArgument {
            name: "sizes.json",
            value: e.to_string(),
            allowed: "serialisable sizes".to_string(),
        })?;
        std::fs::write(&tmp, text + "\n").map_err(|source| io(&tmp, source))?;
        std::fs::rename(&tmp, &sizes_path).map_err(|source| io(&sizes_path, source))?;
        Ok(ShardSummary { sizes: std::mem::take(&mut self.sizes), samples: self.samples })
    }

    /// Gives up: removes the shard being written and every shard this writer completed, so
    /// that a failed run leaves no partial dataset behind. Returns the removed file names.
    pub fn abort(mut self) -> Vec<String> {
        self.current = None;
        let names: Vec<String> = std::mem::take(&mut self.sizes).into_keys().collect();
        for name in &names {
            let _ = std::fs::remove_file(self.options.output.join(name));
        }
        names
    }

    fn open_next(&self) -> Result<OpenShard, DataError> {
        let index = self.sizes.len();
        let name = if self.options.prefix.is_empty() {
            format!("{index:06}.{}", self.options.format.extension())
        } else {
            format!("{}-{index:06}.{}", self.options.prefix, self.options.format.extension())
        };
        let final_path = self.options.output.join(&name);
        let tmp_path = self.options.output.join(format!(".{name}.tmp"));
        let file = File::create(&tmp_path).map_err(|source| io(&tmp_path, source))?;
        let sink = match self.options.format {
            ShardFormat::WebDataset => Sink::Tar(tar::Builder::new(BufWriter::new(file))),
            ShardFormat::Parquet => {
                let column = self.parquet_image_column.clone().unwrap_or_else(|| "jpg".to_string());
                let labels = self.parquet_labels.unwrap_or(false);
                Sink::Parquet(Box::new(ParquetSink::new(file, column, labels, &tmp_path)?))
            }
        };
        Ok(OpenShard { name, final_path, tmp_path, sink: Some(sink), count: 0 })
    }

    fn close_current(&mut self) -> Result<(), DataError> {
        if let Some(shard) = self.current.take() {
            let (name, count) = shard.commit()?;
            self.sizes.insert(name, count);
        }
        Ok(())
    }
}

/// img2dataset names the image column after the encode format; `jpeg` files go in `jpg`.
fn parquet_image_column(ext: &str) -> String {
    if ext == "jpeg" {
        "jpg".to_string()
    } else {
        ext.to_string()
    }
}

/// Hex SHA-256 of `bytes`, as img2dataset's `sha256` field.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn io(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io { path: path.to_path_buf(), source }
}

fn unreachable_state(output: &Path) -> DataError {
    io(output, std::io::Error::other("no open shard"))
}

/// A shard being written under its temporary name.
#[derive(Debug)]
struct OpenShard {
    name: String,
    final_path: PathBuf,
    tmp_path: PathBuf,
    sink: Option<Sink>,
    count: u64,
}

enum Sink {
    Tar(tar::Builder<BufWriter<File>>),
    Parquet(Box<ParquetSink>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Tar(_) => "Sink::Tar",
            Sink::Parquet(_) => "Sink::Parquet",
        })
    }
}

impl OpenShard {
    fn write(&mut self, key: &str, record: ShardRecord) -> Result<(), DataError> {
        let tmp = self.tmp_path.clone();
        match self.sink.as_mut() {
            Some(Sink::Tar(builder)) => {
                let meta = serde_json::json!({
                    "key": key,
                    "caption": record.caption,
                    "status": "success",
                    "width": record.width,
                    "height": record.height,
                    "original_width": record.width,
                    "original_height": record.height,
                    "sha256": sha256_hex(&record.image),
                });
                let mut members: Vec<(String, Vec<u8>)> = vec![
                    (format!("{key}.{}", record.image_ext), record.image),
                    (format!("{key}.txt"), record.caption.into_bytes()),
                    (format!("{key}.json"), meta.to_string().into_bytes()),
                ];
                if let Some(label) = record.label {
                    members.push((format!("{key}.cls"), label.to_string().into_bytes()));
                }
                for (path, data) in members {
                    let mut header = tar::Header::new_ustar();
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    header.set_mtime(0);
                    header.set_entry_type(tar::EntryType::Regular);
                    builder.append_data(&mut header, &path, data.as_slice()).map_err(|source| io(&tmp, source))?;
                }
            }
            Some(Sink::Parquet(sink)) => sink.push(key, record)?,
            None => return Err(unreachable_state(&tmp)),
        }
        self.count += 1;
        Ok(())
    }

    /// Finishes the file, syncs it and renames it to its final name.
    fn commit(mut self) -> Result<(String, u64), DataError> {
        let tmp = self.tmp_path.clone();
        let file = match self.sink.take() {
            Some(Sink::Tar(builder)) => {
                let writer = builder.into_inner().map_err(|source| io(&tmp, source))?;
                writer.into_inner().map_err(|e| io(&tmp, e.into_error()))?
            }
            Some(Sink::Parquet(sink)) => sink.close()?,
            None => return Err(unreachable_state(&tmp)),
        };
        file.sync_all().map_err(|source| io(&tmp, source))?;
        drop(file);
        std::fs::rename(&self.tmp_path, &self.final_path).map_err(|source| io(&self.final_path, source))?;
        // Renamed: nothing for Drop to clean up.
        self.tmp_path = PathBuf::new();
        Ok((std::mem::take(&mut self.name), self.count))
    }
}

impl Drop for OpenShard {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            self.sink = None;
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// Rows buffered into Arrow batches, then handed to an [`ArrowWriter`].
struct ParquetSink {
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    url: String,
    keys: Vec<String>,
    captions: Vec<String>,
    widths: Vec<i64>,
    heights: Vec<i64>,
    sha256s: Vec<String>,
    images: Vec<Vec<u8>>,
    /// `Some` when the files have a `cls` column.
    labels: Option<Vec<Option<i64>>>,
}

impl ParquetSink {
    fn new(file: File, image_column: String, labels: bool, path: &Path) -> Result<ParquetSink, DataError> {
        let mut fields = vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("caption", DataType::Utf8, false),
            Field::new("width", DataType::Int64, false),
            Field::new("height", DataType::Int64, false),
            Field::new("sha256", DataType::Utf8, false),
            Field::new(image_column, DataType::Binary, false),
        ];
        if labels {
            fields.push(Field::new("cls", DataType::Int64, true));
        }
        let schema = Arc::new(Schema::new(fields));
        let url = path.display().to_string();
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(PARQUET_ROWS_PER_GROUP)).build();
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))
            .map_err(|source| DataError::Parquet { url: url.clone(), source })?;
        Ok(ParquetSink {
            writer,
            schema,
            url,
            keys: Vec::new(),
            captions: Vec::new(),
            widths: Vec::new(),
            heights: Vec::new(),
            sha256s: Vec::new(),
            images: Vec::new(),
            labels: labels.then(Vec::new),
        })
    }

    fn push(&mut self, key: &str, record: ShardRecord) -> Result<(), DataError> {
        self.keys.push(key.to_string());
        self.captions.push(record.caption);
        self.widths.push(i64::from(record.width));
        self.heights.push(i64::from(record.height));
        self.sha256s.push(sha256_hex(&record.image));
        self.images.push(record.image);
        if let Some(labels) = &mut self.labels {
            labels.push(record.label);
        }
        if self.keys.len() >= PARQUET_ROWS_PER_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(std::mem::take(&mut self.keys))),
            Arc::new(StringArray::from(std::mem::take(&mut self.captions))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.widths))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.heights))),
            Arc::new(StringArray::from(std::mem::take(&mut self.sha256s))),
            Arc::new(BinaryArray::from_iter_values(std::mem::take(&mut self.images))),
        ];
        if let Some(labels) = &mut self.labels {
            columns.push(Arc::new(Int64Array::from(std::mem::take(labels))));
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| DataError::Schema { url: self.url.clone(), reason: e.to_string() })?;
        self.writer.write(&batch).map_err(|source| DataError::Parquet { url: self.url.clone(), source })
    }

    fn close(mut self) -> Result<File, DataError> {
        self.flush()?;
        let url = self.url.clone();
        let mut file = self.writer.into_inner().map_err(|source| DataError::Parquet { url: url.clone(), source })?;
        file.flush().map_err(|source| io(Path::new(&url), source))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ext: &str) -> ShardRecord {
        ShardRecord {
            image: vec![1, 2, 3],
            image_ext: ext.to_string(),
            caption: "a caption".to_string(),
            width: 1,
            height: 1,
            label: Some(3),
        }
    }

    #[test]
    fn splits_into_shards_and_writes_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = ShardWriterOptions {
            output: dir.path().to_path_buf(),
            format: ShardFormat::WebDataset,
            samples_per_shard: 2,
            prefix: "p".to_string(),
        };
        let mut writer = ShardWriter::new(options).expect("writer");
        for _ in 0..5 {
            writer.write(record("jpg")).expect("write");
        }
        let summary = writer.finish().expect("finish");
        assert_eq!(summary.samples, 5);
        let want: BTreeMap<String, u64> =
            [("p-000000.tar", 2), ("p-000001.tar", 2), ("p-000002.tar", 1)].map(|(k, v)| (k.to_string(), v)).into();
        assert_eq!(summary.sizes, want);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["p-000000.tar", "p-000001.tar", "p-000002.tar", "sizes.json"]);
    }

    #[test]
    fn sha256_is_the_hex_digest_of_the_image_bytes() {
        // echo -n abc | sha256sum
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// A Parquet writer of 10 samples per shard into `dir`.
    fn parquet_writer(dir: &std::path::Path) -> ShardWriter {
        let options = ShardWriterOptions {
            output: dir.to_path_buf(),
            format: ShardFormat::Parquet,
            samples_per_shard: 10,
            prefix: String::new(),
        };
        ShardWriter::new(options).expect("writer")
    }

    #[test]
    fn a_label_after_an_unlabelled_first_sample_is_refused_in_parquet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = parquet_writer(dir.path());
        writer.write(ShardRecord { label: None, ..record("jpg") }).expect("write");
        let err = writer.write(record("jpg")).expect_err("no cls column");
        assert!(err.to_string().contains("no `cls` column"), "{err}");
        writer.abort();
    }

    #[test]
    fn an_aborted_writer_leaves_no_shard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = parquet_writer(dir.path());
        writer.write(record("png")).expect("write");
        assert!(writer.write(record("jpg")).is_err(), "one image format per Parquet dataset");
        writer.abort();
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }
}
