//! CoCa (Yu et al., 2022) as OpenCLIP 3.3.0 builds it (`open_clip.coca_model.CoCa`), under its
//! state-dict names: a ViT whose attentional pooler gives both the contrastive embedding (query 0)
//! and the image tokens the decoder attends to; a causal text tower with a class token appended
//! (its output is the contrastive text embedding, the other positions are the decoder's input);
//! and a multimodal decoder that alternates causal self-attention and cross-attention to the
//! image tokens, predicting the next token. Loss: OpenCLIP's `CoCaLoss`, 2 × caption
//! cross-entropy (padding ignored) + 1 × the CLIP loss.
//!
//! OpenCLIP details kept for parity: `ln_post` is applied to every pooler output before the
//! split, and only query 0 is projected; the text tokens handed to the decoder have no
//! `ln_final` (only the class token does); the text tower's padding mask is OpenCLIP's legacy
//! one, shifted by one position (key 0 always visible, key j visible when token j − 1 is not
//! padding); the decoder adds no positional embedding.

use tch::nn::{self, Init, Module};
use tch::{Device, Kind, Tensor};

use super::clip::{l2_normalize, Clip};
use super::config::ClipConfig;
use super::transformer::{layer_norm, linear, Activation, BlockInit, ResidualAttentionBlock, Transformer};
use crate::error::{ConfigError, Result};
use crate::loss::clip_loss_global;

/// OpenCLIP's CoCa loss weights (`--coca-caption-loss-weight`, `--coca-contrastive-loss-weight`).
pub const CAPTION_LOSS_WEIGHT: f64 = 2.0;
/// See [`CAPTION_LOSS_WEIGHT`].
pub const CONTRASTIVE_LOSS_WEIGHT: f64 = 1.0;

/// Multi-head attention of `q_in` over `kv_in` with packed or separate projections, as
/// `nn.MultiheadAttention` (no mask).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, out: &nn::Linear) -> Tensor {
    let (b, lq, d) = q.size3().expect("[batch, tokens, width]");
    let lk = k.size()[1];
    let hd = d / heads;
    let split = |t: &Tensor, l: i64| t.view([b, l, heads, hd]).transpose(1, 2);
    let o = Tensor::scaled_dot_product_attention(
        &split(q, lq),
        &split(k, lk),
        &split(v, lk),
        None::<Tensor>,
        0.0,
        false,
        None,
        false,
    );
    out.forward(&o.transpose(1, 2).reshape([b, lq, d]))
}

/// OpenCLIP's `AttentionalPooler`: learned queries attend to the tower's tokens.
#[derive(Debug)]
struct AttentionalPooler {
    query: Tensor,
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    ln_q: nn::LayerNorm,
    ln_k: nn::LayerNorm,
    heads: i64,
}

impl AttentionalPooler {
    fn new(p: nn::Path, d: i64, context: i64, heads: i64, queries: i64) -> Self {
        let attn = &p / "attn";
        let xavier = |fan_out: i64, fan_in: i64| {
            let b = (6.0 / (fan_in + fan_out) as f64).sqrt();
            Init::Uniform { lo: -b, up: b }
        };
        let out_proj = linear(&attn / "out_proj", d, d, None);
        tch::no_grad(|| {
            let _ = out_proj.bs.as_ref().map(|b| b.shallow_clone().zero_());
        });
        AttentionalPooler {
            query: p.var("query", &[queries, d], Init::Randn { mean: 0.0, stdev: 1.0 }),
            q_proj: attn.var("q_proj_weight", &[d, d], xavier(d, d)),
            k_proj: attn.var("k_proj_weight", &[d, context], xavier(d, context)),
            v_proj: attn.var("v_proj_weight", &[d, context], xavier(d, context)),
            in_proj_bias: attn.var("in_proj_bias", &[3 * d], Init::Const(0.0)),
            out_proj,
            ln_q: layer_norm(&p / "ln_q", d),
            ln_k: layer_norm(&p / "ln_k", context),
            heads,
        }
    }

    /// # Shapes
    /// `x`: [N, L, context] → [N, queries, d].
    fn forward(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let kv = self.ln_k.forward(x);
        let q = self.ln_q.forward(&self.query).unsqueeze(0).expand([n, -1, -1], true);
        let bias = self.in_proj_bias.chunk(3, 0);
        let q = q.linear(&self.q_proj, Some(&bias[0]));
        let k = kv.linear(&self.k_proj, Some(&bias[1]));
        let v = kv.linear(&self.v_proj, Some(&bias[2]));
        attend(&q, &k, &v, self.heads, &self.out_proj)
    }
}

/// CoCa's image tower (`visual.*`).
#[derive(Debug)]
pub(crate) struct CocaVision {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: nn::LayerNorm,
    transformer: Transformer,
    attn_pool: AttentionalPooler,
    ln_post: nn::LayerNorm,
    proj: Tensor,
    patch: i64,
}

impl CocaVision {
    pub(crate) fn new(p: nn::Path, cfg: &ClipConfig) -> Self {
        let v = &cfg.vision_cfg;
        let (w, e, patch) = (v.width, cfg.embed_dim, v.patch());
        let scale = (w as f64).powf(-0.5);
        let bound = 1.0 / ((3 * patch * patch) as f64).sqrt();
        let grid = v.grid_size();
        CocaVision {
            conv1: (&p / "conv1").var("weight", &[w, 3, patch, patch], Init::Uniform { lo: -bound, up: bound }),
            class_embedding: p.var("class_embedding", &[w], Init::Randn { mean: 0.0, stdev: scale }),
            positional_embedding: p.var(
                "positional_embedding",
                &[grid * grid + 1, w],
                Init::Randn { mean: 0.0, stdev: scale },
            ),
            ln_pre: layer_norm(&p / "ln_pre", w),
            transformer: Transformer::new(
                &p / "transformer",
                w,
                v.blocks(),
                v.heads(),
                v.mlp_ratio,
                cfg.activation(),
                BlockInit::default(),
            ),
            attn_pool: AttentionalPooler::new(&p / "attn_pool", e, w, cfg.pooler_heads(), cfg.pooler_queries()),
            ln_post: layer_norm(&p / "ln_post", e),
            proj: p.var("proj", &[e, e], Init::Randn { mean: 0.0, stdev: scale }),
            patch,
        }
    }

    /// (pooled embedding [N, E] unnormalised, image tokens [N, queries − 1, E]).
    pub(crate) fn forward(&self, images: &Tensor) -> (Tensor, Tensor) {
        let x = images.conv2d(&self.conv1, None::<Tensor>, [self.patch, self.patch], [0, 0], [1, 1], 1);
        let (b, w) = (x.size()[0], x.size()[1]);
        let x = x.flatten(2, 3).transpose(1, 2);
        let cls = self.class_embedding.to_kind(x.kind()).view([1, 1, w]).expand([b, 1, w], true);
        let x = Tensor::cat(&[cls, x], 1) + self.positional_embedding.to_kind(images.kind());
        let x = self.transformer.forward(&self.ln_pre.forward(&x), false);
        let x = self.ln_post.forward(&self.attn_pool.forward(&x));
        let q = x.size()[1];
        (x.select(1, 0).matmul(&self.proj), x.narrow(1, 1, q - 1))
    }
}

/// CoCa's unimodal text tower (`text.*`): causal, with the class token appended.
#[derive(Debug)]
pub(crate) struct CocaText {
    token_embedding: Tensor,
    cls_emb: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: nn::LayerNorm,
    text_projection: Tensor,
}

impl CocaText {
    pub(crate) fn new(p: nn::Path, cfg: &ClipConfig) -> Self {
        let t = &cfg.text_cfg;
        let w = t.width as f64;
        let init = BlockInit::text_tower(t.width, t.layers);
        CocaText {
            token_embedding: (&p / "token_embedding").var(
                "weight",
                &[t.vocab_size, t.width],
                Init::Randn { mean: 0.0, stdev: 0.02 },
            ),
            cls_emb: p.var("cls_emb", &[t.width], Init::Randn { mean: 0.0, stdev: 0.01 }),
            positional_embedding: p.var(
                "positional_embedding",
                &[t.context_length + 1, t.width],
                Init::Randn { mean: 0.0, stdev: 0.01 },
            ),
            transformer: Transformer::new(
                &p / "transformer",
                t.width,
                t.layers,
                t.heads,
                t.mlp_ratio,
                cfg.activation(),
                init,
            ),
            ln_final: layer_norm(&p / "ln_final", t.width),
            text_projection: p.var(
                "text_projection",
                &[t.width, cfg.embed_dim],
                Init::Randn { mean: 0.0, stdev: w.powf(-0.5) },
            ),
        }
    }

    /// (pooled embedding [N, E] unnormalised, tokens [N, L, W] before `ln_final`).
    pub(crate) fn forward(&self, text: &Tensor) -> (Tensor, Tensor) {
        let (n, l) = (text.size()[0], text.size()[1]);
        let s = l + 1;
        let x = Tensor::embedding(&self.token_embedding, text, -1, false, false);
        let w = x.size()[2];
        let x = Tensor::cat(&[x, self.cls_emb.view([1, 1, w]).expand([n, 1, w], true)], 1)
            + self.positional_embedding.narrow(0, 0, s);
        // Causal, plus OpenCLIP's legacy padding mask: key 0 always visible, key j visible when
        // token j − 1 is not padding (id 0).
        let opts = (x.kind(), x.device());
        let causal = Tensor::full([s, s], f64::NEG_INFINITY, opts).triu(1);
        let valid = Tensor::cat(&[Tensor::ones([n, 1], (Kind::Bool, x.device())), text.ne(0)], 1);
        let pad = Tensor::zeros([n, s], opts).masked_fill(&valid.logical_not(), f64::NEG_INFINITY);
        let mask = causal.view([1, 1, s, s]) + pad.view([n, 1, 1, s]);
        let x = (0..self.transformer.depth()).fold(x, |x, i| self.transformer.block_masked(i, &x, &mask));
        let pooled = self.ln_final.forward(&x.select(1, l)).matmul(&self.text_projection);
        (pooled, x.narrow(1, 0, l))
    }
}

/// A cross-attention block of the decoder (`text_decoder.cross_attn.{i}`): a residual block
/// whose attention takes its keys and values from the image tokens, normalised by its own
/// `ln_1_kv`.
#[derive(Debug)]
struct CrossAttentionBlock {
    block: ResidualAttentionBlock,
    ln_1_kv: nn::LayerNorm,
}

impl CrossAttentionBlock {
    fn new(p: nn::Path, width: i64, heads: i64, activation: Activation) -> Self {
        let ln_1_kv = layer_norm(&p / "ln_1_kv", width);
        CrossAttentionBlock {
            block: ResidualAttentionBlock::new(p, width, heads, 4.0, activation, BlockInit::default()),
            ln_1_kv,
        }
    }

    fn forward(&self, x: &Tensor, image: &Tensor) -> Tensor {
        self.block.forward_cross(x, &self.ln_1_kv.forward(image))
    }
}

/// The multimodal decoder (`text_decoder.*`).
#[derive(Debug)]
pub(crate) struct MultimodalDecoder {
    resblocks: Transformer,
    cross_attn: Vec<CrossAttentionBlock>,
    ln_final: nn::LayerNorm,
    text_projection: Tensor,
}

impl MultimodalDecoder {
    pub(crate) fn new(p: nn::Path, cfg: &ClipConfig) -> Self {
        let m = cfg.multimodal_cfg.as_ref().expect("a CoCa config has multimodal_cfg");
        let cross = &p / "cross_attn";
        // OpenCLIP's blocks keep PyTorch's defaults here (its init_parameters is never called).
        MultimodalDecoder {
            resblocks: Transformer::new(
                p.clone(),
                m.width,
                m.layers,
                m.heads,
                4.0,
                cfg.activation(),
                BlockInit::default(),
            ),
            cross_attn: (0..m.layers)
                .map(|i| CrossAttentionBlock::new(&cross / i, m.width, m.heads, cfg.activation()))
                .collect(),
            ln_final: layer_norm(&p / "ln_final", m.width),
            text_projection: p.var(
                "text_projection",
                &[m.width, cfg.text_cfg.vocab_size],
                Init::Randn { mean: 0.0, stdev: (m.width as f64).powf(-0.5) },
            ),
        }
    }

    /// # Shapes
    /// `image`: [N, Q − 1, E], `text`: [N, L, W] → logits [N, L, vocab].
    pub(crate) fn forward(&self, image: &Tensor, text: &Tensor) -> Tensor {
        let mut x = text.shallow_clone();
        for (i, cross) in self.cross_attn.iter().enumerate() {
            x = self.resblocks.block(i, &x, true);
            x = cross.forward(&x, image);
        }
        self.ln_final.forward(&x).matmul(&self.text_projection)
    }
}

/// What [`Coca::forward`] gives (OpenCLIP's output dict).
#[derive(Debug)]
pub struct CocaOutput {
    /// L2-normalised contrastive image embeddings, [N, E].
    pub image_features: Tensor,
    /// L2-normalised contrastive text embeddings, [N, E].
    pub text_features: Tensor,
    /// Next-token logits for positions 0 … L − 2, [N, L − 1, vocab].
    pub logits: Tensor,
    /// The targets, `text[:, 1:]`, [N, L − 1].
    pub labels: Tensor,
}

/// Token ids that steer decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Start of text (49406 for OpenCLIP's BPE).
    pub sot: i64,
    /// End of text (49407).
    pub eot: i64,
    /// Padding (0).
    pub pad: i64,
}

/// Decoding settings, OpenCLIP's `generate` defaults where it has one.
#[derive(Debug, Clone, Copy)]
pub struct Decoding {
    /// The longest output, start token included (OpenCLIP's `seq_len`, default 30); its last
    /// slot is an end token.
    pub seq_len: i64,
    /// The end token is banned while the output is shorter than this (default 5).
    pub min_seq_len: i64,
    /// Pad every output to `seq_len` (OpenCLIP's `fixed_output_length`).
    pub fixed_output_length: bool,
    /// The ids.
    pub tokens: SpecialTokens,
}

impl Clip {
    fn coca(&self) -> (&CocaVision, &CocaText, &MultimodalDecoder) {
        self.coca_parts().expect("a CoCa model (checked with the config)")
    }

    /// CoCa: (normalised contrastive image embedding [N, E], image tokens [N, Q − 1, E]).
    ///
    /// # Panics
    /// On a model that is not a CoCa ([`ClipConfig::is_coca`]).
    pub fn encode_image_coca(&self, images: &Tensor) -> (Tensor, Tensor) {
        let (pooled, tokens) = self.coca().0.forward(&images.to_kind(self.logit_scale().kind()));
        (l2_normalize(&pooled), tokens)
    }

    /// CoCa: (normalised contrastive text embedding [N, E], text tokens [N, L, W]).
    pub fn encode_text_coca(&self, text: &Tensor) -> (Tensor, Tensor) {
        let (pooled, tokens) = self.coca().1.forward(text);
        (l2_normalize(&pooled), tokens)
    }

    /// CoCa's teacher-forced forward pass: contrastive features, and next-token logits for
    /// `text` (OpenCLIP's `CoCa.forward`).
    ///
    /// # Shapes
    /// `images`: [N, 3, S, S], `text`: [N, L] (L ≤ context_length) → see [`CocaOutput`].
    pub fn forward_coca(&self, images: &Tensor, text: &Tensor) -> CocaOutput {
        let (image_features, image_tokens) = self.encode_image_coca(images);
        let (text_features, text_tokens) = self.encode_text_coca(text);
        let l = text.size()[1];
        let logits = self.coca().2.forward(&image_tokens, &text_tokens.narrow(1, 0, l - 1));
        let to_f32 = |x: Tensor| x.to_kind(Kind::Float);
        CocaOutput {
            image_features: to_f32(image_features),
            text_features: to_f32(text_features),
            logits,
            labels: text.narrow(1, 1, l - 1),
        }
    }

    /// OpenCLIP's `CoCaLoss` on one process: (weighted contrastive loss, weighted caption loss).
    /// The caption loss is the cross-entropy over every non-padding target of the batch.
    pub fn coca_loss(&self, out: &CocaOutput) -> (Tensor, Tensor) {
        let scale = self.logit_scale().exp();
        let clip = clip_loss_global(&out.image_features, &out.text_features, &scale) * CONTRASTIVE_LOSS_WEIGHT;
        let (sum, count) = caption_loss_sum(&out.logits, &out.labels);
        (clip, sum / count.clamp_min(1.0) * CAPTION_LOSS_WEIGHT)
    }

    /// The next-token logits after `prefix` for each image's tokens.
    fn next_logits(&self, image_tokens: &Tensor, prefix: &Tensor) -> Tensor {
        let (_, text, decoder) = self.coca();
        let (_, text_tokens) = text.forward(prefix);
        let logits = decoder.forward(image_tokens, &text_tokens);
        logits.select(1, prefix.size()[1] - 1).to_kind(Kind::Float)
    }

    fn check_decoding(&self, d: &Decoding) -> Result<()> {
        let max = self.config().text_cfg.context_length;
        if d.seq_len <= d.min_seq_len || d.seq_len > max || d.min_seq_len < 0 {
            return Err(ConfigError::invalid(
                "--seq-len",
                d.seq_len,
                format!("more than the minimum length ({}) and at most the context length ({max})", d.min_seq_len),
            )
            .into());
        }
        Ok(())
    }

    /// Greedy decoding, token for token OpenCLIP's `generate(generation_type="top_k", top_k=1)`
    /// (whose sampling from the one-hot top-1 is the argmax): every output starts with the start
    /// token; the end token is banned below `min_seq_len` tokens and forced into the last slot; a
    /// row ends at its end token (or a padding token) and is padded; the output is as wide as the
    /// longest row (or `seq_len` with `fixed_output_length`).
    ///
    /// # Shapes
    /// `images`: [N, 3, S, S] → [N, ≤ seq_len] int64.
    pub fn generate_greedy(&self, images: &Tensor, d: Decoding) -> Result<Tensor> {
        self.check_decoding(&d)?;
        let t = d.tokens;
        tch::no_grad(|| {
            let (_, image_tokens) = self.encode_image_coca(images);
            let n = images.size()[0];
            let device = images.device();
            let mut out = Tensor::full([n, 1], t.sot, (Kind::Int64, device));
            loop {
                let cur = out.size()[1];
                let last = out.select(1, cur - 1);
                let done = last.eq(t.eot).logical_or(&last.eq(t.pad));
                let mut sample = Tensor::full([n], t.pad, (Kind::Int64, device));
                if bool::try_from(done.all())? {
                    if !d.fixed_output_length {
                        break;
                    }
                } else {
                    let logits = self.next_logits(&image_tokens, &out);
                    if cur < d.min_seq_len {
                        let _ = logits.narrow(1, t.eot, 1).fill_(f64::NEG_INFINITY);
                    }
                    let next = if cur + 1 == d.seq_len {
                        Tensor::full([n], t.eot, (Kind::Int64, device))
                    } else {
                        logits.argmax(-1, false)
                    };
                    sample = next.where_self(&done.logical_not(), &sample);
                }
                out = Tensor::cat(&[out, sample.unsqueeze(1)], 1);
                if out.size()[1] >= d.seq_len {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Beam search, caption for caption OpenCLIP's default `generate` (6 beams in 3 groups
    /// without a diversity penalty, which is a `num_beams`-beam search repeated per group):
    /// beams are scored by their summed raw logits, finished captions by that sum over their
    /// length (start and end tokens included); the best finished caption of each image.
    ///
    /// # Shapes
    /// `images`: [N, 3, S, S] → [N, ≤ seq_len] int64.
    pub fn generate_beam(&self, images: &Tensor, d: Decoding, num_beams: i64) -> Result<Tensor> {
        self.check_decoding(&d)?;
        if num_beams < 1 {
            return Err(ConfigError::invalid("--num-beams", num_beams, "an integer >= 1").into());
        }
        let t = d.tokens;
        let g = num_beams;
        tch::no_grad(|| -> Result<Tensor> {
            let (_, image_tokens) = self.encode_image_coca(images);
            let n = images.size()[0];
            let mut results: Vec<Vec<i64>> = Vec::with_capacity(n as usize);
            for b in 0..n {
                let it = image_tokens.narrow(0, b, 1).expand([g, -1, -1], true);
                let mut seqs: Vec<Vec<i64>> = vec![vec![t.sot]; g as usize];
                // float32 sums, as OpenCLIP's beam scores.
                let mut scores: Vec<f32> = (0..g).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect();
                let mut hyps = Hypotheses::new(g as usize);
                let mut done = false;
                loop {
                    let cur = seqs[0].len() as i64;
                    let flat: Vec<i64> = seqs.iter().flatten().copied().collect();
                    let prefix = Tensor::from_slice(&flat).view([g, cur]).to_device(images.device());
                    let logits = self.next_logits(&it, &prefix);
                    if cur < d.min_seq_len {
                        let _ = logits.narrow(1, t.eot, 1).fill_(f64::NEG_INFINITY);
                    }
                    let vocab = logits.size()[1];
                    let beam_scores = Tensor::from_slice(&scores).view([g, 1]).to_device(images.device());
                    let total = (logits + beam_scores).view([-1]);
                    let (top_s, top_i) = total.topk(2 * g, -1, true, true);
                    let top_s: Vec<f32> = Vec::<f32>::try_from(top_s.to_device(Device::Cpu))?;
                    let top_i: Vec<i64> = Vec::<i64>::try_from(top_i.to_device(Device::Cpu))?;
                    let (mut next_seqs, mut next_scores) = (Vec::new(), Vec::new());
                    for (rank, (&s, &i)) in top_s.iter().zip(&top_i).enumerate() {
                        let (src, tok) = ((i / vocab) as usize, i % vocab);
                        if tok == t.eot {
                            if rank >= g as usize {
                                continue;
                            }
                            hyps.add(f64::from(s) / (cur + 1) as f64, seqs[src].clone());
                        } else {
                            let mut next = seqs[src].clone();
                            next.push(tok);
                            next_seqs.push(next);
                            next_scores.push(s);
                        }
                        if next_seqs.len() == g as usize {
                            break;
                        }
                    }
                    if hyps.is_full() && hyps.worst >= f64::from(top_s[0]) / (cur + 1) as f64 {
                        done = true;
                    }
                    seqs = next_seqs;
                    scores = next_scores;
                    if done || seqs[0].len() as i64 >= d.seq_len {
                        break;
                    }
                }
                if !done {
                    for (seq, score) in seqs.iter().zip(&scores) {
                        hyps.add(f64::from(*score) / seq.len() as f64, seq.clone());
                    }
                }
                results.push(hyps.best());
            }
            let longest = results.iter().map(Vec::len).max().unwrap_or(1) as i64;
            let width = if d.fixed_output_length { d.seq_len } else { (longest + 1).min(d.seq_len) };
            let mut flat = Vec::with_capacity((n * width) as usize);
            for r in &results {
                let mut row = r.clone();
                if (row.len() as i64) < width {
                    row.push(t.eot);
                }
                row.resize(width as usize, t.pad);
                flat.extend(row);
            }
            Ok(Tensor::from_slice(&flat).view([n, width]))
        })
    }
}

/// The summed cross-entropy of `logits` against `labels` over the non-padding (id 0) labels, and
/// their count, both float32 []: the caption loss of a batch is `2 · sum / count`.
///
/// # Shapes
/// `logits`: [N, L, vocab], `labels`: [N, L].
pub fn caption_loss_sum(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let vocab = logits.size()[2];
    let flat = labels.reshape([-1]);
    let sum = logits.reshape([-1, vocab]).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        &flat,
        None,
        tch::Reduction::Sum,
        0,
        0.0,
    );
    (sum, flat.ne(0).sum(Kind::Float))
}

/// Finished captions of one beam search: the best `keep` by length-normalised score.
struct Hypotheses {
    keep: usize,
    items: Vec<(f64, Vec<i64>)>,
    worst: f64,
}

impl Hypotheses {
    fn new(keep: usize) -> Self {
        Hypotheses { keep, items: Vec::new(), worst: 1e9 }
    }

    fn is_full(&self) -> bool {
        self.items.len() >= self.keep
    }

    /// Adds a caption if there is room or it beats the worst kept one (which is then dropped).
    fn add(&mut self, score: f64, tokens: Vec<i64>) {
        if self.items.len() < self.keep || score > self.worst {
            self.items.push((score, tokens));
            if self.items.len() > self.keep {
                let mut order: Vec<(f64, usize)> = self.items.iter().enumerate().map(|(k, h)| (h.0, k)).collect();
                order.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                self.items.remove(order[0].1);
                self.worst = order[1].0;
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    /// The best caption; on equal scores the one added last, as Python's stable sort and `pop()`.
    fn best(self) -> Vec<i64> {
        let mut items = self.items;
        items.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        items.pop().map(|(_, t)| t).unwrap_or_default()
    }
}
