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
        let init = BlockInit::text_tower(cfg.width, cfg.layers);
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

    /// Whether the tower attends causally: then the positions after a row's end-of-text
    /// token cannot change its pooled output, and [`trimmed_length`] may drop them.
    pub fn is_causal(&self) -> bool {
        self.causal
    }

    /// Encodes token ids into (unnormalised) embeddings, pooling at the end-of-text
    /// token, found as `argmax(ids)` because it has the largest id.
    ///
    /// # Shapes
    /// `tokens`: [batch, L] int64, L ≤ context_length (the first L positions; a causal
    /// tower gives the same result for any L past every row's end-of-text token) →
    /// [batch, embed_dim].
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let x = self.transformer.forward(&self.stem(tokens), self.causal);
        self.head(&x, tokens)
    }

    /// Token and positional embeddings.
    ///
    /// # Shapes
    /// `tokens`: [batch, L] → [batch, L, width].
    pub fn stem(&self, tokens: &Tensor) -> Tensor {
        let len = tokens.size()[1];
        debug_assert!(
            self.causal || len == self.positional_embedding.size()[0],
            "only a causal tower takes trimmed rows"
        );
        let x = Tensor::embedding(&self.token_embedding, tokens, -1, false, false);
        x + self.positional_embedding.narrow(0, 0, len)
    }

    /// Residual attention blocks.
    pub fn depth(&self) -> usize {
        self.transformer.depth()
    }

    /// Residual attention block `i` (causal unless the config disables it).
    pub fn block(&self, i: usize, x: &Tensor) -> Tensor {
        self.transformer.block(i, x, self.causal)
    }

    /// FILIP's text tokens: `ln_final` and the projection applied at every position.
    ///
    /// # Shapes
    /// `x`: [batch, L, width] → [batch, L, embed_dim].
    pub fn token_head(&self, x: &Tensor) -> Tensor {
        self.ln_final.forward(x).matmul(&self.text_projection)
    }

    /// `ln_final`, pooling at the end-of-text token, and the projection.
    ///
    /// # Shapes
    /// `x`: [batch, L, width], `tokens`: [batch, L] → [batch, embed_dim].
    pub fn head(&self, x: &Tensor, tokens: &Tensor) -> Tensor {
        let b = tokens.size()[0];
        let rows = Tensor::arange(b, (Kind::Int64, tokens.device()));
        let eot = tokens.argmax(-1, false);
        let pooled = if self.final_ln_after_pool {
            self.ln_final.forward(&x.index(&[Some(rows), Some(eot)]))
        } else {
            self.ln_final.forward(x).index(&[Some(rows), Some(eot)])
        };
        pooled.matmul(&self.text_projection)
    }
}

/// The positions a causal text tower needs of a batch of token rows: up to and including the
/// furthest pooled token over the rows (each row's first maximal id, as `argmax` pools), since
/// causal attention makes every later position irrelevant to every row's pooled output.
/// OpenCLIP runs all `context_length` positions; captions are usually much shorter.
pub fn trimmed_length(tokens: &[i64], context_length: usize) -> usize {
    if context_length == 0 {
        return 0;
    }
    tokens
        .chunks(context_length)
        .map(|row| {
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&t| t == max).map_or(0, |i| i + 1)
        })
        .max()
        .unwrap_or(context_length)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_every_rows_end_of_text() {
        // Rows of 6: sot=9 … eot=10, padded with 0.
        let tokens = [9, 3, 10, 0, 0, 0, 9, 4, 5, 10, 0, 0];
        assert_eq!(trimmed_length(&tokens, 6), 4);
        // A full row keeps everything; ties take the first maximum, as argmax does.
        assert_eq!(trimmed_length(&[9, 1, 2, 3, 4, 10], 6), 6);
        assert_eq!(trimmed_length(&[10, 10, 0, 0], 4), 1);
    }
}
