//! Byte-level BPE tokenizer that reproduces OpenCLIP's `SimpleTokenizer`.
//!
//! [`BpeTokenizer`] gives the same ids as `open_clip.tokenize` in
//! open_clip_torch 3.3.0 (default `clean='lower'`, ftfy 6.3.1) for realistic
//! captions; `dataloader/tests/bpe.rs` checks this against fixtures written by
//! `dataloader/tests/fixtures/tokenizer/gen_tokenizer_fixture.py`.
//!
//! The pipeline, in OpenCLIP's order:
//! 1. clean: a port of `ftfy.fix_text`, `html.unescape` twice, whitespace
//!    collapsing and lowercasing (see below for what is not ported);
//! 2. pre-tokenize with `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|
//!    \p{L}+|\p{N}|[^\s\p{L}\p{N}]+`;
//! 3. map each piece's UTF-8 bytes to the 256 byte symbols, mark the last
//!    symbol with `</w>`, and apply the merges of `bpe_simple_vocab_16e6.txt.gz`
//!    lowest rank first.
//!
//! # Vocabulary
//! Ids 0..256 are the byte symbols (in `bytes_to_unicode` order), 256..512 the
//! same with `</w>`, 512..49406 the concatenations of merges 1..=48894 of the
//! vocab file (line 0 is a header), then `<start_of_text>` = 49406 and
//! `<end_of_text>` = 49407. The file ships inside the `open_clip_torch` wheel
//! and is never committed; see [`default_vocab_path`].
//!
//! # What differs from the Python reference
//! - **Mojibake repair** (`ftfy.fix_encoding`: re-decoding text such as
//!   `cafÃ©` or `â€™` that was UTF-8 read as Latin-1/Windows-1252/MacRoman,
//!   including `restore_byte_a0`, `replace_lossy_sequences` and
//!   `decode_inconsistent_utf8`) is not reproduced: such text is tokenized as
//!   it stands. The fixture generator asserts that no fixture depends on it.
//! - **Named HTML entities** are limited to the 252 of HTML 4 plus `&apos;`
//!   (with the legacy semicolon-less forms such as `&amp`, `&copy`, and ftfy's
//!   upper-cased variants such as `&EACUTE;`). HTML5-only names such as
//!   `&check;` are left as written. Numeric references (`&#39;`, `&#x27;`,
//!   invalid code points, Windows-1252 remapping of 128..=159) are exact.
//! - `ftfy.fix_surrogates` has nothing to do: a Rust `&str` cannot hold
//!   surrogates. Segments longer than ftfy's `max_decode_length` (10^6
//!   characters) are not split.
//! - Unicode tables come from the Rust crates (`regex`, `unicode-normalization`,
//!   `char::to_lowercase`), not from Python 3.11's Unicode 14.0, so characters
//!   assigned after Unicode 14.0 may be classified differently.
//! - [`BpeTokenizer::decode`] skips ids outside the vocabulary (Python raises
//!   `KeyError`).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use regex::Regex;

use crate::tokenizer::Tokenizer;
use crate::DataError;

/// File name of the merges file shipped in the `open_clip_torch` wheel.
pub const VOCAB_FILE_NAME: &str = "bpe_simple_vocab_16e6.txt.gz";

/// Number of merges used: lines 1..=48894 of the vocab file
/// (`49152 - 256 - 2` in OpenCLIP).
const NUM_MERGES: usize = 48_894;
/// Number of ids: 256 bytes, 256 bytes with `</w>`, the merges, two specials.
const VOCAB_SIZE: usize = 512 + NUM_MERGES + 2;
const SOT_TEXT: &str = "<start_of_text>";
const EOT_TEXT: &str = "<end_of_text>";
const SOT_ID: u32 = (VOCAB_SIZE - 2) as u32;
const EOT_ID: u32 = (VOCAB_SIZE - 1) as u32;
/// Offset from a byte symbol's id to the same symbol with `</w>`.
const END_OF_WORD_OFFSET: u32 = 256;
/// The merge cache is cleared when it reaches this many distinct words.
const CACHE_CAPACITY: usize = 1 << 18;

/// OpenCLIP's pre-tokenizer. The `(?i)` covers only the literal alternatives
/// (so `'ſ` still matches `'s`, as in Python's `regex`). U+0345 is excluded
/// from the last class because Python's `regex` with `IGNORECASE` matches it
/// with no alternative (it case-folds to the letter ι), so it is dropped.
const PRETOKENIZE_PATTERN: &str =
    concat!(r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)", r"|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+");

/// Where to find `bpe_simple_vocab_16e6.txt.gz`, or `None` if nowhere.
///
/// Looks, in order, at:
/// 1. the environment variable `CLIPFLEET_BPE_VOCAB` (returned as given when
///    set and non-empty, so that a wrong path fails loudly in
///    [`BpeTokenizer::from_file`]);
/// 2. `<workspace>/.cache/bpe_simple_vocab_16e6.txt.gz` (where
///    `scripts/setup.sh` puts it);
/// 3. `<workspace>/.venv/lib/python*/site-packages/open_clip/` (the pinned
///    reference venv).
pub fn default_vocab_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CLIPFLEET_BPE_VOCAB") {
        if !path.is_empty() {
            return Some(PathBuf::from(path));
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cached = workspace.join(".cache").join(VOCAB_FILE_NAME);
    if cached.is_file() {
        return Some(cached);
    }
    let lib = workspace.join(".venv").join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python"))
        .map(|entry| entry.path())
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .map(|python| python.join("site-packages/open_clip").join(VOCAB_FILE_NAME))
        .find(|path| path.is_file())
}

/// OpenCLIP's byte-level BPE tokenizer (`SimpleTokenizer`, `clean='lower'`).
///
/// Build it once with [`BpeTokenizer::from_file`] and share it between
/// threads; encoding takes `&self` and keeps a bounded cache of merged words.
pub struct BpeTokenizer {
    /// Id of each byte's symbol (add [`END_OF_WORD_OFFSET`] for `</w>`).
    byte_ids: [u32; 256],
    /// (left id, right id) -> (merge rank, id of the merged symbol).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Raw bytes of each id, `</w>` spelled out, as OpenCLIP decodes them.
    id_bytes: Vec<Vec<u8>>,
    pattern: Regex,
    cleaner: super::clean::Cleaner,
    cache: RwLock<HashMap<String, Vec<u32>>>,
    source: PathBuf,
}

impl fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.id_bytes.len())
            .field("merges", &self.merges.len())
            .finish_non_exhaustive()
    }
}

impl BpeTokenizer {
    /// Loads the merges file: gzip-compressed as it ships (`bpe_simple_vocab_16e6.txt.gz`),
    /// or the same text uncompressed (told apart by the gzip magic bytes).
    ///
    /// # Errors
    /// [`DataError::Io`] if the file cannot be read, and
    /// [`DataError::Vocab`] if it is not (gzip-compressed) UTF-8 text with at
    /// least 48894 merge lines of two symbols each; both name `path`.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let mut text = String::new();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(bytes.as_slice()).read_to_string(&mut text).map_err(|e| DataError::Vocab {
                path: path.to_path_buf(),
                reason: format!("not gzip-compressed UTF-8 text ({e})"),
            })?;
        } else {
            text = String::from_utf8(bytes).map_err(|e| DataError::Vocab {
                path: path.to_path_buf(),
                reason: format!("neither gzip-compressed nor UTF-8 text ({e})"),
            })?;
        }
        Self::from_merges_text(&text, path).map_err(|reason| DataError::Vocab { path: path.to_path_buf(), reason })
    }

    fn from_merges_text(text: &str, source: &Path) -> Result<Self, String> {
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() <= NUM_MERGES {
            return Err(format!("expected a header line and {NUM_MERGES} merge lines, found {} lines", lines.len()));
        }
        let byte_chars = bytes_to_unicode();
        let mut vocab: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        vocab.extend(byte_chars.iter().map(|&(_, c)| c.to_string()));
        vocab.extend(byte_chars.iter().map(|&(_, c)| format!("{c}</w>")));
        let mut pairs = Vec::with_capacity(NUM_MERGES);
        for (index, line) in lines[1..=NUM_MERGES].iter().enumerate() {
            let mut symbols = line.split_whitespace();
            match (symbols.next(), symbols.next(), symbols.next()) {
                (Some(left), Some(right), None) => {
                    vocab.push(format!("{left}{right}"));
                    pairs.push((left, right));
                }
                _ => return Err(format!("line {}: expected two symbols, found {line:?}", index + 1)),
            }
        }
        vocab.push(SOT_TEXT.to_owned());
        vocab.push(EOT_TEXT.to_owned());

        let encoder: HashMap<&str, u32> =
            vocab.iter().enumerate().map(|(id, token)| (token.as_str(), id as u32)).collect();
        if encoder.len() != VOCAB_SIZE {
            return Err(format!(
                "{} of the {VOCAB_SIZE} vocabulary entries are duplicates",
                VOCAB_SIZE - encoder.len()
            ));
        }
        let id_of = |symbol: &str, line: usize| {
            encoder
                .get(symbol)
                .copied()
                .ok_or_else(|| format!("line {line}: symbol {symbol:?} is not in the vocabulary"))
        };
        let mut merges = HashMap::with_capacity(NUM_MERGES);
        for (rank, &(left, right)) in pairs.iter().enumerate() {
            let key = (id_of(left, rank + 1)?, id_of(right, rank + 1)?);
            let merged = id_of(&format!("{left}{right}"), rank + 1)?;
            merges.insert(key, (rank as u32, merged));
        }

        // `</w>` and the specials are printable ASCII, which maps to itself.
        let char_to_byte: HashMap<char, u8> = byte_chars.iter().map(|&(b, c)| (c, b)).collect();
        let id_bytes = vocab
            .iter()
            .map(|token| {
                token
                    .chars()
                    .map(|c| {
                        char_to_byte
                            .get(&c)
                            .copied()
                            .ok_or_else(|| format!("token {token:?} has a non-byte symbol {c:?}"))
                    })
                    .collect::<Result<Vec<u8>, String>>()
            })
            .collect::<Result<Vec<_>, String>>()?;

        let mut byte_ids = [0u32; 256];
        for (id, &(byte, _)) in byte_chars.iter().enumerate() {
            byte_ids[usize::from(byte)] = id as u32;
        }
        Ok(Self {
            byte_ids,
            merges,
            id_bytes,
            pattern: Regex::new(PRETOKENIZE_PATTERN).map_err(|e| e.to_string())?,
            cleaner: super::clean::Cleaner::new().map_err(|e| e.to_string())?,
            cache: RwLock::new(HashMap::new()),
            source: source.to_path_buf(),
        })
    }

    /// The text OpenCLIP tokenizes for `text`: ftfy-style fixing, HTML
    /// unescaping (twice), whitespace collapsing and lowercasing.
    pub fn clean(&self, text: &str) -> String {
        self.cleaner.clean_lower(text)
    }

    /// Turns ids back into text, as OpenCLIP's `SimpleTokenizer.decode`:
    /// invalid UTF-8 becomes U+FFFD and every `</w>` becomes a space (so the
    /// result usually ends with one). Specials decode to their names; ids
    /// outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(token) = self.id_bytes.get(id as usize) {
                bytes.extend_from_slice(token);
            }
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }

    /// Appends the ids of one pre-token, using and filling the cache.
    fn encode_word(&self, word: &str, ids: &mut Vec<u32>) {
        let cache = self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = cache.get(word) {
            ids.extend_from_slice(cached);
            return;
        }
        drop(cache);
        let merged = self.merge_word(word);
        ids.extend_from_slice(&merged);
        let mut cache = self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(word.to_owned(), merged);
    }

    /// Applies the merges to one pre-token: always the lowest-ranked adjacent
    /// pair, every non-overlapping occurrence left to right, until none applies.
    fn merge_word(&self, word: &str) -> Vec<u32> {
        let mut symbols: Vec<u32> = word.bytes().map(|b| self.byte_ids[usize::from(b)]).collect();
        if let Some(last) = symbols.last_mut() {
            *last += END_OF_WORD_OFFSET;
        }
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|pair| {
                    self.merges.get(&(pair[0], pair[1])).map(|&(rank, merged)| (rank, pair[0], pair[1], merged))
                })
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, left, right, merged)) = best else {
                break;
            };
            let mut next = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if symbols[i] == left && symbols.get(i + 1) == Some(&right) {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = next;
        }
        symbols
    }
}

impl Tokenizer for BpeTokenizer {
    fn vocab_size(&self) -> usize {
        VOCAB_SIZE
    }

    fn sot_id(&self) -> u32 {
        SOT_ID
    }

    fn eot_id(&self) -> u32 {
        EOT_ID
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = self.cleaner.clean_lower(text);
        let mut ids = Vec::with_capacity(cleaned.len() / 3 + 1);
        for piece in self.pattern.find_iter(&cleaned) {
            match piece.as_str() {
                SOT_TEXT => ids.push(SOT_ID),
                EOT_TEXT => ids.push(EOT_ID),
                word => self.encode_word(word, &mut ids),
            }
        }
        ids
    }
}

/// GPT-2's reversible byte -> printable-character map, in vocabulary order:
/// printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100...
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map: Vec<(u8, char)> = (0..=255u8).filter(|&b| printable(b)).map(|b| (b, char::from(b))).collect();
    let shifted = (0..=255u8).filter(|&b| !printable(b));
    map.extend(shifted.zip(256u32..).filter_map(|(b, code)| char::from_u32(code).map(|c| (b, c))));
    map
}
