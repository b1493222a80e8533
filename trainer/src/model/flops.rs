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

/// Forward FLOPs of the image tower for one sample.
pub fn image_flops(cfg: &ClipConfig) -> f64 {
    let v = &cfg.vision_cfg;
    let patches = (v.grid_size() * v.grid_size()) as f64;
    let width = v.width as f64;
    let patch_embed = patches * (3 * v.patch_size * v.patch_size) as f64 * width;
    let macs = patch_embed
        + transformer_macs(patches + 1.0, width, v.layers as f64, v.mlp_ratio)
        + width * cfg.embed_dim as f64;
    2.0 * macs
}

/// Forward FLOPs of the text tower for one sample (all `context_length` positions).
pub fn text_flops(cfg: &ClipConfig) -> f64 {
    let t = &cfg.text_cfg;
    let width = t.width as f64;
    let macs =
        transformer_macs(t.context_length as f64, width, t.layers as f64, t.mlp_ratio) + width * cfg.embed_dim as f64;
    2.0 * macs
}

/// FLOPs of one training sample: forward plus backward, taken as 3× the forward pass.
pub fn train_flops_per_sample(cfg: &ClipConfig) -> f64 {
    3.0 * (image_flops(cfg) + text_flops(cfg))
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
}
