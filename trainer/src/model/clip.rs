//! The dual encoder: image tower, text tower and the learnable logit scale, with
//! safetensors loading and saving under OpenCLIP's state-dict keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use super::config::ClipConfig;
use super::resnet::{is_buffer, ModifiedResNet};
use super::text::TextTransformer;
use super::transformer::Activation;
use super::vision::{PatchKeep, VisionTransformer};
use crate::error::{Result, TrainError};
use crate::precision::Precision;

/// OpenCLIP's initial log logit scale, ln(1/0.07).
pub const DEFAULT_INIT_LOGIT_SCALE: f64 = 2.659_260_036_932_778_4;

/// The image tower: a ViT or a ModifiedResNet, both under `visual.*`.
#[derive(Debug)]
enum ImageTower {
    Vit(VisionTransformer),
    ResNet(ModifiedResNet),
}

/// Identifies the samples of a forward pass, for per-sample randomness (patch dropout) that
/// depends only on the sample: the run seed, the optimizer step, and the row of the batch's
/// first sample in the step's global batch (rank r's micro-batch j of m starts at
/// `r·b + j·m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleKeys {
    /// The run seed.
    pub seed: u64,
    /// The optimizer step.
    pub step: i64,
    /// Global row of the batch's first sample.
    pub first_row: i64,
}

/// An OpenCLIP-compatible CLIP model. All parameters and batch-norm buffers live in
/// [`Clip::var_store`], named exactly as OpenCLIP's state-dict keys.
///
/// Like a PyTorch module, the model is in training mode until told otherwise: patch dropout
/// and batch statistics apply then. [`Clip::eval_mode`] switches them off for a scope.
#[derive(Debug)]
pub struct Clip {
    vs: nn::VarStore,
    visual: ImageTower,
    text: TextTransformer,
    logit_scale: Tensor,
    logit_bias: Option<Tensor>,
    config: ClipConfig,
    training: AtomicBool,
    freeze_bn_stats: AtomicBool,
    grad_checkpointing: AtomicBool,
    sample_keys: Mutex<Option<SampleKeys>>,
}

/// Restores the model's previous mode when dropped (see [`Clip::eval_mode`]).
#[derive(Debug)]
pub struct ModeGuard<'a> {
    model: &'a Clip,
    was_training: bool,
}

impl Drop for ModeGuard<'_> {
    fn drop(&mut self) {
        self.model.training.store(self.was_training, Ordering::Relaxed);
    }
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
        let visual = if config.is_resnet() {
            ImageTower::ResNet(ModifiedResNet::new(&root / "visual", &config.vision_cfg, config.embed_dim))
        } else {
            ImageTower::Vit(VisionTransformer::new(&root / "visual", &config.vision_cfg, config.embed_dim, activation))
        };
        let text = TextTransformer::new(root.clone(), &config.text_cfg, config.embed_dim, activation);
        let init_scale = config.init_logit_scale.unwrap_or(DEFAULT_INIT_LOGIT_SCALE);
        let logit_scale = root.var("logit_scale", &[], Init::Const(init_scale));
        let logit_bias = config.init_logit_bias.map(|b| root.var("logit_bias", &[], Init::Const(b)));
        Ok(Clip {
            vs,
            visual,
            text,
            logit_scale,
            logit_bias,
            config: config.clone(),
            training: AtomicBool::new(true),
            freeze_bn_stats: AtomicBool::new(false),
            grad_checkpointing: AtomicBool::new(false),
            sample_keys: Mutex::new(None),
        })
    }

    /// Whether the model is in training mode (patch dropout, batch statistics).
    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// Sets training or evaluation mode, as PyTorch's `train()` / `eval()`.
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }

    /// Evaluation mode until the guard is dropped: no patch dropout, and batch norm uses
    /// (and keeps) its running statistics.
    pub fn eval_mode(&self) -> ModeGuard<'_> {
        ModeGuard { model: self, was_training: self.training.swap(false, Ordering::Relaxed) }
    }

    /// Keeps a ResNet image tower's batch norm on its running statistics even in training
    /// (OpenCLIP's `--lock-image-freeze-bn-stats`); nothing for a ViT.
    pub fn set_freeze_bn_stats(&self, freeze: bool) {
        self.freeze_bn_stats.store(freeze, Ordering::Relaxed);
    }

    /// Recompute each block's activations in the backward pass instead of keeping them
    /// (OpenCLIP's `--grad-checkpointing`); see [`Clip::backward_checkpointed`].
    pub fn set_grad_checkpointing(&self, on: bool) {
        self.grad_checkpointing.store(on, Ordering::Relaxed);
    }

    /// Whether gradient checkpointing is on.
    pub fn grad_checkpointing(&self) -> bool {
        self.grad_checkpointing.load(Ordering::Relaxed)
    }

    /// The keys of the samples that the next forward passes see (set by the training step
    /// before each micro-batch); `None` falls back to libtorch's generator for patch dropout.
    pub fn set_sample_keys(&self, keys: Option<SampleKeys>) {
        *self.sample_keys.lock().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    fn sample_keys(&self) -> Option<SampleKeys> {
        *self.sample_keys.lock().unwrap_or_else(|e| e.into_inner())
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

    /// All trainable parameters (batch-norm buffers excluded), sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.state_dict().into_iter().filter(|(n, _)| !is_buffer(n)).collect()
    }

    /// The batch-norm buffers (running statistics and counters), sorted by name; none in a ViT.
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.state_dict().into_iter().filter(|(n, _)| is_buffer(n)).collect()
    }

    /// Parameters and buffers, sorted by name: OpenCLIP's `state_dict()`.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let vars: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        vars.into_iter().collect()
    }

    /// Whether the ResNet's batch norm normalises with batch statistics now.
    fn batch_stats(&self) -> bool {
        self.is_training() && !self.freeze_bn_stats.load(Ordering::Relaxed)
    }

    /// Unnormalised image embeddings, in the parameters' dtype (the images are cast to it).
    ///
    /// # Shapes
    /// `images`: [batch, 3, H, W] float, normalised → [batch, embed_dim].
    pub fn encode_image(&self, images: &Tensor) -> Tensor {
        let images = images.to_kind(self.logit_scale.kind());
        match &self.visual {
            ImageTower::Vit(vit) => {
                let keys = self.sample_keys();
                let keep = self.is_training().then(|| keys.as_ref().map_or(PatchKeep::Global, PatchKeep::Keyed));
                vit.forward(&images, keep.as_ref())
            }
            ImageTower::ResNet(resnet) => resnet.forward(&images, self.batch_stats()),
        }
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

    /// Back-propagates `g_image` and `g_text`, the loss's gradients with respect to the
    /// normalised features that [`Clip::forward`] gives for `images` and `tokens`, into the
    /// parameters, as `(f · g).sum().backward()` after a forward pass with a graph would,
    /// but holding only each block's input (gradient checkpointing): one forward pass
    /// without a graph keeps the inputs of every block, then the backward pass goes from the
    /// head down, re-running one block at a time with a graph. Costs one more forward pass.
    /// Stochastic ops replay identically: patch dropout is keyed by sample, and the ResNet's
    /// batch statistics are those of the same micro-batch.
    ///
    /// # Shapes
    /// as [`Clip::forward`]; `g_image`, `g_text`: [b, embed_dim] float32.
    pub fn backward_checkpointed(
        &self,
        precision: Precision,
        images: &Tensor,
        tokens: &Tensor,
        g_image: &Tensor,
        g_text: &Tensor,
    ) {
        let to_f32 = |x: Tensor| x.to_kind(Kind::Float);
        if self.tower_trains(|n| n.starts_with("visual.")) {
            let images = images.to_kind(self.logit_scale.kind());
            match &self.visual {
                ImageTower::Vit(vit) => {
                    let keys = self.sample_keys();
                    let keep = self.is_training().then(|| keys.as_ref().map_or(PatchKeep::Global, PatchKeep::Keyed));
                    backward_by_block(
                        precision,
                        &|| vit.stem(&images, keep.as_ref()),
                        vit.depth(),
                        &|i, x| vit.block(i, x),
                        &|x| l2_normalize(&to_f32(vit.head(x))),
                        g_image,
                    );
                }
                ImageTower::ResNet(resnet) => {
                    let train = self.batch_stats();
                    backward_by_block(
                        precision,
                        &|| resnet.stem(&images, train),
                        resnet.depth(),
                        &|i, x| resnet.block(i, x, train),
                        &|x| l2_normalize(&to_f32(resnet.head(x))),
                        g_image,
                    );
                }
            }
        }
        if self.tower_trains(|n| !n.starts_with("visual.") && !n.starts_with("logit_")) {
            let text = &self.text;
            backward_by_block(
                precision,
                &|| text.stem(tokens),
                text.depth(),
                &|i, x| text.block(i, x),
                &|x| l2_normalize(&to_f32(text.head(x, tokens))),
                g_text,
            );
        }
    }

    /// Whether any parameter whose name passes `in_tower` is trainable.
    fn tower_trains(&self, in_tower: impl Fn(&str) -> bool) -> bool {
        self.named_parameters().iter().any(|(n, p)| in_tower(n) && p.requires_grad())
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
    /// or by clipfleet. Every model parameter and buffer must be present with the right shape
    /// and no unknown tensor may be left over; tensors are converted to the model's dtypes.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<()> {
        let weights_error = |reason: String| TrainError::Weights { path: path.to_path_buf(), reason };
        if !path.is_file() {
            return Err(weights_error("no such file".into()));
        }
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| weights_error(format!("not a readable safetensors file ({e})")))?;
        let mut by_name: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let vars = self.state_dict();
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

    /// Writes every parameter (float32) and batch-norm buffer (float32 statistics, int64
    /// counters, as OpenCLIP) to `path` as safetensors with OpenCLIP's keys.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .state_dict()
            .into_iter()
            .map(|(n, t)| {
                let kind = if t.is_floating_point() { Kind::Float } else { t.kind() };
                (n, t.detach().to_device(Device::Cpu).to_kind(kind).contiguous())
            })
            .collect();
        Tensor::write_safetensors(&tensors, path)
            .map_err(|e| TrainError::Weights { path: path.to_path_buf(), reason: format!("cannot write: {e}") })
    }
}

/// Gradient checkpointing of one tower: `stem`, `depth` blocks and `head` (which ends with
/// the normalised float32 features), back-propagating `g` block by block.
fn backward_by_block(
    precision: Precision,
    stem: &dyn Fn() -> Tensor,
    depth: usize,
    block: &dyn Fn(usize, &Tensor) -> Tensor,
    head: &dyn Fn(&Tensor) -> Tensor,
    g: &Tensor,
) {
    // Every block's input, without a graph.
    let mut inputs = Vec::with_capacity(depth + 1);
    tch::no_grad(|| {
        let mut x = precision.forward(stem);
        for i in 0..depth {
            let next = precision.forward(|| block(i, &x));
            inputs.push(x);
            x = next;
        }
        inputs.push(x);
    });
    // Down from the head, one segment at a time: ∂L/∂(its input) feeds the one below.
    let leaf = |x: &Tensor| x.detach().set_requires_grad(true);
    let x = leaf(&inputs[depth]);
    let f = precision.forward(|| head(&x));
    (f * g.detach()).sum(Kind::Float).backward();
    let mut grad = x.grad();
    for i in (0..depth).rev() {
        let x = leaf(&inputs[i]);
        inputs.truncate(i + 1);
        let y = precision.forward(|| block(i, &x));
        (y.to_kind(Kind::Float) * grad.to_kind(Kind::Float)).sum(Kind::Float).backward();
        grad = x.grad();
    }
    let x0 = precision.forward(stem);
    if x0.requires_grad() {
        (x0.to_kind(Kind::Float) * grad.to_kind(Kind::Float)).sum(Kind::Float).backward();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VisionConfig;

    /// Gradients through [`Clip::backward_checkpointed`] equal plain autograd's (relative
    /// ≤ 1e-6 per tensor), for a ViT with patch dropout and for a ResNet in training mode.
    #[test]
    fn checkpointed_backward_gives_autograds_gradients() {
        for cfg in [
            ClipConfig {
                vision_cfg: VisionConfig { patch_dropout: 0.5, ..ClipConfig::tiny().vision_cfg },
                ..ClipConfig::tiny()
            },
            ClipConfig::tiny_rn(),
        ] {
            tch::manual_seed(5);
            let model = Clip::new(&cfg, Device::Cpu).unwrap();
            // Zero-initialised last gains would cut every ResNet branch off from the gradient.
            tch::no_grad(|| {
                for (_, p) in model.named_parameters().iter().filter(|(n, _)| n.contains("bn")) {
                    let _ = p.shallow_clone().g_add_(&(p.randn_like() * 0.1));
                }
            });
            let side = cfg.vision_cfg.image_size;
            let images = Tensor::randn([6, 3, side, side], (Kind::Float, Device::Cpu));
            let tokens = Tensor::randint_low(1, cfg.text_cfg.vocab_size, [6, 12], (Kind::Int64, Device::Cpu));
            let g_image = Tensor::randn([6, cfg.embed_dim], (Kind::Float, Device::Cpu));
            let g_text = Tensor::randn([6, cfg.embed_dim], (Kind::Float, Device::Cpu));
            model.set_sample_keys(Some(SampleKeys { seed: 1, step: 2, first_row: 3 }));
            let grads = |checkpointed: bool| {
                for (_, mut p) in model.named_parameters() {
                    p.zero_grad();
                }
                if checkpointed {
                    model.backward_checkpointed(Precision::Fp32, &images, &tokens, &g_image, &g_text);
                } else {
                    let (fi, ft) = model.forward(&images, &tokens);
                    ((fi * &g_image).sum(Kind::Float) + (ft * &g_text).sum(Kind::Float)).backward();
                }
                model
                    .named_parameters()
                    .into_iter()
                    .filter(|(n, _)| !n.starts_with("logit_"))
                    .map(|(n, p)| (n, p.grad().copy()))
                    .collect::<Vec<_>>()
            };
            let (plain, checkpointed) = (grads(false), grads(true));
            let mut worst = 0f64;
            for ((name, a), (_, b)) in plain.iter().zip(&checkpointed) {
                let norm = a.norm().double_value(&[]);
                assert!(norm > 0.0, "{name} got no gradient");
                worst = worst.max((a - b).norm().double_value(&[]) / norm);
            }
            assert!(worst <= 1e-6, "{}: relative error {worst:e}", if cfg.is_resnet() { "ResNet" } else { "ViT" });
        }
    }

    /// Patch dropout applies in training only, keeps the class token, and draws by sample key:
    /// the same key gives the same features, another key other ones.
    #[test]
    fn patch_dropout_is_keyed_by_sample_and_off_in_evaluation() {
        let mut cfg = ClipConfig::tiny();
        cfg.vision_cfg.patch_dropout = 0.5;
        tch::manual_seed(5);
        let model = Clip::new(&cfg, Device::Cpu).unwrap();
        let plain = Clip::new(&ClipConfig::tiny(), Device::Cpu).unwrap();
        tch::no_grad(|| {
            for ((_, dst), (_, src)) in plain.named_parameters().iter().zip(model.named_parameters()) {
                dst.shallow_clone().copy_(&src);
            }
        });
        let images = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
        let encode = |first_row: i64| {
            model.set_sample_keys(Some(SampleKeys { seed: 1, step: 2, first_row }));
            tch::no_grad(|| model.encode_image(&images))
        };
        let (a, again, shifted) = (encode(0), encode(0), encode(1));
        assert!(a.equal(&again));
        assert!(!a.equal(&shifted));
        // Row 1 of the batch starting at row 0 is row 0 of the batch starting at row 1.
        let row = |t: &Tensor, i: i64| t.narrow(0, i, 1);
        let alone = {
            model.set_sample_keys(Some(SampleKeys { seed: 1, step: 2, first_row: 1 }));
            tch::no_grad(|| model.encode_image(&images.narrow(0, 1, 1)))
        };
        assert!((row(&a, 1) - alone).abs().max().double_value(&[]) < 1e-6);
        let full = tch::no_grad(|| plain.encode_image(&images));
        assert!(!a.allclose(&full, 1e-4, 1e-4, false));
        let evaluated = {
            let _eval = model.eval_mode();
            tch::no_grad(|| model.encode_image(&images))
        };
        assert!(model.is_training());
        assert!(evaluated.allclose(&full, 1e-6, 1e-6, false), "evaluation sees every patch");
    }

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
