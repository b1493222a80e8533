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
    cleaner: text_clean::Cleaner,
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
    /// Loads the gzip-compressed merges file (`bpe_simple_vocab_16e6.txt.gz`).
    ///
    /// # Errors
    /// [`DataError::Io`] if the file cannot be opened, and
    /// [`DataError::Vocab`] if it is not gzip-compressed UTF-8 text with at
    /// least 48894 merge lines of two symbols each; both name `path`.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file).read_to_string(&mut text).map_err(|e| DataError::Vocab {
            path: path.to_path_buf(),
            reason: format!("not gzip-compressed UTF-8 text ({e})"),
        })?;
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
            cleaner: text_clean::Cleaner::new().map_err(|e| e.to_string())?,
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

/// OpenCLIP's `_clean_lower`: a port of the parts of `ftfy.fix_text` that
/// matter for captions, then `html.unescape` twice, whitespace collapsing and
/// lowercasing.
mod text_clean {
    use std::borrow::Cow;
    use std::collections::{HashMap, HashSet};
    use std::sync::OnceLock;

    use regex::Regex;
    use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

    /// Holds the compiled pattern the cleaning needs.
    #[derive(Debug)]
    pub(super) struct Cleaner {
        /// ftfy's `ANSI_RE` (`\d` is any Unicode decimal digit, as in Python).
        terminal_escape: Regex,
    }

    impl Cleaner {
        pub(super) fn new() -> Result<Self, regex::Error> {
            Ok(Self { terminal_escape: Regex::new(r"\x1b\[[\d;]*[a-zA-Z]")? })
        }

        /// `whitespace_clean(basic_clean(text)).lower()`.
        pub(super) fn clean_lower(&self, text: &str) -> String {
            let fixed = self.fix_text(text);
            let once = html_unescape(&fixed);
            let twice = html_unescape(&once);
            let mut out = String::with_capacity(twice.len());
            for word in twice.split(is_python_space).filter(|w| !w.is_empty()) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(word);
            }
            out.to_lowercase()
        }

        /// `ftfy.fix_text` with the default config, minus `fix_encoding`.
        ///
        /// Like ftfy, works line by line (each segment keeps its `\n`), and
        /// stops unescaping HTML from the first line containing `<` onwards.
        fn fix_text(&self, text: &str) -> String {
            let mut out = String::with_capacity(text.len());
            let mut unescape = true;
            for segment in text.split_inclusive('\n') {
                unescape &= !segment.contains('<');
                out.push_str(&self.fix_segment(segment, unescape));
            }
            out
        }

        /// `ftfy.fix_and_explain`: applies the fixers until nothing changes.
        fn fix_segment(&self, segment: &str, unescape: bool) -> String {
            let mut text = segment.to_owned();
            loop {
                let step = if unescape { ftfy_unescape_html(&text) } else { Cow::Borrowed(text.as_str()) };
                let step = translate_chars(&step);
                let step = fix_line_breaks(&step);
                let step = self.remove_terminal_escapes(&step);
                let step = remove_control_chars(&step);
                let step = nfc(&step);
                if step == text {
                    return text;
                }
                text = step.into_owned();
            }
        }

        fn remove_terminal_escapes<'a>(&self, text: &'a str) -> Cow<'a, str> {
            if text.contains('\x1b') {
                self.terminal_escape.replace_all(text, "")
            } else {
                Cow::Borrowed(text)
            }
        }
    }

    /// Python's `str.isspace`: Unicode `White_Space` plus U+001C..=U+001F.
    fn is_python_space(c: char) -> bool {
        c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
    }

    /// ftfy's per-character fixers, composed in ftfy's order:
    /// `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width`,
    /// `uncurl_quotes`.
    fn translate_chars(text: &str) -> Cow<'_, str> {
        let changes = |c: char| {
            matches!(c, '\u{80}'..='\u{9f}' | '\u{3000}' | '\u{ff01}'..='\u{ffef}')
                || ligature(c).is_some()
                || uncurl(c) != c
        };
        if !text.chars().any(changes) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            let c = windows_1252_c1(c);
            match ligature(c) {
                Some(expanded) => expanded.chars().for_each(|c| push_full_width_fixed(c, &mut out)),
                None => push_full_width_fixed(c, &mut out),
            }
        }
        Cow::Owned(out)
    }

    /// `fix_character_width` (NFKC of U+FF01..=U+FFEF, U+3000 -> space), then
    /// `uncurl_quotes`.
    fn push_full_width_fixed(c: char, out: &mut String) {
        match c {
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.extend(std::iter::once(c).nfkc().map(uncurl)),
            _ => out.push(uncurl(c)),
        }
    }

    /// ftfy's `uncurl_quotes`.
    fn uncurl(c: char) -> char {
        match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            _ => c,
        }
    }

    /// ftfy's `LIGATURES` table.
    fn ligature(c: char) -> Option<&'static str> {
        Some(match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "ʼn",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => return None,
        })
    }

    /// Windows-1252 reading of U+0080..=U+009F, with its five holes kept as
    /// they are (ftfy's "sloppy-windows-1252", also Python's `html` table).
    const WINDOWS_1252_C1: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
    ];

    /// ftfy's `fix_c1_controls` for one character.
    fn windows_1252_c1(c: char) -> char {
        match c {
            '\u{80}'..='\u{9f}' => WINDOWS_1252_C1[c as usize - 0x80],
            _ => c,
        }
    }

    /// ftfy's `fix_line_breaks`: CRLF, CR, U+2028, U+2029 and U+0085 -> LF.
    fn fix_line_breaks(text: &str) -> Cow<'_, str> {
        const BREAKS: [char; 4] = ['\r', '\u{2028}', '\u{2029}', '\u{85}'];
        if !text.contains(BREAKS) {
            return Cow::Borrowed(text);
        }
        Cow::Owned(text.replace("\r\n", "\n").replace(BREAKS, "\n"))
    }

    /// ftfy's `remove_control_chars` (keeps tab, LF, form feed and CR).
    fn remove_control_chars(text: &str) -> Cow<'_, str> {
        let is_control = |c: char| {
            matches!(
                c,
                '\0'..='\u{8}'
                    | '\u{b}'
                    | '\u{e}'..='\u{1f}'
                    | '\u{7f}'
                    | '\u{206a}'..='\u{206f}'
                    | '\u{feff}'
                    | '\u{fff9}'..='\u{fffc}'
            )
        };
        if text.contains(is_control) {
            Cow::Owned(text.chars().filter(|&c| !is_control(c)).collect())
        } else {
            Cow::Borrowed(text)
        }
    }

    fn nfc(text: &str) -> Cow<'_, str> {
        if is_nfc_quick(text.chars()) == IsNormalized::Yes {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(text.nfc().collect())
        }
    }

    /// ftfy's `unescape_html`: replaces `&#?[0-9A-Za-z]{1,24};` when it is a
    /// known entity (or its upper-cased form) or a numeric reference.
    fn ftfy_unescape_html(text: &str) -> Cow<'_, str> {
        if !text.contains('&') {
            return Cow::Borrowed(text);
        }
        let tables = EntityTables::get();
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            let after = &rest[amp + 1..];
            let hash = usize::from(after.starts_with('#'));
            let run = after[hash..].bytes().take_while(u8::is_ascii_alphanumeric).count();
            if !(1..=24).contains(&run) || !after[hash + run..].starts_with(';') {
                out.push('&');
                rest = after;
                continue;
            }
            let entity = &rest[amp..amp + hash + run + 2];
            let name = &after[..hash + run];
            if let Some(value) = tables.named.get(name).copied().or_else(|| tables.upper.get(name).map(String::as_str))
            {
                out.push_str(value);
            } else if hash == 1 {
                let unescaped = html_unescape(entity);
                out.push_str(if unescaped.contains(';') { entity } else { &unescaped });
            } else {
                out.push_str(entity);
            }
            rest = &after[hash + run + 1..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// Python's `html.unescape` (regex `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|
    /// [^\t\n\f <&#;]{1,32};?)` and its replacement rules).
    fn html_unescape(text: &str) -> Cow<'_, str> {
        if !text.contains('&') {
            return Cow::Borrowed(text);
        }
        let tables = EntityTables::get();
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            let after = &rest[amp + 1..];
            match charref_len(after) {
                Some(len) => {
                    replace_charref(&after[..len], tables, &mut out);
                    rest = &after[len..];
                }
                None => {
                    out.push('&');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// Byte length of the character reference starting right after a `&`.
    fn charref_len(after: &str) -> Option<usize> {
        let bytes = after.as_bytes();
        let semicolon = |end: usize| end + usize::from(bytes.get(end) == Some(&b';'));
        if bytes.first() == Some(&b'#') {
            let digits = |start: usize, hex: bool| {
                bytes[start..]
                    .iter()
                    .take_while(|b| if hex { b.is_ascii_hexdigit() } else { b.is_ascii_digit() })
                    .count()
            };
            let decimal = digits(1, false);
            if decimal > 0 {
                return Some(semicolon(1 + decimal));
            }
            if matches!(bytes.get(1), Some(b'x' | b'X')) {
                let hex = digits(2, true);
                if hex > 0 {
                    return Some(semicolon(2 + hex));
                }
            }
            return None;
        }
        let len: usize = after
            .chars()
            .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
            .take(32)
            .map(char::len_utf8)
            .sum();
        (len > 0).then(|| semicolon(len))
    }

    /// Python's `html._replace_charref`; `reference` excludes the `&`.
    fn replace_charref(reference: &str, tables: &EntityTables, out: &mut String) {
        if let Some(number) = reference.strip_prefix('#') {
            let number = number.strip_suffix(';').unwrap_or(number);
            let (digits, radix) = match number.strip_prefix(['x', 'X']) {
                Some(hex) => (hex, 16),
                None => (number, 10),
            };
            let code = digits
                .chars()
                .filter_map(|d| d.to_digit(radix))
                .fold(0u64, |acc, d| acc.saturating_mul(u64::from(radix)).saturating_add(u64::from(d)));
            match code {
                0 => out.push('\u{fffd}'),
                0x0d => out.push('\r'),
                0x80..=0x9f => out.push(WINDOWS_1252_C1[code as usize - 0x80]),
                0xd800..=0xdfff | 0x11_0000.. => out.push('\u{fffd}'),
                0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => {}
                _ if code & 0xfffe == 0xfffe => {}
                _ => out.extend(char::from_u32(code as u32)),
            }
            return;
        }
        if let Some(value) = tables.lookup_html5(reference) {
            out.push_str(value);
            return;
        }
        // The longest legacy (semicolon-less) name that prefixes the reference.
        let boundaries: Vec<usize> = reference.char_indices().map(|(i, _)| i).skip(2).collect();
        for &end in boundaries.iter().rev() {
            if let Some(value) = tables.legacy_value(&reference[..end]) {
                out.push_str(value);
                out.push_str(&reference[end..]);
                return;
            }
        }
        out.push('&');
        out.push_str(reference);
    }

    /// Named character references (a subset of Python's `html.entities.html5`).
    #[derive(Debug)]
    struct EntityTables {
        /// Name without `;` -> value, for every known name.
        named: HashMap<&'static str, &'static str>,
        /// Names also valid without `;` (`&amp`, `&copy`, ...).
        legacy: HashSet<&'static str>,
        /// ftfy's upper-cased forms of lower-case names (`EACUTE` -> `É`).
        upper: HashMap<String, String>,
    }

    impl EntityTables {
        fn get() -> &'static Self {
            static TABLES: OnceLock<EntityTables> = OnceLock::new();
            TABLES.get_or_init(|| {
                let mut tables = EntityTables {
                    named: NAMED_ENTITIES.iter().copied().collect(),
                    legacy: LEGACY_ENTITIES.split_whitespace().collect(),
                    upper: HashMap::new(),
                };
                // ftfy adds `&NAME;` for a lower-case `name;` when Python's
                // `html.unescape` leaves `&NAME;` unchanged.
                let mut upper = HashMap::new();
                for (&name, &value) in &tables.named {
                    let name_upper = name.to_uppercase();
                    if name != name.to_lowercase() || !name_upper.is_ascii() {
                        continue;
                    }
                    let reference = format!("{name_upper};");
                    let mut unescaped = String::new();
                    replace_charref(&reference, &tables, &mut unescaped);
                    if unescaped.strip_prefix('&') == Some(reference.as_str()) {
                        upper.insert(name_upper, value.to_uppercase());
                    }
                }
                tables.upper = upper;
                tables
            })
        }

        /// `_html5[reference]`: `name;` for any name, bare `name` for legacy.
        fn lookup_html5(&self, reference: &str) -> Option<&'static str> {
            match reference.strip_suffix(';') {
                Some(name) => self.named.get(name).copied(),
                None => self.legacy_value(reference),
            }
        }

        fn legacy_value(&self, name: &str) -> Option<&'static str> {
            self.legacy.contains(name).then(|| self.named.get(name).copied()).flatten()
        }
    }

    /// Names that Python's `html.unescape` also accepts without `;`.
    const LEGACY_ENTITIES: &str = "\
        Aacute aacute Acirc acirc acute AElig aelig Agrave agrave AMP amp Aring aring Atilde atilde \
        Auml auml brvbar Ccedil ccedil cedil cent COPY copy curren deg divide Eacute eacute Ecirc \
        ecirc Egrave egrave ETH eth Euml euml frac12 frac14 frac34 GT gt Iacute iacute Icirc icirc \
        iexcl Igrave igrave iquest Iuml iuml laquo LT lt macr micro middot nbsp not Ntilde ntilde \
        Oacute oacute Ocirc ocirc Ograve ograve ordf ordm Oslash oslash Otilde otilde Ouml ouml \
        para plusmn pound QUOT quot raquo REG reg sect shy sup1 sup2 sup3 szlig THORN thorn times \
        Uacute uacute Ucirc ucirc Ugrave ugrave uml Uuml uuml Yacute yacute yen yuml";

    /// The HTML 4 entities plus `apos`, with HTML5's values (`html.entities.html5`).
    #[rustfmt::skip]
    const NAMED_ENTITIES: &[(&str, &str)] = &[
        ("Aacute", "Á"), ("aacute", "á"), ("Acirc", "Â"), ("acirc", "â"), ("acute", "\u{00b4}"),
        ("AElig", "Æ"), ("aelig", "æ"), ("Agrave", "À"), ("agrave", "à"), ("alefsym", "ℵ"),
        ("Alpha", "Α"), ("alpha", "α"), ("AMP", "&"), ("amp", "&"), ("and", "∧"), ("ang", "∠"),
        ("apos", "'"), ("Aring", "Å"), ("aring", "å"), ("asymp", "≈"), ("Atilde", "Ã"),
        ("atilde", "ã"), ("Auml", "Ä"), ("auml", "ä"), ("bdquo", "„"), ("Beta", "Β"), ("beta", "β"),
        ("brvbar", "¦"), ("bull", "•"), ("cap", "∩"), ("Ccedil", "Ç"), ("ccedil", "ç"),
        ("cedil", "\u{00b8}"), ("cent", "¢"), ("Chi", "Χ"), ("chi", "χ"), ("circ", "ˆ"),
        ("clubs", "♣"), ("cong", "≅"), ("COPY", "©"), ("copy", "©"), ("crarr", "↵"), ("cup", "∪"),
        ("curren", "¤"), ("Dagger", "‡"), ("dagger", "†"), ("dArr", "⇓"), ("darr", "↓"), ("deg", "°"),
        ("Delta", "Δ"), ("delta", "δ"), ("diams", "♦"), ("divide", "÷"), ("Eacute", "É"),
        ("eacute", "é"), ("Ecirc", "Ê"), ("ecirc", "ê"), ("Egrave", "È"), ("egrave", "è"),
        ("empty", "∅"), ("emsp", "\u{2003}"), ("ensp", "\u{2002}"), ("Epsilon", "Ε"), ("epsilon", "ε"),
        ("equiv", "≡"), ("Eta", "Η"), ("eta", "η"), ("ETH", "Ð"), ("eth", "ð"), ("Euml", "Ë"),
        ("euml", "ë"), ("euro", "€"), ("exist", "∃"), ("fnof", "ƒ"), ("forall", "∀"), ("frac12", "½"),
        ("frac14", "¼"), ("frac34", "¾"), ("frasl", "⁄"), ("Gamma", "Γ"), ("gamma", "γ"), ("ge", "≥"),
        ("GT", ">"), ("gt", ">"), ("hArr", "⇔"), ("harr", "↔"), ("hearts", "♥"), ("hellip", "…"),
        ("Iacute", "Í"), ("iacute", "í"), ("Icirc", "Î"), ("icirc", "î"), ("iexcl", "¡"),
        ("Igrave", "Ì"), ("igrave", "ì"), ("image", "ℑ"), ("infin", "∞"), ("int", "∫"), ("Iota", "Ι"),
        ("iota", "ι"), ("iquest", "¿"), ("isin", "∈"), ("Iuml", "Ï"), ("iuml", "ï"), ("Kappa", "Κ"),
        ("kappa", "κ"), ("Lambda", "Λ"), ("lambda", "λ"), ("lang", "⟨"), ("laquo", "«"), ("lArr", "⇐"),
        ("larr", "←"), ("lceil", "⌈"), ("ldquo", "“"), ("le", "≤"), ("lfloor", "⌊"), ("lowast", "∗"),
        ("loz", "◊"), ("lrm", "\u{200e}"), ("lsaquo", "‹"), ("lsquo", "‘"), ("LT", "<"), ("lt", "<"),
        ("macr", "\u{00af}"), ("mdash", "—"), ("micro", "µ"), ("middot", "·"), ("minus", "−"),
        ("Mu", "Μ"), ("mu", "μ"), ("nabla", "∇"), ("nbsp", "\u{00a0}"), ("ndash", "–"), ("ne", "≠"),
        ("ni", "∋"), ("not", "¬"), ("notin", "∉"), ("nsub", "⊄"), ("Ntilde", "Ñ"), ("ntilde", "ñ"),
        ("Nu", "Ν"), ("nu", "ν"), ("Oacute", "Ó"), ("oacute", "ó"), ("Ocirc", "Ô"), ("ocirc", "ô"),
        ("OElig", "Œ"), ("oelig", "œ"), ("Ograve", "Ò"), ("ograve", "ò"), ("oline", "‾"),
        ("Omega", "Ω"), ("omega", "ω"), ("Omicron", "Ο"), ("omicron", "ο"), ("oplus", "⊕"),
        ("or", "∨"), ("ordf", "ª"), ("ordm", "º"), ("Oslash", "Ø"), ("oslash", "ø"), ("Otilde", "Õ"),
        ("otilde", "õ"), ("otimes", "⊗"), ("Ouml", "Ö"), ("ouml", "ö"), ("para", "¶"), ("part", "∂"),
        ("permil", "‰"), ("perp", "⊥"), ("Phi", "Φ"), ("phi", "φ"), ("Pi", "Π"), ("pi", "π"),
        ("piv", "ϖ"), ("plusmn", "±"), ("pound", "£"), ("Prime", "″"), ("prime", "′"), ("prod", "∏"),
        ("prop", "∝"), ("Psi", "Ψ"), ("psi", "ψ"), ("QUOT", "\""), ("quot", "\""), ("radic", "√"),
        ("rang", "⟩"), ("raquo", "»"), ("rArr", "⇒"), ("rarr", "→"), ("rceil", "⌉"), ("rdquo", "”"),
        ("real", "ℜ"), ("REG", "®"), ("reg", "®"), ("rfloor", "⌋"), ("Rho", "Ρ"), ("rho", "ρ"),
        ("rlm", "\u{200f}"), ("rsaquo", "›"), ("rsquo", "’"), ("sbquo", "‚"), ("Scaron", "Š"),
        ("scaron", "š"), ("sdot", "⋅"), ("sect", "§"), ("shy", "\u{00ad}"), ("Sigma", "Σ"),
        ("sigma", "σ"), ("sigmaf", "ς"), ("sim", "∼"), ("spades", "♠"), ("sub", "⊂"), ("sube", "⊆"),
        ("sum", "∑"), ("sup", "⊃"), ("sup1", "¹"), ("sup2", "²"), ("sup3", "³"), ("supe", "⊇"),
        ("szlig", "ß"), ("Tau", "Τ"), ("tau", "τ"), ("there4", "∴"), ("Theta", "Θ"), ("theta", "θ"),
        ("thetasym", "ϑ"), ("thinsp", "\u{2009}"), ("THORN", "Þ"), ("thorn", "þ"),
        ("tilde", "\u{02dc}"), ("times", "×"), ("trade", "™"), ("Uacute", "Ú"), ("uacute", "ú"),
        ("uArr", "⇑"), ("uarr", "↑"), ("Ucirc", "Û"), ("ucirc", "û"), ("Ugrave", "Ù"), ("ugrave", "ù"),
        ("uml", "\u{00a8}"), ("upsih", "ϒ"), ("Upsilon", "Υ"), ("upsilon", "υ"), ("Uuml", "Ü"),
        ("uuml", "ü"), ("weierp", "℘"), ("Xi", "Ξ"), ("xi", "ξ"), ("Yacute", "Ý"), ("yacute", "ý"),
        ("yen", "¥"), ("Yuml", "Ÿ"), ("yuml", "ÿ"), ("Zeta", "Ζ"), ("zeta", "ζ"), ("zwj", "\u{200d}"),
        ("zwnj", "\u{200c}"),
    ];
}
