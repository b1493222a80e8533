//! Zero-shot classification on labelled images, as in the CLIP paper and OpenCLIP's
//! `build_zero_shot_classifier`: each class's prompts (`"a photo of a {}."` with the class
//! name) are embedded and L2-normalised, averaged, and renormalised; an image is classified by
//! its normalised embedding's cosine with each class row.
//!
//! The labelled images come from:
//! - an image folder in torchvision's `ImageFolder` layout (one subfolder per class; classes in
//!   sorted name order; images in the order `ImageFolder` lists them);
//! - a CSV file with a header naming the columns `path` and `label` (paths relative to the CSV's
//!   folder; labels are class names, or indices into `--classnames`);
//! - shards (`.tar`, `.parquet`, any store) whose samples carry an integer `cls` label, with
//!   `--classnames`.
//!
//! Images get OpenCLIP's evaluation transform: a full-size decode, a bicubic resize of the short
//! side, a centre crop. An image that cannot be read is skipped, counted and logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clipfleet_dataloader::batch::ImageBatch;
use clipfleet_dataloader::csv_dataset::parse_records;
use clipfleet_dataloader::decode::{decode_rgb, DEFAULT_MAX_PIXELS};
use clipfleet_dataloader::loader::{DataSpec, Loader, LoaderConfig};
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::tokenizer::Tokenizer;
use clipfleet_dataloader::transform::resize_short_side_center_crop;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::images_to_tensor;
use crate::error::{ConfigError, Result, TrainError};
use crate::model::{l2_normalize, Clip};

/// The 80 ImageNet prompt templates of the CLIP paper (OpenCLIP's `OPENAI_IMAGENET_TEMPLATES`).
const OPENAI_TEMPLATES: &str = include_str!("templates/openai.txt");
/// OpenCLIP's `SIMPLE_IMAGENET_TEMPLATES`.
const SIMPLE_TEMPLATES: &str = include_str!("templates/simple.txt");

/// Image extensions `ImageFolder` lists (lowercase).
const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// What a zero-shot evaluation reports. Accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZeroShotReport {
    /// Top-1 accuracy.
    pub zero_shot_top1: f64,
    /// Top-5 accuracy (top-`classes` with fewer than 5 classes).
    pub zero_shot_top5: f64,
    /// The mean over classes of each class's top-1 recall (classes without images left out).
    pub zero_shot_mean_per_class_recall: f64,
    /// Images classified.
    pub num_images: i64,
    /// Classes.
    pub num_classes: i64,
    /// Images that could not be read (skipped, and logged).
    pub skipped: i64,
}

impl std::fmt::Display for ZeroShotReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "zero-shot top-1 {:.2}% top-5 {:.2}% mean per-class recall {:.2}% over {} images of {} classes (chance {:.2}%)",
            100.0 * self.zero_shot_top1,
            100.0 * self.zero_shot_top5,
            100.0 * self.zero_shot_mean_per_class_recall,
            self.num_images,
            self.num_classes,
            100.0 / self.num_classes.max(1) as f64
        )?;
        if self.skipped > 0 {
            write!(f, "; {} unreadable images skipped", self.skipped)?;
        }
        Ok(())
    }
}

/// What to classify and how: the `--zero-shot`, `--classnames` and `--templates` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZeroShotSpec {
    /// An image folder, a CSV file, or shard URLs.
    pub data: String,
    /// A file with one class name per line.
    pub classnames: Option<PathBuf>,
    /// `openai`, `simple`, or a file with one template per line, each with `{}`.
    pub templates: String,
}

/// The prompt templates of `spec`: `openai`, `simple`, or a file of one template per line.
///
/// # Errors
/// [`ConfigError`] naming `key` when the file cannot be read, holds no template, or a line has
/// no `{}`.
pub fn templates(spec: &str, key: &str) -> std::result::Result<Vec<String>, ConfigError> {
    let text = match spec {
        "openai" => OPENAI_TEMPLATES.to_owned(),
        "simple" => SIMPLE_TEMPLATES.to_owned(),
        path => std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(key, path, format!("openai, simple, or a readable file of templates ({e})"))
        })?,
    };
    let lines: Vec<String> =
        text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).map(String::from).collect();
    if lines.is_empty() {
        return Err(ConfigError::invalid(key, spec, "openai, simple, or a file with one template per line"));
    }
    if let Some(bad) = lines.iter().find(|l| !l.contains("{}")) {
        return Err(ConfigError::invalid(
            key,
            spec,
            format!("templates that each hold {{}} (this one does not: {bad:?})"),
        ));
    }
    Ok(lines)
}

/// One labelled image file.
#[derive(Debug, Clone)]
struct LabelledFile {
    path: PathBuf,
    /// The path as reported: relative to the folder or as the CSV gives it.
    shown: String,
    label: usize,
}

/// Labelled images, resolved.
#[derive(Debug)]
enum Items {
    Files(Vec<LabelledFile>),
    Shards(String),
}

/// A labelled set: its class names and its images.
#[derive(Debug)]
pub struct LabelledSet {
    /// Class names, by label index.
    pub classnames: Vec<String>,
    items: Items,
}

impl LabelledSet {
    /// Opens `spec.data` (see the [module docs](self)); `key` and `names_key` name the data
    /// and class-name settings in errors.
    ///
    /// # Errors
    /// [`ConfigError`] naming `key` or `names_key` for an empty folder, a bad CSV, a class-name
    /// file that does not match, or shards without class names.
    pub fn open(spec: &ZeroShotSpec, key: &str, names_key: &str) -> Result<LabelledSet> {
        let names = match &spec.classnames {
            Some(path) => Some(read_classnames(path, names_key)?),
            None => None,
        };
        let path = Path::new(&spec.data);
        if path.is_dir() {
            return image_folder(path, names, key, names_key);
        }
        let lower = spec.data.to_ascii_lowercase();
        if path.is_file() && (lower.ends_with(".csv") || lower.ends_with(".tsv")) {
            return csv_file(path, names, key, names_key);
        }
        let Some(classnames) = names else {
            return Err(ConfigError::invalid(
                names_key,
                "unset",
                format!("a file of class names, one per line, for the `cls` labels of the shards {:?} (an image folder or CSV needs none)", spec.data),
            )
            .into());
        };
        Ok(LabelledSet { classnames, items: Items::Shards(spec.data.clone()) })
    }
}

fn read_classnames(path: &Path, key: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, path.display(), format!("a readable file of class names ({e})")))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Err(ConfigError::invalid(key, path.display(), "a file with one class name per line").into());
    }
    Ok(names)
}

/// torchvision's `ImageFolder`: classes are the sorted subfolder names; a class's images are
/// the files with an image extension under its folder, walked as `sorted(os.walk(...))` then
/// sorted file names.
fn image_folder(dir: &Path, names: Option<Vec<String>>, key: &str, names_key: &str) -> Result<LabelledSet> {
    let read_dir = |d: &Path| {
        std::fs::read_dir(d)
            .map_err(|e| ConfigError::invalid(key, d.display(), format!("a readable image folder ({e})")))
    };
    let mut classes: Vec<String> = Vec::new();
    for entry in read_dir(dir)? {
        let entry = entry.map_err(|e| ConfigError::invalid(key, dir.display(), e.to_string()))?;
        if entry.path().is_dir() {
            classes.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(ConfigError::invalid(
            key,
            dir.display(),
            "a folder with one subfolder of images per class, a CSV file, or shard URLs",
        )
        .into());
    }
    let classnames = match names {
        Some(names) if names.len() != classes.len() => {
            return Err(ConfigError::invalid(
                names_key,
                format!("{} names", names.len()),
                format!("{} names, one per class folder in sorted order", classes.len()),
            )
            .into())
        }
        Some(names) => names,
        None => classes.clone(),
    };
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        // Every folder under the class, by path (what sorting os.walk's tuples does).
        let mut folders = vec![dir.join(class)];
        let mut i = 0;
        while i < folders.len() {
            for entry in read_dir(&folders[i].clone())? {
                let entry = entry.map_err(|e| ConfigError::invalid(key, dir.display(), e.to_string()))?;
                if entry.path().is_dir() {
                    folders.push(entry.path());
                }
            }
            i += 1;
        }
        folders.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
        let before = files.len();
        for folder in &folders {
            let mut names: Vec<PathBuf> = read_dir(folder)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && has_image_extension(p))
                .collect();
            names.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
            for path in names {
                let shown = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
                files.push(LabelledFile { path, shown, label });
            }
        }
        if files.len() == before {
            return Err(ConfigError::invalid(
                key,
                dir.join(class).display(),
                format!("a class folder with images ({})", IMAGE_EXTENSIONS.join(", ")),
            )
            .into());
        }
    }
    Ok(LabelledSet { classnames, items: Items::Files(files) })
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A CSV (or TSV) with a header that names `path` and `label`.
fn csv_file(file: &Path, names: Option<Vec<String>>, key: &str, names_key: &str) -> Result<LabelledSet> {
    let bad = |why: String| TrainError::from(ConfigError::invalid(key, file.display(), why));
    let text = std::fs::read_to_string(file).map_err(|e| bad(format!("a readable CSV file ({e})")))?;
    let sep = if file.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv")) { '\t' } else { ',' };
    let mut lines = parse_records(&text, sep).into_iter();
    let header = lines.next().unwrap_or_default();
    let column = |name: &str| header.iter().position(|h| h.trim() == name);
    let (Some(path_col), Some(label_col)) = (column("path"), column("label")) else {
        return Err(bad(format!("a CSV whose header names the columns `path` and `label` (found {header:?})")));
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for (n, fields) in lines.enumerate() {
        let (Some(path), Some(label)) = (fields.get(path_col), fields.get(label_col)) else {
            return Err(bad(format!("row {} with both a path and a label", n + 2)));
        };
        rows.push((path.clone(), label.trim().to_owned()));
    }
    if rows.is_empty() {
        return Err(bad("a CSV with at least one row".into()));
    }
    let indices = names.is_some() && rows.iter().all(|(_, l)| l.parse::<usize>().is_ok());
    let classnames = match names {
        Some(names) => names,
        None => {
            let mut unique: Vec<String> = rows.iter().map(|(_, l)| l.clone()).collect();
            unique.sort();
            unique.dedup();
            unique
        }
    };
    let by_name: BTreeMap<&str, usize> = classnames.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut files = Vec::with_capacity(rows.len());
    for (path, label) in &rows {
        let index = if indices {
            label.parse::<usize>().ok().filter(|&i| i < classnames.len())
        } else {
            by_name.get(label.as_str()).copied()
        };
        let Some(label) = index else {
            return Err(ConfigError::invalid(
                names_key,
                label,
                format!("labels that are class names of the file, or indices below {}", classnames.len()),
            )
            .into());
        };
        let p = Path::new(path);
        let resolved = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        files.push(LabelledFile { path: resolved, shown: path.clone(), label });
    }
    Ok(LabelledSet { classnames, items: Items::Files(files) })
}

/// The zero-shot classifier: one unit row per class, the renormalised mean of the class's
/// normalised prompt embeddings (OpenCLIP's `build_zero_shot_classifier`).
///
/// # Shapes
/// → [classes, embed_dim] float32, on the model's device.
pub fn build_classifier(
    model: &Clip,
    tokenizer: &dyn Tokenizer,
    classnames: &[String],
    templates: &[String],
) -> Tensor {
    let _eval = model.eval_mode();
    let ctx = model.config().text_cfg.context_length as usize;
    tch::no_grad(|| {
        let rows: Vec<Tensor> = classnames
            .iter()
            .map(|name| {
                let prompts: Vec<String> = templates.iter().map(|t| t.replace("{}", name)).collect();
                let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
                let tokens = model.text_input(&tokenizer.tokenize_batch(&refs, ctx));
                let emb = l2_normalize(&model.encode_text(&tokens)).to_kind(Kind::Float);
                l2_normalize(&emb.mean_dim(0, false, Kind::Float))
            })
            .collect();
        Tensor::stack(&rows, 0)
    })
}

/// One prediction, as `--predictions` writes it (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    /// The image: its path (relative to the folder, or as the CSV gives it), or its shard key.
    pub path: String,
    /// Its class name.
    pub label: String,
    /// The five best class names, best first.
    pub top5: Vec<String>,
}

/// Classifies every image of `set` with `model`, `batch_size` images at a time, and writes
/// one [`Prediction`] per image to `predictions` when given (atomically, as JSON lines).
///
/// # Errors
/// [`TrainError::TooFewEvalPairs`] when no image could be read; the data pipeline's errors for
/// shards; I/O errors writing `predictions`.
pub fn evaluate_zero_shot(
    model: &Clip,
    tokenizer: &dyn Tokenizer,
    set: &LabelledSet,
    templates: &[String],
    batch_size: usize,
    predictions: Option<&Path>,
) -> Result<ZeroShotReport> {
    let _eval = model.eval_mode();
    let classifier = build_classifier(model, tokenizer, &set.classnames, templates);
    let classes = set.classnames.len() as i64;
    let k = classes.min(5);
    let size = model.config().vision_cfg.image_size as u32;
    let mut top = Vec::new();
    let mut labels = Vec::new();
    let mut shown = Vec::new();
    let mut skipped = 0i64;
    let classify = |batch: &ImageBatch| {
        tch::no_grad(|| {
            let emb = l2_normalize(&model.encode_image(&images_to_tensor(batch, model.device()))).to_kind(Kind::Float);
            let logits = emb.matmul(&classifier.tr()) * 100.0;
            logits.topk(k, 1, true, true).1.to_device(tch::Device::Cpu)
        })
    };
    match &set.items {
        Items::Files(files) => {
            for chunk in files.chunks(batch_size.max(1)) {
                let loaded = load_images(chunk, size);
                let mut images = Vec::new();
                for (file, image) in chunk.iter().zip(loaded) {
                    match image {
                        Ok(image) => {
                            images.push(image);
                            labels.push(file.label as i64);
                            shown.push(file.shown.clone());
                        }
                        Err(e) => {
                            skipped += 1;
                            tracing::warn!(path = %file.path.display(), "skipped an unreadable image: {e}");
                        }
                    }
                }
                if !images.is_empty() {
                    top.push(classify(&ImageBatch::from_images(&images)?));
                }
            }
        }
        Items::Shards(urls) => {
            let spec = DataSpec::new(urls.clone());
            let ctx = model.config().text_cfg.context_length as usize;
            let cfg = LoaderConfig::evaluation(&spec, batch_size.max(1), size, ctx)?;
            let store = Arc::new(ShardStore::new(ShardStoreOptions::default())?);
            let mut loader =
                Loader::new(cfg, store, Arc::new(clipfleet_dataloader::tokenizer::word::WordTokenizer::new()), None)?;
            while let Some(batch) = loader.next_batch()? {
                let mut keep = Vec::new();
                for (i, (label, key)) in batch.labels.iter().zip(&batch.keys).enumerate() {
                    match label.filter(|l| (0..classes).contains(l)) {
                        Some(l) => {
                            keep.push(i as i64);
                            labels.push(l);
                            shown.push(key.clone());
                        }
                        None => {
                            skipped += 1;
                            tracing::warn!(key = %key, label = ?label, classes, "skipped a sample without a `cls` label in 0..classes");
                        }
                    }
                }
                if keep.is_empty() {
                    continue;
                }
                let t = classify(&batch.images);
                top.push(t.index_select(0, &Tensor::from_slice(&keep)));
            }
            skipped += loader.skips().total() as i64;
        }
    }
    if labels.is_empty() {
        return Err(TrainError::TooFewEvalPairs { pairs: 0 });
    }
    let top = Tensor::cat(&top, 0);
    let top: Vec<Vec<i64>> =
        (0..labels.len() as i64).map(|i| Vec::<i64>::try_from(top.get(i)).unwrap_or_default()).collect();
    let mut hits1 = 0usize;
    let mut hits5 = 0usize;
    let mut per_class = vec![(0usize, 0usize); set.classnames.len()];
    for (row, &label) in top.iter().zip(&labels) {
        let first = row.first() == Some(&label);
        hits1 += usize::from(first);
        hits5 += usize::from(row.contains(&label));
        let c = &mut per_class[label as usize];
        c.0 += usize::from(first);
        c.1 += 1;
    }
    if let Some(path) = predictions {
        let tmp = path.with_extension("jsonl.tmp");
        let write = || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for ((row, &label), path) in top.iter().zip(&labels).zip(&shown) {
                let p = Prediction {
                    path: path.clone(),
                    label: set.classnames[label as usize].clone(),
                    top5: row.iter().map(|&c| set.classnames[c as usize].clone()).collect(),
                };
                serde_json::to_writer(&mut out, &p)?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    }
    let n = labels.len() as f64;
    let recalls: Vec<f64> = per_class.iter().filter(|c| c.1 > 0).map(|c| c.0 as f64 / c.1 as f64).collect();
    Ok(ZeroShotReport {
        zero_shot_top1: hits1 as f64 / n,
        zero_shot_top5: hits5 as f64 / n,
        zero_shot_mean_per_class_recall: recalls.iter().sum::<f64>() / recalls.len().max(1) as f64,
        num_images: labels.len() as i64,
        num_classes: classes,
        skipped,
    })
}

/// Reads, decodes (full size, as PIL) and transforms `files`, on all cores.
fn load_images(files: &[LabelledFile], size: u32) -> Vec<std::result::Result<image::RgbImage, String>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(files.len().max(1));
    let per = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per.max(1))
            .map(|chunk| scope.spawn(move || chunk.iter().map(|f| load_image(&f.path, size)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

fn load_image(path: &Path, size: u32) -> std::result::Result<image::RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let image = decode_rgb(&bytes, &ext, None, DEFAULT_MAX_PIXELS).map_err(|r| r.to_string())?;
    Ok(resize_short_side_center_crop(&image, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_and_missing_templates() {
        assert_eq!(templates("openai", "t").expect("openai").len(), 80);
        assert_eq!(templates("simple", "t").expect("simple").len(), 7);
        assert!(templates("/nonexistent/templates.txt", "templates").unwrap_err().to_string().contains("templates"));
    }
}
