//! The dual encoder: image tower, text tower and the learnable logit scale, with
//! safetensors loading and saving under OpenCLIP's state-dict keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use super::config::ClipConfig;
use super::text::TextTransformer;
use super::transformer::Activation;
use super::vision::VisionTransformer;
use crate::error::{Result, TrainError};

/// OpenCLIP's initial log logit scale, ln(1/0.07).
pub const DEFAULT_INIT_LOGIT_SCALE: f64 = 2.659_260_036_932_778_4;

/// An OpenCLIP-compatible CLIP model. All parameters live in [`Clip::var_store`],
/// named exactly as OpenCLIP's state-dict keys.
#[derive(Debug)]
pub struct Clip {
    vs: nn::VarStore,
    visual: VisionTransformer,
    text: TextTransformer,
    logit_scale: Tensor,
    logit_bias: Option<Tensor>,
    config: ClipConfig,
}

/// L2-normalises the last dimension as `F.normalize(x, dim=-1)` (eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true).clamp_min(1e-12)
}

impl Clip {
    /// Builds a randomly initialised model on `device`. Initialisation draws from
    /// libtorch's global generator: call `tch::manual_seed` first for reproducibility.
    pub fn new(config: &ClipConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let activation = if config.quick_gelu { Activation::QuickGelu } else { Activation::Gelu };
        let visual = VisionTransformer::new(&root / "visual", &config.vision_cfg, config.embed_dim, activation);
        let text = TextTransformer::new(root.clone(), &config.text_cfg, config.embed_dim, activation);
        let init_scale = config.init_logit_scale.unwrap_or(DEFAULT_INIT_LOGIT_SCALE);
        let logit_scale = root.var("logit_scale", &[], Init::Const(init_scale));
        let logit_bias = config.init_logit_bias.map(|b| root.var("logit_bias", &[], Init::Const(b)));
        Ok(Clip { vs, visual, text, logit_scale, logit_bias, config: config.clone() })
    }

    /// The model config.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The variable store holding every parameter.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// θ, the log of the logit scale (a 0-dim parameter).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The SigLIP logit bias, when the config has one.
    pub fn logit_bias(&self) -> Option<&Tensor> {
        self.logit_bias.as_ref()
    }

    /// All parameters, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let vars: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        vars.into_iter().collect()
    }

    /// Unnormalised image embeddings, in the parameters' dtype (the images are cast to it).
    ///
    /// # Shapes
    /// `images`: [batch, 3, H, W] float, normalised → [batch, embed_dim].
    pub fn encode_image(&self, images: &Tensor) -> Tensor {
        self.visual.forward(&images.to_kind(self.logit_scale.kind()))
    }

    /// Token rows (row-major, `context_length` ids each) as the text tower's input on the
    /// model's device: with causal attention only the positions up to the batch's last
    /// end-of-text token (the same features, less work); all of them otherwise.
    ///
    /// # Shapes
    /// `tokens`: b × context_length ids → [b, L] int64, L ≤ context_length.
    pub fn text_input(&self, tokens: &[i64]) -> Tensor {
        let ctx = self.config.text_cfg.context_length;
        let len = if self.text.is_causal() { super::text::trimmed_length(tokens, ctx as usize) as i64 } else { ctx };
        let rows = Tensor::from_slice(tokens).view([-1, ctx]);
        let rows = if len < ctx { rows.narrow(1, 0, len).contiguous() } else { rows };
        crate::data::host_to_device(rows, self.device())
    }

    /// Unnormalised text embeddings.
    ///
    /// # Shapes
    /// `tokens`: [batch, L] int64, L ≤ context_length (see [`Clip::text_input`]) → [batch, embed_dim].
    pub fn encode_text(&self, tokens: &Tensor) -> Tensor {
        self.text.forward(tokens)
    }

    /// L2-normalised image and text features, as OpenCLIP's `CLIP.forward`; bfloat16 or
    /// float16 features (pure bf16 weights, autocast) come out as float32, which the losses use.
    ///
    /// # Shapes
    /// `images`: [b, 3, H, W], `tokens`: [b, L], L ≤ context_length → ([b, embed_dim], [b, embed_dim]).
    pub fn forward(&self, images: &Tensor, tokens: &Tensor) -> (Tensor, Tensor) {
        let f32 = |x: Tensor| match x.kind() {
            tch::Kind::BFloat16 | tch::Kind::Half => x.to_kind(tch::Kind::Float),
            _ => x,
        };
        (l2_normalize(&f32(self.encode_image(images))), l2_normalize(&f32(self.encode_text(tokens))))
    }

    /// Casts every parameter to `kind` (float32, or bfloat16 for `pure_bf16`), in place.
    pub fn set_parameter_kind(&mut self, kind: tch::Kind) {
        match kind {
            tch::Kind::BFloat16 => self.vs.bfloat16(),
            tch::Kind::Half => self.vs.half(),
            tch::Kind::Double => self.vs.double(),
            _ => self.vs.float(),
        }
    }

    /// Clamps θ to [0, ln 100] in place, as OpenCLIP does after every optimizer step.
    pub fn clamp_logit_scale(&self) {
        tch::no_grad(|| {
            let _ = self.logit_scale.shallow_clone().clamp_(0.0, 100f64.ln());
        });
    }

    /// Loads weights saved by OpenCLIP (`safetensors.torch.save_file(model.state_dict())`)
    /// or by clipfleet. Every model parameter must be present with the right shape and
    /// no unknown tensor may be left over; tensors are converted to the model's dtype.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<()> {
        let weights_error = |reason: String| TrainError::Weights { path: path.to_path_buf(), reason };
        if !path.is_file() {
            return Err(weights_error("no such file".into()));
        }
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| weights_error(format!("not a readable safetensors file ({e})")))?;
        let mut by_name: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let vars = self.named_parameters();
        let expected: BTreeSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        let missing: Vec<&str> = expected.iter().filter(|n| !by_name.contains_key(**n)).copied().collect();
        let unexpected: Vec<&String> = by_name.keys().filter(|n| !expected.contains(n.as_str())).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(weights_error(format!(
                "does not match the model config: missing {missing:?}, unexpected {unexpected:?}"
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, var) in &vars {
                let Some(src) = by_name.remove(name) else { continue };
                if src.size() != var.size() {
                    return Err(weights_error(format!(
                        "`{name}` has shape {:?}, the model expects {:?}",
                        src.size(),
                        var.size()
                    )));
                }
                var.shallow_clone().copy_(&src.to_kind(var.kind()).to_device(var.device()));
            }
            Ok(())
        })
    }

    /// Writes every parameter to `path` as float32 safetensors with OpenCLIP's keys.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous()))
            .collect();
        Tensor::write_safetensors(&tensors, path)
            .map_err(|e| TrainError::Weights { path: path.to_path_buf(), reason: format!("cannot write: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimming the positions after the last end-of-text token changes no text feature (the
    /// tower is causal and pools at that token), up to fp32 rounding.
    #[test]
    fn trimmed_text_input_gives_the_full_contexts_features() {
        let cfg = ClipConfig::tiny();
        let model = Clip::new(&cfg, Device::Cpu).unwrap();
        let ctx = cfg.text_cfg.context_length as usize;
        let eot = cfg.text_cfg.vocab_size - 1;
        let mut tokens = vec![0i64; 3 * ctx];
        for (row, len) in [5usize, 9, 3].into_iter().enumerate() {
            for i in 0..len {
                tokens[row * ctx + i] = 1 + (7 * row + 3 * i) as i64 % 400;
            }
            tokens[row * ctx + len] = eot;
        }
        let trimmed = model.text_input(&tokens);
        assert_eq!(trimmed.size(), [3, 10]);
        let full = Tensor::from_slice(&tokens).view([3, ctx as i64]);
        let (a, b) = tch::no_grad(|| (model.encode_text(&trimmed), model.encode_text(&full)));
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max |Δ| = {diff:e}");
    }
}
