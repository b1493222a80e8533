//! `clipfleet bench train`: the library's training step ([`clipfleet_trainer::bench`]) beside
//! OpenCLIP's; `clipfleet bench data` ([`data`]): the training data pipeline; `clipfleet bench
//! loss` ([`loss`]): the blockwise contrastive loss.

pub(crate) mod data;
mod host;
pub(crate) mod loss;
mod reference;

use std::path::Path;

use clipfleet_trainer::bench::{train_step, TrainBench, TrainBenchReport};
use clipfleet_trainer::config::TrainConfig;
use clipfleet_trainer::model::ClipConfig;
use clipfleet_trainer::precision::Precision;
use serde::Serialize;

use crate::cli::BenchTrainArgs;

/// `bench train --json`: clipfleet's figures, OpenCLIP's from the same run, and their ratio.
#[derive(Debug, Serialize)]
struct BenchTrainOutput {
    #[serde(flatten)]
    clipfleet: TrainBenchReport,
    /// OpenCLIP's figures from the same run, when `--reference-python` is given.
    reference: Option<serde_json::Value>,
    /// clipfleet ÷ OpenCLIP samples per second.
    ratio: Option<f64>,
}

/// The config `bench train` runs: `train`'s defaults with the bench's flags.
fn bench_config(args: &BenchTrainArgs) -> TrainConfig {
    TrainConfig {
        model: args.model.clone(),
        batch_size: args.batch_size,
        device: args.device,
        threads: args.threads,
        precision: args.precision,
        loss: args.loss,
        grad_clip_norm: args.grad_clip_norm,
        seed: args.seed,
        lock_image: args.lock_image,
        lock_text: args.lock_text,
        force_patch_dropout: args.force_patch_dropout,
        grad_checkpointing: args.grad_checkpointing,
        ..TrainConfig::default()
    }
}

/// Times OpenCLIP's step with the bench's settings on `device` (the resolved one).
fn run_reference(
    python: &Path,
    cfg: &TrainConfig,
    args: &BenchTrainArgs,
    device: tch::Device,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        cfg.loss != clipfleet_trainer::config::LossKind::Filip,
        "--reference-python: OpenCLIP has no FILIP loss to compare with; run without it"
    );
    let precision = Precision::resolve(cfg.precision, device)?;
    let device = match device {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_owned(),
    };
    let model: ClipConfig = cfg.model_config()?;
    let cfg_path = std::env::temp_dir().join(format!("clipfleet-bench-{}.json", std::process::id()));
    std::fs::write(&cfg_path, serde_json::to_vec(&model)?)?;
    let mut ref_args: Vec<String> = [
        ("--config", cfg_path.to_string_lossy().into_owned()),
        ("--device", device),
        ("--batch-size", args.batch_size.to_string()),
        ("--steps", args.steps.to_string()),
        ("--warmup", args.warmup.to_string()),
        ("--threads", args.threads.to_string()),
        ("--precision", precision.name().to_owned()),
        ("--loss", cfg.loss.name().to_owned()),
        ("--lr", cfg.lr.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect();
    if let Some(norm) = cfg.grad_clip_norm {
        ref_args.extend(["--grad-clip-norm".into(), norm.to_string()]);
    }
    if cfg.lock_image {
        ref_args.push("--lock-image".into());
    }
    if cfg.lock_text {
        ref_args.push("--lock-text".into());
    }
    if cfg.grad_checkpointing {
        ref_args.push("--grad-checkpointing".into());
    }
    let result = reference::run_json(python, "bench_openclip_train.py", &ref_args, "samples_per_second");
    let _ = std::fs::remove_file(&cfg_path);
    result
}

pub(crate) fn train(args: BenchTrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch_size >= 1 && args.steps >= 1 && args.warmup >= 0,
        "--batch-size and --steps must be >= 1 and --warmup >= 0"
    );
    let cfg = bench_config(&args);
    cfg.validate()?;
    let device = clipfleet_trainer::device::resolve_device(cfg.device)?;
    // OpenCLIP first, in its own process, so that neither side holds the other's memory.
    let reference = match &args.reference_python {
        Some(python) => Some(run_reference(python, &cfg, &args, device)?),
        None => None,
    };
    let bench = TrainBench {
        config: cfg,
        steps: args.steps,
        warmup: args.warmup,
        peak_tflops: args.peak_tflops,
        save_weights: args.save_weights.clone(),
    };
    let report = train_step(&bench)?;
    let ratio =
        reference.as_ref().and_then(|r| r["samples_per_second"].as_f64()).map(|r| report.samples_per_second / r);
    let out = BenchTrainOutput { clipfleet: report, reference, ratio };
    if args.json {
        return super::print_json(&out);
    }
    print_text(&out);
    Ok(())
}

fn print_text(out: &BenchTrainOutput) {
    let r = &out.clipfleet;
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
    let memory =
        r.peak_memory_bytes.map_or_else(|| "peak memory n/a".to_owned(), |b| format!("peak memory {}", gib(b)));
    let mfu = match (r.mfu, r.peak_tflops, &r.peak_tflops_source) {
        (Some(m), Some(p), Some(source)) => format!(", MFU {:.1}% of {p:.0} TFLOP/s ({source})", 100.0 * m),
        _ => String::new(),
    };
    println!(
        "clipfleet bench train {} bs={} {} ({}) {}: {:.1} samples/s, {:.1} ms/step, {:.2} TFLOP/s{mfu}, {memory}",
        r.model, r.batch_size, r.device, r.device_name, r.precision, r.samples_per_second, r.ms_per_step, r.tflops
    );
    if let (Some(reference), Some(ratio)) = (&out.reference, out.ratio) {
        let memory =
            reference["peak_memory_bytes"].as_u64().map_or_else(String::new, |b| format!(", peak memory {}", gib(b)));
        println!(
            "reference ({}): {:.1} samples/s, {:.1} ms/step{memory}; clipfleet / reference = {ratio:.2}x",
            reference["reference"].as_str().unwrap_or("open_clip"),
            reference["samples_per_second"].as_f64().unwrap_or(f64::NAN),
            reference["ms_per_step"].as_f64().unwrap_or(f64::NAN),
        );
    }
}
