//! An image–caption pair as read from a shard, before decoding.

/// One training pair as stored: encoded image bytes and a caption, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    /// The shard URL (for logs and skip warnings).
    pub shard: String,
    /// The sample key (WebDataset key, or img2dataset's `key` column / row number).
    pub key: String,
    /// Encoded image bytes (JPEG, PNG or WebP).
    pub image: Vec<u8>,
    /// The image's extension or format as stored (`jpg`, `jpeg`, `png`, `webp`), lowercased.
    pub image_format: String,
    /// The caption, valid UTF-8.
    pub caption: String,
    /// Optional integer class label (`cls`).
    pub label: Option<i64>,
}
