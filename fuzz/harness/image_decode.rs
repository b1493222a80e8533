//! Arbitrary bytes through the image decoding of `decode.rs`: `image_dimensions` (header only),
//! and `decode_rgb_with` for both JPEG backends (libjpeg-turbo with DCT scaling, zune-jpeg),
//! which sniff the format, check the header against the pixel limit, and decode to RGB.
//!
//! The first byte picks the format hint, the target short side and the pixel limit (the
//! library default, or smaller ones so that the limit check itself is exercised often); the
//! rest is the encoded image.

use clipfleet_dataloader::decode::{decode_rgb_with, image_dimensions, JpegBackend, DEFAULT_MAX_PIXELS};

/// Runs one input; panics on a finding.
pub(crate) fn run(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let hint = ["jpg", "png", "webp", "bin"][usize::from(mode & 3)];
    let target = [None, Some(1), Some(32), Some(224)][usize::from((mode >> 2) & 3)];
    let max_pixels = [DEFAULT_MAX_PIXELS, 1 << 20, 4096, 64][usize::from((mode >> 4) & 3)];

    let header = image_dimensions(bytes, hint);
    for backend in [JpegBackend::TurboJpeg, JpegBackend::ZuneJpeg] {
        if let Ok(img) = decode_rgb_with(backend, bytes, hint, target, max_pixels) {
            let (w, h) = img.dimensions();
            // Documented: an image whose header has more than `max_pixels` pixels is refused
            // (`OversizedImage`) before decoding, and DCT scaling only makes it smaller.
            assert!(
                u64::from(w) * u64::from(h) <= max_pixels,
                "{backend:?} decoded {w}x{h} with max_pixels {max_pixels} (header {header:?})"
            );
            assert_eq!(img.as_raw().len(), w as usize * h as usize * 3);
        }
    }
}
