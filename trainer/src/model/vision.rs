//! The ViT image tower (`visual.*`), as OpenCLIP's `VisionTransformer`, with FLIP patch
//! dropout (OpenCLIP's `PatchDropout`).

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
    patch_dropout: f64,
    patches_kept: i64,
}

impl VisionTransformer {
    /// Creates the tower's parameters under `p` (`visual`).
    pub fn new(p: nn::Path, cfg: &VisionConfig, embed_dim: i64, activation: Activation) -> Self {
        let w = cfg.width;
        let scale = (w as f64).powf(-0.5);
        let patch = cfg.patch();
        let fan_in = (3 * patch * patch) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let tokens = cfg.grid_size() * cfg.grid_size() + 1;
        VisionTransformer {
            conv1: (&p / "conv1").var("weight", &[w, 3, patch, patch], Init::Uniform { lo: -bound, up: bound }),
            class_embedding: p.var("class_embedding", &[w], Init::Randn { mean: 0.0, stdev: scale }),
            positional_embedding: p.var("positional_embedding", &[tokens, w], Init::Randn { mean: 0.0, stdev: scale }),
            ln_pre: (!cfg.no_ln_pre).then(|| layer_norm(&p / "ln_pre", w)),
            transformer: Transformer::new(
                &p / "transformer",
                w,
                cfg.blocks(),
                cfg.heads(),
                cfg.mlp_ratio,
                activation,
                BlockInit::default(),
            ),
            ln_post: layer_norm(&p / "ln_post", w),
            proj: p.var("proj", &[w, embed_dim], Init::Randn { mean: 0.0, stdev: scale }),
            patch_size: patch,
            final_ln_after_pool: cfg.final_ln_after_pool,
            patch_dropout: cfg.patch_dropout,
            patches_kept: cfg.patches_kept(),
        }
    }

    /// Patch embedding, class token and positions, patch dropout (in training, when the
    /// config has it) and `ln_pre`.
    ///
    /// # Shapes
    /// `images`: [batch, 3, S, S] → [batch, 1 + kept patches, width].
    pub fn stem(&self, images: &Tensor, dropout: Option<&PatchKeep<'_>>) -> Tensor {
        let x = images.conv2d(&self.conv1, None::<Tensor>, [self.patch_size, self.patch_size], [0, 0], [1, 1], 1);
        let (b, w) = (x.size()[0], x.size()[1]);
        let x = x.flatten(2, 3).transpose(1, 2);
        let cls = self.class_embedding.to_kind(x.kind()).view([1, 1, w]).expand([b, 1, w], true);
        let mut x = Tensor::cat(&[cls, x], 1) + self.positional_embedding.to_kind(images.kind());
        if let (Some(keep), true) = (dropout, self.patch_dropout > 0.0) {
            let patches = x.size()[1] - 1;
            let kept = keep.indices(b, patches, self.patches_kept, x.device());
            let gathered =
                x.narrow(1, 1, patches).gather(1, &kept.unsqueeze(-1).expand([b, self.patches_kept, w], true), false);
            x = Tensor::cat(&[x.narrow(1, 0, 1), gathered], 1);
        }
        match &self.ln_pre {
            Some(ln_pre) => ln_pre.forward(&x),
            None => x,
        }
    }

    /// The stem with the patch embeddings of `masked` patches replaced by `mask_token`, before
    /// the positional embedding (BEiT / EVA masked image modelling); no patch dropout.
    ///
    /// # Shapes
    /// `images`: [batch, 3, S, S], `mask_token`: [width], `masked`: [batch, patches] bool →
    /// [batch, 1 + patches, width].
    pub fn stem_masked(&self, images: &Tensor, mask_token: &Tensor, masked: &Tensor) -> Tensor {
        let x = images.conv2d(&self.conv1, None::<Tensor>, [self.patch_size, self.patch_size], [0, 0], [1, 1], 1);
        let (b, w) = (x.size()[0], x.size()[1]);
        let x = x.flatten(2, 3).transpose(1, 2);
        let x = x.where_self(&masked.logical_not().unsqueeze(-1), &mask_token.to_kind(x.kind()).view([1, 1, w]));
        let cls = self.class_embedding.to_kind(x.kind()).view([1, 1, w]).expand([b, 1, w], true);
        let x = Tensor::cat(&[cls, x], 1) + self.positional_embedding.to_kind(images.kind());
        match &self.ln_pre {
            Some(ln_pre) => ln_pre.forward(&x),
            None => x,
        }
    }

    /// The patch tokens after `ln_post` (the class token left out), unprojected.
    ///
    /// # Shapes
    /// `x`: [batch, tokens, width] → [batch, tokens − 1, width].
    pub fn patch_tokens(&self, x: &Tensor) -> Tensor {
        let patches = x.size()[1] - 1;
        self.ln_post.forward(&x.narrow(1, 1, patches))
    }

    /// Residual attention blocks.
    pub fn depth(&self) -> usize {
        self.transformer.depth()
    }

    /// Residual attention block `i`.
    pub fn block(&self, i: usize, x: &Tensor) -> Tensor {
        self.transformer.block(i, x, false)
    }

    /// `ln_post`, the class token and the projection.
    ///
    /// # Shapes
    /// `x`: [batch, tokens, width] → [batch, embed_dim].
    pub fn head(&self, x: &Tensor) -> Tensor {
        let pooled = if self.final_ln_after_pool {
            self.ln_post.forward(&x.select(1, 0))
        } else {
            self.ln_post.forward(x).select(1, 0)
        };
        pooled.matmul(&self.proj)
    }

    /// FILIP's image tokens: `ln_post` and the projection applied to every patch token (the
    /// class token left out).
    ///
    /// # Shapes
    /// `x`: [batch, tokens, width] → [batch, tokens − 1, embed_dim].
    pub fn token_head(&self, x: &Tensor) -> Tensor {
        self.patch_tokens(x).matmul(&self.proj)
    }

    /// Encodes normalised images into (unnormalised) embeddings; `dropout` is given in
    /// training only.
    ///
    /// # Shapes
    /// `images`: [batch, 3, image_size, image_size] float → [batch, embed_dim].
    pub fn forward(&self, images: &Tensor, dropout: Option<&PatchKeep<'_>>) -> Tensor {
        let x = self.stem(images, dropout);
        self.head(&self.transformer.forward(&x, false))
    }
}

/// Which patches each sample keeps under patch dropout: a uniformly random subset of
/// `kept` of the `patches`, drawn from the sample's key (run seed, step, the sample's row in
/// the global batch) when the step gives them, so that every rank, every gradient-caching
/// replay and every resumed run draws the same subsets for the same samples; from
/// libtorch's generator (as OpenCLIP does) otherwise.
#[derive(Debug, Clone, Copy)]
pub enum PatchKeep<'a> {
    /// Keys of the batch's samples.
    Keyed(&'a super::clip::SampleKeys),
    /// libtorch's global generator.
    Global,
}

/// Seeds patch dropout's draws apart from every other stream keyed by the same sample.
const PATCH_DROPOUT_STREAM: u64 = 0x7061_7463_6864_726f; // "patchdro"

impl PatchKeep<'_> {
    /// # Shapes
    /// → [batch, kept] int64 indices into the patches (ascending).
    fn indices(&self, batch: i64, patches: i64, kept: i64, device: tch::Device) -> Tensor {
        match self {
            PatchKeep::Keyed(keys) => {
                let mut all = Vec::with_capacity((batch * kept) as usize);
                let mut draws: Vec<(u64, i64)> = Vec::with_capacity(patches as usize);
                for row in 0..batch {
                    let mut rng = clipfleet_dataloader::rng::Rng::from_key(&[
                        keys.seed,
                        keys.step as u64,
                        PATCH_DROPOUT_STREAM,
                        (keys.first_row + row) as u64,
                    ]);
                    draws.clear();
                    draws.extend((0..patches).map(|p| (rng.next_u64(), p)));
                    draws.select_nth_unstable(kept as usize - 1);
                    let mut keep: Vec<i64> = draws[..kept as usize].iter().map(|(_, p)| *p).collect();
                    keep.sort_unstable();
                    all.extend(keep);
                }
                crate::data::host_to_device(Tensor::from_slice(&all).view([batch, kept]), device)
            }
            PatchKeep::Global => {
                let noise = Tensor::randn([batch, patches], (tch::Kind::Float, device));
                noise.topk(kept, -1, true, true).1
            }
        }
    }
}
