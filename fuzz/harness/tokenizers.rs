//! Arbitrary text (bytes decoded as lossy UTF-8) through every tokenizer of
//! `clipfleet_dataloader::tokenizer`, with OpenCLIP's context length of 77:
//!
//! - `BpeTokenizer` (OpenCLIP's `SimpleTokenizer` port, ftfy-style cleaning included), loaded
//!   from `bpe::default_vocab_path()`: `$CLIPFLEET_BPE_VOCAB`, `<repo>/.cache/` or the
//!   reference `.venv` (`scripts/setup.sh` puts it there; the file is not committed);
//! - `WordTokenizer` (the synthetic dataset's built-in vocabulary);
//! - `HfTokenizer` over the Hugging Face `tokenizer.json` test fixtures of the dataloader
//!   (`dataloader/tests/fixtures/hf/`: a CLIP BPE, a GPT-2 template one, one with a
//!   `tokenizer_config.json`).
//!
//! The asserted invariants are the ones `Tokenizer`'s docs state: `tokenize` returns exactly
//! `context_length` ids, `[sot] + encode(text) + [eot]` truncated with the last id forced to
//! `eot`, then padded with 0; every id is below `vocab_size()`; `eot` is the largest id.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clipfleet_dataloader::tokenizer::bpe::{default_vocab_path, BpeTokenizer};
use clipfleet_dataloader::tokenizer::word::WordTokenizer;
use clipfleet_dataloader::tokenizer::{HfTokenizer, Tokenizer};

const CONTEXT_LENGTH: usize = 77;

struct All {
    bpe: BpeTokenizer,
    word: WordTokenizer,
    hf: Vec<HfTokenizer>,
}

fn tokenizers() -> &'static All {
    static ALL: OnceLock<All> = OnceLock::new();
    ALL.get_or_init(|| {
        let vocab = default_vocab_path().unwrap_or_else(|| {
            panic!("no bpe_simple_vocab_16e6.txt.gz: set CLIPFLEET_BPE_VOCAB or run scripts/setup.sh")
        });
        let bpe = BpeTokenizer::from_file(&vocab).unwrap_or_else(|e| panic!("loading {}: {e}", vocab.display()));
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataloader/tests/fixtures/hf");
        let files: [PathBuf; 3] = [
            fixtures.join("clip_bpe.json"),
            fixtures.join("gpt2_template.json"),
            fixtures.join("with_config/tokenizer.json"),
        ];
        let hf = files
            .iter()
            .map(|f| HfTokenizer::from_file(f).unwrap_or_else(|e| panic!("loading {}: {e}", f.display())))
            .collect();
        All { bpe, word: WordTokenizer::new(), hf }
    })
}

fn check(tok: &dyn Tokenizer, text: &str) {
    let vocab = tok.vocab_size();
    let (sot, eot) = (i64::from(tok.sot_id()), i64::from(tok.eot_id()));
    assert!(eot == vocab as i64 - 1, "{tok:?}: eot {eot} is not the largest id of {vocab}");
    let encoded = tok.encode(text);
    assert!(encoded.iter().all(|&id| (id as usize) < vocab), "{tok:?}: an id of encode() is >= {vocab}");
    let ids = tok.tokenize(text, CONTEXT_LENGTH);
    assert_eq!(ids.len(), CONTEXT_LENGTH, "{tok:?}: tokenize() length");
    let used = (encoded.len() + 2).min(CONTEXT_LENGTH);
    assert_eq!(ids[0], sot, "{tok:?}: first id is not sot");
    assert_eq!(ids[used - 1], eot, "{tok:?}: last used id is not eot");
    assert_eq!(
        &ids[1..used - 1],
        &encoded[..used - 2].iter().map(|&i| i64::from(i)).collect::<Vec<_>>()[..],
        "{tok:?}: tokenize() is not [sot] + encode() + [eot]"
    );
    assert!(ids[used..].iter().all(|&id| id == 0), "{tok:?}: padding is not 0");
    assert!(ids.iter().all(|&id| (0..vocab as i64).contains(&id)), "{tok:?}: id out of range");
}

/// Runs one input; panics on a finding.
pub(crate) fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let all = tokenizers();
    check(&all.bpe, &text);
    let _ = all.bpe.clean(&text);
    let _ = all.bpe.decode(&all.bpe.encode(&text));
    check(&all.word, &text);
    let _ = all.word.unknown_count(&text);
    for hf in &all.hf {
        check(hf, &text);
    }
}
