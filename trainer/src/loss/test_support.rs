//! Shared pieces of the loss tests: random features and the rank split of a global batch.

use tch::{Device, Kind, Tensor};

use super::ContrastiveBatch;

/// `n` random L2-normalised features of width `d` (drawn in f64, then cast to `kind`).
pub(crate) fn features(n: i64, d: i64, kind: Kind) -> Tensor {
    crate::model::l2_normalize(&Tensor::randn([n, d], (Kind::Double, Device::Cpu))).to_kind(kind)
}

/// Calls `f` on each of `w` ranks' batches over the global `image` and `text` (rank r holds
/// rows r·b…(r+1)·b), and returns what it gave, in rank order.
pub(crate) fn per_rank<T>(
    image: &Tensor,
    text: &Tensor,
    w: i64,
    mut f: impl FnMut(&ContrastiveBatch<'_>) -> T,
) -> Vec<T> {
    let b = image.size()[0] / w;
    (0..w)
        .map(|r| {
            let (image_local, text_local) = (image.narrow(0, r * b, b), text.narrow(0, r * b, b));
            f(&ContrastiveBatch {
                image_local: &image_local,
                text_local: &text_local,
                image_all: image,
                text_all: text,
                row_offset: r * b,
            })
        })
        .collect()
}
