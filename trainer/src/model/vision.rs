//! The ViT image tower (`visual.*`), as OpenCLIP's `VisionTransformer`.

use tch::nn::{self, Init, Module};
use tch::Tensor;

use super::config::VisionConfig;
use super::transformer::{layer_norm, Activation, BlockInit, Transformer};

/// The image encoder.
#[derive(Debug)]
pub struct VisionTransformer {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: Option<nn::LayerNorm>,
    transformer: Transformer,
    ln_post: nn::LayerNorm,
    proj: Tensor,
    patch_size: i64,
    final_ln_after_pool: bool,
}

impl VisionTransformer {
    /// Creates the tower's parameters under `p` (`visual`).
    pub fn new(p: nn::Path, cfg: &VisionConfig, embed_dim: i64, activation: Activation) -> Self {
        let w = cfg.width;
        let scale = (w as f64).powf(-0.5);
        let fan_in = (3 * cfg.patch_size * cfg.patch_size) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let tokens = cfg.grid_size() * cfg.grid_size() + 1;
        VisionTransformer {
            conv1: (&p / "conv1").var(
                "weight",
                &[w, 3, cfg.patch_size, cfg.patch_size],
                Init::Uniform { lo: -bound, up: bound },
            ),
            class_embedding: p.var("class_embedding", &[w], Init::Randn { mean: 0.0, stdev: scale }),
            positional_embedding: p.var("positional_embedding", &[tokens, w], Init::Randn { mean: 0.0, stdev: scale }),
            ln_pre: (!cfg.no_ln_pre).then(|| layer_norm(&p / "ln_pre", w)),
            transformer: Transformer::new(
                &p / "transformer",
                w,
                cfg.layers,
                cfg.heads(),
                cfg.mlp_ratio,
                activation,
                BlockInit::default(),
            ),
            ln_post: layer_norm(&p / "ln_post", w),
            proj: p.var("proj", &[w, embed_dim], Init::Randn { mean: 0.0, stdev: scale }),
            patch_size: cfg.patch_size,
            final_ln_after_pool: cfg.final_ln_after_pool,
        }
    }

    /// Encodes normalised images into (unnormalised) embeddings.
    ///
    /// # Shapes
    /// `images`: [batch, 3, image_size, image_size] float → [batch, embed_dim].
    pub fn forward(&self, images: &Tensor) -> Tensor {
        let x = images.conv2d(&self.conv1, None::<Tensor>, [self.patch_size, self.patch_size], [0, 0], [1, 1], 1);
        let (b, w) = (x.size()[0], x.size()[1]);
        let x = x.flatten(2, 3).transpose(1, 2);
        let cls = self.class_embedding.to_kind(x.kind()).view([1, 1, w]).expand([b, 1, w], true);
        let mut x = Tensor::cat(&[cls, x], 1) + self.positional_embedding.to_kind(images.kind());
        if let Some(ln_pre) = &self.ln_pre {
            x = ln_pre.forward(&x);
        }
        let x = self.transformer.forward(&x, false);
        let pooled = if self.final_ln_after_pool {
            self.ln_post.forward(&x.select(1, 0))
        } else {
            self.ln_post.forward(&x).select(1, 0)
        };
        pooled.matmul(&self.proj)
    }
}
