//! Model configurations in OpenCLIP's JSON format, with built-in presets.
//!
//! A config file is the same JSON that OpenCLIP keeps in `open_clip/model_configs/*.json`,
//! e.g. `{"embed_dim": 512, "vision_cfg": {...}, "text_cfg": {...}}`. Keys that change
//! the architecture in ways clipfleet does not implement are rejected by name rather than
//! ignored, so a config never silently trains a different model.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, TrainError};

/// OpenCLIP's initial log logit scale for SigLIP models, θ = ln 10.
pub const SIGLIP_INIT_LOGIT_SCALE: f64 = std::f64::consts::LN_10;
/// OpenCLIP's initial SigLIP logit bias, β = −10.
pub const SIGLIP_INIT_LOGIT_BIAS: f64 = -10.0;

/// The depth of the image tower, as OpenCLIP's `vision_cfg.layers`: a number of residual
/// attention blocks makes a ViT, a list of four stage depths a `ModifiedResNet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VisionLayers {
    /// Residual attention blocks of a ViT.
    Blocks(i64),
    /// Bottleneck blocks in each of a ModifiedResNet's four stages, e.g. `[3, 4, 6, 3]` (RN50).
    Stages(Vec<i64>),
}

/// The image tower: a ViT (`open_clip.transformer.VisionTransformer`) or, when `layers` is a
/// list, a ResNet (`open_clip.modified_resnet.ModifiedResNet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// Input resolution in pixels (square).
    pub image_size: i64,
    /// Residual attention blocks (ViT), or the four stage depths (ResNet).
    pub layers: VisionLayers,
    /// Token width (ViT), or the stem's width (ResNet: the last stage is 32× wider).
    pub width: i64,
    /// Width of one attention head; heads = width / head_width (ViT), or width · 32 /
    /// head_width in a ResNet's attention pool.
    #[serde(default = "default_head_width")]
    pub head_width: i64,
    /// MLP hidden width as a multiple of `width`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Patch side in pixels (ViT); `null` for a ResNet.
    pub patch_size: Option<i64>,
    /// Apply `ln_post` after pooling instead of before (OpenCLIP `final_ln_after_pool`).
    #[serde(default)]
    pub final_ln_after_pool: bool,
    /// Skip `ln_pre` (OpenCLIP `no_ln_pre`).
    #[serde(default)]
    pub no_ln_pre: bool,
    /// Pooling: only `"tok"` (the class token) is implemented.
    #[serde(default = "default_vision_pool", skip_serializing_if = "is_default_vision_pool")]
    pub pool_type: String,
    /// Layer-scale init; only `null` (no layer scale) is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ls_init_value: Option<f64>,
    /// FLIP patch dropout: the fraction of patch tokens dropped per sample in training (ViT
    /// only; the class token is kept), in [0, 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub patch_dropout: f64,
    /// CoCa: pool with an attentional pooler (needs `multimodal_cfg`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attentional_pool: bool,
    /// CoCa: the pooler's queries (query 0 is the contrastive embedding); OpenCLIP's default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_pooler_queries: Option<i64>,
    /// CoCa: the pooler's heads; OpenCLIP's default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_pooler_heads: Option<i64>,
    /// Recorded (OpenCLIP's flag to return tokens; CoCa's towers always do).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_tokens: bool,
}

/// The text tower: a causal transformer (`open_clip.transformer.TextTransformer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Maximum number of tokens, sot and eot included.
    #[serde(default = "default_context_length")]
    pub context_length: i64,
    /// Vocabulary size; the largest id is the end-of-text token.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: i64,
    /// Token width.
    #[serde(default = "default_text_width")]
    pub width: i64,
    /// Attention heads.
    #[serde(default = "default_text_heads")]
    pub heads: i64,
    /// Number of residual attention blocks.
    #[serde(default = "default_text_layers")]
    pub layers: i64,
    /// MLP hidden width as a multiple of `width`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Apply `ln_final` after pooling instead of before.
    #[serde(default)]
    pub final_ln_after_pool: bool,
    /// Disable the causal mask.
    #[serde(default)]
    pub no_causal_mask: bool,
    /// Pooling: only `"argmax"` (the end-of-text token) is implemented.
    #[serde(default = "default_text_pool", skip_serializing_if = "is_default_text_pool")]
    pub pool_type: String,
    /// Layer-scale init; only `null` is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ls_init_value: Option<f64>,
    /// A bias on the text projection; only `false` is implemented.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proj_bias: bool,
    /// Tokenizer hint used by OpenCLIP for Hugging Face tokenizers; recorded, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_tokenizer_name: Option<String>,
    /// CoCa: a class token appended after the caption (needs `multimodal_cfg`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embed_cls: bool,
    /// Recorded (OpenCLIP's flag to return tokens).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_tokens: bool,
}

/// CoCa's multimodal decoder (OpenCLIP `MultimodalCfg`); its presence makes the model a CoCa.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultimodalConfig {
    /// The longest caption it decodes.
    pub context_length: i64,
    /// Recorded; the decoder predicts over `text_cfg.vocab_size`, as in OpenCLIP.
    pub vocab_size: i64,
    /// Width; must equal `embed_dim`.
    pub width: i64,
    /// Heads.
    pub heads: i64,
    /// Self-attention + cross-attention layer pairs.
    pub layers: i64,
    /// Recorded, unused (as in OpenCLIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_pooler_heads: Option<i64>,
}

/// A whole CLIP model, as OpenCLIP's model config JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    /// Width of the shared embedding space.
    pub embed_dim: i64,
    /// Image tower.
    pub vision_cfg: VisionConfig,
    /// Text tower.
    pub text_cfg: TextConfig,
    /// Use QuickGELU (`x * sigmoid(1.702 x)`) instead of GELU, as the original OpenAI weights.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quick_gelu: bool,
    /// Initial value of the log logit scale; OpenCLIP's default is ln(1/0.07).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_logit_scale: Option<f64>,
    /// Initial logit bias (SigLIP); a bias parameter exists only when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_logit_bias: Option<f64>,
    /// CoCa's multimodal decoder: set, the model is a CoCa (`open_clip.coca_model.CoCa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multimodal_cfg: Option<MultimodalConfig>,
    /// Recorded (OpenCLIP builds a custom-text model; CoCa configs set it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub custom_text: bool,
}

fn default_head_width() -> i64 {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_vision_pool() -> String {
    "tok".into()
}
fn is_default_vision_pool(s: &str) -> bool {
    s == "tok"
}
fn default_text_pool() -> String {
    "argmax".into()
}
fn is_default_text_pool(s: &str) -> bool {
    s == "argmax"
}
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
fn default_context_length() -> i64 {
    77
}
fn default_vocab_size() -> i64 {
    49408
}
fn default_text_width() -> i64 {
    512
}
fn default_text_heads() -> i64 {
    8
}
fn default_text_layers() -> i64 {
    12
}

/// Names of the built-in presets, in the order `--help` lists them.
pub const PRESET_NAMES: &[&str] = &[
    "tiny",
    "tiny-rn",
    "tiny-coca",
    "small",
    "ViT-B-32",
    "ViT-B-16",
    "ViT-L-14",
    "RN50",
    "RN101",
    "RN50x4",
    "RN50x16",
    "RN50x64",
    "coca_ViT-B-32",
    "coca_ViT-L-14",
];

impl VisionConfig {
    /// Number of attention heads: of each block (ViT), or of the attention pool (ResNet).
    pub fn heads(&self) -> i64 {
        match self.layers {
            VisionLayers::Blocks(_) => self.width / self.head_width,
            VisionLayers::Stages(_) => self.width * 32 / self.head_width,
        }
    }

    /// The four stage depths when the tower is a ResNet.
    pub fn resnet_stages(&self) -> Option<&[i64]> {
        match &self.layers {
            VisionLayers::Stages(stages) => Some(stages),
            VisionLayers::Blocks(_) => None,
        }
    }

    /// Residual attention blocks of a ViT; 0 for a ResNet.
    pub fn blocks(&self) -> i64 {
        match self.layers {
            VisionLayers::Blocks(n) => n,
            VisionLayers::Stages(_) => 0,
        }
    }

    /// The ViT's patch side (1 for a ResNet, which `validate` guarantees has none).
    pub fn patch(&self) -> i64 {
        self.patch_size.unwrap_or(1)
    }

    /// Patches per side (ViT), or the attention pool's grid side (ResNet: image_size / 32).
    pub fn grid_size(&self) -> i64 {
        match self.layers {
            VisionLayers::Blocks(_) => self.image_size / self.patch(),
            VisionLayers::Stages(_) => self.image_size / 32,
        }
    }

    /// Patch tokens a ViT keeps in training under patch dropout (OpenCLIP's `PatchDropout`:
    /// `max(1, int(patches · (1 − p)))`); all of them when `patch_dropout` is 0.
    pub fn patches_kept(&self) -> i64 {
        let patches = self.grid_size() * self.grid_size();
        if self.patch_dropout > 0.0 {
            ((patches as f64 * (1.0 - self.patch_dropout)) as i64).max(1)
        } else {
            patches
        }
    }
}

impl ClipConfig {
    /// OpenCLIP's text tower for the OpenAI-style presets: 77 tokens, 49,408-token BPE
    /// vocabulary, 12 layers, with the given width and heads.
    fn openai_text(width: i64, heads: i64) -> TextConfig {
        TextConfig {
            context_length: 77,
            vocab_size: 49408,
            width,
            heads,
            layers: 12,
            mlp_ratio: 4.0,
            final_ln_after_pool: false,
            no_causal_mask: false,
            pool_type: default_text_pool(),
            ls_init_value: None,
            proj_bias: false,
            hf_tokenizer_name: None,
            embed_cls: false,
            output_tokens: false,
        }
    }

    fn vit(image_size: i64, layers: i64, width: i64, patch_size: i64) -> VisionConfig {
        VisionConfig {
            image_size,
            layers: VisionLayers::Blocks(layers),
            width,
            head_width: 64,
            mlp_ratio: 4.0,
            patch_size: Some(patch_size),
            final_ln_after_pool: false,
            no_ln_pre: false,
            pool_type: default_vision_pool(),
            ls_init_value: None,
            patch_dropout: 0.0,
            attentional_pool: false,
            attn_pooler_queries: None,
            attn_pooler_heads: None,
            output_tokens: false,
        }
    }

    fn with_towers(embed_dim: i64, vision_cfg: VisionConfig, text_cfg: TextConfig) -> Self {
        ClipConfig {
            embed_dim,
            vision_cfg,
            text_cfg,
            quick_gelu: false,
            init_logit_scale: None,
            init_logit_bias: None,
            multimodal_cfg: None,
            custom_text: false,
        }
    }

    /// OpenCLIP `ViT-B-32`: 224 px, 32 px patches, 12×768 image tower, 12×512 text tower.
    pub fn vit_b_32() -> Self {
        Self::with_towers(512, Self::vit(224, 12, 768, 32), Self::openai_text(512, 8))
    }

    /// OpenCLIP `ViT-B-16`.
    pub fn vit_b_16() -> Self {
        Self::with_towers(512, Self::vit(224, 12, 768, 16), Self::openai_text(512, 8))
    }

    /// OpenCLIP `ViT-L-14`.
    pub fn vit_l_14() -> Self {
        Self::with_towers(768, Self::vit(224, 24, 1024, 14), Self::openai_text(768, 12))
    }

    /// OpenCLIP's ModifiedResNet image tower.
    fn resnet(image_size: i64, stages: [i64; 4], width: i64) -> VisionConfig {
        VisionConfig {
            layers: VisionLayers::Stages(stages.to_vec()),
            patch_size: None,
            ..Self::vit(image_size, 0, width, 1)
        }
    }

    /// OpenCLIP `RN50`: stages [3, 4, 6, 3], 224 px, 1024-d embeddings.
    pub fn rn50() -> Self {
        Self::with_towers(1024, Self::resnet(224, [3, 4, 6, 3], 64), Self::openai_text(512, 8))
    }

    /// OpenCLIP `RN101`.
    pub fn rn101() -> Self {
        Self::with_towers(512, Self::resnet(224, [3, 4, 23, 3], 64), Self::openai_text(512, 8))
    }

    /// OpenCLIP `RN50x4`.
    pub fn rn50x4() -> Self {
        Self::with_towers(640, Self::resnet(288, [4, 6, 10, 6], 80), Self::openai_text(640, 10))
    }

    /// OpenCLIP `RN50x16`.
    pub fn rn50x16() -> Self {
        Self::with_towers(768, Self::resnet(384, [6, 8, 18, 8], 96), Self::openai_text(768, 12))
    }

    /// OpenCLIP `RN50x64`.
    pub fn rn50x64() -> Self {
        Self::with_towers(1024, Self::resnet(448, [3, 15, 36, 10], 128), Self::openai_text(1024, 16))
    }

    /// OpenCLIP's CoCa configs: a ViT with the attentional pooler, a text tower with the class
    /// token, and the multimodal decoder, all of `embed_dim` width where they meet.
    fn coca(
        embed_dim: i64,
        vision: VisionConfig,
        text: TextConfig,
        pooler_heads: i64,
        decoder_pool_heads: i64,
    ) -> Self {
        let multimodal = MultimodalConfig {
            context_length: text.context_length,
            vocab_size: text.vocab_size,
            width: text.width,
            heads: text.heads,
            layers: text.layers,
            attn_pooler_heads: Some(decoder_pool_heads),
        };
        let vision = VisionConfig {
            attentional_pool: true,
            attn_pooler_heads: Some(pooler_heads),
            output_tokens: true,
            ..vision
        };
        let text = TextConfig { embed_cls: true, output_tokens: true, ..text };
        ClipConfig { multimodal_cfg: Some(multimodal), custom_text: true, ..Self::with_towers(embed_dim, vision, text) }
    }

    /// OpenCLIP `coca_ViT-B-32`.
    pub fn coca_vit_b_32() -> Self {
        let text = TextConfig { context_length: 76, ..Self::openai_text(512, 8) };
        Self::coca(512, Self::vit(224, 12, 768, 32), text, 8, 8)
    }

    /// OpenCLIP `coca_ViT-L-14`.
    pub fn coca_vit_l_14() -> Self {
        let text = TextConfig { context_length: 76, ..Self::openai_text(768, 12) };
        Self::coca(768, Self::vit(224, 24, 1024, 14), text, 8, 12)
    }

    /// A CPU-sized CoCa for the synthetic data: `tiny`'s towers, 17 pooler queries (16 image
    /// tokens for the decoder) and a 3-layer decoder.
    pub fn tiny_coca() -> Self {
        let mut cfg = Self::coca(128, Self::vit(64, 3, 128, 8), Self::synthetic_text(128, 2, 3), 2, 2);
        cfg.vision_cfg.attn_pooler_queries = Some(17);
        cfg
    }

    /// The MLP activation: QuickGELU when `quick_gelu`, else GELU.
    pub fn activation(&self) -> super::transformer::Activation {
        if self.quick_gelu {
            super::transformer::Activation::QuickGelu
        } else {
            super::transformer::Activation::Gelu
        }
    }

    /// Whether the model is a CoCa (it has a multimodal decoder).
    pub fn is_coca(&self) -> bool {
        self.multimodal_cfg.is_some()
    }

    /// CoCa's pooler queries (OpenCLIP's default 256).
    pub fn pooler_queries(&self) -> i64 {
        self.vision_cfg.attn_pooler_queries.unwrap_or(256)
    }

    /// CoCa's pooler heads (OpenCLIP's default 8).
    pub fn pooler_heads(&self) -> i64 {
        self.vision_cfg.attn_pooler_heads.unwrap_or(8)
    }

    /// A CPU-sized ResNet CLIP for the synthetic data: 64 px images, stages [1, 1, 1, 1] of
    /// stem width 16, and `tiny`'s text tower.
    pub fn tiny_rn() -> Self {
        Self::with_towers(128, Self::resnet(64, [1, 1, 1, 1], 16), Self::synthetic_text(128, 2, 3))
    }

    /// A CPU-sized model for the synthetic data: 64 px images in 8 px patches, 3×128 towers,
    /// and the 512-word synthetic vocabulary with 32-token captions.
    pub fn tiny() -> Self {
        Self::with_towers(128, Self::vit(64, 3, 128, 8), Self::synthetic_text(128, 2, 3))
    }

    /// A larger CPU model for the synthetic data: 64 px images, 6×256 towers.
    pub fn small() -> Self {
        Self::with_towers(256, Self::vit(64, 6, 256, 8), Self::synthetic_text(256, 4, 6))
    }

    /// A text tower for the synthetic data: the 512-id word vocabulary and 32-token captions.
    fn synthetic_text(width: i64, heads: i64, layers: i64) -> TextConfig {
        TextConfig { layers, vocab_size: 512, context_length: 32, ..Self::openai_text(width, heads) }
    }

    /// Looks up a built-in preset by name.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            "ViT-B-32" => Ok(Self::vit_b_32()),
            "ViT-B-16" => Ok(Self::vit_b_16()),
            "ViT-L-14" => Ok(Self::vit_l_14()),
            "tiny-rn" => Ok(Self::tiny_rn()),
            "tiny-coca" => Ok(Self::tiny_coca()),
            "coca_ViT-B-32" => Ok(Self::coca_vit_b_32()),
            "coca_ViT-L-14" => Ok(Self::coca_vit_l_14()),
            "RN50" => Ok(Self::rn50()),
            "RN101" => Ok(Self::rn101()),
            "RN50x4" => Ok(Self::rn50x4()),
            "RN50x16" => Ok(Self::rn50x16()),
            "RN50x64" => Ok(Self::rn50x64()),
            other => Err(ConfigError::invalid("model", other, PRESET_NAMES.join(", "))),
        }
    }

    /// Reads an OpenCLIP model config JSON file and validates it.
    pub fn from_json_file(path: &Path) -> Result<Self, TrainError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
        let cfg: ClipConfig = serde_json::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), reason: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects shapes and options that the implementation does not support, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        self.validate_image_tower()?;
        let positive = [
            ("embed_dim", self.embed_dim),
            ("vision_cfg.image_size", v.image_size),
            ("vision_cfg.width", v.width),
            ("vision_cfg.head_width", v.head_width),
            ("text_cfg.context_length", t.context_length),
            ("text_cfg.vocab_size", t.vocab_size),
            ("text_cfg.width", t.width),
            ("text_cfg.heads", t.heads),
            ("text_cfg.layers", t.layers),
        ];
        for (key, value) in positive {
            if value < 1 {
                return Err(ConfigError::invalid(key, value, "an integer >= 1"));
            }
        }
        if t.width % t.heads != 0 {
            return Err(ConfigError::invalid(
                "text_cfg.width",
                t.width,
                format!("a multiple of text_cfg.heads ({})", t.heads),
            ));
        }
        for (key, ratio) in [("vision_cfg.mlp_ratio", v.mlp_ratio), ("text_cfg.mlp_ratio", t.mlp_ratio)] {
            if !(ratio > 0.0 && ratio.is_finite()) {
                return Err(ConfigError::invalid(key, ratio, "a positive number"));
            }
        }
        if v.pool_type != "tok" {
            return Err(ConfigError::invalid("vision_cfg.pool_type", &v.pool_type, "tok"));
        }
        if t.pool_type != "argmax" {
            return Err(ConfigError::invalid("text_cfg.pool_type", &t.pool_type, "argmax"));
        }
        if v.ls_init_value.is_some() {
            return Err(ConfigError::invalid("vision_cfg.ls_init_value", "set", "null"));
        }
        if t.ls_init_value.is_some() {
            return Err(ConfigError::invalid("text_cfg.ls_init_value", "set", "null"));
        }
        self.validate_coca()?;
        if t.proj_bias {
            return Err(ConfigError::invalid("text_cfg.proj_bias", true, "false"));
        }
        Ok(())
    }

    /// CoCa's keys come together, with the widths OpenCLIP's CoCa needs.
    fn validate_coca(&self) -> Result<(), ConfigError> {
        let (v, t) = (&self.vision_cfg, &self.text_cfg);
        let Some(m) = &self.multimodal_cfg else {
            for (key, set) in [("vision_cfg.attentional_pool", v.attentional_pool), ("text_cfg.embed_cls", t.embed_cls)]
            {
                if set {
                    return Err(ConfigError::invalid(key, true, "false without multimodal_cfg (only CoCa has it)"));
                }
            }
            return Ok(());
        };
        if self.is_resnet() {
            return Err(ConfigError::invalid("vision_cfg.layers", "a ResNet", "a ViT for CoCa"));
        }
        for (key, set) in [("vision_cfg.attentional_pool", v.attentional_pool), ("text_cfg.embed_cls", t.embed_cls)] {
            if !set {
                return Err(ConfigError::invalid(key, false, "true for CoCa (multimodal_cfg is set)"));
            }
        }
        if t.width != self.embed_dim || m.width != self.embed_dim {
            return Err(ConfigError::invalid(
                "text_cfg.width",
                format!("{} (multimodal_cfg.width {})", t.width, m.width),
                format!("embed_dim ({}) for both: OpenCLIP's CoCa has no projection between them", self.embed_dim),
            ));
        }
        if self.pooler_queries() < 2 {
            return Err(ConfigError::invalid(
                "vision_cfg.attn_pooler_queries",
                self.pooler_queries(),
                "an integer >= 2",
            ));
        }
        let heads = self.pooler_heads();
        if heads < 1 || self.embed_dim % heads != 0 {
            return Err(ConfigError::invalid("vision_cfg.attn_pooler_heads", heads, "a divisor of embed_dim"));
        }
        if m.layers < 1 || m.heads < 1 || m.width % m.heads != 0 {
            return Err(ConfigError::invalid("multimodal_cfg.heads", m.heads, "a divisor of multimodal_cfg.width"));
        }
        if v.patch_dropout != 0.0 {
            return Err(ConfigError::invalid("vision_cfg.patch_dropout", v.patch_dropout, "0 for CoCa"));
        }
        Ok(())
    }

    /// The image tower's own checks: a ViT's patches and heads, a ResNet's stages.
    fn validate_image_tower(&self) -> Result<(), ConfigError> {
        let v = &self.vision_cfg;
        if !(0.0..1.0).contains(&v.patch_dropout) {
            return Err(ConfigError::invalid("vision_cfg.patch_dropout", v.patch_dropout, "a number in [0, 1)"));
        }
        match &v.layers {
            VisionLayers::Blocks(layers) => {
                if *layers < 1 {
                    return Err(ConfigError::invalid(
                        "vision_cfg.layers",
                        layers,
                        "an integer >= 1, or 4 stage depths",
                    ));
                }
                let Some(patch) = v.patch_size.filter(|p| *p >= 1) else {
                    return Err(ConfigError::invalid(
                        "vision_cfg.patch_size",
                        format!("{:?}", v.patch_size),
                        "an integer >= 1 for a ViT",
                    ));
                };
                if v.head_width < 1 || v.width % v.head_width != 0 {
                    return Err(ConfigError::invalid(
                        "vision_cfg.width",
                        v.width,
                        format!("a multiple of vision_cfg.head_width ({})", v.head_width),
                    ));
                }
                if v.image_size % patch != 0 {
                    return Err(ConfigError::invalid(
                        "vision_cfg.image_size",
                        v.image_size,
                        format!("a multiple of vision_cfg.patch_size ({patch})"),
                    ));
                }
            }
            VisionLayers::Stages(stages) => {
                if stages.len() != 4 || stages.iter().any(|n| *n < 1) {
                    return Err(ConfigError::invalid(
                        "vision_cfg.layers",
                        format!("{stages:?}"),
                        "4 stage depths >= 1 (a ResNet), or one integer (a ViT)",
                    ));
                }
                if v.patch_size.is_some() {
                    return Err(ConfigError::invalid("vision_cfg.patch_size", "set", "null for a ResNet"));
                }
                if v.image_size < 32 || v.image_size % 32 != 0 {
                    return Err(ConfigError::invalid(
                        "vision_cfg.image_size",
                        v.image_size,
                        "a multiple of 32 for a ResNet",
                    ));
                }
                if v.width < 2 || v.width % 2 != 0 || v.head_width < 1 || (v.width * 32) % v.head_width != 0 {
                    return Err(ConfigError::invalid(
                        "vision_cfg.width",
                        v.width,
                        format!(
                            "an even number with width · 32 a multiple of vision_cfg.head_width ({})",
                            v.head_width
                        ),
                    ));
                }
                if v.patch_dropout != 0.0 {
                    return Err(ConfigError::invalid("vision_cfg.patch_dropout", v.patch_dropout, "0 for a ResNet"));
                }
            }
        }
        Ok(())
    }

    /// The config for training with the SigLIP loss: OpenCLIP's SigLIP initial values
    /// θ = ln 10 and β = −10 where the config sets none, which also creates the
    /// `logit_bias` parameter. CLIP configs (and their checkpoints) are left as they are.
    pub fn with_siglip_init(mut self) -> Self {
        self.init_logit_scale.get_or_insert(SIGLIP_INIT_LOGIT_SCALE);
        self.init_logit_bias.get_or_insert(SIGLIP_INIT_LOGIT_BIAS);
        self
    }

    /// Number of image tokens, class token included.
    pub fn vision_tokens(&self) -> i64 {
        self.vision_cfg.grid_size() * self.vision_cfg.grid_size() + 1
    }

    /// Checks that the model can train with the FILIP loss: token features need a ViT image tower.
    pub fn validate_for_filip(&self) -> Result<(), ConfigError> {
        if self.is_coca() {
            return Err(ConfigError::invalid("loss", "filip", "clip for a CoCa model"));
        }
        if self.is_resnet() {
            return Err(ConfigError::invalid(
                "loss",
                "filip",
                "clip or siglip with a ResNet image tower (FILIP needs ViT patch tokens)",
            ));
        }
        Ok(())
    }

    /// Whether the image tower is a ModifiedResNet.
    pub fn is_resnet(&self) -> bool {
        self.vision_cfg.resnet_stages().is_some()
    }
}

/// Resolves `--model NAME` or `--model-config FILE` into a config.
pub fn resolve_model(name: Option<&str>, config_file: Option<&Path>) -> Result<ClipConfig, TrainError> {
    match (name, config_file) {
        (_, Some(path)) => ClipConfig::from_json_file(path),
        (Some(name), None) => Ok(ClipConfig::preset(name)?),
        (None, None) => Ok(ClipConfig::tiny()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for name in PRESET_NAMES {
            ClipConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn openclip_json_parses() {
        let json = r#"{"embed_dim":512,"vision_cfg":{"image_size":224,"layers":12,"width":768,"patch_size":32},"text_cfg":{"context_length":77,"vocab_size":49408,"width":512,"heads":8,"layers":12}}"#;
        let cfg: ClipConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, ClipConfig::vit_b_32());
    }

    /// Issue 4: SigLIP gets OpenCLIP's initial values and a `logit_bias` under its state-dict
    /// name; a CLIP model has none, so CLIP checkpoints keep their keys.
    #[test]
    fn siglip_init_adds_logit_bias() {
        use crate::model::Clip;
        let cfg = ClipConfig::tiny().with_siglip_init();
        assert_eq!((cfg.init_logit_scale, cfg.init_logit_bias), (Some(10f64.ln()), Some(-10.0)));
        let model = Clip::new(&cfg, tch::Device::Cpu).unwrap();
        assert_eq!(model.logit_bias().map(|b| b.double_value(&[])), Some(-10.0));
        assert!((model.logit_scale().double_value(&[]) - 10f64.ln()).abs() < 1e-6);
        assert!(model.named_parameters().iter().any(|(n, _)| n == "logit_bias"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("siglip.safetensors");
        model.save_safetensors(&path).unwrap();
        let mut again = Clip::new(&cfg, tch::Device::Cpu).unwrap();
        again.load_safetensors(&path).unwrap();
        let clip = Clip::new(&ClipConfig::tiny(), tch::Device::Cpu).unwrap();
        assert!(clip.logit_bias().is_none());
        assert!(!clip.named_parameters().iter().any(|(n, _)| n == "logit_bias"));
        // A SigLIP file does not load silently into a CLIP model (an unexpected `logit_bias`).
        let mut clip = clip;
        assert!(clip.load_safetensors(&path).unwrap_err().to_string().contains("logit_bias"));
    }

    #[test]
    fn unknown_preset_names_the_allowed_ones() {
        let err = ClipConfig::preset("ViT-X").unwrap_err().to_string();
        assert!(err.contains("model") && err.contains("ViT-B-32"), "{err}");
    }

    #[test]
    fn unsupported_option_is_named() {
        let mut cfg = ClipConfig::tiny();
        cfg.vision_cfg.patch_dropout = 1.0;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("vision_cfg.patch_dropout") && err.contains("[0, 1)"), "{err}");
        let mut cfg = ClipConfig::rn50();
        cfg.vision_cfg.patch_dropout = 0.5;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("vision_cfg.patch_dropout") && err.contains("ResNet"), "{err}");
        cfg.vision_cfg.patch_dropout = 0.0;
        cfg.vision_cfg.layers = VisionLayers::Stages(vec![3, 4, 6]);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("vision_cfg.layers"), "{err}");
    }

    /// OpenCLIP's RN*.json configs parse into the presets (`layers` a list, `patch_size` null).
    #[test]
    fn openclip_resnet_json_parses() {
        let json = r#"{"embed_dim":1024,"vision_cfg":{"image_size":224,"layers":[3,4,6,3],"width":64,"patch_size":null},"text_cfg":{"context_length":77,"vocab_size":49408,"width":512,"heads":8,"layers":12}}"#;
        let cfg: ClipConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, ClipConfig::rn50());
        assert!(cfg.is_resnet());
        assert_eq!((cfg.vision_cfg.heads(), cfg.vision_cfg.grid_size()), (32, 7));
    }
}
