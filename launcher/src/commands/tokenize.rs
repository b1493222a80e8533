//! `clipfleet tokenize`: OpenCLIP's BPE ids for captions, for checking and scripting.

use std::io::Write;

use anyhow::{bail, Context};
use clipfleet_dataloader::tokenizer::bpe::default_vocab_path;
use clipfleet_dataloader::tokenizer::{BpeTokenizer, Tokenizer};

use crate::cli::TokenizeArgs;

pub(crate) fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    if args.context_length < 2 {
        bail!("invalid value {} for `--context-length`: allowed an integer >= 2", args.context_length);
    }
    let Some(path) = args.vocab.clone().or_else(default_vocab_path) else {
        bail!("no BPE vocabulary: pass --vocab PATH or set CLIPFLEET_BPE_VOCAB (scripts/setup.sh --test fetches it into .cache/)");
    };
    let tokenizer = BpeTokenizer::from_file(&path).with_context(|| format!("loading {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    for text in &args.texts {
        let ids = tokenizer.tokenize(text, args.context_length);
        serde_json::to_writer(&mut out, &ids)?;
        writeln!(out)?;
    }
    Ok(())
}
