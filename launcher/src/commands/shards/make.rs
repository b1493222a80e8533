//! `clipfleet shards make`: a dataset of shards from the synthetic generator or from a
//! folder of images with a captions file.

use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, Context};
use clipfleet_dataloader::decode::{decode_rgb, DEFAULT_MAX_PIXELS};
use clipfleet_dataloader::shard_writer::{ShardFormat, ShardRecord, ShardWriter, ShardWriterOptions};
use clipfleet_dataloader::synthetic::{Split, SyntheticDataset};
use clipfleet_dataloader::webdataset::IMAGE_EXTENSIONS;
use image::codecs::jpeg::JpegEncoder;

use super::captions_file;
use crate::cli::{ShardFormatArg, ShardsMakeArgs};
use crate::commands::print_json;

pub(super) fn run(args: ShardsMakeArgs) -> anyhow::Result<()> {
    let format = match args.format {
        ShardFormatArg::Wds => ShardFormat::WebDataset,
        ShardFormatArg::Parquet => ShardFormat::Parquet,
    };
    if args.samples_per_shard == 0 {
        bail!("invalid value 0 for `--samples-per-shard`: allowed an integer >= 1");
    }
    let mut writer = ShardWriter::new(ShardWriterOptions {
        output: args.output.clone(),
        format,
        samples_per_shard: args.samples_per_shard,
        prefix: args.prefix.clone(),
    })
    .with_context(|| format!("creating {}", args.output.display()))?;
    let written = match (args.synthetic, &args.images_dir, &args.captions) {
        (Some(n), _, _) => write_synthetic(&mut writer, n, args.image_size, args.seed, args.jpeg_quality),
        (None, Some(dir), Some(captions)) => write_images_dir(&mut writer, dir, captions),
        _ => Err(anyhow::anyhow!("no input: pass --synthetic N, or --images-dir DIR with --captions FILE")),
    };
    if let Err(err) = written {
        // Refuse rather than leave part of a dataset: remove the shards already completed.
        let removed = writer.abort();
        return Err(err.context(format!(
            "nothing written to {} ({} completed shard(s) removed)",
            args.output.display(),
            removed.len()
        )));
    }
    let summary = writer.finish().with_context(|| format!("finishing {}", args.output.display()))?;
    if args.json {
        print_json(&serde_json::json!({
            "shards": summary.sizes.len(),
            "samples": summary.samples,
            "output": args.output,
        }))?;
    } else {
        println!(
            "wrote {} samples in {} {} shard(s) to {}",
            summary.samples,
            summary.sizes.len(),
            format.extension(),
            args.output.display()
        );
    }
    Ok(())
}

fn write_synthetic(writer: &mut ShardWriter, n: u64, image_size: u32, seed: u64, quality: u8) -> anyhow::Result<()> {
    if image_size == 0 {
        bail!("invalid value 0 for `--image-size`: allowed an integer >= 1");
    }
    let dataset = SyntheticDataset::new(image_size, seed);
    for index in 0..n {
        let sample = dataset.sample(Split::Train, index, None);
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), quality)
            .encode_image(&sample.image)
            .with_context(|| format!("encoding synthetic sample {index} as JPEG"))?;
        writer.write(ShardRecord {
            image: jpeg,
            image_ext: "jpg".to_string(),
            caption: sample.caption,
            width: sample.image.width(),
            height: sample.image.height(),
            label: Some(i64::from(sample.label)),
        })?;
    }
    Ok(())
}

fn write_images_dir(writer: &mut ShardWriter, dir: &Path, captions: &Path) -> anyhow::Result<()> {
    let rows = captions_file::read(captions)?;
    for row in rows {
        let at = || format!("{}:{}", captions.display(), row.line);
        let path = dir.join(&row.filepath);
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
        if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            bail!("{}: {} is not a jpg, jpeg, png or webp file", at(), path.display());
        }
        let image = std::fs::read(&path).with_context(|| format!("{}: reading image {}", at(), path.display()))?;
        // Decoded whole, not only its header: a truncated or corrupt file never reaches a shard.
        let decoded = decode_rgb(&image, &ext, None, DEFAULT_MAX_PIXELS)
            .map_err(|reason| anyhow::anyhow!("{}: image {} is unreadable ({reason})", at(), path.display()))?;
        let (width, height) = decoded.dimensions();
        writer
            .write(ShardRecord { image, image_ext: ext, caption: row.caption, width, height, label: None })
            .with_context(at)?;
    }
    Ok(())
}
