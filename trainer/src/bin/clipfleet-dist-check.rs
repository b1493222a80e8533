//! `clipfleet-dist-check BACKEND`: checks a process group's collectives across the ranks of a
//! launch, like nccl-tests for clipfleet. Every rank prints one `ok` line or the first mismatch.
//!
//! ```sh
//! mpirun --oversubscribe -np 4 target/release/clipfleet-dist-check mpi
//! target/release/clipfleet-dist-check nccl          # one GPU, one rank
//! torchrun-style: RANK=… WORLD_SIZE=… MASTER_ADDR=… MASTER_PORT=… clipfleet-dist-check nccl
//! ```

use std::process::ExitCode;

use clipfleet_trainer::dist::{self, collective_check, Backend};
use tch::Device;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg.is_empty() || arg == "--help" || arg == "-h" {
        eprintln!("usage: clipfleet-dist-check BACKEND   (BACKEND: {})", Backend::ALLOWED);
        eprintln!("Run it under the launcher of the job (mpirun, srun, clipfleet launch); every rank");
        eprintln!("checks all_gather, all_reduce, broadcast, reduce_scatter and barrier.");
        return if arg.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    match run(&arg) {
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
