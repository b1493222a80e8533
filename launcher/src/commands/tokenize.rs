//! `clipfleet tokenize`: token ids for captions, for checking and scripting. OpenCLIP's BPE by
//! default; `--tokenizer` also takes a Hugging Face tokenizer.json.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context};
use clipfleet_dataloader::tokenizer::bpe::default_vocab_path;
use clipfleet_dataloader::tokenizer::{self, BpeTokenizer, Tokenizer};

use crate::cli::TokenizeArgs;

pub(crate) fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    if args.context_length < 2 {
        bail!("invalid value {} for `--context-length`: allowed an integer >= 2", args.context_length);
    }
    let tokenizer: Arc<dyn Tokenizer> = match &args.tokenizer {
        Some(path) => tokenizer::load(path).with_context(|| format!("loading {}", path.display()))?,
        None => {
            let Some(path) = args.vocab.clone().or_else(default_vocab_path) else {
                bail!(
                    "no tokenizer: pass --tokenizer PATH (tokenizer.json or bpe_simple_vocab_16e6.txt.gz) or \
                     --vocab PATH, or set CLIPFLEET_BPE_VOCAB (scripts/setup.sh --test fetches it into .cache/)"
                );
            };
            Arc::new(BpeTokenizer::from_file(&path).with_context(|| format!("loading {}", path.display()))?)
        }
    };
    let mut out = std::io::stdout().lock();
    for text in &args.texts {
        let ids = tokenizer.tokenize(text, args.context_length);
        serde_json::to_writer(&mut out, &ids)?;
        writeln!(out)?;
    }
    Ok(())
}
