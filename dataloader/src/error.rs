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
}
