//! Photo-like JPEGs and web-style captions for data-pipeline benchmarks.
//!
//! JPEG decoding time depends on entropy: flat shapes decode far faster than photos. These
//! images mix what makes photos cost what they cost: a smooth background gradient, a few
//! dozen soft-edged shaded shapes, a grain texture (2×2 blocks) and per-pixel noise. At
//! quality 90 with 4:2:0 chroma subsampling (Pillow's default) they compress to about
//! 2–3 bits per pixel, like photos, and like the images of
//! `tests/fixtures/wds/bench_pillow_decode.py`. Captions are one to three sentences of
//! about 15–50 words from varied word lists, as alt texts in web-crawled datasets are.
//!
//! Everything is a pure function of the [`Rng`] handed in.

use image::RgbImage;
use turbojpeg::{Compressor, Image, PixelFormat, Subsamp};

use crate::rng::Rng;
use crate::DataError;

/// Shapes drawn on each image.
const SHAPES: usize = 36;
/// Standard deviation of the 2×2-block grain, in grey levels.
const GRAIN: f32 = 9.0;
/// Standard deviation of the per-pixel noise, in grey levels.
const NOISE: f32 = 3.0;

/// An approximately standard normal number: the Irwin–Hall sum of four 16-bit uniforms,
/// centred and scaled to unit variance.
#[inline]
fn normal(rng: &mut Rng) -> f32 {
    let bits = rng.next_u64();
    let sum: u32 = (0..4).map(|i| ((bits >> (16 * i)) & 0xFFFF) as u32).sum();
    // Each uniform has variance 1/12 (of 65536²); four of them, 1/3.
    (sum as f32 / 65536.0 - 2.0) * 1.732_050_8
}

/// A `width`×`height` photo-like RGB image (see the [module docs](self)).
pub fn render_photo(width: u32, height: u32, rng: &mut Rng) -> RgbImage {
    let (w, h) = (width as usize, height as usize);
    let mut px = vec![0f32; w * h * 3];
    // Background: one linear gradient per channel.
    let grads: Vec<[f32; 3]> = (0..3)
        .map(|_| [rng.uniform(40.0, 200.0) as f32, rng.uniform(-60.0, 60.0) as f32, rng.uniform(-60.0, 60.0) as f32])
        .collect();
    for y in 0..h {
        let fy = y as f32 / h.max(1) as f32;
        for x in 0..w {
            let fx = x as f32 / w.max(1) as f32;
            for (c, g) in grads.iter().enumerate() {
                px[(y * w + x) * 3 + c] = g[0] + g[1] * fx + g[2] * fy;
            }
        }
    }
    for _ in 0..SHAPES {
        draw_shape(&mut px, w, h, rng);
    }
    // Grain in 2×2 blocks, then per-pixel noise.
    let (gw, gh) = (w.div_ceil(2), h.div_ceil(2));
    let grain: Vec<f32> = (0..gw * gh).map(|_| GRAIN * normal(rng)).collect();
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let g = grain[(y / 2) * gw + x / 2];
            for c in 0..3 {
                let i = (y * w + x) * 3 + c;
                out[i] = (px[i] + g + NOISE * normal(rng)).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

/// Blends one shaded ellipse or rectangle, with a soft (about 1.5 px) edge, into `px`.
fn draw_shape(px: &mut [f32], w: usize, h: usize, rng: &mut Rng) {
    let (wf, hf) = (w as f32, h as f32);
    let x0 = rng.uniform(-0.2, 1.0) as f32 * wf;
    let y0 = rng.uniform(-0.2, 1.0) as f32 * hf;
    let (sw, sh) = (rng.uniform(0.05, 0.5) as f32 * wf, rng.uniform(0.05, 0.5) as f32 * hf);
    let colour: [f32; 3] = [0, 1, 2].map(|_| rng.uniform(0.0, 255.0) as f32);
    let shade = rng.uniform(-0.4, 0.4) as f32;
    let ellipse = rng.next_u64() & 1 == 0;
    let (cx, cy, rx, ry) = (x0 + sw / 2.0, y0 + sh / 2.0, sw / 2.0, sh / 2.0);
    let xa = x0.max(0.0) as usize;
    let xb = ((x0 + sw).ceil().max(0.0) as usize).min(w);
    let ya = y0.max(0.0) as usize;
    let yb = ((y0 + sh).ceil().max(0.0) as usize).min(h);
    for y in ya..yb {
        let dy = (y as f32 + 0.5 - cy) / ry;
        for x in xa..xb {
            let dx = (x as f32 + 0.5 - cx) / rx;
            // Distance inside the edge, in pixels, roughly.
            let inside = if ellipse {
                (1.0 - (dx * dx + dy * dy).sqrt()) * rx.min(ry)
            } else {
                ((1.0 - dx.abs()) * rx).min((1.0 - dy.abs()) * ry)
            };
            let alpha = (inside / 1.5).clamp(0.0, 1.0);
            if alpha <= 0.0 {
                continue;
            }
            // Lit from the top left.
            let light = 1.0 + shade * (dx + dy) * 0.5;
            let i = (y * w + x) * 3;
            for c in 0..3 {
                let v = (colour[c] * light).clamp(0.0, 255.0);
                px[i + c] += alpha * (v - px[i + c]);
            }
        }
    }
}

/// Encodes `img` as a baseline JPEG with libjpeg-turbo at `quality` (1–100), 4:2:0 chroma
/// subsampling, as Pillow saves by default.
///
/// # Errors
/// [`DataError::Image`] if libjpeg-turbo refuses the image or the quality.
pub fn encode_jpeg(img: &RgbImage, quality: i32) -> Result<Vec<u8>, DataError> {
    let fail = |e: turbojpeg::Error| DataError::Image {
        what: format!("{}x{} JPEG encoding", img.width(), img.height()),
        reason: e.to_string(),
    };
    let mut compressor = Compressor::new().map_err(fail)?;
    compressor.set_quality(quality).map_err(fail)?;
    compressor.set_subsamp(Subsamp::Sub2x2).map_err(fail)?;
    let image = Image {
        pixels: img.as_raw().as_slice(),
        width: img.width() as usize,
        pitch: img.width() as usize * 3,
        height: img.height() as usize,
        format: PixelFormat::RGB,
    };
    compressor.compress_to_vec(image).map_err(fail)
}

const OPENERS: [&str; 12] = [
    "a close-up photo of",
    "an old photograph showing",
    "stock image of",
    "a wide shot of",
    "a blurry picture of",
    "high resolution photo of",
    "vintage postcard with",
    "an aerial view of",
    "a candid snapshot of",
    "product photo:",
    "illustration of",
    "a detailed view of",
];
const ADJECTIVES: [&str; 24] = [
    "small",
    "large",
    "red",
    "weathered",
    "bright",
    "quiet",
    "crowded",
    "wooden",
    "rusty",
    "modern",
    "colourful",
    "snowy",
    "sunlit",
    "narrow",
    "ancient",
    "shiny",
    "misty",
    "elegant",
    "handmade",
    "busy",
    "empty",
    "golden",
    "dark",
    "tiny",
];
const SUBJECTS: [&str; 24] = [
    "dog",
    "lighthouse",
    "bicycle",
    "market stall",
    "mountain village",
    "coffee cup",
    "sailing boat",
    "train station",
    "kitchen table",
    "city street",
    "garden bench",
    "wedding dress",
    "pair of sneakers",
    "vintage car",
    "cathedral",
    "bowl of ramen",
    "forest trail",
    "living room",
    "football stadium",
    "leather sofa",
    "beach hut",
    "wristwatch",
    "farmhouse",
    "child's toy",
];
const ACTIONS: [&str; 16] = [
    "standing next to",
    "parked in front of",
    "surrounded by",
    "reflected in",
    "lying on",
    "seen through",
    "overlooking",
    "covered with",
    "decorated with",
    "hidden behind",
    "placed beside",
    "leaning against",
    "glowing under",
    "framed by",
    "sitting on",
    "near",
];
const PLACES: [&str; 20] = [
    "a river in the evening",
    "the old harbour",
    "autumn leaves",
    "a brick wall",
    "the morning fog",
    "a busy crossroads",
    "snow-covered pine trees",
    "a white marble floor",
    "a field of sunflowers",
    "neon signs at night",
    "the kitchen window",
    "a sandy beach at sunset",
    "a rainy pavement",
    "green hills and sheep",
    "a stone bridge",
    "the city skyline",
    "a quiet courtyard",
    "wild flowers",
    "a wooden fence",
    "the desert road",
];
const EXTRAS: [&str; 16] = [
    "Free shipping on orders over $50.",
    "Available in 3 sizes and 12 colours.",
    "Photo taken with a 35mm lens, f/2.8.",
    "Shot on film, slight grain.",
    "Click to enlarge.",
    "Royalty-free, no attribution required.",
    "Part of our spring collection.",
    "Image courtesy of the local museum archive.",
    "Perfect for your next holiday trip!",
    "Best seller, rated 4.8 out of 5 by 1,203 customers.",
    "Hand-picked by our editors.",
    "Limited edition, only 500 made.",
    "Copyright all rights reserved.",
    "See more photos in the gallery below.",
    "Hotel rooms from 89 EUR per night.",
    "Download in 4K.",
];

fn pick<'a>(words: &[&'a str], rng: &mut Rng) -> &'a str {
    words[rng.below(words.len() as u64) as usize]
}

/// "a" or "an", as the word that follows begins.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A caption of one to three sentences, about 15–50 words, like alt texts in web-crawled
/// image–text datasets: a scene description, then perhaps a second one and a
/// shop- or photographer-style remark, with numbers and punctuation.
pub fn photo_caption(rng: &mut Rng) -> String {
    let adjective = pick(&ADJECTIVES, rng);
    let mut caption = format!(
        "{} {} {adjective} {} {} {}",
        pick(&OPENERS, rng),
        article(adjective),
        pick(&SUBJECTS, rng),
        pick(&ACTIONS, rng),
        pick(&PLACES, rng)
    );
    if rng.below(2) == 0 {
        let adjective = pick(&ADJECTIVES, rng);
        let subject = pick(&SUBJECTS, rng);
        caption.push_str(&format!(", with {} {adjective} {subject} in the background", article(adjective)));
    }
    caption.push('.');
    for _ in 0..=rng.below(3) {
        caption.push(' ');
        caption.push_str(pick(&EXTRAS, rng));
    }
    if rng.below(3) == 0 {
        caption.push_str(&format!(" IMG_{:04} ({})", rng.below(10_000), 1990 + rng.below(36)));
    }
    caption
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photos_compress_like_photos() {
        let mut rng = Rng::from_key(&[3]);
        let mut bits = 0.0;
        for (w, h) in [(384, 256), (300, 480), (512, 512)] {
            let img = render_photo(w, h, &mut rng);
            assert_eq!(img.dimensions(), (w, h));
            let jpeg = encode_jpeg(&img, 90).expect("encode");
            bits += 8.0 * jpeg.len() as f64 / f64::from(w * h) / 3.0;
        }
        assert!((1.5..4.5).contains(&bits), "{bits:.2} bits per pixel");
    }

    #[test]
    fn captions_are_varied_and_deterministic() {
        let captions: Vec<String> = (0..50).map(|i| photo_caption(&mut Rng::from_key(&[i]))).collect();
        assert_eq!(captions[7], photo_caption(&mut Rng::from_key(&[7])));
        let distinct: std::collections::BTreeSet<_> = captions.iter().collect();
        assert!(distinct.len() >= 48);
        for c in &captions {
            let words = c.split_whitespace().count();
            assert!((10..=60).contains(&words), "{words} words: {c}");
        }
    }
}
