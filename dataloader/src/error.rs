//! The error type of the data pipeline.

use std::path::PathBuf;

/// Everything that can go wrong while reading, decoding or preparing data.
///
/// Each variant carries enough context (a path, an image, an argument name)
/// for the message alone to say what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened, read or written.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A tokenizer vocabulary file is malformed.
    #[error("bad vocabulary {}: {reason}", path.display())]
    Vocab {
        /// The vocabulary file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tokenizer file (a Hugging Face `tokenizer.json`) cannot be parsed, or cannot be used
    /// with OpenCLIP's `[sot] + ids + [eot]` convention (no start/end token found, or the
    /// end-of-text token is not the largest id).
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong with it, and what would fix it.
        reason: String,
    },
    /// An image could not be decoded or does not fit where it was used.
    #[error("image {what}: {reason}")]
    Image {
        /// Which image (a sample key, a batch position, ...).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument is outside the values this crate accepts.
    #[error("invalid {name} = {value:?}; allowed: {allowed}")]
    InvalidArgument {
        /// The argument's name, as the caller spells it.
        name: &'static str,
        /// The value that was given.
        value: String,
        /// The values that would have been accepted.
        allowed: String,
    },
    /// A shard pattern or source list is malformed (unbalanced braces, an empty source).
    #[error("bad shard pattern {pattern:?}: {reason}")]
    ShardPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `sizes.json` is unreadable, malformed, or lacks some shards.
    #[error("sizes.json {url}: {reason}")]
    SizesJson {
        /// Where the `sizes.json` was looked for.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An object store request failed in a way that retrying cannot fix.
    #[error("reading {url}: {reason}")]
    Store {
        /// The shard URL.
        url: String,
        /// What failed (never includes credentials).
        reason: String,
    },
    /// The object does not exist (HTTP 404); not retried.
    #[error("{url}: not found")]
    NotFound {
        /// The shard URL.
        url: String,
    },
    /// Access to the object was refused (HTTP 401/403); not retried.
    #[error("{url}: access denied (check the credentials in the environment)")]
    Forbidden {
        /// The shard URL.
        url: String,
    },
    /// A transient error persisted through every retry.
    #[error("reading {url}: gave up after {attempts} attempts at byte {offset}: {last}")]
    RetriesExhausted {
        /// The shard URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The byte offset the reader was trying to resume from.
        offset: u64,
        /// The last error seen.
        last: String,
    },
    /// A source's schema is wrong as a whole (e.g. a Parquet file without its image or caption
    /// column); fatal for that source.
    #[error("bad schema in {url}: {reason}")]
    Schema {
        /// The source URL.
        url: String,
        /// What is wrong, with the columns found and the ones expected.
        reason: String,
    },
    /// More samples were skipped than the configured fraction allows.
    #[error("{skipped} of {seen} samples skipped ({by_reason}), over the limit max_skip_fraction = {limit}; fix the shards or raise the limit")]
    TooManySkips {
        /// Samples (and shard remainders) skipped.
        skipped: u64,
        /// Samples looked at.
        seen: u64,
        /// The configured limit.
        limit: f64,
        /// Counts per reason, `reason=n, ...`.
        by_reason: String,
    },
    /// A partition's shards ended before the epoch did.
    #[error("data partition {partition} ran out of samples: {detail}")]
    PartitionExhausted {
        /// The canonical partition.
        partition: usize,
        /// What to do about it.
        detail: String,
    },
    /// A Parquet file's footer or pages could not be fetched or decoded.
    #[error("reading parquet {url}: {source}")]
    Parquet {
        /// The shard URL.
        url: String,
        /// The underlying Parquet (or object store) error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A background producer thread could not start or stopped before the consumer did.
    #[error("the {name} thread {what}")]
    Producer {
        /// The thread's role, e.g. `synthetic data`.
        name: &'static str,
        /// What happened: `could not start: …` or `stopped unexpectedly`.
        what: String,
    },
}
