//! Pillow-compatible separable bicubic resampling.

use image::RgbImage;

/// Bits of the fixed-point filter weights, as in Pillow (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Bytes per RGB pixel.
const CHANNELS: usize = 3;

/// Pillow's bicubic kernel with a = −0.5 (support 2).
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps for one axis: output pixel `o` reads source
/// pixels `starts[o] .. starts[o] + counts[o]` with weights
/// `weights[o * ksize ..]`.
struct AxisCoeffs {
    ksize: usize,
    starts: Vec<usize>,
    counts: Vec<usize>,
    weights: Vec<i64>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
fn precompute(in_size: usize, in0: f64, in1: f64, out_size: usize) -> AxisCoeffs {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut starts = Vec::with_capacity(out_size);
    let mut counts = Vec::with_capacity(out_size);
    let mut weights = vec![0i64; out_size * ksize];
    let mut taps = vec![0f64; ksize];
    let one = f64::from(1u32 << PRECISION_BITS);
    for (o, row) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = in0 + (o as f64 + 0.5) * scale;
        let inv = 1.0 / filterscale;
        // `as i64` truncates toward zero, like C's `(int)` cast in Pillow.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let count = ((xmax - xmin).max(0) as usize).min(ksize);
        let mut total = 0.0;
        for (x, tap) in taps.iter_mut().enumerate().take(count) {
            *tap = bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * inv);
            total += *tap;
        }
        for (w, &tap) in row.iter_mut().zip(&taps).take(count) {
            let t = if total != 0.0 { tap / total } else { tap };
            *w = if t < 0.0 { (-0.5 + t * one) as i64 } else { (0.5 + t * one) as i64 };
        }
        starts.push(xmin as usize);
        counts.push(count);
    }
    AxisCoeffs { ksize, starts, counts, weights }
}

/// Pillow's `clip8`: drop the fraction bits and saturate to a byte.
#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `img` to `width`×`height` with Pillow's `Image.resize(size,
/// Image.BICUBIC)` semantics: a separable bicubic filter (a = −0.5) whose
/// support grows with the scale factor when downscaling (antialiasing).
///
/// A zero-sized source gives a black image of the requested size.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    resize_box_bicubic(img, (0.0, 0.0, f64::from(w), f64::from(h)), width, height)
}

/// Resamples the sub-rectangle `box_` = (left, top, right, bottom) of `img`,
/// in source pixel coordinates, to `width`×`height`, like Pillow's
/// `Image.resize(size, Image.BICUBIC, box=box_)`. The filter may read source
/// pixels just outside the box (Pillow does the same).
///
/// The box is clamped to the image; an empty box or source gives a black
/// image of the requested size.
pub fn resize_box_bicubic(img: &RgbImage, box_: (f64, f64, f64, f64), width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let clamp_x = |v: f64| {
        if v.is_nan() {
            0.0
        } else {
            v.clamp(0.0, in_w as f64)
        }
    };
    let clamp_y = |v: f64| {
        if v.is_nan() {
            0.0
        } else {
            v.clamp(0.0, in_h as f64)
        }
    };
    let (left, right) = (clamp_x(box_.0), clamp_x(box_.2));
    let (top, bottom) = (clamp_y(box_.1), clamp_y(box_.3));
    if out_w == 0 || out_h == 0 || right <= left || bottom <= top {
        return RgbImage::new(width, height);
    }
    let need_horizontal = out_w != in_w || left != 0.0 || right != in_w as f64;
    let need_vertical = out_h != in_h || top != 0.0 || bottom != in_h as f64;
    if !need_horizontal && !need_vertical {
        return img.clone();
    }
    let src = img.as_raw();
    let vert = precompute(in_h, top, bottom, out_h);

    // Horizontal pass over the rows the vertical pass will read.
    let (first_row, last_row) = if need_vertical {
        let last = vert.starts[out_h - 1] + vert.counts[out_h - 1];
        (vert.starts[0], last.max(vert.starts[0]))
    } else {
        (0, in_h)
    };
    let (temp, temp_w, row_offset) = if need_horizontal {
        let horiz = precompute(in_w, left, right, out_w);
        let rows = last_row - first_row;
        let mut temp = vec![0u8; rows * out_w * CHANNELS];
        for (r, out_row) in temp.chunks_exact_mut(out_w * CHANNELS).enumerate() {
            let src_row = &src[(first_row + r) * in_w * CHANNELS..][..in_w * CHANNELS];
            resample_line(src_row, CHANNELS, &horiz, out_row, CHANNELS);
        }
        (temp, out_w, first_row)
    } else {
        (src.clone(), in_w, 0)
    };
    if !need_vertical {
        return RgbImage::from_raw(width, height, temp).unwrap_or_else(|| RgbImage::new(width, height));
    }

    // Vertical pass, one output row at a time, all columns together.
    let stride = temp_w * CHANNELS;
    let mut out = vec![0u8; out_h * stride];
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut acc = vec![0i64; stride];
    for (o, out_row) in out.chunks_exact_mut(stride).enumerate() {
        acc.fill(half);
        let start = vert.starts[o] - row_offset;
        let taps = &vert.weights[o * vert.ksize..][..vert.counts[o]];
        for (k, &wgt) in taps.iter().enumerate() {
            let row = &temp[(start + k) * stride..][..stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i64::from(v) * wgt;
            }
        }
        for (dst, &a) in out_row.iter_mut().zip(&acc) {
            *dst = clip8(a);
        }
    }
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

/// Resamples one line of interleaved pixels (`step` bytes apart) with `coeffs`.
fn resample_line(src: &[u8], step: usize, coeffs: &AxisCoeffs, dst: &mut [u8], dst_step: usize) {
    let half = 1i64 << (PRECISION_BITS - 1);
    for (o, px) in dst.chunks_exact_mut(dst_step).enumerate() {
        let taps = &coeffs.weights[o * coeffs.ksize..][..coeffs.counts[o]];
        let base = coeffs.starts[o] * step;
        let mut acc = [half; CHANNELS];
        for (k, &wgt) in taps.iter().enumerate() {
            let s = &src[base + k * step..][..CHANNELS];
            for c in 0..CHANNELS {
                acc[c] += i64::from(s[c]) * wgt;
            }
        }
        for c in 0..CHANNELS {
            px[c] = clip8(acc[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8]))
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, Rgb([10, 128, 250]));
        for (w, h) in [(64, 64), (5, 9), (37, 23), (100, 11), (1, 1)] {
            let out = resize_bicubic(&img, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| *p == Rgb([10, 128, 250])), "{w}x{h}");
        }
    }

    #[test]
    fn same_size_is_identity() {
        let img = gradient(31, 17);
        assert_eq!(resize_bicubic(&img, 31, 17), img);
        // Same size through the filter (only one axis changes) keeps the other exactly.
        let wide = resize_bicubic(&img, 62, 17);
        assert_eq!(wide.dimensions(), (62, 17));
    }

    #[test]
    fn upscale_then_downscale_is_near_identity() {
        let img = RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 16) as u8, (y * 16) as u8, 128]));
        let back = resize_bicubic(&resize_bicubic(&img, 64, 64), 16, 16);
        for (a, b) in img.pixels().zip(back.pixels()) {
            for c in 0..3 {
                assert!((i32::from(a[c]) - i32::from(b[c])).abs() <= 3, "{a:?} vs {b:?}");
            }
        }
    }

    /// Matches Pillow 13.0.0 `Image.resize(size, Image.BICUBIC, box=...)`
    /// exactly (tolerance 0) on the cases written by
    /// `tests/fixtures/gen_pillow_resize.py`.
    #[test]
    fn matches_pillow_resize() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/pillow_resize.json")).expect("fixture is JSON");
        let img = RgbImage::from_fn(13, 9, |x, y| {
            let (x, y) = (i64::from(x), i64::from(y));
            let c = |v: i64| v.rem_euclid(256) as u8;
            Rgb([c(x * 37 + y * 11), c(x * x + 3 * y * y), c(255 - x * 19 - y * 23)])
        });
        let cases = fixture["cases"].as_array().expect("cases");
        assert_eq!(cases.len(), 8);
        for case in cases {
            let num = |v: &serde_json::Value| v.as_f64().expect("number");
            let b: Vec<f64> = case["box"].as_array().expect("box").iter().map(num).collect();
            let (w, h) = (num(&case["width"]) as u32, num(&case["height"]) as u32);
            let expected: Vec<u8> = case["rgb"].as_array().expect("rgb").iter().map(|v| num(v) as u8).collect();
            let out = resize_box_bicubic(&img, (b[0], b[1], b[2], b[3]), w, h);
            assert!(out.as_raw() == &expected, "{w}x{h} box {b:?}: {:?}", out.as_raw());
        }
    }

    #[test]
    fn box_resize_of_whole_image_equals_plain_resize() {
        let img = gradient(40, 30);
        assert_eq!(resize_box_bicubic(&img, (0.0, 0.0, 40.0, 30.0), 20, 15), resize_bicubic(&img, 20, 15));
        let cropped = resize_box_bicubic(&img, (10.0, 5.0, 30.0, 25.0), 20, 20);
        assert_eq!(cropped.dimensions(), (20, 20));
        assert_eq!(resize_box_bicubic(&img, (5.0, 5.0, 5.0, 9.0), 3, 3), RgbImage::new(3, 3));
        assert_eq!(resize_bicubic(&RgbImage::new(0, 0), 4, 2), RgbImage::new(4, 2));
    }
}
