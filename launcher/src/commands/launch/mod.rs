//! `clipfleet launch`: start this node's workers and supervise them, like torchrun.
//!
//! - [`topology`]: how many nodes and workers, this node's rank, the rendezvous address.
//! - [`workers`]: the transport (NCCL processes, one `mpirun`, or one plain worker) and starting
//!   the workers of an attempt.
//! - [`supervise`]: watching an attempt, forwarding signals, stopping the group on a failure.
//! - [`resume`]: the command line of a restart (`train --resume latest`).
//! - [`signals`]: the launcher's signal handlers and signal delivery.
//! - [`folders`]: the launcher's private folder (error files, the `libnccl.so` link), refused if
//!   another user could have planted files in it.
//!
//! The launcher exits 0 when every worker did; 75 when the workers stopped on request with a
//! checkpoint (never restarted: the scheduler requeues the job); the first failed worker's
//! status (128 + the signal for a signal) once restarts are used up; and 128 + the signal when
//! a stop signal ended workers that did not checkpoint.

mod folders;
mod resume;
mod signals;
mod supervise;
mod topology;
mod workers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clipfleet_trainer::dist::error_file;
use clipfleet_trainer::run::EXIT_CHECKPOINTED;

use crate::cli::LaunchArgs;
use folders::LaunchFolder;
use supervise::Ended;
use topology::PlacementFlags;
use workers::{Plan, Transport};

/// Runs `clipfleet launch` and returns the launcher's exit status.
pub(crate) fn run(args: LaunchArgs) -> Result<ExitCode> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let flags = PlacementFlags {
        nproc_per_node: args.nproc_per_node,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr.clone(),
        master_port: args.master_port,
    };
    let cuda_devices = || usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    let topology = topology::resolve(&flags, &env, cuda_devices)?;
    let transport = workers::choose_transport(args.backend, || cuda_devices() > 0, &topology)?;
    if topology.nnodes > 1 && args.max_restarts > 0 {
        // A launcher restarts only its own node's workers: the other nodes' workers would stay
        // blocked in their collectives with the old group, and the new workers would wait at
        // the rendezvous for peers that never come.
        anyhow::bail!(
            "--max-restarts {} with {} nodes: restarts are per node and cannot rejoin the other nodes' workers; \
             leave --max-restarts at 0 and let the scheduler restart the whole job \
             (Slurm: sbatch --requeue; Kubernetes: the Job's backoffLimit), with `train --resume latest`",
            args.max_restarts,
            topology.nnodes
        );
    }
    let worker = worker_program(&env)?;
    let mpirun = match transport {
        Transport::Mpi => Some(workers::find_on_path("mpirun", std::env::var_os("PATH").as_deref()).context(
            "the mpi backend needs `mpirun` (OpenMPI) on PATH; install it (apt-get install openmpi-bin) \
             or pick --backend nccl",
        )?),
        _ => None,
    };
    // Made before anything goes into it: the workers' error files and the libnccl.so link.
    let folder = LaunchFolder::create()?;
    let library_dir = if transport == Transport::Nccl { nccl_library_dir(&folder)? } else { None };
    tracing::info!(
        nnodes = topology.nnodes,
        node_rank = topology.node_rank,
        nproc_per_node = topology.nproc_per_node,
        world_size = topology.world_size(),
        master = %format!("{}:{}", topology.master_addr, topology.master_port),
        backend = transport.backend_name(),
        source = %topology.source,
        "launch topology: node {} of {} ({}), {} workers here, world size {}, master {}:{}, {} backend",
        topology.node_rank,
        topology.nnodes,
        topology.source,
        topology.nproc_per_node,
        topology.world_size(),
        topology.master_addr,
        topology.master_port,
        transport.backend_name()
    );
    let plan = Plan { transport, topology, worker, mpirun, library_dir };
    signals::install().context("installing the launcher's signal handlers")?;
    let grace = Duration::from_secs_f64(args.grace_period);
    let mut worker_args = args.worker_args;
    let mut restarts = 0u32;
    loop {
        // A stop signal between attempts (e.g. during a restart) ends the launch.
        if let Some(signal) = signals::take_pending().into_iter().next() {
            tracing::warn!("received {}: not restarting", signals::name(signal));
            return Ok(signal_exit(signal));
        }
        let attempt_errors = folder.attempt(restarts)?;
        let started = plan.start(&worker_args, restarts, &attempt_errors)?;
        tracing::info!(
            "started {} (attempt {} of {})",
            match plan.transport {
                Transport::Mpi => format!("mpirun with {} ranks", plan.topology.nproc_per_node),
                _ => format!("{} workers", started.len()),
            },
            restarts + 1,
            args.max_restarts + 1
        );
        match supervise::supervise(started, grace)
            .map_failure(|report| report.with_cause(error_file::first_in(&attempt_errors)))
        {
            Ended::Succeeded => {
                tracing::info!("all workers finished");
                return Ok(ExitCode::SUCCESS);
            }
            Ended::Checkpointed => {
                tracing::warn!(
                    "the workers stopped on request with a checkpoint: exit status {EXIT_CHECKPOINTED} \
                     (continue with `train --resume latest`)"
                );
                return Ok(ExitCode::from(EXIT_CHECKPOINTED));
            }
            Ended::Stopped(signal) => {
                tracing::warn!("stopped by {}", signals::name(signal));
                return Ok(signal_exit(signal));
            }
            Ended::Failed(report) if restarts < args.max_restarts => {
                restarts += 1;
                worker_args = resume::resume_args(&worker_args);
                tracing::warn!("{report}; restarting the workers (restart {restarts} of {})", args.max_restarts);
            }
            Ended::Failed(report) => {
                let after = match args.max_restarts {
                    0 => String::new(),
                    1 => " after 1 restart".to_owned(),
                    n => format!(" after {n} restarts"),
                };
                tracing::error!("{report}; giving up{after}");
                eprintln!("error: {report}{after}");
                return Ok(ExitCode::from(report.death.exit_code()));
            }
        }
    }
}

fn signal_exit(signal: libc::c_int) -> ExitCode {
    ExitCode::from((128 + signal).clamp(0, 255) as u8)
}

/// The worker program: `CLIPFLEET_LAUNCH_WORKER`, else `clipfleet-core` beside this executable.
fn worker_program(env: &HashMap<String, String>) -> Result<PathBuf> {
    if let Some(worker) = env.get("CLIPFLEET_LAUNCH_WORKER").filter(|w| !w.is_empty()) {
        return Ok(PathBuf::from(worker));
    }
    let exe = std::env::current_exe().context("finding the launcher's own executable")?;
    let worker = exe.with_file_name("clipfleet-core");
    if !worker.is_file() {
        bail!(
            "the worker program {} is missing (build it with `cargo build --release -p clipfleet-launcher`)",
            worker.display()
        );
    }
    Ok(worker)
}

/// A folder holding a `libnccl.so` link to the NCCL that torch's pip wheels installed, for the
/// workers' `LD_LIBRARY_PATH` (cudarc looks for `libnccl.so`, pip ships `libnccl.so.2`): `nccl/`
/// in the launcher's private folder, so that no other user can put a library there.
fn nccl_library_dir(folder: &LaunchFolder) -> Result<Option<PathBuf>> {
    let Some(libnccl) = clipfleet_trainer::dist::nccl::find_libnccl() else {
        tracing::warn!("no libnccl.so.2 found; the workers rely on the system's libnccl.so");
        return Ok(None);
    };
    let dir = folder.nccl()?;
    Ok(match clipfleet_trainer::dist::nccl::link_libnccl(&libnccl, &dir) {
        Ok(dir) => {
            tracing::info!("NCCL: {} linked as {}/libnccl.so", libnccl.display(), dir.display());
            Some(dir)
        }
        Err(e) => {
            tracing::warn!(
                "cannot link {} into {}: {e}; the workers may not find libnccl.so",
                libnccl.display(),
                dir.display()
            );
            None
        }
    })
}
