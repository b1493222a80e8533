//! Locked towers, with OpenCLIP's meanings (`--lock-image`, `--lock-text` and their unlocked
//! groups; LiT, arXiv:2111.07991): which parameters of a [`Clip`](super::Clip) stay frozen.
//!
//! A locked parameter keeps its pretrained value: it gets no gradient (so no backward pass runs
//! through the part of the tower below the first trainable parameter), no optimizer state, and
//! no weight decay. The logit scale and bias are never locked.
//!
//! Groups, counted from the end as OpenCLIP's `lock(unlocked_groups)` counts them:
//! - image (ViT, `VisionTransformer.lock`): `[conv1, class_embedding, positional_embedding,
//!   ln_pre]`, each residual block but the last, `[last block, ln_post]`, `proj`;
//! - text (`lock_text_tower`): `[token_embedding, positional_embedding]`, each residual block but
//!   the last, `[last block, ln_final]`, `text_projection`.

use serde::{Deserialize, Serialize};

use super::ClipConfig;

/// Which towers are locked, and how many of their last groups stay trainable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSpec {
    /// Lock the image tower.
    pub image: bool,
    /// Its last groups that stay trainable (0: none).
    pub image_unlocked_groups: i64,
    /// Lock the text tower.
    pub text: bool,
    /// Its last groups (layers) that stay trainable (0: none).
    pub text_unlocked_layers: i64,
}

impl LockSpec {
    /// Whether the parameter `name` (OpenCLIP's state-dict name) of a model of `cfg` is locked.
    pub fn is_locked(&self, name: &str, cfg: &ClipConfig) -> bool {
        if name == "logit_scale" || name == "logit_bias" {
            return false;
        }
        match name.strip_prefix("visual.") {
            Some(rest) => {
                self.image
                    && !unlocked(
                        image_group(rest, cfg.vision_cfg.blocks()),
                        cfg.vision_cfg.blocks(),
                        self.image_unlocked_groups,
                    )
            }
            None => {
                self.text
                    && !unlocked(text_group(name, cfg.text_cfg.layers), cfg.text_cfg.layers, self.text_unlocked_layers)
            }
        }
    }
}

/// Whether group `group` of a tower of `layers` blocks (`layers + 2` groups) is among its last
/// `keep`. A parameter in no group (`None`) stays locked, as in OpenCLIP.
fn unlocked(group: Option<i64>, layers: i64, keep: i64) -> bool {
    group.is_some_and(|g| keep > 0 && g >= layers + 2 - keep)
}

/// The block index of `transformer.resblocks.N.…`.
fn block(name: &str) -> Option<i64> {
    name.strip_prefix("transformer.resblocks.")?.split('.').next()?.parse().ok()
}

fn image_group(rest: &str, layers: i64) -> Option<i64> {
    let first = rest.split('.').next().unwrap_or(rest);
    match first {
        "conv1" | "class_embedding" | "positional_embedding" | "ln_pre" => Some(0),
        "ln_post" => Some(layers),
        "proj" => Some(layers + 1),
        "transformer" => block(rest).map(|i| (i + 1).min(layers)),
        _ => None,
    }
}

fn text_group(name: &str, layers: i64) -> Option<i64> {
    let first = name.split('.').next().unwrap_or(name);
    match first {
        "token_embedding" | "positional_embedding" | "cls_emb" => Some(0),
        "ln_final" => Some(layers),
        "text_projection" => Some(layers + 1),
        "transformer" => block(name).map(|i| (i + 1).min(layers)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_openclip() {
        let cfg = ClipConfig::vit_b_32();
        let lock = |image_unlocked_groups, text_unlocked_layers| LockSpec {
            image: true,
            image_unlocked_groups,
            text: true,
            text_unlocked_layers,
        };
        let none = lock(0, 0);
        for name in [
            "visual.conv1.weight",
            "visual.proj",
            "visual.transformer.resblocks.11.mlp.c_fc.weight",
            "text_projection",
            "token_embedding.weight",
            "ln_final.bias",
        ] {
            assert!(none.is_locked(name, &cfg), "{name}");
        }
        assert!(!none.is_locked("logit_scale", &cfg));
        // 1 group: the projection only; 2: the last block and ln_post / ln_final too.
        assert!(!lock(1, 1).is_locked("visual.proj", &cfg));
        assert!(lock(1, 1).is_locked("visual.ln_post.weight", &cfg));
        assert!(!lock(1, 1).is_locked("text_projection", &cfg));
        assert!(lock(1, 1).is_locked("ln_final.weight", &cfg));
        assert!(!lock(2, 2).is_locked("visual.transformer.resblocks.11.attn.in_proj_weight", &cfg));
        assert!(!lock(2, 2).is_locked("ln_final.weight", &cfg));
        assert!(lock(2, 2).is_locked("visual.transformer.resblocks.10.attn.in_proj_weight", &cfg));
        assert!(!lock(3, 3).is_locked("transformer.resblocks.10.ln_1.weight", &cfg));
        // All 14 groups (and more) unlock everything, the stem included.
        assert!(!lock(14, 14).is_locked("visual.conv1.weight", &cfg));
        assert!(!lock(99, 99).is_locked("token_embedding.weight", &cfg));
        assert!(lock(13, 13).is_locked("positional_embedding", &cfg));
        let image_only = LockSpec { image: true, ..LockSpec::default() };
        assert!(!image_only.is_locked("transformer.resblocks.0.ln_1.weight", &cfg));
    }
}
