//! Benchmarks of the library's hot paths, for `clipfleet bench`. [`train_step`] times the
//! training step that `clipfleet train` runs ([`crate::run::Learner::step`]) on batches of
//! the run's own data already on the device; [`memory`] measures peak memory the one way
//! every benchmark reports it.

pub mod memory;
mod peak;

use std::path::PathBuf;
use std::time::Instant;

use clipfleet_dataloader::synthetic::stream::{DataPosition, SyntheticStream, SyntheticStreamConfig};
use serde::Serialize;
use tch::Device;

use crate::config::TrainConfig;
use crate::data::tokenizer_for;
use crate::device::resolve_device;
use crate::dist::{SingleGroup, WorldInfo};
use crate::error::Result;
use crate::model::flops::train_flops_per_sample;
use crate::run::{Learner, SYNTHETIC_EPOCH};
use crate::step::DeviceBatch;
pub use memory::PeakMemory;
pub use peak::{peak_tflops, PeakFlops};

/// Distinct batches kept on the device and cycled through by the timed steps.
pub const BATCH_POOL: usize = 4;

/// What [`train_step`] runs.
#[derive(Debug, Clone)]
pub struct TrainBench {
    /// The run's config: model, batch size, precision, device, loss, clipping, optimizer,
    /// seed. `steps` is ignored: the schedule spans `warmup + steps` of the bench.
    pub config: TrainConfig,
    /// Timed steps.
    pub steps: i64,
    /// Untimed steps first.
    pub warmup: i64,
    /// The peak FLOP/s for the MFU figure, in TFLOP/s, instead of the table's.
    pub peak_tflops: Option<f64>,
    /// Write the weights after the last step here (safetensors, OpenCLIP keys).
    pub save_weights: Option<PathBuf>,
}

/// What [`train_step`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchReport {
    /// The model preset or config file.
    pub model: String,
    /// Pairs per step.
    pub batch_size: i64,
    /// The device, as libtorch names it.
    pub device: String,
    /// The device's model (the CPU's, or the GPU's from nvidia-smi).
    pub device_name: String,
    /// The precision the step ran in.
    pub precision: String,
    /// Timed steps.
    pub steps: i64,
    /// Training throughput.
    pub samples_per_second: f64,
    /// Wall time per step.
    pub ms_per_step: f64,
    /// Analytic training FLOPs per sample (3× the forward pass).
    pub train_gflops_per_sample: f64,
    /// Achieved TFLOP/s.
    pub tflops: f64,
    /// The peak used for MFU, if known.
    pub peak_tflops: Option<f64>,
    /// Where that peak comes from.
    pub peak_tflops_source: Option<String>,
    /// Model FLOPs utilisation: achieved ÷ peak.
    pub mfu: Option<f64>,
    /// Peak memory over the timed steps ([`PeakMemory`]).
    pub peak_memory_bytes: Option<u64>,
}

/// Times `bench.warmup + bench.steps` training steps of one process — each
/// [`Learner::step`] followed by the step boundary's agreement, as in `clipfleet train`, so
/// the boundary's host read is timed too — on the first
/// [`BATCH_POOL`] batches of the run's training stream (the synthetic data), staged on the
/// device before timing and cycled. The first `min(steps, BATCH_POOL)` steps are exactly
/// `clipfleet train`'s first steps with the same config.
pub fn train_step(bench: &TrainBench) -> Result<TrainBenchReport> {
    if bench.steps < 1 || bench.warmup < 0 {
        return Err(crate::error::ConfigError::invalid(
            "steps/warmup",
            format!("{}/{}", bench.steps, bench.warmup),
            "timed steps >= 1 and warm-up steps >= 0",
        )
        .into());
    }
    let mut cfg = bench.config.clone();
    cfg.steps = bench.warmup + bench.steps;
    cfg.validate()?;
    let device = resolve_device(cfg.device)?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let model_cfg = cfg.model_config()?;
    let group = SingleGroup::new(&WorldInfo::single())?;
    let tokenizer = tokenizer_for(&model_cfg, cfg.vocab.as_deref())?;
    let mut learner = Learner::new(&cfg, &model_cfg, device, &group)?;
    let pool = staged_batches(&cfg, &model_cfg, tokenizer, learner.model(), (cfg.steps as usize).min(BATCH_POOL))?;
    let boundary = crate::run::StepBoundary::default();
    let mut step = |i: i64| -> Result<()> {
        let b = &pool[i as usize % pool.len()];
        let batch = DeviceBatch { images: b.images.shallow_clone(), tokens: b.tokens.shallow_clone() };
        learner.step_agreed(i, batch, |loss, grad_norm| boundary.agree(&group, i + 1, loss, grad_norm))?;
        Ok(())
    };
    let sync = || {
        if let Device::Cuda(n) = device {
            tch::Cuda::synchronize(n as i64);
        }
    };
    for i in 0..bench.warmup {
        step(i)?;
    }
    sync();
    let memory = PeakMemory::start(device)?;
    let t = Instant::now();
    for i in bench.warmup..cfg.steps {
        step(i)?;
    }
    sync();
    let seconds = t.elapsed().as_secs_f64();
    let peak_memory_bytes = memory.peak_bytes()?;
    if let Some(path) = &bench.save_weights {
        learner.model().save_safetensors(path)?;
    }
    let samples_per_second = (cfg.local_batch() * bench.steps) as f64 / seconds;
    let flops = train_flops_per_sample(&model_cfg);
    let tflops = flops * samples_per_second / 1e12;
    let device_name = match device {
        Device::Cuda(n) => memory::cuda_device_name(n).unwrap_or_else(|| format!("cuda:{n}")),
        _ => memory::cpu_model(),
    };
    let precision = learner.precision();
    let peak = match bench.peak_tflops {
        Some(t) => Some(PeakFlops { tflops: t, source: "--peak-tflops".into() }),
        None => peak_tflops(device, &device_name, precision, cfg.tf32),
    };
    Ok(TrainBenchReport {
        model: cfg.model_config.as_ref().map_or(cfg.model.clone(), |p| p.display().to_string()),
        batch_size: cfg.local_batch(),
        device: format!("{device:?}"),
        device_name,
        precision: precision.name().to_owned(),
        steps: bench.steps,
        samples_per_second,
        ms_per_step: 1000.0 * seconds / bench.steps as f64,
        train_gflops_per_sample: flops / 1e9,
        tflops,
        peak_tflops: peak.as_ref().map(|p| p.tflops),
        mfu: peak.as_ref().map(|p| tflops / p.tflops),
        peak_tflops_source: peak.map(|p| p.source),
        peak_memory_bytes,
    })
}

/// The first `n` batches of the run's synthetic training stream, on `device`.
fn staged_batches(
    cfg: &TrainConfig,
    model_cfg: &crate::model::ClipConfig,
    tokenizer: std::sync::Arc<dyn clipfleet_dataloader::tokenizer::Tokenizer>,
    model: &crate::model::Clip,
    n: usize,
) -> Result<Vec<DeviceBatch>> {
    let ctx = model_cfg.text_cfg.context_length;
    let stream_cfg = SyntheticStreamConfig {
        image_size: model_cfg.vision_cfg.image_size as u32,
        seed: cfg.seed,
        batch_size: cfg.local_batch() as usize,
        world_size: 1,
        rank: 0,
        num_samples: cfg.train_num_samples.unwrap_or(SYNTHETIC_EPOCH),
        context_length: ctx as usize,
        prefetch: cfg.prefetch,
    };
    let mut stream = SyntheticStream::start(stream_cfg, tokenizer, DataPosition::default())?;
    (0..n)
        .map(|_| {
            let b = stream.next_batch()?;
            Ok(DeviceBatch {
                images: crate::data::images_to_device(&b.images, model.device()),
                tokens: model.text_input(&b.tokens),
            })
        })
        .collect()
}
