//! `clipfleet embed`: image and caption embeddings for retrieval indexes.

use anyhow::{bail, Context};
use clipfleet_dataloader::batch::ImageBatch;
use clipfleet_dataloader::decode::{decode_rgb, DEFAULT_MAX_PIXELS};
use clipfleet_dataloader::skip::SkipReason;
use clipfleet_dataloader::transform::resize_short_side_center_crop;
use clipfleet_trainer::data::tokenizer_for;
use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::embed::{embed_images, embed_texts};
use clipfleet_trainer::model::{resolve_model, Clip};
use tch::Tensor;

use crate::cli::EmbedArgs;

/// Reads and decodes an image at full size, as PIL does (libjpeg-turbo for JPEG), refusing one
/// whose header announces more than the decompression-bomb limit, then OpenCLIP's eval crop.
pub(crate) fn load_image(path: &std::path::Path, size: u32) -> anyhow::Result<image::RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let img = decode_rgb(&bytes, &ext, None, DEFAULT_MAX_PIXELS).map_err(|reason| match reason {
        SkipReason::OversizedImage => anyhow::anyhow!(
            "image {} has more than {DEFAULT_MAX_PIXELS} pixels (the decompression-bomb limit): refused",
            path.display()
        ),
        _ => anyhow::anyhow!("cannot decode image {} (JPEG, PNG and WebP are supported)", path.display()),
    })?;
    Ok(resize_short_side_center_crop(&img, size))
}

pub(crate) fn run(args: EmbedArgs) -> anyhow::Result<()> {
    if args.images.is_empty() && args.texts.is_none() {
        bail!("nothing to embed: give --images FILE... and/or --texts FILE");
    }
    if args.batch_size == 0 {
        bail!("invalid value 0 for `--batch-size`: allowed an integer >= 1");
    }
    let device = resolve_device(args.device)?;
    let config = resolve_model(args.model.as_deref(), args.model_config.as_deref())?;
    let mut model = Clip::new(&config, device)?;
    model.load_safetensors(&args.weights)?;
    let mut outputs: Vec<(String, Tensor)> = Vec::new();

    if !args.images.is_empty() {
        let size = config.vision_cfg.image_size as u32;
        let batches = args.images.chunks(args.batch_size).map(|paths| -> anyhow::Result<ImageBatch> {
            let images = paths.iter().map(|p| load_image(p, size)).collect::<anyhow::Result<Vec<_>>>()?;
            Ok(ImageBatch::from_images(&images)?)
        });
        outputs.push(("image_embeddings".into(), embed_images(&model, batches)?));
    }
    if let Some(path) = &args.texts {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read captions from {}", path.display()))?;
        let captions: Vec<&str> = text.lines().collect();
        if captions.is_empty() {
            bail!("{} holds no captions (one per line expected)", path.display());
        }
        let tokenizer = tokenizer_for(&config, args.vocab.as_deref())?;
        outputs.push(("text_embeddings".into(), embed_texts(&model, tokenizer.as_ref(), &captions, args.batch_size)));
    }
    let tmp = args.output.with_extension("safetensors.tmp");
    Tensor::write_safetensors(&outputs, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.output).with_context(|| format!("cannot write {}", args.output.display()))?;
    for (name, t) in &outputs {
        tracing::info!(tensor = name, shape = ?t.size(), output = %args.output.display(), "embedded");
    }
    Ok(())
}
