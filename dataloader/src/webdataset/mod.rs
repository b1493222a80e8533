//! Streaming WebDataset reader: samples from a tar stream, then image–caption pairs.
//!
//! [`TarSamples`] reads a shard from any [`Read`] (a file, or a stream from object storage)
//! strictly forward, one member at a time, and groups members into samples exactly as the
//! Python `webdataset` package (1.0.2, `tarfile_to_samples` with a continue-on-error
//! handler, as OpenCLIP runs it) does (DESIGN §5):
//!
//! - a member's key is its path up to the first dot of the basename and the rest is its
//!   extension, lowercased (`base_plus_ext`: `data.v1/a.b.JPG` has key `data.v1/a` and
//!   extension `b.jpg`; a basename that starts with a dot keeps the directory as its key);
//! - consecutive members with the same key form one sample; a key that comes back after
//!   another one starts a new sample;
//! - members with no dot in the path, non-regular entries (directories, links, ...), and
//!   `__*__` entries (`__meta__`, `__index__/x.txt`) are skipped;
//! - a second member with an extension the sample already has is dropped.
//!
//! Unlike Python, a shard that ends early, or is not a tar at all, ends with one
//! [`ShardError`] whose reason is [`SkipReason::TruncatedShard`]: the samples completed
//! before the damage stay valid, and the sample being read when the stream broke is
//! dropped, as it may lack members (Python yields that partial sample). A stream must end
//! with the tar end-of-archive block, so a shard cut exactly at a member boundary is caught
//! too. A reader failure other than an early end is [`SkipReason::UnreadableShard`]
//! (retries belong to the byte stream underneath). Members over the size cap
//! ([`DEFAULT_MAX_MEMBER_BYTES`], or [`TarSamples::with_max_member_bytes`]) are skipped
//! without being held in memory and listed in [`WdsSample::oversized`]; [`to_pair`]
//! refuses a sample whose image or caption was skipped as [`SkipReason::OversizedImage`].
//!
//! [`to_pair`] then picks the image (the first of `jpg`, `jpeg`, `png`, `webp` present),
//! the caption ([`CaptionSource`]) and the optional `cls` label.

mod tar_stream;

use std::io::Read;
use std::sync::LazyLock;

use regex::Regex;

use crate::sample::EncodedPair;
use crate::skip::{SkipReason, MAX_CAPTION_BYTES};
use tar_stream::{TarError, TarStream};

/// Members larger than this (64 MiB) are skipped unread by default: no real image or
/// caption is that large, and a garbage size field must not make the reader allocate it.
pub const DEFAULT_MAX_MEMBER_BYTES: u64 = 64 << 20;

/// Image extensions, in order of preference.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// `webdataset.tariterators.base_plus_ext`.
static BASE_PLUS_EXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^((?:.*/|)[^.]+)[.]([^/]*)$").expect("valid regex"));

/// `tar_file_iterator`'s default `skip_meta`.
static SKIP_META: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^__[^/]*__(?:$|/)").expect("valid regex"));

/// One WebDataset sample: the members that share a key, in tar order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WdsSample {
    /// The key: the member path up to the first dot of the basename.
    pub key: String,
    /// (lowercased extension, bytes) of each member, in tar order.
    pub members: Vec<(String, Vec<u8>)>,
    /// Extensions of members skipped unread because they exceeded the size cap.
    pub oversized: Vec<String>,
    /// Some member's path is absolute or has a `..` component.
    pub unsafe_path: bool,
}

impl WdsSample {
    /// The bytes of the member with extension `ext` (lowercase), if present.
    pub fn get(&self, ext: &str) -> Option<&[u8]> {
        self.members.iter().find(|(e, _)| e == ext).map(|(_, d)| d.as_slice())
    }

    fn has(&self, ext: &str) -> bool {
        self.members.iter().any(|(e, _)| e == ext) || self.oversized.iter().any(|e| e == ext)
    }
}

/// A shard that could not be read to its end. Samples yielded before it stay valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shard {shard}: {reason} at byte {offset}: {detail}")]
pub struct ShardError {
    /// The shard URL.
    pub shard: String,
    /// [`SkipReason::TruncatedShard`] for an early end or bytes that are not a tar;
    /// [`SkipReason::UnreadableShard`] when the underlying reader failed otherwise.
    pub reason: SkipReason,
    /// Bytes of the stream consumed when it failed.
    pub offset: u64,
    /// What went wrong.
    pub detail: String,
}

/// The samples of one WebDataset shard, read forward from a byte stream.
///
/// Yields `Ok(sample)` for each sample, then at most one `Err(ShardError)`, then `None`.
#[derive(Debug)]
pub struct TarSamples<R: Read> {
    tar: TarStream<R>,
    shard: String,
    current: Option<WdsSample>,
    done: bool,
}

impl<R: Read> TarSamples<R> {
    /// Reads the shard `shard_url` (used in errors and pairs) from `reader`, which is
    /// wrapped in a 64 KiB buffer. Members over [`DEFAULT_MAX_MEMBER_BYTES`] are skipped.
    pub fn new(reader: R, shard_url: impl Into<String>) -> Self {
        Self::with_max_member_bytes(reader, shard_url, DEFAULT_MAX_MEMBER_BYTES)
    }

    /// Like [`new`](Self::new), with another per-member size cap.
    pub fn with_max_member_bytes(reader: R, shard_url: impl Into<String>, max_member_bytes: u64) -> Self {
        TarSamples {
            tar: TarStream::new(reader, max_member_bytes),
            shard: shard_url.into(),
            current: None,
            done: false,
        }
    }

    /// The shard URL this reader was given.
    pub fn shard(&self) -> &str {
        &self.shard
    }

    /// Bytes of the stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.tar.offset()
    }
}

/// Splits a member path into (key, extension) like `webdataset`'s `base_plus_ext`, and
/// lowercases the extension; `None` for paths it skips (no dot in the basename).
pub fn split_key(path: &str) -> Option<(&str, String)> {
    let caps = BASE_PLUS_EXT.captures(path)?;
    Some((caps.get(1)?.as_str(), caps.get(2)?.as_str().to_lowercase()))
}

/// Whether a member path is absolute or climbs out of the archive (a `..` component): such a
/// member makes its sample a skip ([`SkipReason::UnsafePath`]). Nothing is ever written to
/// disk from a shard, but a path like this only comes from a crafted or broken archive.
pub fn is_unsafe_path(path: &str) -> bool {
    path.starts_with('/') || path.starts_with('\\') || path.split(['/', '\\']).any(|c| c == "..")
}

/// Whether `tar_file_iterator` skips a regular member by name (`__*__` entries).
pub fn is_meta_entry(path: &str) -> bool {
    (!path.contains('/') && path.starts_with("__") && path.ends_with("__")) || SKIP_META.is_match(path)
}

impl<R: Read> Iterator for TarSamples<R> {
    type Item = Result<WdsSample, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let member = match self.tar.next_member() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.done = true;
                    return self.current.take().map(Ok);
                }
                Err(e) => {
                    self.done = true;
                    self.current = None;
                    let (reason, detail) = match e {
                        TarError::Truncated(d) => (SkipReason::TruncatedShard, d),
                        TarError::Io(e) => (SkipReason::UnreadableShard, e.to_string()),
                    };
                    return Some(Err(ShardError {
                        shard: self.shard.clone(),
                        reason,
                        offset: self.tar.offset(),
                        detail,
                    }));
                }
            };
            if is_meta_entry(&member.name) {
                continue;
            }
            let Some((key, ext)) = split_key(&member.name) else {
                continue;
            };
            let finished = match &self.current {
                Some(cur) if cur.key == key => None,
                _ => self.current.replace(WdsSample { key: key.to_string(), ..WdsSample::default() }),
            };
            if let Some(cur) = self.current.as_mut() {
                cur.unsafe_path |= is_unsafe_path(&member.name);
                // `__key__` and `__url__` are taken in Python's sample dict: duplicates too.
                if !cur.has(&ext) && ext != "__key__" && ext != "__url__" {
                    match member.data {
                        Some(data) => cur.members.push((ext, data)),
                        None => cur.oversized.push(ext),
                    }
                }
            }
            if let Some(done) = finished {
                return Some(Ok(done));
            }
        }
        None
    }
}

/// Where a sample's caption comes from; written `txt` or `json:FIELD` in configs and flags.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CaptionSource {
    /// The `txt` member (WebDataset's and img2dataset's default).
    #[default]
    Txt,
    /// A string field of the `json` member.
    Json {
        /// The field's name, e.g. `caption`.
        field: String,
    },
}

impl CaptionSource {
    /// The accepted spellings.
    pub const ALLOWED: &'static str = "txt, or json:FIELD";
}

impl std::str::FromStr for CaptionSource {
    type Err = crate::DataError;

    fn from_str(s: &str) -> Result<Self, crate::DataError> {
        match s.split_once(':') {
            None if s == "txt" => Ok(CaptionSource::Txt),
            Some(("json", field)) if !field.is_empty() => Ok(CaptionSource::Json { field: field.to_string() }),
            _ => Err(crate::DataError::InvalidArgument {
                name: "caption_key",
                value: s.to_owned(),
                allowed: Self::ALLOWED.into(),
            }),
        }
    }
}

impl TryFrom<String> for CaptionSource {
    type Error = crate::DataError;

    fn try_from(s: String) -> Result<Self, crate::DataError> {
        s.parse()
    }
}

impl std::fmt::Display for CaptionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptionSource::Txt => f.write_str("txt"),
            CaptionSource::Json { field } => write!(f, "json:{field}"),
        }
    }
}

impl From<CaptionSource> for String {
    fn from(c: CaptionSource) -> String {
        c.to_string()
    }
}

/// Turns a sample into an image–caption pair.
///
/// The image is the first of `jpg`, `jpeg`, `png`, `webp` present (not decoded here).
/// Errors: no image member → [`SkipReason::MissingImage`]; no caption (no `txt`, or no
/// `json`, unparsable JSON, or a field that is absent or not a string) →
/// [`SkipReason::MissingCaption`]; caption bytes (or JSON bytes) that are not UTF-8 →
/// [`SkipReason::CaptionNotUtf8`]; an image member skipped for its size →
/// [`SkipReason::OversizedImage`]; a caption member over [`MAX_CAPTION_BYTES`] →
/// [`SkipReason::OversizedCaption`]; a member path that is absolute or has `..` →
/// [`SkipReason::UnsafePath`]. `cls` is parsed as a decimal integer after trimming
/// whitespace; a `cls` that is not one is treated as absent.
pub fn to_pair(sample: WdsSample, shard_url: &str, caption: &CaptionSource) -> Result<EncodedPair, SkipReason> {
    let caption_ext = match caption {
        CaptionSource::Txt => "txt",
        CaptionSource::Json { .. } => "json",
    };
    if sample.unsafe_path {
        return Err(SkipReason::UnsafePath);
    }
    let image_ext = IMAGE_EXTENSIONS.iter().find(|e| sample.has(e)).ok_or(SkipReason::MissingImage)?;
    if sample.oversized.iter().any(|e| e == image_ext) {
        return Err(SkipReason::OversizedImage);
    }
    if sample.oversized.iter().any(|e| e == caption_ext) {
        return Err(SkipReason::OversizedCaption);
    }
    let caption_bytes = sample.get(caption_ext).ok_or(SkipReason::MissingCaption)?;
    if caption_bytes.len() > MAX_CAPTION_BYTES {
        return Err(SkipReason::OversizedCaption);
    }
    let text = std::str::from_utf8(caption_bytes).map_err(|_| SkipReason::CaptionNotUtf8)?;
    let caption = match caption {
        CaptionSource::Txt => text.to_string(),
        CaptionSource::Json { field } => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|_| SkipReason::MissingCaption)?;
            value.get(field).and_then(|v| v.as_str()).ok_or(SkipReason::MissingCaption)?.to_string()
        }
    };
    let label = sample.get("cls").and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.trim().parse::<i64>().ok());
    let image_format = image_ext.to_string();
    let WdsSample { key, members, .. } = sample;
    let image = members.into_iter().find(|(e, _)| e == image_ext).map(|(_, d)| d).ok_or(SkipReason::MissingImage)?;
    Ok(EncodedPair { shard: shard_url.to_string(), key, image, image_format, caption, label })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_like_base_plus_ext() {
        assert_eq!(split_key("a/b.c.JPG"), Some(("a/b", "c.jpg".to_string())));
        assert_eq!(split_key("data.v1/e7.jpg"), Some(("data.v1/e7", "jpg".to_string())));
        assert_eq!(split_key("dir/.hidden.txt"), Some(("dir/", "hidden.txt".to_string())));
        assert_eq!(split_key("README"), None);
        assert_eq!(split_key("x.y/README"), None);
        assert_eq!(split_key(".jpg"), None);
        assert!(is_meta_entry("__meta__"));
        assert!(is_meta_entry("__index__/e6.txt"));
        assert!(!is_meta_entry("__key__.txt"));
        assert!(!is_meta_entry("a/__b__"));
    }
}
