//! `clipfleet bench train`: full training steps on random data already on the device.

use std::time::Instant;

use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::loss::clip_loss_global;
use clipfleet_trainer::model::{Clip, ClipConfig};
use clipfleet_trainer::optim::{AdamW, AdamWConfig};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::cli::BenchTrainArgs;

#[derive(Debug, Serialize)]
struct BenchTrainReport {
    model: String,
    batch_size: i64,
    device: String,
    steps: i64,
    samples_per_second: f64,
    ms_per_step: f64,
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
    tch::manual_seed(0);
    let model = Clip::new(&cfg, device)?;
    let mut opt = AdamW::new(model.named_parameters(), AdamWConfig::default());
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
        let (i, t) = model.forward(&images, &tokens);
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
    let t = Instant::now();
    for _ in 0..args.steps {
        step();
    }
    sync();
    let secs = t.elapsed().as_secs_f64();
    let report = BenchTrainReport {
        model: args.model.clone(),
        batch_size: args.batch_size,
        device: format!("{device:?}"),
        steps: args.steps,
        samples_per_second: (args.batch_size * args.steps) as f64 / secs,
        ms_per_step: 1000.0 * secs / args.steps as f64,
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        println!(
            "clipfleet bench train {} bs={} {}: {:.1} samples/s, {:.1} ms/step (fp32)",
            report.model, report.batch_size, report.device, report.samples_per_second, report.ms_per_step
        );
    }
    Ok(())
}
