//! `clipfleet mim`: EVA-style masked image modelling against a frozen CLIP teacher.

use anyhow::Context;
use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::eval::load_checkpoint_model;
use clipfleet_trainer::mim::{train, MimConfig};
use clipfleet_trainer::model::{resolve_model, Clip};

use crate::cli::MimArgs;

pub(crate) fn run(args: MimArgs) -> anyhow::Result<()> {
    let device = resolve_device(args.device)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let model = resolve_model(Some(&args.model), args.model_config.as_deref())?;
    let is_weights_file = args.teacher.extension().is_some_and(|e| e == "safetensors");
    let teacher = if is_weights_file {
        let teacher_cfg = match &args.teacher_model {
            Some(name) => resolve_model(Some(name), None)?,
            None => model.clone(),
        };
        let mut teacher = Clip::new(&teacher_cfg, device)?;
        teacher.load_safetensors(&args.teacher).with_context(|| "loading the teacher (--teacher, --teacher-model)")?;
        teacher
    } else {
        anyhow::ensure!(
            args.teacher_model.is_none(),
            "--teacher-model is for a safetensors --teacher; a checkpoint knows its model"
        );
        load_checkpoint_model(&args.teacher, Some(args.device), None)?.model
    };
    let cfg = MimConfig {
        model,
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        mask_ratio: args.mask_ratio,
        seed: args.seed,
        log_every: args.log_every,
        output: args.output.clone(),
    };
    let logs = train(&cfg, &teacher, device)?;
    if let (Some(first), Some(last)) = (logs.first(), logs.last()) {
        println!(
            "clipfleet mim: {} steps, loss {:.4} → {:.4}; image tower in {}",
            cfg.steps,
            first.loss,
            last.loss,
            args.output.join("image_tower.safetensors").display()
        );
    }
    Ok(())
}
