//! Pillow-compatible separable bicubic resampling.
//!
//! The result equals Pillow's `ImagingResample` bit for bit: the same filter taps and 22-bit
//! fixed-point weights, the horizontal pass first, a uint8 intermediate, then the vertical
//! pass. The speed comes from the loops in [`super::kernels`], from reading a crop in place
//! (no copy of the cropped region) and from reusing the intermediate buffer per thread.

use std::cell::RefCell;

use image::RgbImage;

use super::kernels::{vertical, Horizontal, Taps, PRECISION_BITS, ROW_OVERREAD};

/// Bytes per RGB pixel.
const CHANNELS: usize = 3;
/// The horizontal taps are padded to a multiple of this, for the SIMD kernel.
const HORIZONTAL_TAP_MULTIPLE: usize = 4;

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

/// Fixed-point filter taps for one axis, `taps` per output: output pixel `o` reads source
/// pixels `starts[o] .. starts[o] + taps` with weights `weights[o * taps ..]`.
///
/// Pillow gives each output its own number of taps; here they are padded with zero weights
/// to a common count (shifting a start left where the window would pass the end), which
/// changes no sum.
#[derive(Debug)]
struct AxisCoeffs {
    taps: usize,
    starts: Vec<usize>,
    weights: Vec<i32>,
}

impl AxisCoeffs {
    fn as_taps(&self) -> Taps<'_> {
        Taps { taps: self.taps, starts: &self.starts, weights: &self.weights }
    }

    /// The first source index any output reads, and one past the last.
    fn span(&self) -> (usize, usize) {
        let first = self.starts.iter().copied().min().unwrap_or(0);
        let last = self.starts.iter().copied().max().map_or(0, |s| s + self.taps);
        (first, last)
    }
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, padded to a common
/// tap count: the largest count rounded up to a multiple of `multiple` when the axis is
/// that long, else the largest count. `in_size` ≥ 1 and `in0 < in1` within `[0, in_size]`.
fn precompute(in_size: usize, in0: f64, in1: f64, out_size: usize, multiple: usize) -> AxisCoeffs {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let one = f64::from(1u32 << PRECISION_BITS);
    let inv = 1.0 / filterscale;
    let mut taps = vec![0f64; ksize];
    // Pillow's xmin, tap count and weights (`ksize` slots) of each output.
    let mut bounds = Vec::with_capacity(out_size);
    let mut pillow = vec![0i32; out_size * ksize];
    for (o, row) in pillow.chunks_exact_mut(ksize).enumerate() {
        let center = in0 + (o as f64 + 0.5) * scale;
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
            *w = (if t < 0.0 { -0.5 + t * one } else { 0.5 + t * one }) as i32;
        }
        bounds.push((xmin as usize, count));
    }
    let widest = bounds.iter().map(|&(_, count)| count).max().unwrap_or(1).clamp(1, in_size.max(1));
    let rounded = widest.next_multiple_of(multiple.max(1));
    let taps = if rounded <= in_size { rounded } else { widest };
    let mut starts = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * taps];
    let rows = pillow.chunks_exact(ksize).zip(weights.chunks_exact_mut(taps));
    for (&(xmin, count), (from, to)) in bounds.iter().zip(rows) {
        let start = xmin.min(in_size.saturating_sub(taps));
        let shift = xmin - start;
        to[shift..shift + count].copy_from_slice(&from[..count]);
        starts.push(start);
    }
    AxisCoeffs { taps, starts, weights }
}

/// A `width`×`height` rectangle of an RGB buffer: pixel (x, y) starts at byte
/// `offset + y * stride + 3 * x` of `data`.
#[derive(Debug, Clone, Copy)]
struct RgbView<'a> {
    data: &'a [u8],
    offset: usize,
    stride: usize,
    width: usize,
    height: usize,
}

impl<'a> RgbView<'a> {
    /// The rectangle at (`left`, `top`) of `img`, clipped to it like `imageops::crop_imm`.
    fn of(img: &'a RgbImage, left: u32, top: u32, width: u32, height: u32) -> RgbView<'a> {
        let (iw, ih) = img.dimensions();
        let (left, top) = (left.min(iw), top.min(ih));
        let stride = iw as usize * CHANNELS;
        RgbView {
            data: img.as_raw(),
            offset: top as usize * stride + left as usize * CHANNELS,
            stride,
            width: width.min(iw - left) as usize,
            height: height.min(ih - top) as usize,
        }
    }

    /// Row `y`'s bytes, `3 * width` of them.
    fn row(&self, y: usize) -> &'a [u8] {
        &self.data[self.offset + y * self.stride..][..self.width * CHANNELS]
    }
}

thread_local! {
    /// The intermediate image between the two passes, reused across calls.
    static INTERMEDIATE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// One padded source row, for a row that ends where the buffer does.
    static PADDED_ROW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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

/// Crops `img` to the `w`×`h` rectangle at (`left`, `top`) (clipped to the image) and
/// resizes the crop to `width`×`height`, like Pillow's `img.crop(...).resize(size,
/// Image.BICUBIC)` (the filter reads nothing outside the crop), without copying the crop.
pub(crate) fn resize_crop_bicubic(img: &RgbImage, crop: (u32, u32, u32, u32), width: u32, height: u32) -> RgbImage {
    let view = RgbView::of(img, crop.0, crop.1, crop.2, crop.3);
    let whole = (0.0, 0.0, view.width as f64, view.height as f64);
    resample(view, whole, width, height)
}

/// Resamples the sub-rectangle `box_` = (left, top, right, bottom) of `img`,
/// in source pixel coordinates, to `width`×`height`, like Pillow's
/// `Image.resize(size, Image.BICUBIC, box=box_)`. The filter may read source
/// pixels just outside the box (Pillow does the same).
///
/// The box is clamped to the image; an empty box or source gives a black
/// image of the requested size.
pub fn resize_box_bicubic(img: &RgbImage, box_: (f64, f64, f64, f64), width: u32, height: u32) -> RgbImage {
    resample(RgbView::of(img, 0, 0, img.width(), img.height()), box_, width, height)
}

/// [`resize_box_bicubic`] on a view.
fn resample(view: RgbView<'_>, box_: (f64, f64, f64, f64), width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (view.width, view.height);
    let (out_w, out_h) = (width as usize, height as usize);
    let clamp = |v: f64, size: usize| if v.is_nan() { 0.0 } else { v.clamp(0.0, size as f64) };
    let (left, right) = (clamp(box_.0, in_w), clamp(box_.2, in_w));
    let (top, bottom) = (clamp(box_.1, in_h), clamp(box_.3, in_h));
    if out_w == 0 || out_h == 0 || right <= left || bottom <= top {
        return RgbImage::new(width, height);
    }
    let need_horizontal = out_w != in_w || left != 0.0 || right != in_w as f64;
    let need_vertical = out_h != in_h || top != 0.0 || bottom != in_h as f64;
    let mut out = vec![0u8; out_w * out_h * CHANNELS];
    let out_stride = out_w * CHANNELS;
    match (need_horizontal, need_vertical) {
        (false, false) => {
            for (y, dst) in out.chunks_exact_mut(out_stride).enumerate() {
                dst.copy_from_slice(view.row(y));
            }
        }
        (true, false) => {
            let horiz = precompute(in_w, left, right, out_w, HORIZONTAL_TAP_MULTIPLE);
            horizontal_pass(&view, &horiz, 0, &mut out);
        }
        (false, true) => {
            let vert = precompute(in_h, top, bottom, out_h, 1);
            let src = &view.data[view.offset..];
            vertical(src, view.stride, out_stride, &vert.as_taps(), &mut out);
        }
        (true, true) => {
            let horiz = precompute(in_w, left, right, out_w, HORIZONTAL_TAP_MULTIPLE);
            let vert = precompute(in_h, top, bottom, out_h, 1);
            // Only the rows the vertical pass reads go through the horizontal one.
            let (first, last) = vert.span();
            let mut rows_taps = vert.as_taps();
            let shifted: Vec<usize> = vert.starts.iter().map(|s| s - first).collect();
            rows_taps.starts = &shifted;
            INTERMEDIATE.with(|cell| {
                let mut temp = cell.borrow_mut();
                // Every byte is written by the horizontal pass: no need to clear it.
                temp.resize((last - first) * out_stride, 0);
                horizontal_pass(&view, &horiz, first, &mut temp);
                vertical(&temp, out_stride, out_stride, &rows_taps, &mut out);
            });
        }
    }
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

/// The horizontal pass on rows `first ..` of `view`, one output row per `3 * out_w` bytes of
/// `dst`.
fn horizontal_pass(view: &RgbView<'_>, horiz: &AxisCoeffs, first: usize, dst: &mut [u8]) {
    let pass = Horizontal::new(horiz.as_taps());
    let out_stride = horiz.starts.len() * CHANNELS;
    // The kernel reads a few bytes past the last tap of the row.
    let (_, end) = horiz.span();
    let row_bytes = end * CHANNELS + ROW_OVERREAD;
    for (r, dst_row) in dst.chunks_exact_mut(out_stride).enumerate() {
        let begin = view.offset + (first + r) * view.stride;
        match view.data.get(begin..begin + row_bytes) {
            Some(row) => pass.line(row, dst_row),
            None => PADDED_ROW.with(|cell| {
                let mut padded = cell.borrow_mut();
                padded.clear();
                padded.extend_from_slice(&view.data[begin..begin + end * CHANNELS]);
                padded.extend_from_slice(&[0; ROW_OVERREAD]);
                pass.line(&padded, dst_row);
            }),
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
    /// The straightforward port of Pillow's `ImagingResample` (per-output tap counts, i64
    /// sums, one loop per tap): the reference the vectorised passes must equal exactly.
    fn reference_resize(img: &RgbImage, b: (f64, f64, f64, f64), width: u32, height: u32) -> RgbImage {
        let (in_w, in_h) = (img.width() as usize, img.height() as usize);
        let (out_w, out_h) = (width as usize, height as usize);
        let coeffs = |in_size: usize, in0: f64, in1: f64, out_size: usize| {
            let scale = (in1 - in0) / out_size as f64;
            let fs = scale.max(1.0);
            let support = 2.0 * fs;
            (0..out_size)
                .map(|o| {
                    let center = in0 + (o as f64 + 0.5) * scale;
                    let xmin = ((center - support + 0.5) as i64).max(0);
                    let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
                    let taps: Vec<f64> = (xmin..xmax).map(|x| bicubic_filter((x as f64 - center + 0.5) / fs)).collect();
                    let total: f64 = taps.iter().sum();
                    let one = f64::from(1u32 << PRECISION_BITS);
                    let w = taps
                        .iter()
                        .map(|t| t / total)
                        .map(|t| if t < 0.0 { (-0.5 + t * one) as i64 } else { (0.5 + t * one) as i64 })
                        .collect::<Vec<i64>>();
                    (xmin as usize, w)
                })
                .collect::<Vec<_>>()
        };
        let clip = |a: i64| (a >> PRECISION_BITS).clamp(0, 255) as u8;
        let half = 1i64 << (PRECISION_BITS - 1);
        let src = img.as_raw();
        let need_h = out_w != in_w || b.0 != 0.0 || b.2 != in_w as f64;
        let need_v = out_h != in_h || b.1 != 0.0 || b.3 != in_h as f64;
        let (mut data, mut w) = (src.clone(), in_w);
        if need_h {
            let hc = coeffs(in_w, b.0, b.2, out_w);
            data = (0..in_h)
                .flat_map(|y| {
                    let hc = &hc;
                    (0..out_w).flat_map(move |o| {
                        let (xmin, wt) = &hc[o];
                        (0..3).map(move |c| {
                            clip(
                                wt.iter()
                                    .enumerate()
                                    .fold(half, |a, (k, &q)| a + i64::from(src[(y * in_w + xmin + k) * 3 + c]) * q),
                            )
                        })
                    })
                })
                .collect();
            w = out_w;
        }
        if need_v {
            let vc = coeffs(in_h, b.1, b.3, out_h);
            let tmp = data;
            data = (0..out_h)
                .flat_map(|o| {
                    let (ymin, wt) = &vc[o];
                    let tmp = &tmp;
                    (0..w * 3).map(move |i| {
                        clip(
                            wt.iter()
                                .enumerate()
                                .fold(half, |a, (k, &q)| a + i64::from(tmp[(ymin + k) * w * 3 + i]) * q),
                        )
                    })
                })
                .collect();
        }
        RgbImage::from_raw(width, height, data).expect("sizes")
    }

    fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut rng = crate::rng::Rng::from_key(&[seed]);
        RgbImage::from_fn(w, h, |_, _| Rgb([0, 0, 0].map(|_: u8| rng.below(256) as u8)))
    }

    #[test]
    fn equals_the_plain_pillow_port_on_random_sizes_boxes_and_crops() {
        let mut rng = crate::rng::Rng::from_key(&[99]);
        for case in 0..300u64 {
            let (iw, ih) = (1 + rng.below(90) as u32, 1 + rng.below(90) as u32);
            let img = noise(iw, ih, case);
            let (ow, oh) = (1 + rng.below(70) as u32, 1 + rng.below(70) as u32);
            let x0 = rng.uniform(0.0, f64::from(iw) - 0.5);
            let y0 = rng.uniform(0.0, f64::from(ih) - 0.5);
            let b = (x0, y0, rng.uniform(x0 + 0.5, f64::from(iw)), rng.uniform(y0 + 0.5, f64::from(ih)));
            let b = if case % 3 == 0 { (0.0, 0.0, f64::from(iw), f64::from(ih)) } else { b };
            assert!(
                resize_box_bicubic(&img, b, ow, oh) == reference_resize(&img, b, ow, oh),
                "{iw}x{ih} {b:?} -> {ow}x{oh}"
            );
            // A crop read in place equals the copied crop resized.
            let (l, t) = (rng.below(u64::from(iw)) as u32, rng.below(u64::from(ih)) as u32);
            let (cw, ch) = (1 + rng.below(u64::from(iw - l)) as u32, 1 + rng.below(u64::from(ih - t)) as u32);
            let copied = image::imageops::crop_imm(&img, l, t, cw, ch).to_image();
            let whole = (0.0, 0.0, f64::from(cw), f64::from(ch));
            assert!(
                resize_crop_bicubic(&img, (l, t, cw, ch), ow, oh) == reference_resize(&copied, whole, ow, oh),
                "crop {l},{t} {cw}x{ch} of {iw}x{ih} -> {ow}x{oh}"
            );
        }
    }

    #[test]
    fn equals_the_plain_pillow_port_on_training_sizes() {
        // Downscales to 224 with 5-16 taps, an upscale, and one with more than 16 taps.
        for (case, (iw, ih, ow, oh)) in [
            (389, 301, 224, 224),
            (512, 497, 224, 224),
            (230, 260, 224, 224),
            (200, 150, 224, 224),
            (1900, 400, 224, 224),
        ]
        .into_iter()
        .enumerate()
        {
            let img = noise(iw, ih, case as u64);
            let whole = (0.0, 0.0, f64::from(iw), f64::from(ih));
            assert!(resize_bicubic(&img, ow, oh) == reference_resize(&img, whole, ow, oh), "{iw}x{ih}");
            let (l, t, cw, ch) = (iw / 9, ih / 11, iw - iw / 9 - 1, ih - ih / 11);
            let copied = image::imageops::crop_imm(&img, l, t, cw, ch).to_image();
            let crop_whole = (0.0, 0.0, f64::from(cw), f64::from(ch));
            assert!(resize_crop_bicubic(&img, (l, t, cw, ch), ow, oh) == reference_resize(&copied, crop_whole, ow, oh));
        }
    }
}
