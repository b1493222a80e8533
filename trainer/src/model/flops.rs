//! Analytic FLOP counts of a forward pass, for throughput and MFU reports.
//!
//! Multiply–accumulates of every matmul (patch embedding, QKV and output projections,
//! attention scores and values, MLP, final projections), times two. Element-wise ops are
//! ignored, as in OpenCLIP's `docs/model_profile.csv`, whose figures these reproduce
//! (ViT-B-32: 8.82 image + 5.96 text GFLOPs per sample).

use super::config::ClipConfig;

/// MACs of one pre-norm transformer over `tokens` tokens.
fn transformer_macs(tokens: f64, width: f64, layers: f64, mlp_ratio: f64) -> f64 {
    let projections = 4.0 * width * width * tokens; // q, k, v and out
    let attention = 2.0 * tokens * tokens * width; // scores and weighted values
    let mlp = 2.0 * width * (mlp_ratio * width) * tokens;
    layers * (projections + attention + mlp)
}

/// Forward FLOPs of the image tower for one sample, in evaluation (all patches).
pub fn image_flops(cfg: &ClipConfig) -> f64 {
    let v = &cfg.vision_cfg;
    if let Some(stages) = v.resnet_stages() {
        return 2.0 * resnet_macs(v.image_size as f64, stages, v.width as f64, cfg.embed_dim as f64);
    }
    let patches = (v.grid_size() * v.grid_size()) as f64;
    let width = v.width as f64;
    let patch_embed = patches * (3 * v.patch() * v.patch()) as f64 * width;
    let macs = patch_embed
        + transformer_macs(patches + 1.0, width, v.blocks() as f64, v.mlp_ratio)
        + width * cfg.embed_dim as f64;
    2.0 * macs
}

/// Forward FLOPs of the image tower for one training sample: under patch dropout the
/// transformer sees only the kept patches (and the class token).
pub fn image_train_flops(cfg: &ClipConfig) -> f64 {
    let v = &cfg.vision_cfg;
    if v.resnet_stages().is_some() || v.patch_dropout == 0.0 {
        return image_flops(cfg);
    }
    let patches = (v.grid_size() * v.grid_size()) as f64;
    let width = v.width as f64;
    let patch_embed = patches * (3 * v.patch() * v.patch()) as f64 * width;
    let macs = patch_embed
        + transformer_macs(v.patches_kept() as f64 + 1.0, width, v.blocks() as f64, v.mlp_ratio)
        + width * cfg.embed_dim as f64;
    2.0 * macs
}

/// MACs of a ModifiedResNet over `size`² pixels: the convolutions (stem, bottlenecks and
/// shortcuts) and the attention pool's projections, scores and values.
fn resnet_macs(size: f64, stages: &[i64], width: f64, embed_dim: f64) -> f64 {
    let conv = |res: f64, c_in: f64, c_out: f64, k: f64| res * res * c_in * c_out * k * k;
    let half = size / 2.0;
    let mut macs = conv(half, 3.0, width / 2.0, 3.0)
        + conv(half, width / 2.0, width / 2.0, 3.0)
        + conv(half, width / 2.0, width, 3.0);
    let mut res = size / 4.0;
    let mut inplanes = width;
    for (i, &depth) in stages.iter().enumerate() {
        let planes = width * f64::from(1u32 << i);
        for j in 0..depth {
            let stride = if i > 0 && j == 0 { 2.0 } else { 1.0 };
            let out_res = res / stride;
            macs += conv(res, inplanes, planes, 1.0)
                + conv(res, planes, planes, 3.0)
                + conv(out_res, planes, 4.0 * planes, 1.0);
            if stride > 1.0 || inplanes != 4.0 * planes {
                macs += conv(out_res, inplanes, 4.0 * planes, 1.0);
            }
            res = out_res;
            inplanes = 4.0 * planes;
        }
    }
    let tokens = res * res + 1.0;
    let c = inplanes;
    // q for the pooled token, k and v for every token, one query's scores and values, c_proj.
    macs + c * c + 2.0 * tokens * c * c + 2.0 * tokens * c + c * embed_dim
}

/// Forward FLOPs of the text tower for one sample (all `context_length` positions).
pub fn text_flops(cfg: &ClipConfig) -> f64 {
    let t = &cfg.text_cfg;
    let width = t.width as f64;
    let macs =
        transformer_macs(t.context_length as f64, width, t.layers as f64, t.mlp_ratio) + width * cfg.embed_dim as f64;
    2.0 * macs
}

/// Forward FLOPs of CoCa's parts beyond a CLIP's towers, for one sample: the attentional
/// pooler (queries against every image token, key and value projections from the tower's
/// width), the class token's extra text position, and the multimodal decoder over the caption
/// (causal self-attention, cross-attention to the image tokens, MLPs, the vocabulary
/// projection). 0 for other models.
pub fn coca_extra_flops(cfg: &ClipConfig) -> f64 {
    let Some(m) = &cfg.multimodal_cfg else { return 0.0 };
    let v = &cfg.vision_cfg;
    let (e, wv) = (cfg.embed_dim as f64, v.width as f64);
    let tokens = (v.grid_size() * v.grid_size() + 1) as f64;
    let q = cfg.pooler_queries() as f64;
    let pool = q * e * e + 2.0 * tokens * wv * e + 2.0 * q * tokens * e + q * e * e;
    let t = cfg.text_cfg.context_length as f64 - 1.0; // the decoder's positions
    let w = m.width as f64;
    let image_tokens = q - 1.0;
    let self_attn = transformer_macs(t, w, m.layers as f64, 4.0);
    let cross =
        m.layers as f64 * (2.0 * t * w * w + 2.0 * image_tokens * w * w + 2.0 * t * image_tokens * w + 8.0 * t * w * w);
    let vocab = t * w * cfg.text_cfg.vocab_size as f64;
    let cls = transformer_macs(1.0, cfg.text_cfg.width as f64, cfg.text_cfg.layers as f64, 4.0);
    2.0 * (pool + self_attn + cross + vocab + cls)
}

/// FLOPs of one training sample: forward plus backward, taken as 3× the forward pass (with
/// the patches that patch dropout keeps). Gradient checkpointing's extra forward pass is
/// not counted, as MFU conventionally leaves recomputation out.
pub fn train_flops_per_sample(cfg: &ClipConfig) -> f64 {
    3.0 * (image_train_flops(cfg) + text_flops(cfg) + coca_extra_flops(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gflops(x: f64) -> f64 {
        (x / 1e9 * 100.0).round() / 100.0
    }

    #[test]
    fn matches_open_clip_model_profile() {
        // OpenCLIP docs/model_profile.csv (DESIGN §4).
        let b32 = ClipConfig::vit_b_32();
        assert_eq!(gflops(image_flops(&b32)), 8.82);
        assert_eq!(gflops(text_flops(&b32)), 5.96);
        let b16 = ClipConfig::vit_b_16();
        assert_eq!(gflops(image_flops(&b16) + text_flops(&b16)), 41.09);
        let l14 = ClipConfig::vit_l_14();
        let total = image_flops(&l14) + text_flops(&l14);
        assert!((total / 1e9 - 175.33).abs() < 0.1, "{}", total / 1e9);
    }

    /// ResNet towers against `torch.utils.flop_counter.FlopCounterMode` on OpenCLIP 3.3.0's
    /// `encode_image` (one image; 2 FLOPs per multiply–accumulate): RN50 12.202459136 GFLOPs,
    /// RN50x4 42.48836096. OpenCLIP's attention pool projects all T tokens as queries and
    /// through `c_proj`, and keeps only the first; clipfleet projects the pooled token only.
    /// The counter also leaves out the pool's scores and values, which clipfleet counts.
    #[test]
    fn resnet_flops_match_torch_flop_counter() {
        for (cfg, torch_gflops) in [(ClipConfig::rn50(), 12.202459136), (ClipConfig::rn50x4(), 42.48836096)] {
            let grid = cfg.vision_cfg.grid_size() as f64;
            let (t, c, e) = (grid * grid + 1.0, 32.0 * cfg.vision_cfg.width as f64, cfg.embed_dim as f64);
            let dropped_tokens = 2.0 * (t - 1.0) * (c * c + c * e);
            let uncounted_attention = 2.0 * 2.0 * t * c;
            let ours = image_flops(&cfg);
            let as_torch_counts = ours + dropped_tokens - uncounted_attention;
            assert!((as_torch_counts - torch_gflops * 1e9).abs() < 1e3, "{ours}: {as_torch_counts}");
        }
    }

    /// Patch dropout at 0.5 halves the image transformer's tokens in training.
    #[test]
    fn patch_dropout_cuts_training_flops() {
        let mut cfg = ClipConfig::vit_b_16();
        let full = image_train_flops(&cfg);
        cfg.vision_cfg.patch_dropout = 0.5;
        assert_eq!(cfg.vision_cfg.patches_kept(), 98);
        let dropped = image_train_flops(&cfg);
        assert!(dropped < 0.55 * full && dropped > 0.45 * full, "{dropped} vs {full}");
        assert_eq!(image_flops(&cfg), full);
    }
}
