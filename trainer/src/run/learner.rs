//! The learner: the model, its optimizer and schedule, and the one training step that
//! `clipfleet train` and `clipfleet bench train` both run.

use std::time::Instant;

use tch::Tensor;

use crate::config::TrainConfig;
use crate::dist::ProcessGroup;
use crate::error::Result;
use crate::model::{Clip, ClipConfig};
use crate::optim::{AdamW, LrScheduler};
use crate::precision::Precision;
use crate::step::{CollectiveTimes, ContrastiveStep, DeviceBatch, RngReplay};

use super::Decision;

/// What one optimizer step did. Its tensors are on the device: reading them syncs the host.
#[derive(Debug)]
pub struct StepOutcome {
    /// The optimizer step just completed (1 after the first), skipped or not.
    pub step: i64,
    /// This rank's loss_r, [].
    pub loss: Tensor,
    /// The global gradient norm before clipping, [].
    pub grad_norm: Tensor,
    /// The learning rate the step used.
    pub lr: f64,
    /// Time in the step's collectives.
    pub times: CollectiveTimes,
    /// Time in the optimizer update, in seconds (0 when skipped).
    pub optimizer_seconds: f64,
    /// The update was skipped: some rank's loss or gradient was not finite.
    pub skipped: bool,
}

/// The model, its optimizer and schedule, and the distributed step (DESIGN §3).
#[derive(Debug)]
pub struct Learner<'g> {
    model: Clip,
    optimizer: AdamW,
    step: ContrastiveStep<'g>,
    schedule: LrScheduler,
    cfg: LearnerSettings,
}

/// The settings of [`Learner`] taken from the config.
#[derive(Debug, Clone, Copy)]
struct LearnerSettings {
    lr: f64,
    warmup: i64,
    steps: i64,
    grad_clip_norm: Option<f64>,
    accum_freq: i64,
    seed: u64,
}

impl<'g> Learner<'g> {
    /// A freshly initialised model for `model_cfg` on `device` (libtorch's generator seeded
    /// with the run seed), in `cfg`'s precision, with its AdamW and the step over `group`.
    /// Sets the process-wide precision switches (autocast dtype, TF32).
    pub fn new(
        cfg: &TrainConfig,
        model_cfg: &ClipConfig,
        device: tch::Device,
        group: &'g dyn ProcessGroup,
    ) -> Result<Self> {
        let precision = Precision::resolve(cfg.precision, device)?;
        precision.configure(cfg.tf32)?;
        tch::manual_seed(cfg.seed as i64);
        let mut model = Clip::new(model_cfg, device)?;
        model.set_parameter_kind(precision.parameter_kind());
        model.set_freeze_bn_stats(cfg.lock_image && cfg.lock_image_freeze_bn_stats);
        model.set_grad_checkpointing(cfg.grad_checkpointing);
        // Locked parameters get no gradient and no optimizer state.
        let lock = cfg.lock_spec();
        let (mut trainable, mut locked) = (Vec::new(), 0i64);
        for (name, param) in model.named_parameters() {
            if lock.is_locked(&name, model_cfg) {
                let _ = param.set_requires_grad(false);
                locked += param.numel() as i64;
            } else {
                trainable.push((name, param));
            }
        }
        if locked > 0 {
            let total: i64 = model.named_parameters().iter().map(|(_, p)| p.numel() as i64).sum();
            tracing::info!(
                locked,
                trainable = total - locked,
                image = lock.image,
                image_unlocked_groups = lock.image_unlocked_groups,
                text = lock.text,
                text_unlocked_layers = lock.text_unlocked_layers,
                "locked parameters"
            );
        }
        let optimizer = AdamW::new(trainable, cfg.adamw());
        let step = ContrastiveStep {
            precision,
            group,
            loss: cfg.loss,
            blocks: cfg.loss_blocks(),
            bucket_bytes: cfg.grad_bucket_mb << 20,
        };
        let settings = LearnerSettings {
            lr: cfg.lr,
            warmup: cfg.warmup,
            steps: cfg.steps,
            grad_clip_norm: cfg.grad_clip_norm,
            accum_freq: cfg.accum_freq,
            seed: cfg.seed,
        };
        Ok(Learner { model, optimizer, step, schedule: cfg.lr_scheduler, cfg: settings })
    }

    /// The model.
    pub fn model(&self) -> &Clip {
        &self.model
    }

    /// The model and the optimizer, to load a checkpoint into.
    pub fn parts_mut(&mut self) -> (&mut Clip, &mut AdamW) {
        (&mut self.model, &mut self.optimizer)
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The precision of the forward passes.
    pub fn precision(&self) -> Precision {
        self.step.precision
    }

    /// Runs optimizer step `step + 1` on `batch`, this rank's rows of the global batch, with
    /// no agreement between ranks: the update is always applied (single-process tools).
    pub fn step(&mut self, step: i64, batch: DeviceBatch) -> Result<StepOutcome> {
        let (outcome, _) = self.step_agreed(step, batch, |_, _| Ok(Decision::default()))?;
        Ok(outcome)
    }

    /// Runs optimizer step `step + 1` on `batch`: the gathered loss and its gradients,
    /// all-reduced over the ranks; then `agree` (the step boundary's one collective) decides
    /// from this rank's loss and the global gradient norm; unless it says that some rank's
    /// loss or gradient is not finite, the gradients are clipped and AdamW updates the weights
    /// at the schedule's learning rate, with the logit-scale clamp. A skipped step changes no
    /// weight and no optimizer state on any rank.
    pub fn step_agreed(
        &mut self,
        step: i64,
        batch: DeviceBatch,
        agree: impl FnOnce(&Tensor, &Tensor) -> Result<Decision>,
    ) -> Result<(StepOutcome, Decision)> {
        let lr = self.schedule.lr(self.cfg.lr, self.cfg.warmup, self.cfg.steps, step);
        self.optimizer.zero_grad();
        let replay = RngReplay { seed: self.cfg.seed, step };
        let out = self.step.backward(&self.model, &batch, self.cfg.accum_freq, replay)?;
        drop(batch);
        let grad_norm = self.optimizer.grad_norm();
        let decision = agree(&out.loss, &grad_norm)?;
        let mut optimizer_seconds = 0.0;
        if decision.non_finite {
            self.optimizer.zero_grad();
        } else {
            if let Some(max) = self.cfg.grad_clip_norm {
                self.optimizer.clip_grad_norm_to(&grad_norm, max);
            }
            let t = Instant::now();
            self.optimizer.step(lr);
            optimizer_seconds = t.elapsed().as_secs_f64();
            self.model.clamp_logit_scale();
        }
        let outcome = StepOutcome {
            step: step + 1,
            loss: out.loss,
            grad_norm,
            lr,
            times: out.times,
            optimizer_seconds,
            skipped: decision.non_finite,
        };
        Ok((outcome, decision))
    }
}
