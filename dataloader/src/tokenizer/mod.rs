//! Text tokenizers with OpenCLIP's output convention.
//!
//! A [`Tokenizer`] turns a caption into `[sot] + ids + [eot]`, truncated to
//! the context length with the last token forced to `eot`, and padded with 0.
//! `eot` has the largest id of the vocabulary, because the text tower pools
//! the token at `argmax(token_ids)`.
//!
//! [`word::WordTokenizer`] is the fixed-vocabulary tokenizer of the synthetic
//! dataset; it needs no downloaded file. [`bpe::BpeTokenizer`] is OpenCLIP's
//! byte-level BPE tokenizer.

pub mod bpe;
mod clean;
pub mod word;

pub use bpe::BpeTokenizer;

/// A text tokenizer: the interface the trainer is written against.
pub trait Tokenizer: Send + Sync + std::fmt::Debug {
    /// Number of ids, special tokens included; every id is below it.
    fn vocab_size(&self) -> usize;

    /// Id of the start-of-text token.
    fn sot_id(&self) -> u32;

    /// Id of the end-of-text token (the largest id).
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
