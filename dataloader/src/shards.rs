//! Shard lists: expanding `--train-data` into shard URLs, per-source sampling weights,
//! WebDataset's `sizes.json`, and telling local paths from object-store URLs.
//!
//! A spec follows OpenCLIP: sources are joined with `::`, each source is a brace pattern
//! (see [`brace_expand`]), and `--train-data-upsampling-factors` gives one weight per source,
//! also joined with `::`. The epoch length of a source can come from the `sizes.json` that
//! sits beside its shards and maps each shard's file name to its sample count.

mod braces;

use std::collections::BTreeMap;
use std::path::Path;

pub use braces::{brace_expand, MAX_EXPANSION, MAX_EXPANSION_BYTES};

use crate::DataError;

/// One `::`-separated part of a shard spec: its expanded URLs and its sampling weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSource {
    /// The shard URLs (or paths), in the order brace expansion gives them.
    pub urls: Vec<String>,
    /// The relative sampling weight of this source (OpenCLIP's upsampling factor; 1 if none).
    pub weight: f64,
}

/// Splits `spec` on `::`, brace-expands each source, and pairs it with its weight.
///
/// `weights` is the value of `--train-data-upsampling-factors`: as many positive numbers as
/// there are sources, joined with `::`. Without it, every source weighs 1.
///
/// # Errors
/// [`DataError::ShardPattern`] for an empty source or malformed braces, and
/// [`DataError::InvalidArgument`] naming `train_data_upsampling_factors` when the weights
/// do not match the sources in number or are not positive numbers.
pub fn parse_sources(spec: &str, weights: Option<&str>) -> Result<Vec<ShardSource>, DataError> {
    let parts: Vec<&str> = spec.split("::").collect();
    let weights = match weights {
        None => vec![1.0; parts.len()],
        Some(text) => parse_weights(text, parts.len())?,
    };
    // The limits of one pattern hold for the whole spec too.
    let (mut names, mut bytes) = (0usize, 0usize);
    parts
        .iter()
        .zip(weights)
        .map(|(part, weight)| {
            if part.trim().is_empty() {
                return Err(DataError::ShardPattern {
                    pattern: spec.to_owned(),
                    reason: "empty source between '::' separators".to_owned(),
                });
            }
            let urls = brace_expand(part)?;
            names += urls.len();
            bytes += urls.iter().map(String::len).sum::<usize>();
            if names > MAX_EXPANSION {
                return Err(braces::too_many(spec));
            }
            if bytes > MAX_EXPANSION_BYTES {
                return Err(braces::too_long(spec));
            }
            Ok(ShardSource { urls, weight })
        })
        .collect()
}

fn parse_weights(text: &str, sources: usize) -> Result<Vec<f64>, DataError> {
    let bad = || DataError::InvalidArgument {
        name: "train_data_upsampling_factors",
        value: text.to_owned(),
        allowed: format!("{sources} positive number(s) joined with '::', one per --train-data source"),
    };
    let weights: Vec<f64> = text
        .split("::")
        .map(|w| w.trim().parse::<f64>().ok().filter(|w| w.is_finite() && *w > 0.0))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if weights.len() != sources {
        return Err(bad());
    }
    Ok(weights)
}

/// Where a shard lives, as far as choosing an object store goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UrlScheme {
    /// A local path, or a `file://` URL.
    Local,
    /// Amazon S3 or an S3-compatible server: `s3://bucket/key` (also `s3a://`).
    S3,
    /// Google Cloud Storage: `gs://bucket/key`.
    Gcs,
    /// Azure Blob Storage or ADLS: `az://`, `azure://`, `abfs://`, `abfss://`, `adl://`.
    Azure,
    /// Plain HTTP(S): `http://host/path`, `https://host/path`.
    Http,
}

impl UrlScheme {
    /// A short lowercase name, for messages and cache keys.
    pub fn as_str(self) -> &'static str {
        match self {
            UrlScheme::Local => "file",
            UrlScheme::S3 => "s3",
            UrlScheme::Gcs => "gs",
            UrlScheme::Azure => "az",
            UrlScheme::Http => "http",
        }
    }
}

/// A shard URL split into the store it lives in and the key within that store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardUrl {
    /// Which kind of store.
    pub scheme: UrlScheme,
    /// The store within the scheme: the bucket or container (with `@account...` for Azure
    /// when given), `scheme://host[:port]` for HTTP, and empty for local files.
    pub bucket: String,
    /// The object key (no leading `/`), or the file path for local files.
    pub key: String,
}

impl ShardUrl {
    /// Classifies `url`. Strings without `scheme://` are local paths.
    ///
    /// # Errors
    /// [`DataError::ShardPattern`] for an unsupported scheme (such as WebDataset's `pipe:`),
    /// or a URL without a bucket or key.
    pub fn parse(url: &str) -> Result<ShardUrl, DataError> {
        let bad = |reason: String| DataError::ShardPattern { pattern: url.to_owned(), reason };
        if url.starts_with("pipe:") {
            return Err(bad("pipe: URLs are not supported; use a path or an object-store URL".into()));
        }
        let Some((scheme, rest)) = split_scheme(url) else {
            return Ok(ShardUrl { scheme: UrlScheme::Local, bucket: String::new(), key: url.into() });
        };
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad("file:// URLs must hold an absolute path (file:///...)".into()));
                }
                return Ok(ShardUrl { scheme: UrlScheme::Local, bucket: String::new(), key: rest.into() });
            }
            "s3" | "s3a" => UrlScheme::S3,
            "gs" => UrlScheme::Gcs,
            "az" | "azure" | "abfs" | "abfss" | "adl" => UrlScheme::Azure,
            "http" | "https" => UrlScheme::Http,
            other => {
                return Err(bad(format!(
                    "unsupported URL scheme {other:?}; use a local path, file://, s3://, gs://, \
                     az://, http:// or https://"
                )))
            }
        };
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(bad("the URL names no bucket or host".into()));
        }
        if key.is_empty() || key.ends_with('/') {
            return Err(bad("the URL names no object".into()));
        }
        let bucket = match kind {
            UrlScheme::Http => format!("{}://{authority}", scheme.to_ascii_lowercase()),
            _ => authority.to_owned(),
        };
        Ok(ShardUrl { scheme: kind, bucket, key: key.to_owned() })
    }
}

/// Splits `scheme://rest` when the prefix is a valid URL scheme.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some((scheme, rest))
}

/// The file name of a shard URL or path: what `sizes.json` uses as its key.
pub fn shard_basename(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// The URL of the `sizes.json` in the same folder as `shard_url`.
pub fn sizes_json_url(shard_url: &str) -> String {
    match shard_url.rfind('/') {
        Some(slash) => format!("{}sizes.json", &shard_url[..=slash]),
        None => "sizes.json".to_owned(),
    }
}

/// A parsed WebDataset `sizes.json`: shard file name → number of samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizesJson {
    /// Where it was read from, for messages.
    pub url: String,
    /// Sample count per shard file name.
    pub sizes: BTreeMap<String, u64>,
}

impl SizesJson {
    /// Parses the JSON object `{"shard-000000.tar": 10000, ...}`; counts may also be
    /// numeric strings, as OpenCLIP applies `int()` to them.
    ///
    /// # Errors
    /// [`DataError::SizesJson`] naming `url` when the text is not such an object.
    pub fn parse(bytes: &[u8], url: &str) -> Result<SizesJson, DataError> {
        let bad = |reason: String| DataError::SizesJson { url: url.to_owned(), reason };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let object = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let mut sizes = BTreeMap::new();
        for (name, count) in object {
            let n = match count {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            let n = n.ok_or_else(|| bad(format!("count of {name:?} is not a count: {count}")))?;
            sizes.insert(name.clone(), n);
        }
        Ok(SizesJson { url: url.to_owned(), sizes })
    }

    /// The total number of samples in `urls`, looked up by file name.
    ///
    /// # Errors
    /// [`DataError::SizesJson`] listing the shards that `sizes.json` lacks.
    pub fn total_samples<S: AsRef<str>>(&self, urls: &[S]) -> Result<u64, DataError> {
        let mut total = 0u64;
        let mut missing = Vec::new();
        for url in urls {
            let name = shard_basename(url.as_ref());
            match self.sizes.get(name) {
                Some(n) => total += n,
                None => missing.push(name),
            }
        }
        if missing.is_empty() {
            return Ok(total);
        }
        let shown: Vec<&str> = missing.iter().take(5).copied().collect();
        let more = if missing.len() > shown.len() {
            format!(" and {} more", missing.len() - shown.len())
        } else {
            String::new()
        };
        Err(DataError::SizesJson {
            url: self.url.clone(),
            reason: format!(
                "{} shard(s) missing: {}{more}; regenerate sizes.json or pass --train-num-samples",
                missing.len(),
                shown.join(", ")
            ),
        })
    }
}

/// Reads and parses a local `sizes.json`.
///
/// # Errors
/// [`DataError::Io`] when the file cannot be read, [`DataError::SizesJson`] when it is
/// malformed.
pub fn read_sizes_json(path: &Path) -> Result<SizesJson, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    SizesJson::parse(&bytes, &path.display().to_string())
}
