//! `clipfleet-dist-check BACKEND`: checks a process group's collectives across the ranks of a
//! launch, like nccl-tests for clipfleet. Every rank prints one `ok` line or the first mismatch.
//!
//! `clipfleet-dist-check grads clip|siglip B K [ROWS COLS]` checks the distributed step's
//! parameter gradients (B pairs per rank in K micro-batches, loss tiles of ROWS × COLS)
//! against autograd on the one-process loss over the whole batch (DESIGN §3).
//!
//! `clipfleet-dist-check devices clip|siglip B DEVICE PRECISION` runs one step of the tiny
//! model on DEVICE (e.g. `cuda`) in PRECISION (`fp32`, `amp_bf16`, `pure_bf16`) and compares its
//! loss and gradients with the CPU's in fp32 (the GPU correctness check).
//!
//! ```sh
//! mpirun --oversubscribe -np 4 target/release/clipfleet-dist-check mpi
//! target/release/clipfleet-dist-check nccl          # one GPU, one rank
//! torchrun-style: RANK=… WORLD_SIZE=… MASTER_ADDR=… MASTER_PORT=… clipfleet-dist-check nccl
//! mpirun -np 2 target/release/clipfleet-dist-check grads siglip 8 1
//! ```

use std::process::ExitCode;

use clipfleet_trainer::config::{LossKind, PrecisionMode};
use clipfleet_trainer::dist::{self, collective_check, gradient_check, Backend, LaunchMode};
use clipfleet_trainer::loss::blockwise::BlockSizes;
use tch::Device;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg.is_empty() || arg == "--help" || arg == "-h" {
        eprintln!("usage: clipfleet-dist-check BACKEND   (BACKEND: {})", Backend::ALLOWED);
        eprintln!("       clipfleet-dist-check grads clip|siglip LOCAL_BATCH ACCUM [ROWS COLS]");
        eprintln!("       clipfleet-dist-check devices clip|siglip BATCH DEVICE PRECISION");
        eprintln!("Run it under the launcher of the job (mpirun, srun, clipfleet launch); every rank");
        eprintln!("checks all_gather, all_reduce, broadcast, reduce_scatter and barrier.");
        return if arg.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    let rest: Vec<String> = std::env::args().skip(2).collect();
    let result = match arg.as_str() {
        "grads" => grads(&rest),
        "devices" => devices(&rest),
        _ => run(&arg),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(backend: &str) -> Result<String, String> {
    let backend: Backend = backend.parse().map_err(|e: dist::DistError| e.to_string())?;
    let world = dist::env::detect_from_env().map_err(|e| e.to_string())?;
    let group = dist::init(backend, &world).map_err(|e| e.to_string())?;
    let device = match backend {
        Backend::Nccl => dist::cuda_device_for(&world),
        _ => Device::Cpu,
    };
    let lines = collective_check::check_collectives(group.as_ref(), device)?;
    Ok(format!(
        "rank {} of {} ({} backend, {} launch): {} checks ok",
        group.rank(),
        group.world_size(),
        backend,
        world.mode,
        lines.len()
    ))
}

fn grads(args: &[String]) -> Result<String, String> {
    let usage = || {
        "usage: clipfleet-dist-check grads clip|siglip|filip LOCAL_BATCH ACCUM [ROWS COLS] [--patch-dropout P] [--grad-checkpointing] [--coca]"
            .to_string()
    };
    let mut options = gradient_check::CheckOptions::default();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--patch-dropout" => {
                options.patch_dropout = it.next().and_then(|p| p.parse().ok()).ok_or_else(usage)?;
            }
            "--grad-checkpointing" => options.grad_checkpointing = true,
            "--coca" => options.coca = true,
            _ => positional.push(arg.clone()),
        }
    }
    let args = &positional;
    let loss = match args.first().map(String::as_str) {
        Some("clip") => LossKind::Clip,
        Some("siglip") => LossKind::Siglip,
        Some("filip") => LossKind::Filip,
        _ => return Err(usage()),
    };
    let number = |i: usize, default: Option<i64>| -> Result<i64, String> {
        match args.get(i) {
            Some(v) => v.parse().map_err(|_| usage()),
            None => default.ok_or_else(usage),
        }
    };
    let (local_batch, accum) = (number(1, None)?, number(2, None)?);
    let blocks = BlockSizes::tiles(number(3, Some(1024))?, number(4, Some(i64::MAX))?);
    let world = dist::env::detect_from_env().map_err(|e| e.to_string())?;
    let backend = if world.mode == LaunchMode::Mpi { Backend::Mpi } else { Backend::Single };
    let group = dist::init(backend, &world).map_err(|e| e.to_string())?;
    let r = gradient_check::check_gradients(group.as_ref(), loss, local_batch, accum, blocks, options)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "rank {} of {}: {loss:?} b={local_batch} k={accum} {options:?}: max relative gradient error {:.3e} over {} tensors; loss {:.8} vs one-process {:.8}",
        group.rank(),
        group.world_size(),
        r.max_relative_error,
        r.tensors,
        r.loss,
        r.reference_loss
    ))
}

fn devices(args: &[String]) -> Result<String, String> {
    let usage = || "usage: clipfleet-dist-check devices clip|siglip BATCH DEVICE fp32|amp_bf16|pure_bf16".to_string();
    let loss = match args.first().map(String::as_str) {
        Some("clip") => LossKind::Clip,
        Some("siglip") => LossKind::Siglip,
        _ => return Err(usage()),
    };
    let batch: i64 = args.get(1).and_then(|b| b.parse().ok()).ok_or_else(usage)?;
    let device = args
        .get(2)
        .ok_or_else(usage)?
        .parse()
        .and_then(clipfleet_trainer::device::resolve_device)
        .map_err(|e| e.to_string())?;
    let mode = <PrecisionMode as clap::ValueEnum>::from_str(args.get(3).ok_or_else(usage)?, false)?;
    let precision = clipfleet_trainer::precision::Precision::resolve(mode, device).map_err(|e| e.to_string())?;
    let r = gradient_check::compare_devices(loss, batch, device, precision).map_err(|e| e.to_string())?;
    Ok(format!(
        "{loss:?} b={batch} {device:?} {} vs CPU fp32: max relative gradient error {:.3e}, loss relative error {:.3e}",
        precision.name(),
        r.max_relative_error,
        r.loss_relative_error
    ))
}
