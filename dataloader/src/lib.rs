//! Data pipeline of clipfleet: deterministic sampling, image transforms,
//! tokenization and the built-in synthetic image–caption dataset.
//!
//! This crate hands plain Rust buffers to the trainer (uint8 NHWC images and
//! `i64` token ids) and never links libtorch, so it builds and tests fast.
//! Every random choice is drawn from a counter-based [`rng::Rng`] keyed by
//! (seed, epoch, sample index, ...), so the data a step sees is a pure function
//! of those numbers, whatever the number of threads or ranks.

pub mod batch;
pub mod csv_dataset;
pub mod decode;
pub mod error;
pub mod loader;
pub mod parquet_reader;
pub mod rng;
pub mod sample;
pub mod sampling;
pub mod shard_writer;
pub mod shards;
pub mod skip;
pub mod store;
pub mod synthetic;
pub mod tokenizer;
pub mod transform;
pub mod webdataset;

pub use error::DataError;
