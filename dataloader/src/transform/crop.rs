//! OpenCLIP's crops: torchvision's `RandomResizedCrop` for training and
//! `Resize` + `CenterCrop` for evaluation.

use image::RgbImage;

use super::resample::{resize_bicubic, resize_crop_bicubic};
use crate::rng::Rng;

/// Python's `round()` on a float (ties to even), as torchvision uses it.
fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// Copies the `w`×`h` rectangle at (`left`, `top`) out of `img` (clipped to it).
fn crop(img: &RgbImage, left: u32, top: u32, w: u32, h: u32) -> RgbImage {
    image::imageops::crop_imm(img, left, top, w, h).to_image()
}

/// torchvision's `RandomResizedCrop` with bicubic interpolation: crop a random
/// region of random area fraction and aspect ratio, then resize it to
/// `size`×`size`.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomResizedCrop {
    /// Side of the square output, in pixels.
    pub size: u32,
    /// Range of the crop's area as a fraction of the image's area.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height), sampled
    /// log-uniformly.
    pub ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// OpenCLIP's training crop: scale (0.9, 1.0), ratio (3/4, 4/3).
    pub fn openclip(size: u32) -> Self {
        RandomResizedCrop { size, scale: (0.9, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }
    }

    /// torchvision's `RandomResizedCrop.get_params` for a `width`×`height`
    /// image: returns (top, left, crop height, crop width).
    ///
    /// Up to 10 attempts draw an area fraction ~ U(scale) and a log aspect
    /// ratio ~ U(log ratio), round to integer sides, and accept the first
    /// that fits, with a uniform position. Otherwise it falls back to the
    /// central crop with the aspect ratio clamped into `ratio`.
    pub fn get_params(&self, width: u32, height: u32, rng: &mut Rng) -> (u32, u32, u32, u32) {
        let (wf, hf) = (f64::from(width), f64::from(height));
        let area = wf * hf;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(log_lo, log_hi).exp();
            let w = py_round((target_area * aspect).sqrt());
            let h = py_round((target_area / aspect).sqrt());
            if w > 0.0 && w <= wf && h > 0.0 && h <= hf {
                let (w, h) = (w as u32, h as u32);
                let top = rng.below(u64::from(height - h) + 1) as u32;
                let left = rng.below(u64::from(width - w) + 1) as u32;
                return (top, left, h, w);
            }
        }
        let in_ratio = wf / hf;
        let min_ratio = self.ratio.0.min(self.ratio.1);
        let max_ratio = self.ratio.0.max(self.ratio.1);
        let (w, h) = if in_ratio < min_ratio {
            (width, (py_round(wf / min_ratio) as u32).min(height))
        } else if in_ratio > max_ratio {
            ((py_round(hf * max_ratio) as u32).min(width), height)
        } else {
            (width, height)
        };
        ((height - h) / 2, (width - w) / 2, h, w)
    }

    /// Crops `img` at [`get_params`](Self::get_params) and resizes the crop
    /// bicubically to `size`×`size`, exactly as torchvision does on a PIL image (the crop
    /// is read in place, not copied). An empty image gives a black one.
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng) -> RgbImage {
        let (width, height) = img.dimensions();
        if width == 0 || height == 0 {
            return RgbImage::new(self.size, self.size);
        }
        let (top, left, h, w) = self.get_params(width, height, rng);
        resize_crop_bicubic(img, (left, top, w, h), self.size, self.size)
    }
}

/// OpenCLIP's evaluation transform: `Resize(size)` of the short side with
/// bicubic interpolation (the long side becomes `int(size * long / short)`),
/// then torchvision's `CenterCrop(size)` (offsets `round((h - size) / 2)`,
/// ties to even). An empty image gives a black one.
pub fn resize_short_side_center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || size == 0 {
        return RgbImage::new(size, size);
    }
    let (short, long) = (w.min(h), w.max(h));
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    let (new_w, new_h) = if w <= h { (size, new_long) } else { (new_long, size) };
    let resized = resize_bicubic(img, new_w, new_h);
    let top = py_round(f64::from(new_h.saturating_sub(size)) / 2.0) as u32;
    let left = py_round(f64::from(new_w.saturating_sub(size)) / 2.0) as u32;
    crop(&resized, left, top, size, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn center_crop_geometry_on_a_wide_image() {
        // 90x30, size 10: resize to 30x10, then crop columns 10..20.
        let img =
            RgbImage::from_fn(90, 30, |x, _| if (30..60).contains(&x) { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
        let out = resize_short_side_center_crop(&img, 10);
        assert_eq!(out.dimensions(), (10, 10));
        // The central third of the source is red; the crop is exactly it.
        assert!(out.pixels().all(|p| p[0] > 200 && p[2] < 60), "{:?}", out.get_pixel(0, 5));
    }

    #[test]
    fn center_crop_rounds_ties_to_even() {
        // 10 wide, 13 tall, size 10: offset round(1.5) = 2.
        let img = RgbImage::from_fn(10, 13, |_, y| Rgb([y as u8, 0, 0]));
        let out = resize_short_side_center_crop(&img, 10);
        assert_eq!(out.get_pixel(0, 0)[0], 2);
        // 10 wide, 15 tall: round(2.5) = 2 as well.
        let img = RgbImage::from_fn(10, 15, |_, y| Rgb([y as u8, 0, 0]));
        assert_eq!(resize_short_side_center_crop(&img, 10).get_pixel(0, 0)[0], 2);
    }

    #[test]
    fn rrc_output_size_and_determinism() {
        // Square, so that crops of scale >= 0.9 and ratio near 1 fit; an
        // 80x50 image would always take the fallback central crop.
        let img = RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 7]));
        let rrc = RandomResizedCrop::openclip(32);
        let a = rrc.apply(&img, &mut Rng::from_key(&[1, 2, 3]));
        let b = rrc.apply(&img, &mut Rng::from_key(&[1, 2, 3]));
        let c = rrc.apply(&img, &mut Rng::from_key(&[1, 2, 4]));
        assert_eq!(a.dimensions(), (32, 32));
        assert!(a == b, "same key, different crops");
        let params = |key: u64| rrc.get_params(64, 64, &mut Rng::from_key(&[1, 2, key]));
        assert!((4..40).any(|key| params(key) != params(3)), "crop ignores the key");
        assert!((4..40).any(|key| rrc.apply(&img, &mut Rng::from_key(&[1, 2, key])) != c));
        // A 1.6:1 image has no crop of scale >= 0.9 within ratio 4/3: centre.
        assert_eq!(rrc.get_params(80, 50, &mut Rng::from_key(&[5])), (0, 6, 50, 67));
    }

    #[test]
    fn rrc_params_respect_scale_and_ratio() {
        let rrc = RandomResizedCrop::openclip(224);
        let mut rng = Rng::from_key(&[11]);
        for _ in 0..500 {
            let (top, left, h, w) = rrc.get_params(300, 200, &mut rng);
            assert!(top + h <= 200 && left + w <= 300);
            let frac = f64::from(w * h) / 60_000.0;
            assert!((0.85..=1.0).contains(&frac), "area fraction {frac}");
        }
        // A very tall image falls back to the central crop with ratio 3/4.
        let (top, left, h, w) = rrc.get_params(10, 1000, &mut rng);
        assert_eq!((top, left, h, w), (493, 0, 13, 10));
    }
}
