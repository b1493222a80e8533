//! The causal text tower (`token_embedding`, `transformer`, `ln_final`, `text_projection`),
//! as OpenCLIP's `TextTransformer` whose attributes CLIP hoists to the top level.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::config::TextConfig;
use super::transformer::{layer_norm, Activation, BlockInit, Transformer};

/// The text encoder.
#[derive(Debug)]
pub struct TextTransformer {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: nn::LayerNorm,
    text_projection: Tensor,
    causal: bool,
    final_ln_after_pool: bool,
}

impl TextTransformer {
    /// Creates the tower's parameters directly under `p` (the model root), with
    /// OpenCLIP's `TextTransformer.init_parameters` distributions.
    pub fn new(p: nn::Path, cfg: &TextConfig, embed_dim: i64, activation: Activation) -> Self {
        let w = cfg.width as f64;
        let init = BlockInit {
            attn_std: Some(w.powf(-0.5)),
            proj_std: Some(w.powf(-0.5) * (2.0 * cfg.layers as f64).powf(-0.5)),
            fc_std: Some((2.0 * w).powf(-0.5)),
        };
        TextTransformer {
            token_embedding: (&p / "token_embedding").var(
                "weight",
                &[cfg.vocab_size, cfg.width],
                Init::Randn { mean: 0.0, stdev: 0.02 },
            ),
            positional_embedding: p.var(
                "positional_embedding",
                &[cfg.context_length, cfg.width],
                Init::Randn { mean: 0.0, stdev: 0.01 },
            ),
            transformer: Transformer::new(
                &p / "transformer",
                cfg.width,
                cfg.layers,
                cfg.heads,
                cfg.mlp_ratio,
                activation,
                init,
            ),
            ln_final: layer_norm(&p / "ln_final", cfg.width),
            text_projection: p.var(
                "text_projection",
                &[cfg.width, embed_dim],
                Init::Randn { mean: 0.0, stdev: w.powf(-0.5) },
            ),
            causal: !cfg.no_causal_mask,
            final_ln_after_pool: cfg.final_ln_after_pool,
        }
    }

    /// Encodes token ids into (unnormalised) embeddings, pooling at the end-of-text
    /// token, found as `argmax(ids)` because it has the largest id.
    ///
    /// # Shapes
    /// `tokens`: [batch, context_length] int64 → [batch, embed_dim].
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let x = Tensor::embedding(&self.token_embedding, tokens, -1, false, false);
        let x = x + &self.positional_embedding;
        let x = self.transformer.forward(&x, self.causal);
        let b = tokens.size()[0];
        let rows = Tensor::arange(b, (Kind::Int64, tokens.device()));
        let eot = tokens.argmax(-1, false);
        let pooled = if self.final_ln_after_pool {
            self.ln_final.forward(&x.index(&[Some(rows), Some(eot)]))
        } else {
            self.ln_final.forward(&x).index(&[Some(rows), Some(eot)])
        };
        pooled.matmul(&self.text_projection)
    }
}
