//! The dual encoder: image tower, text tower and the learnable logit scale, with
//! safetensors loading and saving under OpenCLIP's state-dict keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use super::coca::{CocaText, CocaVision, MultimodalDecoder};
use super::config::ClipConfig;
use super::resnet::{is_buffer, ModifiedResNet};
use super::text::TextTransformer;
use super::vision::{PatchKeep, VisionTransformer};
use crate::error::{Result, TrainError};
use crate::loss::filip::FilipLayout;
use crate::precision::Precision;

/// OpenCLIP's initial log logit scale, ln(1/0.07).
pub const DEFAULT_INIT_LOGIT_SCALE: f64 = 2.659_260_036_932_778_4;

/// The image tower: a ViT or a ModifiedResNet, both under `visual.*`.
#[derive(Debug)]
enum ImageTower {
    Vit(Box<VisionTransformer>),
    ResNet(Box<ModifiedResNet>),
    Coca(Box<CocaVision>),
}

/// The text side: CLIP's text tower, or CoCa's text tower and multimodal decoder.
#[derive(Debug)]
enum TextTower {
    Clip(Box<TextTransformer>),
    Coca(Box<(CocaText, MultimodalDecoder)>),
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
    text: TextTower,
    logit_scale: Tensor,
    logit_bias: Option<Tensor>,
    config: ClipConfig,
    training: AtomicBool,
    freeze_bn_stats: AtomicBool,
    grad_checkpointing: AtomicBool,
    sample_keys: Mutex<Option<SampleKeys>>,
}

/// What [`Clip::load_pretrained`] loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pretrained {
    /// Every parameter and buffer.
    Whole,
    /// The image tower (`visual.*`) only.
    ImageTower,
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
        let activation = config.activation();
        let visual = if config.is_resnet() {
            ImageTower::ResNet(Box::new(ModifiedResNet::new(&root / "visual", &config.vision_cfg, config.embed_dim)))
        } else if config.is_coca() {
            ImageTower::Coca(Box::new(CocaVision::new(&root / "visual", config)))
        } else {
            ImageTower::Vit(Box::new(VisionTransformer::new(
                &root / "visual",
                &config.vision_cfg,
                config.embed_dim,
                activation,
            )))
        };
        let text = if config.is_coca() {
            TextTower::Coca(Box::new((
                CocaText::new(&root / "text", config),
                MultimodalDecoder::new(&root / "text_decoder", config),
            )))
        } else {
            TextTower::Clip(Box::new(TextTransformer::new(
                root.clone(),
                &config.text_cfg,
                config.embed_dim,
                activation,
            )))
        };
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
            ImageTower::Coca(coca) => coca.forward(&images).0,
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
        // CoCa's class token sits after the last position, so its rows keep every position.
        let trims = matches!(&self.text, TextTower::Clip(t) if t.is_causal());
        let len = if trims { super::text::trimmed_length(tokens, ctx as usize) as i64 } else { ctx };
        let rows = Tensor::from_slice(tokens).view([-1, ctx]);
        let rows = if len < ctx { rows.narrow(1, 0, len).contiguous() } else { rows };
        crate::data::host_to_device(rows, self.device())
    }

    /// Unnormalised text embeddings.
    ///
    /// # Shapes
    /// `tokens`: [batch, L] int64, L ≤ context_length (see [`Clip::text_input`]) → [batch, embed_dim].
    pub fn encode_text(&self, tokens: &Tensor) -> Tensor {
        match &self.text {
            TextTower::Clip(text) => text.forward(tokens),
            TextTower::Coca(coca) => coca.0.forward(tokens).0,
        }
    }

    /// CLIP's text tower; the FILIP and checkpointing paths, which CoCa configs are refused.
    fn clip_text(&self) -> &TextTransformer {
        match &self.text {
            TextTower::Clip(text) => text,
            TextTower::Coca(_) => panic!("not for a CoCa text tower (checked with the config)"),
        }
    }

    /// CoCa's towers, when the model is a CoCa.
    pub(crate) fn coca_parts(&self) -> Option<(&CocaVision, &CocaText, &MultimodalDecoder)> {
        match (&self.visual, &self.text) {
            (ImageTower::Coca(v), TextTower::Coca(t)) => Some((v, &t.0, &t.1)),
            _ => None,
        }
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

    /// FILIP's token features in the rows that the step gathers ([`FilipLayout`]): every image
    /// patch token and every text position (padding masked out, and padded to the context
    /// length), each projected into the embedding space and L2-normalised, in float32. A ViT
    /// image tower only ([`ClipConfig::validate_for_filip`]).
    ///
    /// # Shapes
    /// `images`: [b, 3, H, W], `tokens`: [b, L] → ([b, patches · embed_dim],
    /// [b, context_length · (embed_dim + 1)]).
    pub fn forward_filip(&self, images: &Tensor, tokens: &Tensor) -> (Tensor, Tensor) {
        let to_f32 = |x: Tensor| x.to_kind(Kind::Float);
        let image_rows = to_f32(self.encode_image_tokens(images)).flatten(1, 2);
        (image_rows, self.encode_text_filip(tokens))
    }

    /// A ViT's patch tokens after `ln_post`, projected into the embedding space and
    /// L2-normalised (FILIP's image tokens, and EVA's distillation targets).
    ///
    /// # Panics
    /// With a ResNet image tower (callers check the config: [`ClipConfig::validate_for_filip`]).
    ///
    /// # Shapes
    /// `images`: [b, 3, H, W] → [b, patches kept, embed_dim].
    pub fn encode_image_tokens(&self, images: &Tensor) -> Tensor {
        let ImageTower::Vit(vit) = &self.visual else {
            panic!("patch tokens need a ViT image tower (checked with the config)");
        };
        let images = images.to_kind(self.logit_scale.kind());
        let keys = self.sample_keys();
        let keep = self.is_training().then(|| keys.as_ref().map_or(PatchKeep::Global, PatchKeep::Keyed));
        let x = vit.stem(&images, keep.as_ref());
        let x = (0..vit.depth()).fold(x, |x, i| vit.block(i, &x));
        l2_normalize(&vit.token_head(&x))
    }

    /// FILIP's text rows alone (see [`Clip::forward_filip`]).
    ///
    /// # Shapes
    /// `tokens`: [b, L] → [b, context_length · (embed_dim + 1)].
    pub fn encode_text_filip(&self, tokens: &Tensor) -> Tensor {
        let text = self.clip_text();
        let x = text.stem(tokens);
        let x = (0..text.depth()).fold(x, |x, i| text.block(i, &x));
        self.text_rows(&x, tokens)
    }

    /// The FILIP layout of this model's features.
    pub fn filip_layout(&self) -> FilipLayout {
        FilipLayout { dim: self.config.embed_dim, text_tokens: self.config.text_cfg.context_length }
    }

    /// FILIP text rows from the text transformer's output `x` for `tokens`.
    fn text_rows(&self, x: &Tensor, tokens: &Tensor) -> Tensor {
        let features = l2_normalize(&self.clip_text().token_head(x).to_kind(Kind::Float));
        let mask = tokens.ne(0).to_kind(Kind::Float);
        self.filip_layout().text_rows(&(features * mask.unsqueeze(-1)), &mask)
    }

    /// The features of [`Clip::forward`] (or, with `filip`, [`Clip::forward_filip`]) computed
    /// without a graph, keeping only each block's input (gradient checkpointing), for
    /// [`Clip::backward_checkpointed`]. A tower with nothing to train keeps nothing.
    ///
    /// # Shapes
    /// as [`Clip::forward`] / [`Clip::forward_filip`].
    pub fn forward_checkpointed(
        &self,
        precision: Precision,
        images: &Tensor,
        tokens: &Tensor,
        filip: bool,
    ) -> (Tensor, Tensor, Checkpoints) {
        let keys = self.sample_keys();
        let images = images.to_kind(self.logit_scale.kind());
        let mut ckpt = Checkpoints { images, tokens: tokens.shallow_clone(), keys, filip, image: None, text: None };
        let (fi, ft) = tch::no_grad(|| {
            let train_image = self.tower_trains(|n| n.starts_with("visual."));
            let fi = self.with_image_segments(&ckpt, |seg| {
                let inputs = seg.inputs(precision);
                let f = precision.forward(|| (seg.head)(&inputs[inputs.len() - 1]));
                (f, inputs)
            });
            let fi = match fi {
                (f, inputs) if train_image => {
                    ckpt.image = Some(inputs);
                    f
                }
                (f, _) => f,
            };
            let (ft, inputs) = self.with_text_segments(&ckpt, |seg| {
                let inputs = seg.inputs(precision);
                (precision.forward(|| (seg.head)(&inputs[inputs.len() - 1])), inputs)
            });
            if self.tower_trains(|n| !n.starts_with("visual.") && !n.starts_with("logit_")) {
                ckpt.text = Some(inputs);
            }
            (fi, ft)
        });
        (fi, ft, ckpt)
    }

    /// Back-propagates `g_image` and `g_text`, the loss's gradients with respect to the features
    /// that [`Clip::forward_checkpointed`] gave, into the parameters, as `(f · g).sum().backward()`
    /// after a forward pass with a graph would: from the head down, re-running one block at a
    /// time with a graph from its kept input. Stochastic ops replay identically: patch dropout
    /// is keyed by sample (the keys kept with the inputs), and the ResNet's batch statistics are
    /// those of the same micro-batch.
    pub fn backward_checkpointed(
        &self,
        precision: Precision,
        mut ckpt: Checkpoints,
        g_image: &Tensor,
        g_text: &Tensor,
    ) {
        if let Some(inputs) = ckpt.image.take() {
            self.with_image_segments(&ckpt, |seg| seg.backward(precision, inputs, g_image));
        }
        if let Some(inputs) = ckpt.text.take() {
            self.with_text_segments(&ckpt, |seg| seg.backward(precision, inputs, g_text));
        }
    }

    /// Runs `f` on the image tower cut into stem, blocks and head (the head ends with the
    /// normalised float32 features, pooled or FILIP's).
    fn with_image_segments<T>(&self, ckpt: &Checkpoints, f: impl FnOnce(Segments<'_>) -> T) -> T {
        let to_f32 = |x: Tensor| x.to_kind(Kind::Float);
        let filip = ckpt.filip;
        match &self.visual {
            ImageTower::Vit(vit) => {
                let keep = self.is_training().then(|| ckpt.keys.as_ref().map_or(PatchKeep::Global, PatchKeep::Keyed));
                f(Segments {
                    stem: &|| vit.stem(&ckpt.images, keep.as_ref()),
                    depth: vit.depth(),
                    block: &|i, x| vit.block(i, x),
                    head: &|x| match filip {
                        true => l2_normalize(&to_f32(vit.token_head(x))).flatten(1, 2),
                        false => l2_normalize(&to_f32(vit.head(x))),
                    },
                })
            }
            ImageTower::ResNet(resnet) => {
                let train = self.batch_stats();
                f(Segments {
                    stem: &|| resnet.stem(&ckpt.images, train),
                    depth: resnet.depth(),
                    block: &|i, x| resnet.block(i, x, train),
                    head: &|x| l2_normalize(&to_f32(resnet.head(x))),
                })
            }
            ImageTower::Coca(_) => panic!("gradient checkpointing of a CoCa (refused with the config)"),
        }
    }

    /// Runs `f` on the text tower cut into stem, blocks and head.
    fn with_text_segments<T>(&self, ckpt: &Checkpoints, f: impl FnOnce(Segments<'_>) -> T) -> T {
        let text = self.clip_text();
        let tokens = &ckpt.tokens;
        let filip = ckpt.filip;
        f(Segments {
            stem: &|| text.stem(tokens),
            depth: text.depth(),
            block: &|i, x| text.block(i, x),
            head: &|x| match filip {
                true => self.text_rows(x, tokens),
                false => l2_normalize(&text.head(x, tokens).to_kind(Kind::Float)),
            },
        })
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
        load_state(&self.state_dict(), path)
    }

    /// Loads `--pretrained` weights: a whole state dict as [`Clip::load_safetensors`], or an
    /// image tower alone (only `visual.*` tensors, all of this model's: the file `clipfleet mim`
    /// writes), leaving the rest of the model as initialised.
    pub fn load_pretrained(&mut self, path: &Path) -> Result<Pretrained> {
        let by_name = read_state(path)?;
        if by_name.is_empty() || !by_name.keys().all(|n| n.starts_with("visual.")) {
            copy_state(&self.state_dict(), by_name, path, "does not match the model config")?;
            return Ok(Pretrained::Whole);
        }
        let vars: Vec<(String, Tensor)> =
            self.state_dict().into_iter().filter(|(n, _)| n.starts_with("visual.")).collect();
        copy_state(&vars, by_name, path, "is an image tower that does not match the model config")?;
        Ok(Pretrained::ImageTower)
    }

    /// Writes every parameter (float32) and batch-norm buffer (float32 statistics, int64
    /// counters, as OpenCLIP) to `path` as safetensors with OpenCLIP's keys.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        save_state(self.state_dict(), path)
    }
}

/// Loads a safetensors state dict into `vars` (name, variable): every variable must be present
/// with its shape and no unknown tensor may be left over; tensors are converted to the
/// variables' dtypes and devices.
pub(crate) fn load_state(vars: &[(String, Tensor)], path: &Path) -> Result<()> {
    copy_state(vars, read_state(path)?, path, "does not match the model config")
}

/// The tensors of a safetensors file, by name.
fn read_state(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let weights_error = |reason: String| TrainError::Weights { path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(weights_error("no such file".into()));
    }
    let tensors =
        Tensor::read_safetensors(path).map_err(|e| weights_error(format!("not a readable safetensors file ({e})")))?;
    Ok(tensors.into_iter().collect())
}

/// Copies `by_name` (read from `path`) into `vars`: the same names, the same shapes; `mismatch`
/// words the error when the names differ.
fn copy_state(
    vars: &[(String, Tensor)],
    mut by_name: BTreeMap<String, Tensor>,
    path: &Path,
    mismatch: &str,
) -> Result<()> {
    let weights_error = |reason: String| TrainError::Weights { path: path.to_path_buf(), reason };
    let expected: BTreeSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<&str> = expected.iter().filter(|n| !by_name.contains_key(**n)).copied().collect();
    let unexpected: Vec<&String> = by_name.keys().filter(|n| !expected.contains(n.as_str())).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(weights_error(format!("{mismatch}: missing {missing:?}, unexpected {unexpected:?}")));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vars {
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

/// Writes `tensors` (float ones as float32, others as they are) to `path` as safetensors.
pub(crate) fn save_state(tensors: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| {
            let kind = if t.is_floating_point() { Kind::Float } else { t.kind() };
            (n, t.detach().to_device(Device::Cpu).to_kind(kind).contiguous())
        })
        .collect();
    Tensor::write_safetensors(&tensors, path)
        .map_err(|e| TrainError::Weights { path: path.to_path_buf(), reason: format!("cannot write: {e}") })
}

/// What [`Clip::forward_checkpointed`] keeps for [`Clip::backward_checkpointed`]: the inputs
/// of every block of each tower that trains, and what is needed to re-run them.
#[derive(Debug)]
pub struct Checkpoints {
    images: Tensor,
    tokens: Tensor,
    keys: Option<SampleKeys>,
    filip: bool,
    image: Option<Vec<Tensor>>,
    text: Option<Vec<Tensor>>,
}

/// One tower cut for gradient checkpointing: `stem`, `depth` blocks and `head`.
struct Segments<'a> {
    stem: &'a dyn Fn() -> Tensor,
    depth: usize,
    block: &'a dyn Fn(usize, &Tensor) -> Tensor,
    head: &'a dyn Fn(&Tensor) -> Tensor,
}

impl Segments<'_> {
    /// Every block's input, and the head's, without a graph.
    fn inputs(&self, precision: Precision) -> Vec<Tensor> {
        tch::no_grad(|| {
            let mut inputs = Vec::with_capacity(self.depth + 1);
            let mut x = precision.forward(self.stem);
            for i in 0..self.depth {
                let next = precision.forward(|| (self.block)(i, &x));
                inputs.push(x);
                x = next;
            }
            inputs.push(x);
            inputs
        })
    }

    /// Down from the head, one segment at a time: ∂L/∂(its input) feeds the one below.
    fn backward(&self, precision: Precision, mut inputs: Vec<Tensor>, g: &Tensor) {
        let leaf = |x: &Tensor| x.detach().set_requires_grad(true);
        let x = leaf(&inputs[self.depth]);
        let f = precision.forward(|| (self.head)(&x));
        (f * g.detach()).sum(Kind::Float).backward();
        let mut grad = x.grad();
        for i in (0..self.depth).rev() {
            let x = leaf(&inputs[i]);
            inputs.truncate(i + 1);
            let y = precision.forward(|| (self.block)(i, &x));
            (y.to_kind(Kind::Float) * grad.to_kind(Kind::Float)).sum(Kind::Float).backward();
            grad = x.grad();
        }
        drop(inputs);
        let x0 = precision.forward(self.stem);
        if x0.requires_grad() {
            (x0.to_kind(Kind::Float) * grad.to_kind(Kind::Float)).sum(Kind::Float).backward();
        }
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
                    let (_, _, ckpt) = model.forward_checkpointed(Precision::Fp32, &images, &tokens, false);
                    model.backward_checkpointed(Precision::Fp32, ckpt, &g_image, &g_text);
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
