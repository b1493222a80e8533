//! Why a sample was skipped, and thread-safe counts per reason.
//!
//! Bad input never crashes a run and never passes silently: a reader that drops a sample
//! reports a [`SkipReason`], the pipeline counts it here (exported as the Prometheus counter
//! `clipfleet_data_samples_skipped_total{reason}`), logs a warning naming the shard and the
//! key, and stops the run only when skips exceed the configured fraction.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The reasons a sample or shard is skipped. [`SkipReason::as_str`] is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// The image bytes do not decode (corrupt or truncated file).
    CorruptImage,
    /// The sample has no caption.
    MissingCaption,
    /// The sample has no image (WebDataset), or a null image (img2dataset Parquet).
    MissingImage,
    /// The caption bytes are not UTF-8.
    CaptionNotUtf8,
    /// The tar stream ended inside a member, or is not a tar at all.
    TruncatedShard,
    /// The shard could not be read after retries.
    UnreadableShard,
    /// The image has more pixels than the decompression-bomb limit.
    OversizedImage,
    /// The caption (or the JSON member holding it) is over [`MAX_CAPTION_BYTES`].
    OversizedCaption,
    /// A tar member's path is absolute or climbs out of the shard (`..`): its sample is
    /// hostile, whatever its other members hold.
    UnsafePath,
}

/// The largest caption, or JSON member holding one, that is read (1 MiB): a tokenizer keeps
/// 77 tokens, and anything this long is garbage or an attack.
pub const MAX_CAPTION_BYTES: usize = 1 << 20;

impl SkipReason {
    /// Every reason, in label order.
    pub const ALL: [SkipReason; 9] = [
        SkipReason::CaptionNotUtf8,
        SkipReason::CorruptImage,
        SkipReason::MissingCaption,
        SkipReason::MissingImage,
        SkipReason::OversizedCaption,
        SkipReason::OversizedImage,
        SkipReason::TruncatedShard,
        SkipReason::UnreadableShard,
        SkipReason::UnsafePath,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::CorruptImage => "corrupt_image",
            SkipReason::MissingCaption => "missing_caption",
            SkipReason::MissingImage => "missing_image",
            SkipReason::CaptionNotUtf8 => "caption_not_utf8",
            SkipReason::TruncatedShard => "truncated_shard",
            SkipReason::UnreadableShard => "unreadable_shard",
            SkipReason::OversizedImage => "oversized_image",
            SkipReason::OversizedCaption => "oversized_caption",
            SkipReason::UnsafePath => "unsafe_path",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of skipped samples per reason, shared between threads.
#[derive(Debug, Default)]
pub struct SkipCounts {
    counts: [AtomicU64; SkipReason::ALL.len()],
    not_downloaded: AtomicU64,
}

impl SkipCounts {
    /// Adds one skip.
    pub fn record(&self, reason: SkipReason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for one reason.
    pub fn get(&self, reason: SkipReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// Adds one Parquet row that img2dataset could not download. Such rows are not samples:
    /// they are counted here (`clipfleet_data_samples_not_downloaded_total`), apart from the
    /// skips, and never count towards the skip limit.
    pub fn record_not_downloaded(&self) {
        self.not_downloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Rows not downloaded so far.
    pub fn not_downloaded(&self) -> u64 {
        self.not_downloaded.load(Ordering::Relaxed)
    }

    /// All skips (rows not downloaded are not skips).
    pub fn total(&self) -> u64 {
        SkipReason::ALL.iter().map(|r| self.get(*r)).sum()
    }

    /// Non-zero counts by label, for reports such as `shards inspect --json`.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        SkipReason::ALL.iter().filter(|r| self.get(**r) > 0).map(|r| (r.as_str(), self.get(*r))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let c = SkipCounts::default();
        c.record(SkipReason::CorruptImage);
        c.record(SkipReason::CorruptImage);
        c.record(SkipReason::MissingCaption);
        assert_eq!(c.get(SkipReason::CorruptImage), 2);
        assert_eq!(c.total(), 3);
        let snap = c.snapshot();
        assert_eq!(snap.get("corrupt_image"), Some(&2));
        assert_eq!(snap.get("missing_caption"), Some(&1));
        assert!(!snap.contains_key("missing_image"));
    }
}
