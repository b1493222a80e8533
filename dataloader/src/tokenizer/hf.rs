//! Hugging Face `tokenizer.json` files, through the `tokenizers` crate, with OpenCLIP's
//! output convention.
//!
//! [`HfTokenizer`] runs the file's own pipeline (normalizer, pre-tokenizer, model) for the ids
//! of a text, exactly as `tokenizers.Tokenizer.encode(text, add_special_tokens=False)` does in
//! Python, and then wraps them as OpenCLIP does: `[sot] + ids + [eot]`, truncated with the last
//! id forced to `eot`, padded with 0 (see [`Tokenizer::tokenize`]). Truncation and padding
//! configured in the file are switched off: the context length is the model's. No OpenCLIP
//! cleaning (ftfy, HTML unescaping) is added: the file's normalizer is the cleaning.
//! `dataloader/tests/hf_tokenizer.rs` checks the ids against the Python `tokenizers` package.
//!
//! # Start and end tokens
//! They are looked for, in this order, and the first source that names both wins:
//! 1. by name in the vocabulary: `<|startoftext|>`/`<|endoftext|>` (Hugging Face's CLIP
//!    tokenizers), then `<start_of_text>`/`<end_of_text>` (OpenCLIP's);
//! 2. the post-processor: the one token it puts before a single sequence and the one after
//!    (`RobertaProcessing`/`BertProcessing`'s cls and sep, a `TemplateProcessing` such as
//!    `<s> $A </s>`), found by encoding a probe text with and without special tokens;
//! 3. `bos_token` and `eos_token` of a `tokenizer_config.json` beside the file (as
//!    `transformers` saves it).
//!
//! # The end-of-text token must have the largest id
//! The text tower pools the token at `argmax(token_ids)` (OpenCLIP's `text_global_pool`,
//! `trainer/src/model/text.rs`), which is the end-of-text token only when its id is larger
//! than every other id. A tokenizer whose end-of-text token is not the largest id (BERT's
//! `[SEP]` = 102, for example) is refused with [`DataError::Tokenizer`] rather than trained
//! with the wrong pooled token. The model's `text_cfg.vocab_size` must be at least
//! [`Tokenizer::vocab_size`].
//!
//! # Failures while encoding
//! [`HfTokenizer::try_encode`] returns the crate's error (a regex that gives up on
//! pathological input, for example). The infallible [`Tokenizer::encode`] returns no ids then,
//! so the caption becomes `[sot, eot]`, and counts it in [`HfTokenizer::encode_failures`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tokenizer::Tokenizer;
use crate::DataError;

/// Start/end token names looked up first, in order: Hugging Face's CLIP, then OpenCLIP's.
pub const SPECIAL_TOKEN_NAMES: [(&str, &str); 2] =
    [("<|startoftext|>", "<|endoftext|>"), ("<start_of_text>", "<end_of_text>")];

/// The file beside `tokenizer.json` whose `bos_token`/`eos_token` name the specials last.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Text encoded with and without special tokens to see what the post-processor adds.
const PROBE_TEXT: &str = "a";

/// A Hugging Face `tokenizer.json` with OpenCLIP's `[sot] + ids + [eot]` convention; see the
/// [module docs](self).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    sot: u32,
    eot: u32,
    sot_token: String,
    eot_token: String,
    vocab_size: usize,
    found_by: &'static str,
    source: PathBuf,
    failures: AtomicU64,
}

impl fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("sot", &(&self.sot_token, self.sot))
            .field("eot", &(&self.eot_token, self.eot))
            .field("found_by", &self.found_by)
            .finish_non_exhaustive()
    }
}

/// A start/end pair and the tokens' text.
struct Specials {
    sot: (String, u32),
    eot: (String, u32),
    found_by: &'static str,
}

impl HfTokenizer {
    /// Loads a `tokenizer.json` and finds its start and end tokens.
    ///
    /// # Errors
    /// [`DataError::Io`] if the file cannot be read, and [`DataError::Tokenizer`] (naming the
    /// file) if it does not parse, if no start/end pair is found, if both are the same token,
    /// or if the end-of-text token is not the largest id.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let fail = |reason: String| DataError::Tokenizer { path: path.to_path_buf(), reason };
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| fail(format!("not a Hugging Face tokenizer.json ({e})")))?;
        inner.with_truncation(None).map_err(|e| fail(format!("cannot switch its truncation off ({e})")))?;
        inner.with_padding(None);

        let vocab = inner.get_vocab(true);
        let Some((largest_token, largest)) = vocab.iter().max_by_key(|(_, id)| **id).map(|(t, id)| (t.clone(), *id))
        else {
            return Err(fail("the vocabulary is empty".to_string()));
        };
        let specials = find_specials(&inner, path)?.ok_or_else(|| {
            fail(format!(
                "cannot tell its start- and end-of-text tokens: none of {} is in the vocabulary, the \
                 post-processor does not add exactly one token before and one after a text, and no {} \
                 beside it names bos_token and eos_token",
                SPECIAL_TOKEN_NAMES.iter().map(|(s, e)| format!("{s}/{e}")).collect::<Vec<_>>().join(", "),
                TOKENIZER_CONFIG_FILE
            ))
        })?;
        let Specials { sot: (sot_token, sot), eot: (eot_token, eot), found_by } = specials;
        if sot == eot {
            return Err(fail(format!(
                "start and end of text are the same token {eot_token:?} (id {eot}, from {found_by}); \
                 OpenCLIP's argmax pooling needs a distinct end-of-text token with the largest id"
            )));
        }
        if eot != largest {
            return Err(fail(format!(
                "the end-of-text token {eot_token:?} (from {found_by}) has id {eot}, but {largest_token:?} has \
                 the larger id {largest}; the text tower pools at argmax(token ids) as OpenCLIP does, which \
                 needs the end-of-text token to have the largest id"
            )));
        }
        Ok(HfTokenizer {
            inner,
            sot,
            eot,
            sot_token,
            eot_token,
            vocab_size: largest as usize + 1,
            found_by,
            source: path.to_path_buf(),
            failures: AtomicU64::new(0),
        })
    }

    /// The ids of `text` from the file's pipeline, without start or end tokens (Python's
    /// `encode(text, add_special_tokens=False).ids`). Special tokens written in the text are
    /// still recognised, as they are in Python and in OpenCLIP.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the `tokenizers` pipeline fails on this text.
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.inner.encode_fast(text, false).map(|encoding| encoding.get_ids().to_vec()).map_err(|e| {
            DataError::Tokenizer { path: self.source.clone(), reason: format!("cannot encode {text:?}: {e}") }
        })
    }

    /// How many texts [`Tokenizer::encode`] could not encode (and returned no ids for).
    pub fn encode_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The start- and end-of-text tokens' text, e.g. `("<|startoftext|>", "<|endoftext|>")`.
    pub fn special_tokens(&self) -> (&str, &str) {
        (&self.sot_token, &self.eot_token)
    }

    /// Where the start and end tokens were found: `"vocabulary names"`, `"post-processor"` or
    /// `"tokenizer_config.json"`.
    pub fn specials_found_by(&self) -> &'static str {
        self.found_by
    }

    /// The file this tokenizer was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

impl Tokenizer for HfTokenizer {
    /// The largest id plus one (added tokens included).
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn sot_id(&self) -> u32 {
        self.sot
    }

    fn eot_id(&self) -> u32 {
        self.eot
    }

    /// [`HfTokenizer::try_encode`], with no ids (and a count in
    /// [`HfTokenizer::encode_failures`]) when it fails.
    fn encode(&self, text: &str) -> Vec<u32> {
        self.try_encode(text).unwrap_or_else(|_| {
            self.failures.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        })
    }
}

/// The start/end pair from the first source that names both; see the module docs.
fn find_specials(inner: &tokenizers::Tokenizer, path: &Path) -> Result<Option<Specials>, DataError> {
    for (sot, eot) in SPECIAL_TOKEN_NAMES {
        if let (Some(s), Some(e)) = (inner.token_to_id(sot), inner.token_to_id(eot)) {
            return Ok(Some(Specials {
                sot: (sot.to_string(), s),
                eot: (eot.to_string(), e),
                found_by: "vocabulary names",
            }));
        }
    }
    if let Some(specials) = from_post_processor(inner) {
        return Ok(Some(specials));
    }
    from_tokenizer_config(inner, path)
}

/// The single token the post-processor puts before a text and the single one after it.
fn from_post_processor(inner: &tokenizers::Tokenizer) -> Option<Specials> {
    let plain = inner.encode_fast(PROBE_TEXT, false).ok()?;
    let special = inner.encode_fast(PROBE_TEXT, true).ok()?;
    let (plain, special) = (plain.get_ids(), special.get_ids());
    if special.len() != plain.len() + 2 || special[1..special.len() - 1] != *plain {
        return None;
    }
    let (sot, eot) = (*special.first()?, *special.last()?);
    let name = |id: u32| inner.id_to_token(id).unwrap_or_default();
    Some(Specials { sot: (name(sot), sot), eot: (name(eot), eot), found_by: "post-processor" })
}

/// `bos_token` and `eos_token` of a `tokenizer_config.json` beside `path`, when it exists.
fn from_tokenizer_config(inner: &tokenizers::Tokenizer, path: &Path) -> Result<Option<Specials>, DataError> {
    let config_path = path.with_file_name(TOKENIZER_CONFIG_FILE);
    if !config_path.is_file() {
        return Ok(None);
    }
    let fail = |reason: String| DataError::Tokenizer { path: config_path.clone(), reason };
    let text =
        std::fs::read_to_string(&config_path).map_err(|source| DataError::Io { path: config_path.clone(), source })?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(format!("not JSON ({e})")))?;
    // `transformers` writes a token either as a string or as an AddedToken object.
    let token = |key: &str| -> Option<String> {
        let value = config.get(key)?;
        value.as_str().or_else(|| value.get("content").and_then(|c| c.as_str())).map(str::to_string)
    };
    let (Some(bos), Some(eos)) = (token("bos_token"), token("eos_token")) else {
        return Ok(None);
    };
    let id = |name: &str, key: &str| {
        inner
            .token_to_id(name)
            .ok_or_else(|| fail(format!("its {key} {name:?} is not in the vocabulary of {}", path.display())))
    };
    let (sot, eot) = (id(&bos, "bos_token")?, id(&eos, "eos_token")?);
    Ok(Some(Specials { sot: (bos, sot), eot: (eos, eot), found_by: TOKENIZER_CONFIG_FILE }))
}
