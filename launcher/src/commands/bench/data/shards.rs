//! The benchmark's own shards: photo-like JPEGs of 256–512 px per side at quality 90 with
//! web-style captions (`clipfleet_dataloader::synthetic::photo`), in 8 WebDataset tars.
//!
//! A folder that already holds shards written with the same image count and seed (its
//! `bench-data.json` says so) is reused as it is.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clipfleet_dataloader::rng::Rng;
use clipfleet_dataloader::shard_writer::{ShardFormat, ShardRecord, ShardWriter, ShardWriterOptions};
use clipfleet_dataloader::synthetic::photo::{encode_jpeg, photo_caption, render_photo};
use serde::{Deserialize, Serialize};

/// Shards the images are split into: enough for 8 DataLoader workers in the reference.
pub(crate) const SHARDS: u64 = 8;
/// Smallest and largest side of a generated image, in pixels.
pub(crate) const SIDES: (u32, u32) = (256, 512);
/// JPEG quality of the generated images.
const QUALITY: i32 = 90;
/// Key word of the generator's random stream.
const STREAM: u64 = 0x6265_6e63_6864_6174;
/// Name of the marker that describes a folder of generated shards.
const MARKER: &str = "bench-data.json";

/// What was generated, as stored in the marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GeneratedShards {
    /// Format version of the generator; a change of content bumps it.
    pub(crate) version: u32,
    /// Images written.
    pub(crate) images: u64,
    /// Seed of the content.
    pub(crate) seed: u64,
    /// Bytes of all shards.
    pub(crate) bytes: u64,
    /// Shard files.
    pub(crate) shards: u64,
    /// The brace pattern of the shards (`DIR/bench-{000000..000007}.tar`).
    pub(crate) urls: String,
}

/// The shards in `dir` for (`images`, `seed`): reused if the marker matches, else written.
pub(crate) fn prepare(dir: &Path, images: u64, seed: u64, threads: usize) -> anyhow::Result<GeneratedShards> {
    anyhow::ensure!(images >= SHARDS, "--images must be at least {SHARDS} (one per shard)");
    let marker = dir.join(MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        if let Ok(found) = serde_json::from_str::<GeneratedShards>(&text) {
            if found.version == 1 && found.images == images && found.seed == seed && dir.join("sizes.json").is_file() {
                tracing::info!(dir = %dir.display(), "reusing the benchmark shards");
                return Ok(found);
            }
        }
    }
    tracing::info!(images, dir = %dir.display(), "writing the benchmark shards");
    let records = render_all(images, seed, threads.max(1))?;
    let per_shard = images.div_ceil(SHARDS);
    let mut writer = ShardWriter::new(ShardWriterOptions {
        output: dir.to_path_buf(),
        format: ShardFormat::WebDataset,
        samples_per_shard: per_shard,
        prefix: "bench".into(),
    })?;
    for record in records {
        writer.write(record)?;
    }
    let summary = writer.finish()?;
    let shards = summary.sizes.len() as u64;
    let bytes = summary.sizes.keys().map(|name| std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0)).sum();
    let generated = GeneratedShards {
        version: 1,
        images,
        seed,
        bytes,
        shards,
        urls: format!("{}/bench-{{000000..{:06}}}.tar", dir.display(), shards.saturating_sub(1)),
    };
    std::fs::write(&marker, serde_json::to_string_pretty(&generated)? + "\n")
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(generated)
}

/// Renders and encodes every sample, `threads` at a time, in key order.
fn render_all(images: u64, seed: u64, threads: usize) -> anyhow::Result<Vec<ShardRecord>> {
    let results: Vec<Vec<(u64, anyhow::Result<ShardRecord>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads as u64)
            .map(|t| {
                scope.spawn(move || (t..images).step_by(threads).map(|i| (i, render_one(seed, i))).collect::<Vec<_>>())
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_default()).collect()
    });
    let mut all: Vec<(u64, anyhow::Result<ShardRecord>)> = results.into_iter().flatten().collect();
    anyhow::ensure!(all.len() as u64 == images, "a shard-writing thread failed");
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Sample `index`: its size, picture and caption are a function of (`seed`, `index`).
fn render_one(seed: u64, index: u64) -> anyhow::Result<ShardRecord> {
    let mut rng = Rng::from_key(&[seed, STREAM, index]);
    let span = u64::from(SIDES.1 - SIDES.0) + 1;
    let width = SIDES.0 + rng.below(span) as u32;
    let height = SIDES.0 + rng.below(span) as u32;
    let image = encode_jpeg(&render_photo(width, height, &mut rng), QUALITY)?;
    Ok(ShardRecord { image, image_ext: "jpg".into(), caption: photo_caption(&mut rng), width, height, label: None })
}

/// A temporary folder for the shards, removed when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    /// A new empty folder under the system's temporary directory.
    pub(crate) fn new() -> anyhow::Result<TempDir> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("clipfleet-bench-data-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
