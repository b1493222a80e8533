//! The ResNet image tower (`visual.*`), as OpenCLIP's `ModifiedResNet` (from OpenAI's CLIP):
//! a three-convolution stem with an average pool, bottleneck stages whose strided blocks
//! anti-alias by average pooling before the last convolution (and in the shortcut), and a
//! QKV attention pool over the last feature map in place of global average pooling.
//!
//! Batch norm is plain per-process `BatchNorm2d` (momentum 0.1, eps 1e-5): in training each
//! rank normalises with its own micro-batch's statistics and updates its running statistics,
//! with no synchronisation, as OpenCLIP trains under DDP. In evaluation, or with
//! `lock_image_freeze_bn_stats`, the running statistics are used and left as they are.

use tch::nn::{self, Init, Module, ModuleT};
use tch::{Kind, Tensor};

use super::config::VisionConfig;
use super::transformer::linear;

/// The running statistics and counter of one batch norm, as OpenCLIP keeps them: buffers,
/// saved and loaded with the weights but never trained.
pub const BUFFER_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// Whether a state-dict name is a batch-norm buffer rather than a parameter.
pub fn is_buffer(name: &str) -> bool {
    BUFFER_SUFFIXES.iter().any(|s| name.rsplit('.').next() == Some(s))
}

/// `nn.BatchNorm2d(c)`: weight 1, bias 0, running mean 0 and variance 1, and the
/// `num_batches_tracked` counter (int64, counted but unused with a fixed momentum).
#[derive(Debug)]
struct BatchNorm {
    norm: nn::BatchNorm,
    tracked: Tensor,
}

impl BatchNorm {
    fn new(p: nn::Path, channels: i64) -> Self {
        let norm =
            nn::batch_norm2d(&p, channels, nn::BatchNormConfig { eps: 1e-5, momentum: 0.1, ..Default::default() });
        let tracked = p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, p.device())), false);
        BatchNorm { norm, tracked }
    }

    /// Normalises with the batch's statistics and updates the running ones when `train`,
    /// else with the running statistics.
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        self.norm.forward_t(x, train)
    }
}

/// A bias-free convolution, PyTorch's default init (U(±1/√fan_in)).
fn conv(p: &nn::Path, name: &str, c_in: i64, c_out: i64, k: i64) -> Tensor {
    let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
    (p / name).var("weight", &[c_out, c_in, k, k], Init::Uniform { lo: -bound, up: bound })
}

fn avg_pool(x: &Tensor, k: i64) -> Tensor {
    x.avg_pool2d([k, k], [k, k], [0, 0], false, true, None::<i64>)
}

/// OpenCLIP's `Bottleneck` (expansion 4): 1×1, 3×3, [avg-pool], 1×1, plus the shortcut.
#[derive(Debug)]
struct Bottleneck {
    conv1: Tensor,
    bn1: BatchNorm,
    conv2: Tensor,
    bn2: BatchNorm,
    conv3: Tensor,
    bn3: BatchNorm,
    /// `downsample.0` (conv) and `downsample.1` (bn), after an average pool of `stride`.
    downsample: Option<(Tensor, BatchNorm)>,
    stride: i64,
}

impl Bottleneck {
    fn new(p: nn::Path, inplanes: i64, planes: i64, stride: i64) -> Self {
        let out = planes * 4;
        let downsample = (stride > 1 || inplanes != out).then(|| {
            let d = &p / "downsample";
            (conv(&d, "0", inplanes, out, 1), BatchNorm::new(&d / "1", out))
        });
        let bn3 = BatchNorm::new(&p / "bn3", out);
        // OpenCLIP zero-initialises every block's last batch-norm gain.
        tch::no_grad(|| {
            let _ = bn3.norm.ws.as_ref().map(|w| w.shallow_clone().zero_());
        });
        Bottleneck {
            conv1: conv(&p, "conv1", inplanes, planes, 1),
            bn1: BatchNorm::new(&p / "bn1", planes),
            conv2: conv(&p, "conv2", planes, planes, 3),
            bn2: BatchNorm::new(&p / "bn2", planes),
            conv3: conv(&p, "conv3", planes, out, 1),
            bn3,
            downsample,
            stride,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let c = |x: &Tensor, w: &Tensor, pad: i64| x.conv2d(w, None::<Tensor>, [1, 1], [pad, pad], [1, 1], 1);
        let out = self.bn1.forward(&c(x, &self.conv1, 0), train).relu();
        let mut out = self.bn2.forward(&c(&out, &self.conv2, 1), train).relu();
        if self.stride > 1 {
            out = avg_pool(&out, self.stride);
        }
        let out = self.bn3.forward(&c(&out, &self.conv3, 0), train);
        let identity = match &self.downsample {
            Some((w, bn)) => {
                let x = if self.stride > 1 { avg_pool(x, self.stride) } else { x.shallow_clone() };
                bn.forward(&c(&x, w, 0), train)
            }
            None => x.shallow_clone(),
        };
        (out + identity).relu()
    }
}

/// OpenCLIP's `AttentionPool2d`: the mean of the feature map, prepended to its positions,
/// attends to all of them (with a learned positional embedding); its output, projected by
/// `c_proj`, is the embedding.
#[derive(Debug)]
struct AttentionPool {
    positional_embedding: Tensor,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    c_proj: nn::Linear,
    heads: i64,
}

impl AttentionPool {
    fn new(p: nn::Path, grid: i64, width: i64, heads: i64, output_dim: i64) -> Self {
        let std = (width as f64).powf(-0.5);
        AttentionPool {
            positional_embedding: p.var(
                "positional_embedding",
                &[grid * grid + 1, width],
                Init::Randn { mean: 0.0, stdev: std },
            ),
            q_proj: linear(&p / "q_proj", width, width, Some(std)),
            k_proj: linear(&p / "k_proj", width, width, Some(std)),
            v_proj: linear(&p / "v_proj", width, width, Some(std)),
            c_proj: linear(&p / "c_proj", width, output_dim, Some(std)),
            heads,
        }
    }

    /// # Shapes
    /// `x`: [batch, width, grid, grid] → [batch, output_dim].
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c) = (x.size()[0], x.size()[1]);
        let x = x.flatten(2, 3).transpose(1, 2); // [b, hw, c]
        let mean = x.mean_dim([1i64].as_slice(), true, None::<Kind>);
        let x = Tensor::cat(&[mean, x], 1);
        let x = &x + self.positional_embedding.to_kind(x.kind());
        let l = x.size()[1];
        let head_dim = c / self.heads;
        let split = |t: Tensor, n: i64| t.view([b, n, self.heads, head_dim]).transpose(1, 2);
        // Only the mean token's output is used, so only it queries.
        let q = split(self.q_proj.forward(&x.narrow(1, 0, 1)), 1);
        let k = split(self.k_proj.forward(&x), l);
        let v = split(self.v_proj.forward(&x), l);
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        self.c_proj.forward(&out.transpose(1, 2).reshape([b, c]))
    }
}

/// The image encoder.
#[derive(Debug)]
pub struct ModifiedResNet {
    stem: [(Tensor, BatchNorm); 3],
    blocks: Vec<Bottleneck>,
    attnpool: AttentionPool,
}

impl ModifiedResNet {
    /// Creates the tower's parameters under `p` (`visual`), with OpenCLIP's names and
    /// initialisation.
    pub fn new(p: nn::Path, cfg: &VisionConfig, embed_dim: i64) -> Self {
        let stages = cfg.resnet_stages().expect("a ResNet config has stage depths");
        let w = cfg.width;
        let stem = [
            (conv(&p, "conv1", 3, w / 2, 3), BatchNorm::new(&p / "bn1", w / 2)),
            (conv(&p, "conv2", w / 2, w / 2, 3), BatchNorm::new(&p / "bn2", w / 2)),
            (conv(&p, "conv3", w / 2, w, 3), BatchNorm::new(&p / "bn3", w)),
        ];
        let mut blocks = Vec::new();
        let mut inplanes = w;
        for (i, &depth) in stages.iter().enumerate() {
            let planes = w << i;
            let layer = &p / format!("layer{}", i + 1);
            for j in 0..depth {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(Bottleneck::new(&layer / j, inplanes, planes, stride));
                inplanes = planes * 4;
            }
        }
        let attnpool = AttentionPool::new(&p / "attnpool", cfg.grid_size(), w * 32, cfg.heads(), embed_dim);
        ModifiedResNet { stem, blocks, attnpool }
    }

    /// The stem: three 3×3 convolutions (the first with stride 2), then a 2×2 average pool.
    ///
    /// # Shapes
    /// `images`: [batch, 3, S, S] → [batch, width, S/4, S/4].
    pub fn stem(&self, images: &Tensor, train: bool) -> Tensor {
        let mut x = images.shallow_clone();
        for (i, (w, bn)) in self.stem.iter().enumerate() {
            let stride = if i == 0 { 2 } else { 1 };
            x = bn.forward(&x.conv2d(w, None::<Tensor>, [stride, stride], [1, 1], [1, 1], 1), train).relu();
        }
        avg_pool(&x, 2)
    }

    /// Bottleneck blocks over the four stages.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// Bottleneck block `i`, counted over all stages.
    pub fn block(&self, i: usize, x: &Tensor, train: bool) -> Tensor {
        self.blocks[i].forward(x, train)
    }

    /// The attention pool and its projection.
    ///
    /// # Shapes
    /// `x`: [batch, 32·width, S/32, S/32] → [batch, embed_dim].
    pub fn head(&self, x: &Tensor) -> Tensor {
        self.attnpool.forward(x)
    }

    /// Encodes normalised images into (unnormalised) embeddings; `train` selects batch
    /// statistics (and updates the running ones).
    ///
    /// # Shapes
    /// `images`: [batch, 3, S, S] float → [batch, embed_dim].
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        let mut x = self.stem(images, train);
        for i in 0..self.depth() {
            x = self.block(i, &x, train);
        }
        self.head(&x)
    }
}
