//! Batches of images as one contiguous uint8 buffer, ready for the trainer.

use image::RgbImage;

use crate::DataError;

/// A batch of RGB images in NHWC layout, uint8, row-major: pixel (x, y) of
/// image n, channel c, is at `((n * height + y) * width + x) * 3 + c`.
///
/// The trainer copies `data` to the device as a `[batch, height, width, 3]`
/// uint8 tensor and normalises it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageBatch {
    /// The pixels, `batch * height * width * 3` bytes.
    pub data: Vec<u8>,
    /// Number of images.
    pub batch: usize,
    /// Height of every image, in pixels.
    pub height: usize,
    /// Width of every image, in pixels.
    pub width: usize,
}

impl ImageBatch {
    /// Packs `images` into one buffer. They must all have the same size; an
    /// empty slice gives an empty 0×0 batch.
    pub fn from_images(images: &[RgbImage]) -> Result<ImageBatch, DataError> {
        let Some(first) = images.first() else {
            return Ok(ImageBatch { data: Vec::new(), batch: 0, height: 0, width: 0 });
        };
        let (w, h) = first.dimensions();
        let mut data = Vec::with_capacity(images.len() * first.as_raw().len());
        for (i, img) in images.iter().enumerate() {
            if img.dimensions() != (w, h) {
                return Err(DataError::Image {
                    what: format!("batch position {i}"),
                    reason: format!("is {}x{}, but the batch is {w}x{h}", img.width(), img.height()),
                });
            }
            data.extend_from_slice(img.as_raw());
        }
        Ok(ImageBatch { data, batch: images.len(), height: h as usize, width: w as usize })
    }

    /// The `index`-th image as an [`RgbImage`], or `None` past the end.
    pub fn image(&self, index: usize) -> Option<RgbImage> {
        let len = self.height * self.width * 3;
        let bytes = self.data.get(index * len..(index + 1) * len)?;
        RgbImage::from_raw(self.width as u32, self.height as u32, bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn packs_nhwc_and_round_trips() {
        let a = RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8, y as u8, 1]));
        let b = RgbImage::from_pixel(3, 2, Rgb([9, 9, 9]));
        let batch = ImageBatch::from_images(&[a.clone(), b.clone()]).expect("same sizes");
        assert_eq!((batch.batch, batch.height, batch.width), (2, 2, 3));
        assert_eq!(batch.data.len(), 2 * 2 * 3 * 3);
        // Image 0, pixel (x=2, y=1), channel 0.
        assert_eq!(batch.data[(3 + 2) * 3], 2);
        assert_eq!(batch.image(0), Some(a));
        assert_eq!(batch.image(1), Some(b));
        assert_eq!(batch.image(2), None);
    }

    #[test]
    fn rejects_mixed_sizes() {
        let a = RgbImage::new(3, 2);
        let b = RgbImage::new(2, 3);
        let err = ImageBatch::from_images(&[a, b]).expect_err("mixed sizes");
        assert!(err.to_string().contains("batch position 1"), "{err}");
        assert_eq!(ImageBatch::from_images(&[]).expect("empty").batch, 0);
    }
}
