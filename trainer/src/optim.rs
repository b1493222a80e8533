//! AdamW with OpenCLIP's defaults and weight-decay groups, gradient-norm clipping,
//! and the learning-rate schedules.
//!
//! The optimizer is written on tensors rather than through `tch::nn::Optimizer` so that
//! its state (the two moments and the step) is ours to checkpoint and restore bit-exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{ConfigError, Result, TrainError};

/// AdamW hyper-parameters. Defaults are OpenCLIP's: lr 5e-4, β = (0.9, 0.98), eps 1e-6,
/// weight decay 0.2.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay, applied to the decay group only.
    pub weight_decay: f64,
    /// Use libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`, through the shim):
    /// two kernel launches per step instead of several per parameter.
    #[serde(default)]
    pub fused: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.2, fused: false }
    }
}

/// OpenCLIP's exclusion rule (`open_clip_train/main.py`): no weight decay for parameters
/// with fewer than 2 dimensions or whose name contains "bn", "ln", "bias" or "logit_scale".
pub fn excluded_from_weight_decay(name: &str, ndim: usize) -> bool {
    ndim < 2 || ["bn", "ln", "bias", "logit_scale"].iter().any(|s| name.contains(s))
}

#[derive(Debug)]
struct ParamState {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The step as a float tensor on the parameter's device, for the fused kernel.
    step: Tensor,
    decay: bool,
}

/// Decoupled-weight-decay Adam, numerically the update of `torch.optim.AdamW`
/// (single-tensor, non-amsgrad).
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    states: Vec<ParamState>,
    step: i64,
}

impl AdamW {
    /// Creates the optimizer over `params` (name, tensor), splitting them into the decay and
    /// no-decay groups with [`excluded_from_weight_decay`].
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let states = params
            .into_iter()
            .map(|(name, param)| ParamState {
                decay: !excluded_from_weight_decay(&name, param.dim()),
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
                step: Tensor::zeros([], (Kind::Float, param.device())),
                name,
                param,
            })
            .collect();
        AdamW { config, states, step: 0 }
    }

    /// Names of the parameters that are decayed and those that are not, in order.
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let (decay, no_decay): (Vec<&ParamState>, Vec<&ParamState>) = self.states.iter().partition(|s| s.decay);
        (decay.iter().map(|s| s.name.as_str()).collect(), no_decay.iter().map(|s| s.name.as_str()).collect())
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for s in &mut self.states {
            s.param.zero_grad();
        }
    }

    /// The global L2 norm of all gradients, as a 0-dim tensor (no host synchronisation).
    pub fn grad_norm(&self) -> Tensor {
        let norms: Vec<Tensor> = self
            .states
            .iter()
            .filter_map(|s| {
                let g = s.param.grad();
                g.defined().then(|| g.to_kind(Kind::Float).norm())
            })
            .collect();
        if norms.is_empty() {
            return Tensor::from(0.0f32);
        }
        Tensor::stack(&norms, 0).norm()
    }

    /// Scales the gradients so that their global L2 norm is at most `max_norm` (as
    /// `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping as a 0-dim tensor
    /// (no host synchronisation).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let total = self.grad_norm();
        self.clip_grad_norm_to(&total, max_norm);
        total
    }

    /// Scales the gradients, whose global L2 norm is `total` ([`AdamW::grad_norm`]), so that
    /// it is at most `max_norm`.
    pub fn clip_grad_norm_to(&mut self, total: &Tensor, max_norm: f64) {
        let coef = (Tensor::from(max_norm as f32).to_device(total.device()) / (total + 1e-6)).clamp_max(1.0);
        tch::no_grad(|| {
            for s in &self.states {
                let mut g = s.param.grad();
                if g.defined() {
                    let _ = g.g_mul_(&coef.to_kind(g.kind()));
                }
            }
        });
    }

    /// One AdamW update at learning rate `lr`.
    ///
    /// # Panics
    /// When the fused kernel reports an error (as tch's own ops panic on libtorch errors).
    pub fn step(&mut self, lr: f64) {
        if self.config.fused {
            self.step += 1;
            if let Err(e) = self.fused_step(lr) {
                panic!("{e}");
            }
            return;
        }
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay, .. } = self.config;
        let bias_correction1 = 1.0 - beta1.powi(self.step as i32);
        let bias_correction2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias_correction1;
        tch::no_grad(|| {
            for s in &mut self.states {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                if s.decay && weight_decay != 0.0 {
                    let _ = s.param.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                // m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
                let _ = s.exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = s.exp_avg_sq.lerp_(&grad.square(), 1.0 - beta2);
                // p ← p − (lr/bc₁)·m / (√v/√bc₂ + ε), with one temporary for the denominator.
                let mut denom = s.exp_avg_sq.sqrt();
                let _ = denom.g_div_scalar_(bias_correction2_sqrt).g_add_scalar_(eps).g_div_scalar_(-step_size);
                let _ = s.param.addcdiv_(&s.exp_avg, &denom);
            }
        });
    }

    /// The fused kernel over the decay group, then the no-decay group.
    fn fused_step(&mut self, lr: f64) -> Result<()> {
        let AdamWConfig { beta1, beta2, eps, weight_decay, .. } = self.config;
        for decay in [true, false] {
            let mut group = crate::shim::FusedAdamWGroup::default();
            for s in self.states.iter().filter(|s| s.decay == decay) {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                // torch.optim.AdamW(fused=True) increments the counters, then runs the kernel.
                let _ = s.step.shallow_clone().g_add_scalar_(1.0);
                group.params.push(&s.param);
                group.grads.push(grad);
                group.exp_avgs.push(&s.exp_avg);
                group.exp_avg_sqs.push(&s.exp_avg_sq);
                group.steps.push(&s.step);
            }
            let wd = if decay { weight_decay } else { 0.0 };
            crate::shim::fused_adamw(&group, lr, beta1, beta2, wd, eps)?;
        }
        Ok(())
    }

    /// The optimizer state as named CPU tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`,
    /// and `step`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for s in &self.states {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.to_device(tch::Device::Cpu).contiguous()));
            out.push((format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.to_device(tch::Device::Cpu).contiguous()));
        }
        out
    }

    /// Restores the state written by [`AdamW::state_tensors`]; every moment must be present
    /// with its parameter's shape.
    pub fn load_state_tensors(&mut self, tensors: Vec<(String, Tensor)>, source: &std::path::Path) -> Result<()> {
        let mut map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let bad = |reason: String| TrainError::Checkpoint { path: source.to_path_buf(), reason };
        let step = map.remove("step").ok_or_else(|| bad("optimizer state has no `step`".into()))?;
        self.step = step.int64_value(&[]);
        tch::no_grad(|| {
            for s in &mut self.states {
                let _ = s.step.fill_(self.step as f64);
                for (prefix, dst) in [("exp_avg", &mut s.exp_avg), ("exp_avg_sq", &mut s.exp_avg_sq)] {
                    let key = format!("{prefix}.{}", s.name);
                    let src = map.remove(&key).ok_or_else(|| bad(format!("optimizer state lacks `{key}`")))?;
                    if src.size() != dst.size() {
                        return Err(bad(format!(
                            "optimizer `{key}` has shape {:?}, expected {:?}",
                            src.size(),
                            dst.size()
                        )));
                    }
                    dst.copy_(&src);
                }
            }
            Ok(())
        })?;
        if let Some(extra) = map.keys().next() {
            return Err(bad(format!("optimizer state has a tensor for an unknown parameter: `{extra}`")));
        }
        Ok(())
    }
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum LrScheduler {
    /// Linear warm-up, then cosine decay to 0 (OpenCLIP `cosine_lr`).
    Cosine,
    /// Linear warm-up, then constant.
    Const,
}

impl LrScheduler {
    /// The accepted names.
    pub const NAMES: &'static str = "cosine, const";

    /// Parses a schedule name.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "cosine" => Ok(LrScheduler::Cosine),
            "const" => Ok(LrScheduler::Const),
            other => Err(ConfigError::invalid("lr_scheduler", other, Self::NAMES)),
        }
    }

    /// The learning rate for optimizer step `step` (0-based), as OpenCLIP's
    /// `warmup_lr`/`cosine_lr`: `base·(step+1)/warmup` during warm-up, then
    /// `½(1 + cos(π·e/E))·base` with e = step − warmup and E = steps − warmup.
    pub fn lr(self, base_lr: f64, warmup: i64, steps: i64, step: i64) -> f64 {
        if step < warmup {
            return base_lr * (step + 1) as f64 / warmup as f64;
        }
        match self {
            LrScheduler::Const => base_lr,
            LrScheduler::Cosine => {
                let e = (step - warmup) as f64;
                let es = (steps - warmup).max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base_lr
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_shape() {
        let s = LrScheduler::Cosine;
        assert_eq!(s.lr(1.0, 10, 110, 0), 0.1);
        assert_eq!(s.lr(1.0, 10, 110, 9), 1.0);
        assert_eq!(s.lr(1.0, 10, 110, 10), 1.0);
        assert!((s.lr(1.0, 10, 110, 60) - 0.5).abs() < 1e-12);
        assert!(s.lr(1.0, 10, 110, 109) < 1e-3);
    }

    #[test]
    fn unknown_scheduler_is_named() {
        let err = LrScheduler::parse("linear").unwrap_err().to_string();
        assert!(err.contains("lr_scheduler") && err.contains("cosine"), "{err}");
    }

    #[test]
    fn matches_torch_adamw_update_by_hand() {
        adamw_update_by_hand(false, 1e-12);
    }

    #[test]
    fn fused_kernel_matches_torch_adamw_update_by_hand() {
        adamw_update_by_hand(true, 1e-12);
    }

    fn adamw_update_by_hand(fused: bool, tolerance: f64) {
        // One parameter, two steps, compared against the closed-form torch.optim.AdamW update.
        let p = Tensor::from_slice(&[1.0f64, -2.0, 3.0, 0.5]).view([2, 2]).set_requires_grad(true);
        let cfg = AdamWConfig { weight_decay: 0.1, fused, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], cfg);
        let mut expected: Vec<f64> = vec![1.0, -2.0, 3.0, 0.5];
        let (mut m, mut v) = (vec![0.0; 4], vec![0.0; 4]);
        for t in 1..=2 {
            opt.zero_grad();
            let loss = (&p * &p).sum(Kind::Double);
            loss.backward();
            opt.step(0.01);
            for i in 0..4 {
                let g = 2.0 * expected[i];
                expected[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.98 * v[i] + 0.02 * g * g;
                let denom = (v[i] / (1.0 - 0.98f64.powi(t))).sqrt() + 1e-6;
                expected[i] -= 0.01 / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got: Vec<f64> = Vec::try_from(p.flatten(0, -1)).unwrap();
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < tolerance, "fused={fused}: {got:?} vs {expected:?}");
        }
    }

    /// The fused kernel and the per-parameter ops agree on float32 weights of both groups,
    /// across a checkpoint round trip of the state (step counters included).
    #[test]
    fn fused_and_plain_agree_and_resume() {
        tch::manual_seed(0);
        let make = || {
            vec![
                (
                    "w.weight".to_string(),
                    Tensor::randn([16, 8], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
                ),
                ("w.bias".to_string(), Tensor::randn([8], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true)),
            ]
        };
        let (a, b) = (make(), make());
        tch::no_grad(|| {
            for ((_, x), (_, y)) in a.iter().zip(&b) {
                y.shallow_clone().copy_(x);
            }
        });
        let cfg = |fused| AdamWConfig { weight_decay: 0.2, fused, ..Default::default() };
        let mut plain = AdamW::new(a.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), cfg(false));
        let mut fused = AdamW::new(b.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), cfg(true));
        let step_both = |plain: &mut AdamW, fused: &mut AdamW, seed: i64| {
            for (params, opt) in [(&a, &mut *plain), (&b, &mut *fused)] {
                opt.zero_grad();
                // Fixed pseudo-random gradients, not the global RNG: tests on other threads draw
                // from it too, and would give the two optimizers different gradients.
                let loss: Tensor = params
                    .iter()
                    .map(|(_, p)| {
                        let g = (Tensor::arange(p.numel() as i64, (Kind::Float, p.device())) * 12.9898
                            + seed as f64 * 78.233)
                            .sin()
                            .reshape(p.size());
                        (p * g).sum(Kind::Float)
                    })
                    .sum();
                loss.backward();
                opt.step(1e-2);
            }
        };
        for seed in 0..3 {
            step_both(&mut plain, &mut fused, seed);
        }
        // Round trip of the fused optimizer's state, as a checkpoint does.
        let state = fused.state_tensors();
        let mut fused = AdamW::new(b.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), cfg(true));
        fused.load_state_tensors(state, std::path::Path::new("memory")).unwrap();
        for seed in 3..6 {
            step_both(&mut plain, &mut fused, seed);
        }
        assert_eq!((plain.step_count(), fused.step_count()), (6, 6));
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: fused and plain differ by {diff}");
        }
    }
}
