//! The fixed-vocabulary word tokenizer of the synthetic dataset.
//!
//! Ids: 0 is padding, 1 is `<unk>`, 2.. are the words of [`WORDS`] in order,
//! and the last two ids of [`WORD_VOCAB_SIZE`] are `<start_of_text>` and
//! `<end_of_text>`. Unused ids in between are never produced.

use std::collections::HashMap;

use super::Tokenizer;

/// Number of ids of the [`WordTokenizer`], special tokens included.
pub const WORD_VOCAB_SIZE: usize = 512;
/// Id of the padding token.
pub const PAD_ID: u32 = 0;
/// Id given to every word outside the vocabulary.
pub const UNK_ID: u32 = 1;
/// Id of `<start_of_text>`.
pub const SOT_ID: u32 = WORD_VOCAB_SIZE as u32 - 2;
/// Id of `<end_of_text>`, the largest id.
pub const EOT_ID: u32 = WORD_VOCAB_SIZE as u32 - 1;

/// The vocabulary, in id order from 2: punctuation, every word the synthetic
/// generator and its prompt templates emit, then some generic English.
pub const WORDS: &[&str] = &[
    ",",
    ".", // punctuation
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange", // colours
    "circle",
    "square",
    "triangle",
    "cross",
    "star", // shapes
    "small",
    "large",
    "top",
    "bottom",
    "left",
    "right",
    "center", // size, position
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "is",
    "there",
    "with", // function words
    "photo",
    "picture",
    "image",
    "rendering",
    "drawing",
    "shape",
    "background", // nouns
    "dark",
    "grey",
    "light",
    "plain",
    "soft",
    "bright",
    "muted", // background words
    "and",
    "or",
    "this",
    "that",
    "it",
    "its",
    "one",
    "two",
    "three",
    "some",
    "no",
    "not",
    "big",
    "tiny",
    "little",
    "huge",
    "middle",
    "corner",
    "side",
    "near",
    "above",
    "below",
    "color",
    "colour",
    "colored",
    "coloured",
    "object",
    "thing",
    "icon",
    "logo",
    "sign",
    "white",
    "black",
    "gray",
    "pink",
    "brown",
    "cyan",
    "magenta",
    "violet",
    "gold",
    "round",
    "sharp",
    "flat",
    "simple",
    "clean",
    "blurry",
    "close",
    "far",
    "up",
    "down",
    "ring",
    "box",
    "dot",
    "line",
    "point",
    "points",
    "five",
    "four",
    "x",
    "plus",
    "cat",
    "dog",
    "car",
    "tree",
    "house",
    "person",
    "man",
    "woman",
    "sky",
    "water",
    "my",
    "your",
    "we",
    "you",
    "i",
    "he",
    "she",
    "they",
    "be",
    "are",
    "was",
    "has",
    "have",
    "for",
    "from",
    "to",
    "by",
    "as",
    "very",
    "good",
    "new",
    "old",
    "art",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
];

/// A word-level tokenizer over the fixed vocabulary [`WORDS`].
///
/// `encode` lowercases the text, splits it into runs of letters and digits
/// and single punctuation characters, and maps each to its id, or to
/// [`UNK_ID`] when it is not in the vocabulary.
#[derive(Debug, Clone)]
pub struct WordTokenizer {
    ids: HashMap<&'static str, u32>,
}

impl WordTokenizer {
    /// The tokenizer over [`WORDS`].
    pub fn new() -> WordTokenizer {
        let ids = WORDS.iter().enumerate().map(|(i, w)| (*w, i as u32 + 2)).collect();
        WordTokenizer { ids }
    }

    /// Number of words of `text` outside the vocabulary.
    pub fn unknown_count(&self, text: &str) -> usize {
        self.encode(text).iter().filter(|&&id| id == UNK_ID).count()
    }

    /// The text of an id: a word, `<pad>`, `<unk>`, `<start_of_text>`,
    /// `<end_of_text>`, or `None` for an unused or out-of-range id.
    pub fn decode_id(&self, id: u32) -> Option<&'static str> {
        match id {
            PAD_ID => Some("<pad>"),
            UNK_ID => Some("<unk>"),
            SOT_ID => Some("<start_of_text>"),
            EOT_ID => Some("<end_of_text>"),
            _ => WORDS.get((id as usize).checked_sub(2)?).copied(),
        }
    }

    fn lookup(&self, word: &str) -> u32 {
        self.ids.get(word).copied().unwrap_or(UNK_ID)
    }
}

impl Default for WordTokenizer {
    fn default() -> Self {
        WordTokenizer::new()
    }
}

impl Tokenizer for WordTokenizer {
    fn vocab_size(&self) -> usize {
        WORD_VOCAB_SIZE
    }

    fn sot_id(&self) -> u32 {
        SOT_ID
    }

    fn eot_id(&self) -> u32 {
        EOT_ID
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        let lower = text.to_lowercase();
        let mut ids = Vec::new();
        let mut word = String::new();
        for ch in lower.chars() {
            if ch.is_alphanumeric() {
                word.push(ch);
                continue;
            }
            if !word.is_empty() {
                ids.push(self.lookup(&word));
                word.clear();
            }
            if !ch.is_whitespace() {
                let mut buf = [0u8; 4];
                ids.push(self.lookup(ch.encode_utf8(&mut buf)));
            }
        }
        if !word.is_empty() {
            ids.push(self.lookup(&word));
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_fits_and_has_no_duplicates() {
        assert!(WORDS.len() + 2 <= SOT_ID as usize);
        let tok = WordTokenizer::new();
        assert_eq!(tok.ids.len(), WORDS.len(), "duplicate words");
        assert!(WORDS.iter().all(|w| w.to_lowercase() == *w));
    }

    #[test]
    fn round_trip() {
        let tok = WordTokenizer::new();
        let ids = tok.encode("A small Red circle, in the top left.");
        let words: Vec<&str> = ids.iter().filter_map(|&i| tok.decode_id(i)).collect();
        assert_eq!(words, ["a", "small", "red", "circle", ",", "in", "the", "top", "left", "."]);
        assert_eq!(tok.unknown_count("a zebra on a bicycle!"), 3);
        assert_eq!(tok.encode("zebra"), vec![UNK_ID]);
    }

    #[test]
    fn tokenize_pads_with_zero() {
        let tok = WordTokenizer::new();
        let ids = tok.tokenize("red star", 6);
        let red = i64::from(tok.lookup("red"));
        let star = i64::from(tok.lookup("star"));
        assert_eq!(ids, vec![510, red, star, 511, 0, 0]);
        assert_eq!(tok.tokenize("", 3), vec![510, 511, 0]);
    }

    #[test]
    fn tokenize_truncates_and_forces_eot() {
        let tok = WordTokenizer::new();
        let ids = tok.tokenize("a b c d e f g", 4);
        assert_eq!(ids.len(), 4);
        assert_eq!(ids[0], 510);
        assert_eq!(ids[3], 511);
        assert_eq!(ids.iter().copied().max(), Some(511));
        let batch = tok.tokenize_batch(&["red", "a b c d e f g"], 4);
        assert_eq!(batch.len(), 8);
        assert_eq!(&batch[4..], &ids[..]);
    }
}
