//! `clipfleet bench train`: full training steps on random data already on the device; and
//! `clipfleet bench data` ([`data`]): the training data pipeline; and `clipfleet bench loss`
//! ([`loss`]): the blockwise contrastive loss.

pub(crate) mod data;
pub(crate) mod loss;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::loss::clip_loss_global;
use clipfleet_trainer::model::flops::train_flops_per_sample;
use clipfleet_trainer::model::{Clip, ClipConfig};
use clipfleet_trainer::optim::{AdamW, AdamWConfig};
use clipfleet_trainer::precision::Precision;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::cli::BenchTrainArgs;

#[derive(Debug, Serialize)]
struct BenchTrainReport {
    /// The precision the step ran in (OpenCLIP's reference runs amp_bf16 on CUDA).
    precision: String,
    model: String,
    batch_size: i64,
    device: String,
    steps: i64,
    samples_per_second: f64,
    ms_per_step: f64,
    /// Analytic training FLOPs per sample (3× the forward pass, OpenCLIP's model profile).
    train_gflops_per_sample: f64,
    /// Achieved TFLOP/s.
    tflops: f64,
    /// The peak used for MFU, if any.
    peak_tflops: Option<f64>,
    /// Model FLOPs utilisation: achieved ÷ peak.
    mfu: Option<f64>,
    /// Peak memory in bytes: the process's peak resident set on the CPU; on CUDA, the peak
    /// bytes allocated by libtorch's caching allocator over the timed steps (as OpenCLIP's
    /// `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`).
    peak_memory_bytes: Option<u64>,
    /// OpenCLIP's figures from the same run, when `--reference-python` is given.
    reference: Option<serde_json::Value>,
    /// clipfleet ÷ OpenCLIP samples per second.
    ratio: Option<f64>,
}

/// The process's peak resident set size (`getrusage`).
fn peak_rss_bytes() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call above; ru_maxrss is in KiB on Linux.
    let kib = unsafe { usage.assume_init() }.ru_maxrss;
    u64::try_from(kib).ok().map(|k| k * 1024)
}

/// The OpenCLIP reference script: `scripts/bench_openclip_train.py` under the current folder
/// (a checkout copied to another machine), else in the checkout this binary was built from.
fn reference_script() -> PathBuf {
    let here = Path::new("scripts/bench_openclip_train.py");
    if here.is_file() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_openclip_train.py")
}

/// Times OpenCLIP's step on the same model config, batch and device.
fn run_reference(
    python: &Path,
    cfg: &ClipConfig,
    args: &BenchTrainArgs,
    precision: Precision,
) -> anyhow::Result<serde_json::Value> {
    let script = reference_script();
    anyhow::ensure!(script.is_file(), "reference script {} is missing", script.display());
    let cfg_path = std::env::temp_dir().join(format!("clipfleet-bench-{}.json", std::process::id()));
    std::fs::write(&cfg_path, serde_json::to_vec(cfg)?)?;
    let out = Command::new(python)
        .arg(&script)
        .args(["--config", &cfg_path.to_string_lossy(), "--device", &args.device.replace("auto", "cpu")])
        .args(["--batch-size", &args.batch_size.to_string(), "--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string(), "--threads", &args.threads.to_string()])
        .args(["--precision", precision.name()])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let _ = std::fs::remove_file(&cfg_path);
    anyhow::ensure!(
        out.status.success(),
        "the OpenCLIP reference failed: {}",
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
    );
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).context("the OpenCLIP reference printed no JSON")
}

pub(crate) fn train(args: BenchTrainArgs) -> anyhow::Result<()> {
    let device = resolve_device(&args.device)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    if args.batch_size < 1 || args.steps < 1 || args.warmup < 0 {
        anyhow::bail!("--batch-size and --steps must be >= 1 and --warmup >= 0");
    }
    let cfg = ClipConfig::preset(&args.model)?;
    let precision = Precision::resolve(&args.precision, device)?;
    precision.configure(true)?;
    tch::manual_seed(0);
    let mut model = Clip::new(&cfg, device)?;
    model.set_parameter_kind(precision.parameter_kind());
    let mut opt = AdamW::new(model.named_parameters(), AdamWConfig { fused: true, ..AdamWConfig::default() });
    let s = cfg.vision_cfg.image_size;
    let images = Tensor::randn([args.batch_size, 3, s, s], (Kind::Float, device));
    let ctx = cfg.text_cfg.context_length;
    let vocab = cfg.text_cfg.vocab_size;
    let tokens = Tensor::randint_low(1, vocab - 1, [args.batch_size, ctx], (Kind::Int64, device));
    let sync = || {
        if let Device::Cuda(n) = device {
            tch::Cuda::synchronize(n as i64);
        }
    };
    let mut step = || {
        let (i, t) = precision.forward(|| model.forward(&images, &tokens));
        let loss = clip_loss_global(&i, &t, &model.logit_scale().exp());
        opt.zero_grad();
        loss.backward();
        opt.step(1e-4);
        model.clamp_logit_scale();
    };
    for _ in 0..args.warmup {
        step();
    }
    sync();
    if let Device::Cuda(n) = device {
        clipfleet_trainer::shim::reset_cuda_peak_memory(n)?;
    }
    let t = Instant::now();
    for _ in 0..args.steps {
        step();
    }
    sync();
    let secs = t.elapsed().as_secs_f64();
    drop(opt);
    drop(model);
    let reference = match &args.reference_python {
        Some(python) => Some(run_reference(python, &cfg, &args, precision)?),
        None => None,
    };
    let samples_per_second = (args.batch_size * args.steps) as f64 / secs;
    let flops = train_flops_per_sample(&cfg);
    let tflops = flops * samples_per_second / 1e12;
    let peak_tflops = args.peak_tflops.or(matches!(device, Device::Cuda(_)).then_some(800.0));
    let peak_memory_bytes = match device {
        Device::Cpu => peak_rss_bytes(),
        Device::Cuda(n) => Some(clipfleet_trainer::shim::cuda_max_memory_allocated(n)?),
        _ => None,
    };
    let ratio = reference.as_ref().and_then(|r| r["samples_per_second"].as_f64()).map(|r| samples_per_second / r);
    let report = BenchTrainReport {
        precision: precision.name().to_owned(),
        model: args.model.clone(),
        batch_size: args.batch_size,
        device: format!("{device:?}"),
        steps: args.steps,
        samples_per_second,
        ms_per_step: 1000.0 * secs / args.steps as f64,
        train_gflops_per_sample: flops / 1e9,
        tflops,
        peak_tflops,
        mfu: peak_tflops.map(|p| tflops / p),
        peak_memory_bytes,
        reference,
        ratio,
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        let memory = report
            .peak_memory_bytes
            .map(|b| format!("peak RSS {:.2} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_else(|| "peak memory n/a on this device".into());
        let memory = if matches!(device, Device::Cuda(_)) { memory.replace("RSS", "CUDA memory") } else { memory };
        let mfu = report.mfu.map(|m| format!(", MFU {:.1}%", 100.0 * m)).unwrap_or_default();
        println!(
            "clipfleet bench train {} bs={} {}: {:.1} samples/s, {:.1} ms/step, {:.2} TFLOP/s{mfu}, {memory} ({})",
            report.model,
            report.batch_size,
            report.device,
            report.samples_per_second,
            report.ms_per_step,
            report.tflops,
            report.precision
        );
        if let (Some(r), Some(ratio)) = (&report.reference, report.ratio) {
            println!(
                "reference ({}): {:.1} samples/s, {:.1} ms/step; clipfleet / reference = {ratio:.2}x",
                r["reference"].as_str().unwrap_or("open_clip"),
                r["samples_per_second"].as_f64().unwrap_or(f64::NAN),
                r["ms_per_step"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    Ok(())
}
