//! Text tokenizers with OpenCLIP's output convention.
//!
//! A [`Tokenizer`] turns a caption into `[sot] + ids + [eot]`, truncated to
//! the context length with the last token forced to `eot`, and padded with 0.
//! `eot` has the largest id of the vocabulary, because the text tower pools
//! the token at `argmax(token_ids)`.
//!
//! [`word::WordTokenizer`] is the fixed-vocabulary tokenizer of the synthetic
//! dataset; it needs no downloaded file. [`bpe::BpeTokenizer`] is OpenCLIP's
//! byte-level BPE tokenizer, and [`hf::HfTokenizer`] any Hugging Face
//! `tokenizer.json` whose end-of-text token has the largest id. [`load`] picks
//! between the last two from the file.

pub mod bpe;
mod clean;
pub mod hf;
pub mod word;

use std::path::Path;
use std::sync::Arc;

pub use bpe::BpeTokenizer;
pub use hf::HfTokenizer;

use crate::DataError;

/// Loads a tokenizer file, choosing the kind from its name:
/// - `*.json` (any case), or a folder holding `tokenizer.json`: a Hugging Face tokenizer
///   ([`HfTokenizer::from_file`]);
/// - anything else (`bpe_simple_vocab_16e6.txt.gz`, or the same merges as plain `*.txt`):
///   OpenCLIP's BPE merges file ([`BpeTokenizer::from_file`]).
///
/// # Errors
/// [`DataError::Tokenizer`] for a folder without `tokenizer.json`, and the loaders' own errors
/// ([`DataError::Io`], [`DataError::Tokenizer`], [`DataError::Vocab`]), all naming the file.
pub fn load(path: &Path) -> Result<Arc<dyn Tokenizer>, DataError> {
    if path.is_dir() {
        let json = path.join("tokenizer.json");
        if json.is_file() {
            return Ok(Arc::new(HfTokenizer::from_file(&json)?));
        }
        return Err(DataError::Tokenizer {
            path: path.to_path_buf(),
            reason: "a folder without a tokenizer.json".to_string(),
        });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".json") {
        Ok(Arc::new(HfTokenizer::from_file(path)?))
    } else {
        Ok(Arc::new(BpeTokenizer::from_file(path)?))
    }
}

/// A text tokenizer: the interface the trainer is written against.
pub trait Tokenizer: Send + Sync + std::fmt::Debug {
    /// Number of ids, special tokens included; every id is below it.
    fn vocab_size(&self) -> usize;

    /// Id of the start-of-text token.
    fn sot_id(&self) -> u32;

    /// Id of the end-of-text token. It must be the largest id: the text tower
    /// pools the token at `argmax(token_ids)` (as OpenCLIP does), which is the
    /// end-of-text token only then. Implementations refuse vocabularies where
    /// it is not (see [`hf`]).
    fn eot_id(&self) -> u32;

    /// The ids of `text`, without start or end tokens.
    fn encode(&self, text: &str) -> Vec<u32>;

    /// OpenCLIP's `tokenize` for one text: `[sot] + encode(text) + [eot]`,
    /// truncated to `context_length` with the last token forced to `eot`,
    /// then padded with 0 to exactly `context_length` ids.
    fn tokenize(&self, text: &str, context_length: usize) -> Vec<i64> {
        let eot = i64::from(self.eot_id());
        let mut ids = Vec::with_capacity(context_length.max(2));
        ids.push(i64::from(self.sot_id()));
        ids.extend(self.encode(text).into_iter().map(i64::from));
        ids.push(eot);
        if ids.len() > context_length {
            ids.truncate(context_length);
            if let Some(last) = ids.last_mut() {
                *last = eot;
            }
        }
        ids.resize(context_length, 0);
        ids
    }

    /// [`tokenize`](Self::tokenize) for each text, flattened row-major into a
    /// `texts.len()` × `context_length` matrix.
    fn tokenize_batch(&self, texts: &[&str], context_length: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(texts.len() * context_length);
        for text in texts {
            out.extend(self.tokenize(text, context_length));
        }
        out
    }
}
