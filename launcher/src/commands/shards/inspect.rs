//! `clipfleet shards inspect`: read every sample of some shards, decode it, and count the
//! valid samples and the skips by reason.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clipfleet_dataloader::decode::{decode_rgb, DEFAULT_MAX_PIXELS};
use clipfleet_dataloader::parquet_reader::{ParquetColumns, ParquetReadOptions, ParquetShardReader};
use clipfleet_dataloader::sample::EncodedPair;
use clipfleet_dataloader::shards::parse_sources;
use clipfleet_dataloader::skip::{SkipCounts, SkipReason};
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::webdataset::{to_pair, CaptionSource, TarSamples};
use clipfleet_dataloader::DataError;

use crate::cli::ShardsInspectArgs;
use crate::commands::print_json;

/// What one shard held.
#[derive(Debug, Default)]
struct ShardReport {
    samples: u64,
    skipped: SkipCounts,
    /// Parquet rows img2dataset could not download (not samples, not skips).
    not_downloaded: u64,
    /// The shard does not exist.
    not_found: bool,
}

impl ShardReport {
    /// Counts one row: a valid sample when its image decodes, else a skip, logged with the
    /// shard and the sample's key (`key_hint` when the reader could not tell the key).
    fn record(&mut self, row: Result<EncodedPair, SkipReason>, shard: &str, key_hint: &str) {
        let (key, decoded) = match row {
            Ok(pair) => {
                let decoded = decode_rgb(&pair.image, &pair.image_format, None, DEFAULT_MAX_PIXELS).map(|_| ());
                (pair.key, decoded)
            }
            Err(reason) => (key_hint.to_string(), Err(reason)),
        };
        match decoded {
            Ok(()) => self.samples += 1,
            Err(reason) => {
                tracing::warn!(shard, key = %key, reason = reason.as_str(), "skipped sample");
                self.skipped.record(reason);
            }
        }
    }

    /// Counts a shard that could not be read (further).
    fn unreadable(&mut self, url: &str, err: &DataError) {
        tracing::warn!(shard = url, error = %err, "unreadable shard");
        self.not_found = matches!(err, DataError::NotFound { .. });
        self.skipped.record(SkipReason::UnreadableShard);
    }
}

pub(super) fn run(args: ShardsInspectArgs) -> anyhow::Result<()> {
    let caption = args.caption.clone();
    let mut urls = Vec::new();
    for spec in &args.urls {
        for source in parse_sources(spec, None).with_context(|| format!("expanding {spec:?}"))? {
            urls.extend(source.urls);
        }
    }
    if urls.is_empty() {
        bail!("no shard URL in {:?}", args.urls);
    }
    let parquet = ParquetReadOptions {
        columns: ParquetColumns { image: args.image_column.clone(), caption: args.caption_column.clone(), key: None },
        ..ParquetReadOptions::default()
    };
    let store = ShardStore::new(ShardStoreOptions::default()).context("starting the shard store")?;
    let mut reports = Vec::with_capacity(urls.len());
    for url in &urls {
        let report =
            if is_parquet(url) { inspect_parquet(&store, url, &parquet) } else { inspect_tar(&store, url, &caption) };
        if !args.json {
            println!(
                "{url}: {} samples{}{}",
                report.samples,
                skips_text(&report.skipped.snapshot()),
                not_downloaded_text(report.not_downloaded)
            );
        }
        reports.push(report);
    }
    if reports.iter().all(|r| r.not_found) {
        bail!("no shard found: none of the {} URL(s) from {:?} exists", urls.len(), args.urls);
    }
    let samples: u64 = reports.iter().map(|r| r.samples).sum();
    let mut skipped: BTreeMap<&'static str, u64> = BTreeMap::new();
    for report in &reports {
        for (reason, n) in report.skipped.snapshot() {
            *skipped.entry(reason).or_default() += n;
        }
    }
    let not_downloaded: u64 = reports.iter().map(|r| r.not_downloaded).sum();
    if args.json {
        print_json(&serde_json::json!({
            "shards": urls.len(),
            "samples": samples,
            "skipped": skipped,
            "not_downloaded": not_downloaded,
        }))?;
    } else {
        println!(
            "total: {} shard(s), {samples} samples{}{}",
            urls.len(),
            skips_text(&skipped),
            not_downloaded_text(not_downloaded)
        );
    }
    Ok(())
}

fn is_parquet(url: &str) -> bool {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.to_ascii_lowercase().ends_with(".parquet")
}

fn skips_text(skipped: &BTreeMap<&'static str, u64>) -> String {
    if skipped.is_empty() {
        return ", no skips".to_string();
    }
    let parts: Vec<String> = skipped.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
    format!(", skipped {}", parts.join(" "))
}

fn not_downloaded_text(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} rows not downloaded (img2dataset status not success)")
    }
}

fn inspect_tar(store: &ShardStore, url: &str, caption: &CaptionSource) -> ShardReport {
    let mut report = ShardReport::default();
    let reader = match store.open(url) {
        Ok(reader) => reader,
        Err(err) => {
            report.unreadable(url, &err);
            return report;
        }
    };
    for item in TarSamples::new(reader, url) {
        match item {
            Ok(sample) => {
                let key = sample.key.clone();
                report.record(to_pair(sample, url, caption), url, &key);
            }
            Err(err) => {
                tracing::warn!(shard = url, error = %err, "shard ends early");
                report.skipped.record(err.reason);
            }
        }
    }
    report
}

fn inspect_parquet(store: &ShardStore, url: &str, options: &ParquetReadOptions) -> ShardReport {
    let mut report = ShardReport::default();
    let (object_store, path) = match store.resolve(url) {
        Ok(resolved) => resolved,
        Err(err) => {
            report.unreadable(url, &err);
            return report;
        }
    };
    let read = store.runtime().block_on(async {
        let mut reader = ParquetShardReader::open(object_store, path, url, options).await?;
        while let Some(row) = reader.next_row().await? {
            let index = reader.rows_read().saturating_sub(1);
            report.record(row, url, &format!("row {index}"));
        }
        report.not_downloaded = reader.not_downloaded();
        Ok::<(), DataError>(())
    });
    if let Err(err) = read {
        report.unreadable(url, &err);
    }
    report
}
