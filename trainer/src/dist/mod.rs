//! Distributed training: where this worker sits in the job ([`env`]), a small TCP rendezvous
//! ([`rendezvous`]) and the process groups that move tensors between workers: NCCL for CUDA
//! tensors ([`nccl`]), MPI for CPU tensors ([`mpi`]) and a one-process group ([`SingleGroup`]).
//!
//! ```no_run
//! use clipfleet_trainer::dist::{self, Backend, ReduceOp};
//! # fn main() -> Result<(), dist::DistError> {
//! let world = dist::env::detect_from_env()?;              // logs the launch mode it detected
//! let group = dist::init("mpi".parse::<Backend>()?, &world)?;
//! let local = tch::Tensor::ones([4, 8], (tch::Kind::Float, tch::Device::Cpu));
//! let all = group.all_gather(&local)?;                      // [4 * world_size, 8]
//! let mut grad = tch::Tensor::ones([10], (tch::Kind::Float, tch::Device::Cpu));
//! group.all_reduce(&mut grad, ReduceOp::Avg)?;              // in place
//! # Ok(()) }
//! ```
//!
//! Every collective takes contiguous tensors of the same shape and dtype on every rank; the
//! caller's code is the same on every backend (DESIGN §2: the backends share all code but the
//! transport).

pub mod collective_check;
pub mod env;
pub mod error_file;
pub mod gradient_check;
pub mod mpi;
pub mod nccl;
pub mod rendezvous;
pub mod tcp;
pub mod watchdog;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tch::Tensor;
use thiserror::Error;

pub use env::{LaunchMode, WorldInfo};

/// How long a rendezvous waits for every rank before giving up, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What can go wrong while setting up or using a process group.
#[derive(Debug, Error)]
pub enum DistError {
    /// An environment variable is missing or malformed.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable (or variables) concerned.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A backend name is not one of the known ones.
    #[error("unknown distributed backend {name:?}: allowed {allowed}")]
    UnknownBackend {
        /// The name given.
        name: String,
        /// The allowed names.
        allowed: &'static str,
    },
    /// The backend cannot work in this process (no GPU, not under MPI, …).
    #[error("{backend} backend on rank {rank}: {reason}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// This worker's rank, as detected.
        rank: usize,
        /// Why, and what to do.
        reason: String,
    },
    /// The TCP rendezvous failed.
    #[error("rendezvous at {addr} (rank {rank} of {world_size}): {reason}")]
    Rendezvous {
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// This worker's rank.
        rank: usize,
        /// The world size.
        world_size: usize,
        /// What went wrong.
        reason: String,
    },
    /// A tensor cannot be used in a collective (device, dtype, layout, shape).
    #[error("{op} on rank {rank}: {reason}")]
    Tensor {
        /// The collective.
        op: &'static str,
        /// This worker's rank.
        rank: usize,
        /// What is wrong with the tensor.
        reason: String,
    },
    /// NCCL reported an error.
    #[error("NCCL {op} on rank {rank}: {reason}")]
    Nccl {
        /// The NCCL call.
        op: &'static str,
        /// This worker's rank.
        rank: usize,
        /// NCCL's status.
        reason: String,
    },
    /// libtorch reported an error while preparing a collective's buffers.
    #[error("libtorch in {op} on rank {rank}: {source}")]
    Torch {
        /// The collective.
        op: &'static str,
        /// This worker's rank.
        rank: usize,
        /// libtorch's error.
        source: tch::TchError,
    },
}

/// The transports a process group can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// NCCL through cudarc, for CUDA tensors.
    Nccl,
    /// MPI through rsmpi, for CPU tensors; needs `mpirun` or `srun --mpi=pmix`.
    Mpi,
    /// One process; every collective is the identity.
    Single,
    /// CPU tensors over the TCP rendezvous; needs only `MASTER_ADDR`/`MASTER_PORT` (no MPI
    /// launcher), as with one worker per Kubernetes pod.
    Tcp,
}

impl Backend {
    /// The names [`Backend::from_str`] accepts.
    pub const ALLOWED: &'static str = "nccl, mpi, tcp, single";

    /// The backend's name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nccl => "nccl",
            Backend::Mpi => "mpi",
            Backend::Single => "single",
            Backend::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = DistError;

    fn from_str(s: &str) -> Result<Self, DistError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nccl" => Ok(Backend::Nccl),
            "mpi" => Ok(Backend::Mpi),
            "single" => Ok(Backend::Single),
            "tcp" => Ok(Backend::Tcp),
            _ => Err(DistError::UnknownBackend { name: s.to_owned(), allowed: Backend::ALLOWED }),
        }
    }
}

/// The reduction of [`ProcessGroup::all_reduce`] and [`ProcessGroup::reduce_scatter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum over the ranks.
    Sum,
    /// Elementwise mean over the ranks (the sum divided by the world size).
    Avg,
}

/// Collectives over the workers of one job. Every rank calls the same collectives in the same
/// order with tensors of the same shape and dtype.
pub trait ProcessGroup: fmt::Debug {
    /// The transport.
    fn backend(&self) -> Backend;
    /// This worker's rank.
    fn rank(&self) -> usize;
    /// The number of workers.
    fn world_size(&self) -> usize;
    /// Concatenates every rank's `tensor` along dimension 0, in rank order.
    ///
    /// # Shapes
    /// `[n, …]` on every rank → `[world_size * n, …]`. The result has no autograd history.
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError>;
    /// Reduces `tensor` over the ranks, in place; every rank ends with the result.
    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), DistError>;
    /// Copies rank `root`'s `tensor` into every rank's `tensor`, in place.
    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError>;
    /// Reduces `tensor` over the ranks and returns this rank's block of the result.
    ///
    /// # Shapes
    /// `[world_size * n, …]` → `[n, …]`: rank `r` gets rows `r*n..(r+1)*n` of the reduction.
    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor, DistError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;
    /// Ends this process with `code` without waiting for the other ranks, and makes the job
    /// end: MPI aborts every rank (`MPI_Abort`); NCCL aborts the communicator, so that the
    /// launcher sees this worker fail and stops the others. A graceful shutdown after a
    /// one-rank error would wait forever for ranks blocked in a collective.
    fn abort(&self, code: i32) -> !;
    /// Called right after a collective returns: a marker of its completion on the device when
    /// the call only queued the work (NCCL), so that a deadline can cover the queued part too;
    /// `None` when the collective is complete on return (the CPU groups).
    fn completion_marker(&self) -> Result<Option<Box<dyn Completion>>, DistError> {
        Ok(None)
    }
    /// A function that another thread may call to make this group's queued and running
    /// collectives end with an error (NCCL: `ncclCommAbort`), for the watchdog before it ends a
    /// hung process; `None` when there is nothing to abort (the CPU groups).
    fn abort_handle(&self) -> Option<AbortHandle> {
        None
    }
}

/// Whether queued device work has finished; polled from the watchdog thread.
pub trait Completion: Send {
    /// `Ok(true)` once the work is done; an error when the device reports one.
    fn is_done(&self) -> Result<bool, String>;
}

/// See [`ProcessGroup::abort_handle`].
pub type AbortHandle = Box<dyn Fn() + Send + Sync>;

/// Creates the process group of `backend` for this worker. The NCCL backend exchanges its unique
/// id through the TCP rendezvous at `world.master_addr:world.master_port`, or by an MPI broadcast
/// when `world.mode` is [`LaunchMode::Mpi`]; it waits at most [`DEFAULT_TIMEOUT`] for the others.
pub fn init(backend: Backend, world: &WorldInfo) -> Result<Box<dyn ProcessGroup>, DistError> {
    init_with_timeout(backend, world, DEFAULT_TIMEOUT)
}

/// [`init`] with an explicit rendezvous timeout.
pub fn init_with_timeout(
    backend: Backend,
    world: &WorldInfo,
    timeout: Duration,
) -> Result<Box<dyn ProcessGroup>, DistError> {
    Ok(match backend {
        Backend::Single => Box::new(SingleGroup::new(world)?),
        Backend::Mpi => Box::new(mpi::MpiGroup::new(world)?),
        Backend::Nccl => Box::new(nccl::NcclGroup::new(world, timeout)?),
        Backend::Tcp => Box::new(tcp::TcpGroup::new(world, timeout)?),
    })
}

/// The CUDA device of this worker, `Cuda(local_rank % device_count)` (the one the NCCL group
/// uses), or the CPU when no CUDA device is visible.
pub fn cuda_device_for(world: &WorldInfo) -> tch::Device {
    match tch::Cuda::device_count() {
        n if n > 0 => tch::Device::Cuda(world.local_rank % n as usize),
        _ => tch::Device::Cpu,
    }
}

/// The group of one process: every collective returns its input.
#[derive(Debug, Default)]
pub struct SingleGroup;

impl SingleGroup {
    /// Fails unless `world` is one process.
    pub fn new(world: &WorldInfo) -> Result<Self, DistError> {
        if world.world_size != 1 {
            return Err(DistError::Unavailable {
                backend: "single",
                rank: world.rank,
                reason: format!(
                    "the world has {} processes ({} launch); use the nccl or mpi backend",
                    world.world_size, world.mode
                ),
            });
        }
        Ok(SingleGroup)
    }
}

impl ProcessGroup for SingleGroup {
    fn backend(&self) -> Backend {
        Backend::Single
    }
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        Ok(tensor.detach().copy())
    }
    fn all_reduce(&self, _tensor: &mut Tensor, _op: ReduceOp) -> Result<(), DistError> {
        Ok(())
    }
    fn broadcast(&self, _tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        check_root("broadcast", 0, root, 1)
    }
    fn reduce_scatter(&self, tensor: &Tensor, _op: ReduceOp) -> Result<Tensor, DistError> {
        Ok(tensor.detach().copy())
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

fn check_root(op: &'static str, rank: usize, root: usize, world_size: usize) -> Result<(), DistError> {
    if root >= world_size {
        return Err(DistError::Tensor { op, rank, reason: format!("root {root} is not a rank of {world_size}") });
    }
    Ok(())
}

/// [`check_tensor`], plus what the CPU backends (mpi, tcp) need: a CPU tensor of f32 or f64.
/// Returns the first dimension and the dtype.
fn check_cpu_float(
    backend: &str,
    op: &'static str,
    rank: usize,
    world_size: usize,
    tensor: &Tensor,
) -> Result<(i64, tch::Kind), DistError> {
    let rows = check_tensor(op, rank, world_size, tensor)?;
    let error = |reason: String| DistError::Tensor { op, rank, reason };
    if tensor.device() != tch::Device::Cpu {
        return Err(error(format!("the {backend} backend takes CPU tensors, got {:?}", tensor.device())));
    }
    match tensor.kind() {
        k @ (tch::Kind::Float | tch::Kind::Double) => Ok((rows, k)),
        k => Err(error(format!("dtype {k:?} is not supported (f32, f64)"))),
    }
}

/// Checks what every backend needs of a tensor: contiguous, and for reduce-scatter a first
/// dimension divisible by the world size. Returns the tensor's first dimension.
fn check_tensor(op: &'static str, rank: usize, world_size: usize, tensor: &Tensor) -> Result<i64, DistError> {
    if !tensor.is_contiguous() {
        return Err(DistError::Tensor {
            op,
            rank,
            reason: "the tensor is not contiguous; call .contiguous() first".into(),
        });
    }
    let size = tensor.size();
    let Some(&rows) = size.first() else {
        return Err(DistError::Tensor { op, rank, reason: "the tensor is a scalar; give it a first dimension".into() });
    };
    if op == "reduce_scatter" && rows % world_size as i64 != 0 {
        return Err(DistError::Tensor {
            op,
            rank,
            reason: format!("first dimension {rows} is not divisible by the world size {world_size}"),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn backend_names() {
        assert_eq!("NCCL".parse::<Backend>().unwrap(), Backend::Nccl);
        assert_eq!(" mpi ".parse::<Backend>().unwrap(), Backend::Mpi);
        assert_eq!("single".parse::<Backend>().unwrap(), Backend::Single);
        assert_eq!("Tcp".parse::<Backend>().unwrap(), Backend::Tcp);
        let msg = "gloo".parse::<Backend>().unwrap_err().to_string();
        assert!(msg.contains("\"gloo\"") && msg.contains("nccl, mpi, tcp, single"), "{msg}");
    }

    #[test]
    fn single_group_is_the_identity() {
        let group = init(Backend::Single, &WorldInfo::single()).unwrap();
        let t = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([3, 2]);
        assert_eq!(group.all_gather(&t).unwrap(), t);
        let mut r = t.copy();
        group.all_reduce(&mut r, ReduceOp::Avg).unwrap();
        assert_eq!(r, t);
        assert_eq!(group.reduce_scatter(&t, ReduceOp::Sum).unwrap(), t);
        group.broadcast(&mut r, 0).unwrap();
        assert!(group.broadcast(&mut r, 1).is_err());
        group.barrier().unwrap();
        assert_eq!((group.rank(), group.world_size(), group.backend()), (0, 1, Backend::Single));
    }

    #[test]
    fn single_group_refuses_a_bigger_world() {
        let world = WorldInfo { world_size: 2, local_world_size: 2, mode: LaunchMode::Torchrun, ..WorldInfo::single() };
        let msg = init(Backend::Single, &world).unwrap_err().to_string();
        assert!(msg.contains("2 processes") && msg.contains("torchrun"), "{msg}");
    }
}
