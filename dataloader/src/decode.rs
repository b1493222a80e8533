//! Image decoding for training: encoded JPEG, PNG or WebP bytes to an RGB image, with a
//! decompression-bomb guard and, for JPEG, DCT-domain downscaling.
//!
//! The header is read first, and an image with more than `max_pixels` pixels is refused
//! ([`SkipReason::OversizedImage`]) before any pixel is decoded. JPEG goes through
//! libjpeg-turbo 3 (the `turbojpeg` crate, statically built from its bundled source) by
//! default; zune-jpeg is the alternative, kept for the benchmark that chose between them
//! (`docs/decisions.md`, "JPEG decoder"). When a JPEG's short side is at least twice the
//! target, libjpeg-turbo decodes it at 1/2, 1/4 or 1/8 scale in the DCT domain, never
//! below the target. PNG and WebP go through the `image` crate. Grey, CMYK, palette and
//! alpha images all come out as RGB (alpha dropped, as Pillow's `convert("RGB")` does).
//! Any decoding failure is [`SkipReason::CorruptImage`]; like Pillow, a truncated JPEG is
//! refused while libjpeg's recoverable warnings (extraneous bytes, a bad Huffman code)
//! are not.

use std::cell::RefCell;
use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbImage};
use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use crate::skip::SkipReason;

/// Pillow's `Image.MAX_IMAGE_PIXELS` (89,478,485 pixels, ~0.25 GiB of RGB): larger
/// images are refused as decompression bombs by default.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// The JPEG decoder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegBackend {
    /// libjpeg-turbo 3 through the `turbojpeg` crate, with DCT-domain scaling.
    TurboJpeg,
    /// zune-jpeg, pure Rust, always at full size.
    ZuneJpeg,
}

/// The JPEG decoder [`decode_rgb`] uses, chosen by the benchmark in `docs/decisions.md`.
pub const DEFAULT_JPEG_BACKEND: JpegBackend = JpegBackend::TurboJpeg;

/// Encoded formats this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jpeg,
    Png,
    WebP,
}

/// The format from the magic bytes, else from the extension `hint`.
fn sniff(bytes: &[u8], hint: &str) -> Option<Format> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(Format::WebP)
    } else {
        match hint.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => Some(Format::Jpeg),
            "png" => Some(Format::Png),
            "webp" => Some(Format::WebP),
            _ => None,
        }
    }
}

thread_local! {
    /// One libjpeg-turbo decompressor per thread, reused across images.
    static TURBO: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// The DCT scale, in eighths (8, 4, 2 or 1), at which to decode a `width`×`height` JPEG
/// for a `target` short side: the smallest 1/2ᵏ with `short side / 2ᵏ ≥ target`, so the
/// decoded short side (rounded up by libjpeg) is never below the target. 8 without target.
pub fn dct_scale_eighths(width: u32, height: u32, target_short_side: Option<u32>) -> u32 {
    let Some(target) = target_short_side.filter(|t| *t > 0) else {
        return 8;
    };
    let short = u64::from(width.min(height));
    let mut eighths = 8;
    while eighths > 1 && short >= u64::from(target) * u64::from(16 / eighths) {
        eighths /= 2;
    }
    eighths
}

/// The width and height from the image header alone.
///
/// Errors: [`SkipReason::CorruptImage`] if the header does not parse.
pub fn image_dimensions(bytes: &[u8], format: &str) -> Result<(u32, u32), SkipReason> {
    match sniff(bytes, format).ok_or(SkipReason::CorruptImage)? {
        Format::Jpeg => {
            let h = turbojpeg::read_header(bytes).map_err(|_| SkipReason::CorruptImage)?;
            Ok((dim(h.width)?, dim(h.height)?))
        }
        other => header_dimensions(bytes, other),
    }
}

/// Decodes `bytes` (JPEG, PNG or WebP; `format` is the extension, used when the magic
/// bytes are not recognised) to RGB with [`DEFAULT_JPEG_BACKEND`].
///
/// With `target_short_side`, a large JPEG may come out smaller than stored, by DCT
/// scaling ([`dct_scale_eighths`]), its short side never below the target. Errors:
/// [`SkipReason::OversizedImage`] when the header's width × height exceeds `max_pixels`
/// (nothing is decoded then); [`SkipReason::CorruptImage`] for anything that fails to decode.
pub fn decode_rgb(
    bytes: &[u8],
    format: &str,
    target_short_side: Option<u32>,
    max_pixels: u64,
) -> Result<RgbImage, SkipReason> {
    decode_rgb_with(DEFAULT_JPEG_BACKEND, bytes, format, target_short_side, max_pixels)
}

/// [`decode_rgb`] with a chosen JPEG decoder (for benchmarks and comparisons).
pub fn decode_rgb_with(
    backend: JpegBackend,
    bytes: &[u8],
    format: &str,
    target_short_side: Option<u32>,
    max_pixels: u64,
) -> Result<RgbImage, SkipReason> {
    match sniff(bytes, format).ok_or(SkipReason::CorruptImage)? {
        Format::Jpeg => match backend {
            JpegBackend::TurboJpeg => decode_turbo(bytes, target_short_side, max_pixels),
            JpegBackend::ZuneJpeg => decode_zune(bytes, max_pixels),
        },
        other => decode_with_image(bytes, other, max_pixels),
    }
}

fn dim(n: usize) -> Result<u32, SkipReason> {
    u32::try_from(n).map_err(|_| SkipReason::OversizedImage)
}

fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<(), SkipReason> {
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(SkipReason::OversizedImage);
    }
    if width == 0 || height == 0 {
        return Err(SkipReason::CorruptImage);
    }
    Ok(())
}

/// Whether a libjpeg message is a recoverable warning (the image was fully decoded, and
/// Pillow would have accepted it). A premature end of file is not: Pillow refuses it.
fn is_libjpeg_warning(msg: &str) -> bool {
    const WARNINGS: [&str; 6] = [
        "Corrupt JPEG data",
        "Warning:",
        "Unknown Adobe color transform",
        "Inconsistent progression sequence",
        "Invalid SOS parameters for sequential JPEG",
        "Application transferred too many scanlines",
    ];
    WARNINGS.iter().any(|w| msg.contains(w))
}

fn decode_turbo(bytes: &[u8], target: Option<u32>, max_pixels: u64) -> Result<RgbImage, SkipReason> {
    TURBO.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decompressor::new().map_err(|_| SkipReason::CorruptImage)?);
        }
        let Some(dec) = slot.as_mut() else {
            return Err(SkipReason::CorruptImage);
        };
        let header = dec.read_header(bytes).map_err(|_| SkipReason::CorruptImage)?;
        let (width, height) = (dim(header.width)?, dim(header.height)?);
        check_pixels(width, height, max_pixels)?;
        if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
            // libjpeg-turbo only hands out CMYK as CMYK; zune-jpeg converts it.
            return decode_zune(bytes, max_pixels);
        }
        let eighths = if header.is_lossless { 8 } else { dct_scale_eighths(width, height, target) };
        let factor = ScalingFactor::new(eighths as usize, 8);
        dec.set_scaling_factor(factor).map_err(|_| SkipReason::CorruptImage)?;
        let scaled = header.scaled(factor);
        let (w, h) = (dim(scaled.width)?, dim(scaled.height)?);
        let mut pixels = vec![0u8; scaled.width * scaled.height * 3];
        let out = turbojpeg::Image {
            pixels: pixels.as_mut_slice(),
            width: scaled.width,
            pitch: scaled.width * 3,
            height: scaled.height,
            format: PixelFormat::RGB,
        };
        match dec.decompress(bytes, out) {
            Ok(()) => {}
            Err(turbojpeg::Error::TurboJpegError(msg)) if is_libjpeg_warning(&msg) => {}
            Err(_) => return Err(SkipReason::CorruptImage),
        }
        RgbImage::from_raw(w, h, pixels).ok_or(SkipReason::CorruptImage)
    })
}

fn decode_zune(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, SkipReason> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(usize::MAX >> 1)
        .set_max_height(usize::MAX >> 1);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(bytes, options);
    dec.decode_headers().map_err(|_| SkipReason::CorruptImage)?;
    let info = dec.info().ok_or(SkipReason::CorruptImage)?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_pixels(width, height, max_pixels)?;
    let pixels = dec.decode().map_err(|_| SkipReason::CorruptImage)?;
    let (w, h) = dec.dimensions().ok_or(SkipReason::CorruptImage)?;
    // zune-jpeg 0.4 decodes greyscale JPEGs to one channel whatever is asked.
    let pixels = if dec.get_output_colorspace() == Some(ColorSpace::Luma) {
        pixels.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        pixels
    };
    RgbImage::from_raw(dim(w)?, dim(h)?, pixels).ok_or(SkipReason::CorruptImage)
}

fn image_reader(bytes: &[u8], format: Format) -> ImageReader<Cursor<&[u8]>> {
    let fmt = match format {
        Format::Jpeg => ImageFormat::Jpeg,
        Format::Png => ImageFormat::Png,
        Format::WebP => ImageFormat::WebP,
    };
    ImageReader::with_format(Cursor::new(bytes), fmt)
}

/// Width and height from the header of a PNG (its first chunk, IHDR) or a WebP.
fn header_dimensions(bytes: &[u8], format: Format) -> Result<(u32, u32), SkipReason> {
    if format == Format::Png {
        // The png crate reads on to the first IDAT before it reports the size.
        if bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
            return Err(SkipReason::CorruptImage);
        }
        let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        return Ok((be(16), be(20)));
    }
    image_reader(bytes, format).into_dimensions().map_err(|_| SkipReason::CorruptImage)
}

fn decode_with_image(bytes: &[u8], format: Format, max_pixels: u64) -> Result<RgbImage, SkipReason> {
    let (width, height) = header_dimensions(bytes, format)?;
    check_pixels(width, height, max_pixels)?;
    let mut reader = image_reader(bytes, format);
    let mut limits = image::Limits::default();
    // RGBA at 16 bits per channel is the largest buffer a decoder may ask for.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|_| SkipReason::CorruptImage)?;
    Ok(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_scale_never_below_target() {
        assert_eq!(dct_scale_eighths(380, 256, Some(224)), 8);
        assert_eq!(dct_scale_eighths(1024, 768, Some(224)), 4);
        assert_eq!(dct_scale_eighths(447, 447, Some(224)), 8);
        assert_eq!(dct_scale_eighths(448, 900, Some(224)), 4);
        assert_eq!(dct_scale_eighths(4000, 3000, Some(224)), 1);
        assert_eq!(dct_scale_eighths(1800, 1792, Some(224)), 1);
        assert_eq!(dct_scale_eighths(1791, 1792, Some(224)), 2);
        assert_eq!(dct_scale_eighths(4000, 3000, None), 8);
        for short in 1..2000u32 {
            let m = dct_scale_eighths(short, short + 5, Some(224));
            assert!(short.min(224) <= (short * m).div_ceil(8), "short {short}, {m}/8");
        }
    }

    #[test]
    fn sniffs_magic_before_extension() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n....", "jpg"), Some(Format::Png));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0], "png"), Some(Format::Jpeg));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 ", "jpg"), Some(Format::WebP));
        assert_eq!(sniff(b"garbage", "JPEG"), Some(Format::Jpeg));
        assert_eq!(sniff(b"garbage", "gif"), None);
    }
}
