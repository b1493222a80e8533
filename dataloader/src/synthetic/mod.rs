//! The built-in synthetic image–caption dataset.
//!
//! Each image shows one saturated object on a muted background. Its class is
//! colour × shape: 6 colours (red, green, blue, yellow, purple, orange) times
//! 5 shapes (circle, square, triangle, cross, star), 30 classes, with label
//! `colour * 5 + shape`. Size (small, large), position (a corner or the
//! centre), exact placement, rotation and background vary per sample, and the
//! caption describes them with one of several templates.
//!
//! Everything is a pure function of (seed, split, index), and augmentation of
//! (seed, split, index, epoch), so any sample can be regenerated anywhere, by
//! any thread, in any order. It is the default data of `clipfleet train`: a
//! tiny CLIP learns zero-shot classification of it in minutes on a CPU.
//!
//! [`photo`] makes photo-like JPEGs and web-style captions for data-pipeline benchmarks.

pub mod photo;
mod render;
pub mod stream;

use image::RgbImage;

use crate::batch::ImageBatch;
use crate::rng::Rng;
use crate::transform::RandomResizedCrop;
use render::{Scene, COLOURS, POSITIONS, SHAPES, SIZES};

/// Number of classes: 6 colours × 5 shapes.
pub const NUM_CLASSES: usize = 30;

/// Key word that separates the augmentation stream from the content stream.
const AUGMENT_STREAM: u64 = 0x6175_676d_656e_7421;

/// Caption templates; `{s}` size, `{c}` colour, `{h}` shape, `{p}` position,
/// `{b}` background word.
const CAPTION_TEMPLATES: [&str; 6] = [
    "a {s} {c} {h} in the {p}.",
    "a photo of a {c} {h}, {s}, at the {p}.",
    "{c} {h} on a {b} background.",
    "a {c} {h}.",
    "there is a {s} {c} {h} in the {p} of the image.",
    "a picture of a {s} {c} {h} on a {b} background.",
];

/// Prompt templates for zero-shot classification; `{}` is a class name.
const ZERO_SHOT_TEMPLATES: [&str; 4] =
    ["a photo of a {}.", "a {} in the image.", "a rendering of a {}.", "a picture of a {}."];

/// The class names in label order: "red circle", "red square", ...
pub fn class_names() -> Vec<String> {
    COLOURS.iter().flat_map(|(colour, _)| SHAPES.iter().map(move |shape| format!("{colour} {shape}"))).collect()
}

/// Zero-shot prompt templates; each contains one `{}` for the class name.
pub fn zero_shot_templates() -> &'static [&'static str] {
    &ZERO_SHOT_TEMPLATES
}

/// Which stream of samples to draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training stream.
    Train,
    /// The held-out validation stream (a different key, so different samples).
    Val,
}

impl Split {
    fn key(self) -> u64 {
        match self {
            Split::Train => 0x7472_6169_6e00_0001,
            Split::Val => 0x7661_6c00_0000_0002,
        }
    }
}

/// One synthetic image with its caption and class label.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image, `image_size`×`image_size` RGB.
    pub image: RgbImage,
    /// A lowercase caption from the [`WordTokenizer`](crate::tokenizer::word::WordTokenizer)
    /// vocabulary.
    pub caption: String,
    /// The class, `colour * 5 + shape`, below [`NUM_CLASSES`].
    pub label: u32,
}

/// The synthetic dataset: an unbounded, deterministic stream per split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticDataset {
    image_size: u32,
    seed: u64,
}

impl SyntheticDataset {
    /// The dataset of `image_size`×`image_size` images for `seed`.
    pub fn new(image_size: u32, seed: u64) -> SyntheticDataset {
        SyntheticDataset { image_size, seed }
    }

    /// Side of the square images, in pixels.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    /// Sample `index` of `split`. With `augment = Some(epoch)` the image goes
    /// through OpenCLIP's training crop (`RandomResizedCrop`, scale 0.9–1.0)
    /// keyed by (seed, split, index, epoch); with `None` it is rendered as is.
    pub fn sample(&self, split: Split, index: u64, augment: Option<u64>) -> Sample {
        let mut rng = Rng::from_key(&[self.seed, split.key(), index]);
        let label = rng.below(NUM_CLASSES as u64) as usize;
        let scene = Scene::random(label, &mut rng);
        let caption = caption(&scene, &mut rng);
        let mut image = scene.render(self.image_size);
        if let Some(epoch) = augment {
            let mut aug = Rng::from_key(&[self.seed, split.key(), index, epoch, AUGMENT_STREAM]);
            image = RandomResizedCrop::openclip(self.image_size).apply(&image, &mut aug);
        }
        Sample { image, caption, label: label as u32 }
    }

    /// The samples at `indices` as one NHWC uint8 batch, their captions and
    /// their labels.
    pub fn batch(&self, split: Split, indices: &[u64], augment: Option<u64>) -> (ImageBatch, Vec<String>, Vec<u32>) {
        let side = self.image_size as usize;
        let mut data = Vec::with_capacity(indices.len() * side * side * 3);
        let mut captions = Vec::with_capacity(indices.len());
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            let sample = self.sample(split, index, augment);
            data.extend_from_slice(sample.image.as_raw());
            captions.push(sample.caption);
            labels.push(sample.label);
        }
        let batch = ImageBatch { data, batch: indices.len(), height: side, width: side };
        (batch, captions, labels)
    }
}

/// Fills a caption template chosen by `rng` with the scene's words.
fn caption(scene: &Scene, rng: &mut Rng) -> String {
    let template = CAPTION_TEMPLATES[rng.below(CAPTION_TEMPLATES.len() as u64) as usize];
    template
        .replace("{s}", SIZES[scene.size])
        .replace("{c}", COLOURS[scene.colour].0)
        .replace("{h}", SHAPES[scene.shape])
        .replace("{p}", POSITIONS[scene.position])
        .replace("{b}", scene.background_word())
}

#[cfg(test)]
mod tests;
