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

/// The image tower: a ViT (`open_clip.transformer.VisionTransformer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// Input resolution in pixels (square).
    pub image_size: i64,
    /// Number of residual attention blocks.
    pub layers: i64,
    /// Token width.
    pub width: i64,
    /// Width of one attention head; heads = width / head_width.
    #[serde(default = "default_head_width")]
    pub head_width: i64,
    /// MLP hidden width as a multiple of `width`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Patch side in pixels.
    pub patch_size: i64,
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
    /// Patch dropout probability; only 0 is implemented.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub patch_dropout: f64,
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
pub const PRESET_NAMES: &[&str] = &["tiny", "small", "ViT-B-32", "ViT-B-16", "ViT-L-14"];

impl VisionConfig {
    /// Number of attention heads.
    pub fn heads(&self) -> i64 {
        self.width / self.head_width
    }

    /// Patches per side.
    pub fn grid_size(&self) -> i64 {
        self.image_size / self.patch_size
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
        }
    }

    fn vit(image_size: i64, layers: i64, width: i64, patch_size: i64) -> VisionConfig {
        VisionConfig {
            image_size,
            layers,
            width,
            head_width: 64,
            mlp_ratio: 4.0,
            patch_size,
            final_ln_after_pool: false,
            no_ln_pre: false,
            pool_type: default_vision_pool(),
            ls_init_value: None,
            patch_dropout: 0.0,
        }
    }

    fn with_towers(embed_dim: i64, vision_cfg: VisionConfig, text_cfg: TextConfig) -> Self {
        ClipConfig { embed_dim, vision_cfg, text_cfg, quick_gelu: false, init_logit_scale: None, init_logit_bias: None }
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
        let positive = [
            ("embed_dim", self.embed_dim),
            ("vision_cfg.image_size", v.image_size),
            ("vision_cfg.layers", v.layers),
            ("vision_cfg.width", v.width),
            ("vision_cfg.head_width", v.head_width),
            ("vision_cfg.patch_size", v.patch_size),
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
        if v.width % v.head_width != 0 {
            return Err(ConfigError::invalid(
                "vision_cfg.width",
                v.width,
                format!("a multiple of vision_cfg.head_width ({})", v.head_width),
            ));
        }
        if v.image_size % v.patch_size != 0 {
            return Err(ConfigError::invalid(
                "vision_cfg.image_size",
                v.image_size,
                format!("a multiple of vision_cfg.patch_size ({})", v.patch_size),
            ));
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
        if v.patch_dropout != 0.0 {
            return Err(ConfigError::invalid("vision_cfg.patch_dropout", v.patch_dropout, "0"));
        }
        if t.proj_bias {
            return Err(ConfigError::invalid("text_cfg.proj_bias", true, "false"));
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
        cfg.vision_cfg.patch_dropout = 0.5;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("vision_cfg.patch_dropout"), "{err}");
    }
}
