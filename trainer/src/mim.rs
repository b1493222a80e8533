//! EVA-style masked image modelling (Fang et al., EVA and EVA-02): pretrain a ViT image tower
//! by regressing a frozen CLIP teacher's patch features at masked positions, then start a CLIP
//! image tower from it (`--pretrained` with the student's `image_tower.safetensors`).
//!
//! - **Masking:** BEiT's block-wise masking: rectangles of 16 patches or more (at most the
//!   patches still to mask), aspect ratio in [0.3, 1/0.3], added until `mask_ratio` of the
//!   patches are masked (40% by default, EVA-02's). Drawn per sample from (seed, step, row), so
//!   a run is reproducible.
//! - **Student:** the image tower of the `--model` config under OpenCLIP's `visual.*` names;
//!   masked patch embeddings are replaced by a learned `mim.mask_token` before the positional
//!   embedding, and a linear `mim.head` maps each output patch token (after `ln_post`) to the
//!   teacher's feature width.
//! - **Teacher:** a CLIP ViT image tower (a clipfleet checkpoint or OpenCLIP weights), frozen,
//!   in evaluation mode. Its targets are its patch tokens after `ln_post`, projected by
//!   `visual.proj` into the CLIP embedding space and L2-normalised: the features its text tower
//!   was aligned with.
//! - **Loss:** EVA-02's negative cosine: 1 − cos(prediction, target), averaged over the masked
//!   patches.
//!
//! One process: AdamW with OpenCLIP's groups, warm-up and cosine decay, on the synthetic
//! training stream (OpenCLIP's training crop).

use std::io::Write;
use std::path::{Path, PathBuf};

use clipfleet_dataloader::rng::Rng;
use clipfleet_dataloader::synthetic::{Split, SyntheticDataset};
use serde::Serialize;
use tch::nn::{self, Init, Module};
use tch::{Device, Kind, Tensor};

use crate::data::images_to_tensor;
use crate::error::{ConfigError, Result, TrainError};
use crate::model::transformer::linear;
use crate::model::vision::VisionTransformer;
use crate::model::{l2_normalize, Clip, ClipConfig};
use crate::optim::{AdamW, AdamWConfig, LrScheduler};

/// Seeds the masks apart from every other stream keyed by the same sample.
const MASK_STREAM: u64 = 0x6d69_6d5f_6d61_736b; // "mim_mask"

/// BEiT's smallest masked block, in patches.
const MIN_BLOCK_PATCHES: f64 = 16.0;

/// A masked-image-modelling run.
#[derive(Debug, Clone)]
pub struct MimConfig {
    /// The student's model; its image tower is trained (a ViT).
    pub model: ClipConfig,
    /// Optimizer steps.
    pub steps: i64,
    /// Images per step.
    pub batch_size: i64,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: i64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Fraction of the patches masked per image, in (0, 1).
    pub mask_ratio: f64,
    /// Seeds the student's initialisation, the data order, the crops and the masks.
    pub seed: u64,
    /// Log the loss every this many steps.
    pub log_every: i64,
    /// Where `image_tower.safetensors`, `student.safetensors` and `mim.jsonl` go.
    pub output: PathBuf,
}

impl MimConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self, teacher: &ClipConfig) -> std::result::Result<(), ConfigError> {
        for (key, v) in [("--steps", self.steps), ("--batch-size", self.batch_size), ("--log-every", self.log_every)] {
            if v < 1 {
                return Err(ConfigError::invalid(key, v, "an integer >= 1"));
            }
        }
        if self.warmup < 0 {
            return Err(ConfigError::invalid("--warmup", self.warmup, "an integer >= 0"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ConfigError::invalid("--lr", self.lr, "a finite number > 0"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(ConfigError::invalid("--weight-decay", self.weight_decay, "a finite number >= 0"));
        }
        if !(self.mask_ratio > 0.0 && self.mask_ratio < 1.0) {
            return Err(ConfigError::invalid("--mask-ratio", self.mask_ratio, "a number in (0, 1)"));
        }
        for (key, cfg) in [("--model", &self.model), ("--teacher", teacher)] {
            if cfg.is_resnet() {
                return Err(ConfigError::invalid(key, "a ResNet", "a ViT image tower (patch tokens)"));
            }
        }
        let (s, t) = (&self.model.vision_cfg, &teacher.vision_cfg);
        if (s.image_size, s.grid_size()) != (t.image_size, t.grid_size()) {
            return Err(ConfigError::invalid(
                "--teacher",
                format!("{} px in a {}×{} grid", t.image_size, t.grid_size(), t.grid_size()),
                format!(
                    "the student's image size and patch grid ({} px, {}×{})",
                    s.image_size,
                    s.grid_size(),
                    s.grid_size()
                ),
            ));
        }
        Ok(())
    }
}

/// The student: a ViT image tower with a mask token and a regression head.
#[derive(Debug)]
pub struct Student {
    vs: nn::VarStore,
    visual: VisionTransformer,
    mask_token: Tensor,
    head: nn::Linear,
}

impl Student {
    /// A freshly initialised student for `cfg`'s image tower, predicting `target_dim` features.
    pub fn new(cfg: &ClipConfig, target_dim: i64, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let visual = VisionTransformer::new(&root / "visual", &cfg.vision_cfg, cfg.embed_dim, cfg.activation());
        let mim = &root / "mim";
        let width = cfg.vision_cfg.width;
        let mask_token = mim.var("mask_token", &[width], Init::Randn { mean: 0.0, stdev: 0.02 });
        let head = linear(&mim / "head", width, target_dim, Some(0.02));
        Student { vs, visual, mask_token, head }
    }

    /// Predicted features of every patch.
    ///
    /// # Shapes
    /// `images`: [b, 3, S, S], `masked`: [b, patches] bool → [b, patches, target_dim].
    pub fn forward(&self, images: &Tensor, masked: &Tensor) -> Tensor {
        let x = self.visual.stem_masked(images, &self.mask_token, masked);
        let x = (0..self.visual.depth()).fold(x, |x, i| self.visual.block(i, &x));
        self.head.forward(&self.visual.patch_tokens(&x))
    }

    /// Parameters, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Writes the image tower alone (`visual.*`, the file `--pretrained` takes) and the whole
    /// student.
    pub fn save(&self, image_tower: &Path, student: &Path) -> Result<()> {
        let all: Vec<(String, Tensor)> = self
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous()))
            .collect();
        let tower: Vec<(String, Tensor)> =
            all.iter().filter(|(n, _)| n.starts_with("visual.")).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        for (path, tensors) in [(image_tower, &tower), (student, &all)] {
            Tensor::write_safetensors(tensors, path)
                .map_err(|e| TrainError::Weights { path: path.to_path_buf(), reason: format!("cannot write: {e}") })?;
        }
        Ok(())
    }
}

/// BEiT's block-wise mask of a `grid`×`grid` patch grid with about `ratio` of it masked,
/// drawn from `rng`; row-major, `true` = masked.
pub fn block_mask(grid: usize, ratio: f64, rng: &mut Rng) -> Vec<bool> {
    let patches = grid * grid;
    let target = ((patches as f64 * ratio).round() as usize).clamp(1, patches.saturating_sub(1).max(1));
    let mut mask = vec![false; patches];
    let mut count = 0;
    let log_aspect = (0.3f64.ln(), (1.0 / 0.3f64).ln());
    while count < target {
        let max_block = target - count;
        let mut delta = 0;
        for _ in 0..10 {
            let area = rng.uniform(MIN_BLOCK_PATCHES.min(max_block as f64), max_block as f64);
            let aspect = rng.uniform(log_aspect.0, log_aspect.1).exp();
            let h = (area * aspect).sqrt().round() as usize;
            let w = (area / aspect).sqrt().round() as usize;
            if h == 0 || w == 0 || h >= grid || w >= grid {
                continue;
            }
            let top = rng.below((grid - h + 1) as u64) as usize;
            let left = rng.below((grid - w + 1) as u64) as usize;
            let fresh = (top..top + h).flat_map(|i| (left..left + w).map(move |j| i * grid + j)).filter(|&k| !mask[k]);
            let fresh: Vec<usize> = fresh.collect();
            if !fresh.is_empty() && fresh.len() <= max_block {
                for k in &fresh {
                    mask[*k] = true;
                }
                delta = fresh.len();
                break;
            }
        }
        if delta == 0 {
            break;
        }
        count += delta;
    }
    mask
}

/// One logged step.
#[derive(Debug, Clone, Serialize)]
pub struct MimLog {
    /// Optimizer steps done.
    pub step: i64,
    /// Mean 1 − cos over the masked patches of the step's batch.
    pub loss: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Fraction of the patches masked in the batch.
    pub masked: f64,
}

/// Trains a student against `teacher` and writes it under `cfg.output`; returns the log.
pub fn train(cfg: &MimConfig, teacher: &Clip, device: Device) -> Result<Vec<MimLog>> {
    cfg.validate(teacher.config())?;
    std::fs::create_dir_all(&cfg.output).map_err(|source| TrainError::Io { path: cfg.output.clone(), source })?;
    let _eval = teacher.eval_mode();
    tch::manual_seed(cfg.seed as i64);
    let student = Student::new(&cfg.model, teacher.config().embed_dim, device);
    let adamw = AdamWConfig { weight_decay: cfg.weight_decay, ..AdamWConfig::default() };
    let mut opt = AdamW::new(student.named_parameters(), adamw);
    let data = SyntheticDataset::new(cfg.model.vision_cfg.image_size as u32, cfg.seed);
    let grid = cfg.model.vision_cfg.grid_size() as usize;
    let log_path = cfg.output.join("mim.jsonl");
    let mut log_file =
        std::fs::File::create(&log_path).map_err(|source| TrainError::Io { path: log_path.clone(), source })?;
    let mut logs = Vec::new();
    for step in 0..cfg.steps {
        let first = (step * cfg.batch_size) as u64;
        let indices: Vec<u64> = (first..first + cfg.batch_size as u64).collect();
        let (batch, _, _) = data.batch(Split::Train, &indices, Some(0));
        let images = images_to_tensor(&batch, device);
        let masks: Vec<bool> = indices
            .iter()
            .flat_map(|&i| block_mask(grid, cfg.mask_ratio, &mut Rng::from_key(&[cfg.seed, MASK_STREAM, i])))
            .collect();
        let masked = Tensor::from_slice(&masks).view([cfg.batch_size, (grid * grid) as i64]).to_device(device);
        let target = tch::no_grad(|| teacher.encode_image_tokens(&images));
        let prediction = student.forward(&images, &masked);
        let cos = (l2_normalize(&prediction.to_kind(Kind::Float)) * target.to_kind(Kind::Float)).sum_dim_intlist(
            [-1i64].as_slice(),
            false,
            Kind::Float,
        );
        let weights = masked.to_kind(Kind::Float);
        let loss = ((cos * -1.0 + 1.0) * &weights).sum(Kind::Float) / weights.sum(Kind::Float);
        opt.zero_grad();
        loss.backward();
        let lr = LrScheduler::Cosine.lr(cfg.lr, cfg.warmup, cfg.steps, step);
        opt.step(lr);
        let done = step + 1;
        if done % cfg.log_every == 0 || done == cfg.steps || done == 1 {
            let entry = MimLog {
                step: done,
                loss: loss.double_value(&[]),
                lr,
                masked: weights.mean(Kind::Float).double_value(&[]),
            };
            if !entry.loss.is_finite() {
                return Err(TrainError::Weights {
                    path: cfg.output.clone(),
                    reason: format!("the masked-image-modelling loss is {} at step {done}", entry.loss),
                });
            }
            tracing::info!(step = done, loss = entry.loss, lr, masked = entry.masked, "mim");
            let line = serde_json::to_string(&entry).unwrap_or_default();
            writeln!(log_file, "{line}").map_err(|source| TrainError::Io { path: log_path.clone(), source })?;
            logs.push(entry);
        }
    }
    let (tower, whole) = (cfg.output.join("image_tower.safetensors"), cfg.output.join("student.safetensors"));
    student.save(&tower, &whole)?;
    tracing::info!(image_tower = %tower.display(), "wrote the student's image tower: start a CLIP run from it with --pretrained");
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_masks_reach_the_ratio_in_blocks() {
        for grid in [8usize, 14] {
            let mut total = 0;
            for i in 0..50u64 {
                let mask = block_mask(grid, 0.4, &mut Rng::from_key(&[1, i]));
                let n = mask.iter().filter(|m| **m).count();
                let target = (0.4 * (grid * grid) as f64).round() as usize;
                assert!(n <= target && n >= target / 2, "{n} of {} masked", grid * grid);
                total += n;
                // Blocks: most masked patches have a masked neighbour.
                let neighbours = (0..grid * grid)
                    .filter(|&k| mask[k])
                    .filter(|&k| {
                        let (r, c) = (k / grid, k % grid);
                        (c + 1 < grid && mask[k + 1])
                            || (c > 0 && mask[k - 1])
                            || (r + 1 < grid && mask[k + grid])
                            || (r > 0 && mask[k - grid])
                    })
                    .count();
                assert!(neighbours * 10 >= n * 9, "{neighbours} of {n} masked patches in blocks");
            }
            let mean = total as f64 / 50.0 / (grid * grid) as f64;
            assert!((0.33..=0.41).contains(&mean), "mean masked fraction {mean}");
        }
        let a = block_mask(8, 0.4, &mut Rng::from_key(&[3, 4]));
        assert_eq!(a, block_mask(8, 0.4, &mut Rng::from_key(&[3, 4])), "the same key draws the same mask");
    }

    /// A few steps against a random teacher: the loss falls, the files load as a CLIP image
    /// tower through `load_pretrained`.
    #[test]
    fn a_short_run_learns_and_its_tower_loads_into_clip() {
        let dir = tempfile::tempdir().unwrap();
        tch::manual_seed(1);
        let teacher = Clip::new(&ClipConfig::tiny(), Device::Cpu).unwrap();
        let cfg = MimConfig {
            model: ClipConfig::tiny(),
            steps: 30,
            batch_size: 16,
            lr: 2e-3,
            warmup: 3,
            weight_decay: 0.05,
            mask_ratio: 0.4,
            seed: 0,
            log_every: 1,
            output: dir.path().to_path_buf(),
        };
        let logs = train(&cfg, &teacher, Device::Cpu).unwrap();
        let first: f64 = logs[..3].iter().map(|l| l.loss).sum::<f64>() / 3.0;
        let last: f64 = logs[logs.len() - 3..].iter().map(|l| l.loss).sum::<f64>() / 3.0;
        assert!(last < 0.8 * first, "loss {first} → {last}");
        let mut clip = Clip::new(&ClipConfig::tiny(), Device::Cpu).unwrap();
        let loaded = clip.load_pretrained(&dir.path().join("image_tower.safetensors")).unwrap();
        assert_eq!(loaded, crate::model::Pretrained::ImageTower);
        let tower = Tensor::read_safetensors(dir.path().join("image_tower.safetensors")).unwrap();
        let params: std::collections::BTreeMap<String, Tensor> = clip.named_parameters().into_iter().collect();
        for (name, t) in tower {
            assert!(params[&name].equal(&t), "{name}");
        }
        assert!(cfg.validate(&ClipConfig::tiny_rn()).is_err());
    }
}
