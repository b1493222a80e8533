//! `clipfleet caption`: captions from a CoCa model, greedy or beam search.

use anyhow::{bail, Context};
use clipfleet_dataloader::batch::ImageBatch;
use clipfleet_dataloader::tokenizer::bpe::default_vocab_path;
use clipfleet_dataloader::tokenizer::word::WordTokenizer;
use clipfleet_dataloader::tokenizer::BpeTokenizer;
use clipfleet_trainer::data::images_to_tensor;
use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::model::coca::{Decoding, SpecialTokens};
use clipfleet_trainer::model::{resolve_model, Clip};
use serde::Serialize;

use crate::cli::CaptionArgs;
use crate::commands::embed::load_image;

/// Turns caption ids back into text.
enum Decoder {
    Bpe(Box<BpeTokenizer>),
    Words(WordTokenizer),
}

impl Decoder {
    fn for_vocab(vocab_size: i64, path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        match (vocab_size, path) {
            (_, Some(path)) => Ok(Decoder::Bpe(Box::new(BpeTokenizer::from_file(path)?))),
            (49408, None) => {
                let path = default_vocab_path().context(
                    "no BPE vocabulary: give --vocab bpe_simple_vocab_16e6.txt.gz (scripts/setup.sh fetches it into .cache/)",
                )?;
                Ok(Decoder::Bpe(Box::new(BpeTokenizer::from_file(&path)?)))
            }
            (512, None) => Ok(Decoder::Words(WordTokenizer::new())),
            (n, None) => bail!("no tokenizer for a vocabulary of {n} ids: give --vocab"),
        }
    }

    /// The caption text of one output row: the ids after the start token, up to the first end
    /// or padding token, as OpenCLIP's `decode(...).split("<end_of_text>")[0]`.
    fn caption(&self, ids: &[i64], t: SpecialTokens) -> String {
        let body: Vec<u32> = ids.iter().skip(1).take_while(|&&i| i != t.eot && i != t.pad).map(|&i| i as u32).collect();
        match self {
            Decoder::Bpe(bpe) => bpe.decode(&body).trim().to_string(),
            Decoder::Words(words) => body.iter().filter_map(|&i| words.decode_id(i)).collect::<Vec<_>>().join(" "),
        }
    }
}

#[derive(Serialize)]
struct CaptionLine<'a> {
    image: &'a str,
    ids: Vec<i64>,
    caption: String,
}

pub(crate) fn run(args: CaptionArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size >= 1, "invalid value 0 for `--batch-size`: allowed an integer >= 1");
    anyhow::ensure!(
        args.num_beam_groups >= 1
            && args.num_beams >= args.num_beam_groups
            && args.num_beams % args.num_beam_groups == 0,
        "--num-beams ({}) must be a multiple of --num-beam-groups ({})",
        args.num_beams,
        args.num_beam_groups
    );
    let device = resolve_device(args.device)?;
    let config = resolve_model(args.model.as_deref(), args.model_config.as_deref())?;
    if !config.is_coca() {
        bail!("invalid model for `caption`: allowed a CoCa (coca_ViT-B-32, coca_ViT-L-14, tiny-coca, or a config with multimodal_cfg)");
    }
    let mut model = Clip::new(&config, device)?;
    model.load_safetensors(&args.weights)?;
    let vocab = config.text_cfg.vocab_size;
    let decoder = Decoder::for_vocab(vocab, args.vocab.as_deref())?;
    let tokens = SpecialTokens { sot: vocab - 2, eot: vocab - 1, pad: 0 };
    let decoding =
        Decoding { seq_len: args.seq_len, min_seq_len: args.min_seq_len, fixed_output_length: false, tokens };
    let size = config.vision_cfg.image_size as u32;
    for paths in args.images.chunks(args.batch_size) {
        let images = paths.iter().map(|p| load_image(p, size)).collect::<anyhow::Result<Vec<_>>>()?;
        let batch = images_to_tensor(&ImageBatch::from_images(&images)?, device);
        let out = if args.beam {
            model.generate_beam(&batch, decoding, args.num_beams / args.num_beam_groups)?
        } else {
            model.generate_greedy(&batch, decoding)?
        };
        let rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(out.to_device(tch::Device::Cpu))?;
        for (path, ids) in paths.iter().zip(rows) {
            let caption = decoder.caption(&ids, tokens);
            let image = path.to_string_lossy();
            if args.json {
                super::print_json(&CaptionLine { image: &image, ids, caption })?;
            } else {
                println!("{image}\t{caption}");
            }
        }
    }
    Ok(())
}
