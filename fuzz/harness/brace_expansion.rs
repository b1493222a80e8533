//! Arbitrary strings through shard-spec parsing: `shards::parse_sources` (the `::`-joined
//! `--train-data` spec, brace expansion per source, and the `::`-joined upsampling weights),
//! then `ShardUrl::parse`, `shard_basename` and `sizes_json_url` on every expanded URL.
//!
//! The input is split at its first NUL byte: before it the spec, after it the weights (no NUL:
//! no weights). Brace expansion is *not* bounded here beyond what the library does
//! (`MAX_EXPANSION`): an input that expands without bound is a finding.

use clipfleet_dataloader::shards::{parse_sources, shard_basename, sizes_json_url, ShardUrl};

/// Runs one input; panics on a finding.
pub(crate) fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (spec, weights) = match text.split_once('\0') {
        Some((spec, weights)) => (spec, Some(weights)),
        None => (&*text, None),
    };
    let _ = ShardUrl::parse(spec);
    if let Ok(sources) = parse_sources(spec, weights) {
        assert_eq!(sources.len(), spec.split("::").count(), "one source per '::' part");
        for source in &sources {
            assert!(source.weight.is_finite() && source.weight > 0.0, "weight {}", source.weight);
            for url in &source.urls {
                let _ = ShardUrl::parse(url);
                let _ = shard_basename(url);
                let _ = sizes_json_url(url);
            }
        }
    }
}
