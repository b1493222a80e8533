//! The pre-norm residual attention block and transformer shared by both towers,
//! with OpenCLIP's parameter names (`ln_1`, `attn.in_proj_weight`, `mlp.c_fc`, …).

use tch::nn::{self, Init, Module};
use tch::Tensor;

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, OpenCLIP's default.
    Gelu,
    /// `x * sigmoid(1.702 x)`, used by OpenAI's original weights.
    QuickGelu,
}

impl Activation {
    /// Applies the activation.
    pub(crate) fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
        }
    }
}

/// Standard deviations for the weights of one tower. `None` means PyTorch's default
/// initialisation of that layer (OpenCLIP leaves the image tower at the defaults).
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockInit {
    /// `attn.in_proj_weight`.
    pub attn_std: Option<f64>,
    /// `attn.out_proj.weight` and `mlp.c_proj.weight`.
    pub proj_std: Option<f64>,
    /// `mlp.c_fc.weight`.
    pub fc_std: Option<f64>,
}

impl BlockInit {
    /// OpenCLIP's `TextTransformer.init_parameters` for a text tower of `width` and `layers`.
    pub fn text_tower(width: i64, layers: i64) -> Self {
        let w = width as f64;
        BlockInit {
            attn_std: Some(w.powf(-0.5)),
            proj_std: Some(w.powf(-0.5) * (2.0 * layers as f64).powf(-0.5)),
            fc_std: Some((2.0 * w).powf(-0.5)),
        }
    }
}

/// PyTorch's default `nn.Linear` initialisation: U(±1/√fan_in) for weight and bias.
pub(crate) fn linear(p: nn::Path, fan_in: i64, fan_out: i64, weight_std: Option<f64>) -> nn::Linear {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let ws_init = match weight_std {
        Some(stdev) => Init::Randn { mean: 0.0, stdev },
        None => Init::Uniform { lo: -bound, up: bound },
    };
    nn::linear(
        p,
        fan_in,
        fan_out,
        nn::LinearConfig { ws_init, bs_init: Some(Init::Uniform { lo: -bound, up: bound }), bias: true },
    )
}

/// `nn.LayerNorm(width)` with eps 1e-5.
pub(crate) fn layer_norm(p: nn::Path, width: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![width], nn::LayerNormConfig { eps: 1e-5, ..Default::default() })
}

/// One pre-norm block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Debug)]
pub struct ResidualAttentionBlock {
    ln_1: nn::LayerNorm,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    ln_2: nn::LayerNorm,
    c_fc: nn::Linear,
    c_proj: nn::Linear,
    heads: i64,
    activation: Activation,
}

impl ResidualAttentionBlock {
    /// Creates the block's parameters under `p` (e.g. `transformer.resblocks.0`).
    pub fn new(p: nn::Path, width: i64, heads: i64, mlp_ratio: f64, activation: Activation, init: BlockInit) -> Self {
        let attn = &p / "attn";
        // nn.MultiheadAttention: xavier-uniform in_proj, zero in_proj and out_proj biases.
        let xavier = (6.0 / (width + 3 * width) as f64).sqrt();
        let in_init = match init.attn_std {
            Some(stdev) => Init::Randn { mean: 0.0, stdev },
            None => Init::Uniform { lo: -xavier, up: xavier },
        };
        let in_proj_weight = attn.var("in_proj_weight", &[3 * width, width], in_init);
        let in_proj_bias = attn.var("in_proj_bias", &[3 * width], Init::Const(0.0));
        let out_proj = linear(&attn / "out_proj", width, width, init.proj_std);
        tch::no_grad(|| {
            let _ = out_proj.bs.as_ref().map(|b| b.shallow_clone().zero_());
        });
        let hidden = (width as f64 * mlp_ratio) as i64;
        let mlp = &p / "mlp";
        ResidualAttentionBlock {
            ln_1: layer_norm(&p / "ln_1", width),
            in_proj_weight,
            in_proj_bias,
            out_proj,
            ln_2: layer_norm(&p / "ln_2", width),
            c_fc: linear(&mlp / "c_fc", width, hidden, init.fc_std),
            c_proj: linear(&mlp / "c_proj", hidden, width, init.proj_std),
            heads,
            activation,
        }
    }

    /// Multi-head self-attention through libtorch's `scaled_dot_product_attention`
    /// (flash or memory-efficient kernels on CUDA).
    ///
    /// # Shapes
    /// `x`: [batch, tokens, width] → [batch, tokens, width].
    pub fn attention(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, l, w) = x.size3().expect("attention input is [batch, tokens, width]");
        let head_dim = w / self.heads;
        let qkv = x
            .linear(&self.in_proj_weight, Some(&self.in_proj_bias))
            .view([b, l, 3, self.heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, None, false);
        self.out_proj.forward(&out.transpose(1, 2).reshape([b, l, w]))
    }

    /// The block as a cross-attention block: queries from `ln_1(x)`, keys and values from
    /// `kv` (already normalised by the caller's `ln_1_kv`), no mask; then the MLP.
    ///
    /// # Shapes
    /// `x`: [batch, tokens, width], `kv`: [batch, kv tokens, width] → [batch, tokens, width].
    pub fn forward_cross(&self, x: &Tensor, kv: &Tensor) -> Tensor {
        let (b, l, w) = x.size3().expect("attention input is [batch, tokens, width]");
        let lk = kv.size()[1];
        let weights = self.in_proj_weight.chunk(3, 0);
        let biases = self.in_proj_bias.chunk(3, 0);
        let head_dim = w / self.heads;
        let split = |t: Tensor, n: i64| t.view([b, n, self.heads, head_dim]).transpose(1, 2);
        let q = split(self.ln_1.forward(x).linear(&weights[0], Some(&biases[0])), l);
        let k = split(kv.linear(&weights[1], Some(&biases[1])), lk);
        let v = split(kv.linear(&weights[2], Some(&biases[2])), lk);
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let x = x + self.out_proj.forward(&out.transpose(1, 2).reshape([b, l, w]));
        let h = self.activation.apply(&self.c_fc.forward(&self.ln_2.forward(&x)));
        x + self.c_proj.forward(&h)
    }

    /// The block with an additive attention mask (0 or −inf) instead of the causal flag.
    ///
    /// # Shapes
    /// `x`: [batch, tokens, width], `mask`: broadcastable to [batch, heads, tokens, tokens].
    pub fn forward_masked(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let h = self.ln_1.forward(x);
        let (b, l, w) = h.size3().expect("attention input is [batch, tokens, width]");
        let head_dim = w / self.heads;
        let qkv = h
            .linear(&self.in_proj_weight, Some(&self.in_proj_bias))
            .view([b, l, 3, self.heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let mask = mask.to_kind(q.kind());
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false);
        let x = x + self.out_proj.forward(&out.transpose(1, 2).reshape([b, l, w]));
        let h = self.activation.apply(&self.c_fc.forward(&self.ln_2.forward(&x)));
        x + self.c_proj.forward(&h)
    }

    /// # Shapes
    /// `x`: [batch, tokens, width] → [batch, tokens, width].
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.attention(&self.ln_1.forward(x), causal);
        let h = self.activation.apply(&self.c_fc.forward(&self.ln_2.forward(&x)));
        x + self.c_proj.forward(&h)
    }
}

/// A stack of [`ResidualAttentionBlock`]s under `transformer.resblocks.{i}`.
#[derive(Debug)]
pub struct Transformer {
    resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    /// Creates `layers` blocks under `p / "resblocks"`.
    pub fn new(
        p: nn::Path,
        width: i64,
        layers: i64,
        heads: i64,
        mlp_ratio: f64,
        activation: Activation,
        init: BlockInit,
    ) -> Self {
        let blocks = &p / "resblocks";
        let resblocks = (0..layers)
            .map(|i| ResidualAttentionBlock::new(&blocks / i, width, heads, mlp_ratio, activation, init))
            .collect();
        Transformer { resblocks }
    }

    /// Number of blocks.
    pub fn depth(&self) -> usize {
        self.resblocks.len()
    }

    /// Block `i` alone.
    pub fn block(&self, i: usize, x: &Tensor, causal: bool) -> Tensor {
        self.resblocks[i].forward(x, causal)
    }

    /// Block `i` with an additive attention mask.
    pub fn block_masked(&self, i: usize, x: &Tensor, mask: &Tensor) -> Tensor {
        self.resblocks[i].forward_masked(x, mask)
    }

    /// # Shapes
    /// `x`: [batch, tokens, width] → [batch, tokens, width].
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for block in &self.resblocks {
            x = block.forward(&x, causal);
        }
        x
    }
}
