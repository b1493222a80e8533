//! The MPI process group, through rsmpi over OpenMPI, for CPU tensors of `f32` or `f64`.
//!
//! Tensors are copied into Rust buffers, passed to MPI and copied back: no `unsafe`, and the
//! copies cost little next to the network on the CPU runs this backend is for. Reduce-scatter is
//! `MPI_Reduce_scatter_block`; the average is the sum divided by the world size.
//!
//! MPI is initialised only when the process was started by an MPI launcher (OpenMPI's `mpirun`,
//! or a PMI/PMIx launcher such as `srun --mpi=pmix`): outside one, `MPI_Init` would quietly make
//! a world of one ("singleton init") and a multi-process job would train as independent copies.

use std::collections::HashMap;

use ::mpi::collective::SystemOperation;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::{Communicator, CommunicatorCollectives, Equivalence, Root};
use tch::{Kind, Tensor};

use super::{check_cpu_float, check_root, Backend, DistError, ProcessGroup, ReduceOp, WorldInfo};

/// The variables one of which an MPI launcher sets in every rank's environment.
pub const MPI_LAUNCH_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"];

/// Whether `env` comes from an MPI launcher (one of [`MPI_LAUNCH_VARS`] is set).
pub fn launched_by_mpi(env: &HashMap<String, String>) -> bool {
    MPI_LAUNCH_VARS.iter().any(|v| env.contains_key(*v))
}

/// An initialised MPI environment: the universe (finalised on drop) and its world communicator.
pub struct MpiWorld {
    // Field order: the communicator is dropped before the universe finalises MPI.
    world: SimpleCommunicator,
    _universe: Universe,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for MpiWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiWorld").field("rank", &self.rank).field("size", &self.size).finish_non_exhaustive()
    }
}

impl MpiWorld {
    /// Initialises MPI once per process. `rank` is only used in error messages.
    pub fn init(rank: usize) -> Result<Self, DistError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        if !launched_by_mpi(&env) {
            return Err(DistError::Unavailable {
                backend: "mpi",
                rank,
                reason: format!(
                    "this process was not launched under MPI (none of {} is set); \
                     start it with `mpirun -np N clipfleet train …` or `srun --mpi=pmix …`, \
                     or use the nccl backend",
                    MPI_LAUNCH_VARS.join(", ")
                ),
            });
        }
        let universe = ::mpi::initialize().ok_or_else(|| DistError::Unavailable {
            backend: "mpi",
            rank,
            reason: "MPI is already initialised in this process; create one MPI process group per process".into(),
        })?;
        let world = universe.world();
        let (r, s) = (world.rank() as usize, world.size() as usize);
        Ok(MpiWorld { world, _universe: universe, rank: r, size: s })
    }

    /// The world communicator.
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// Rank 0's `bytes` on every rank (the others' contents are replaced); every rank passes a
    /// buffer of the same length.
    pub fn broadcast_bytes(&self, bytes: &mut [u8]) {
        self.world.process_at_rank(0).broadcast_into(bytes);
    }
}

/// The MPI process group.
#[derive(Debug)]
pub struct MpiGroup {
    mpi: MpiWorld,
}

impl MpiGroup {
    /// Initialises MPI and checks that its world agrees with `world` (from the environment).
    pub fn new(world: &WorldInfo) -> Result<Self, DistError> {
        let mpi = MpiWorld::init(world.rank)?;
        if (mpi.rank, mpi.size) != (world.rank, world.world_size) {
            return Err(DistError::Unavailable {
                backend: "mpi",
                rank: world.rank,
                reason: format!(
                    "MPI says rank {} of {}, but the {} environment says rank {} of {}",
                    mpi.rank, mpi.size, world.mode, world.rank, world.world_size
                ),
            });
        }
        Ok(MpiGroup { mpi })
    }

    fn check(&self, op: &'static str, tensor: &Tensor) -> Result<(i64, Kind), DistError> {
        check_cpu_float("mpi", op, self.mpi.rank, self.mpi.size, tensor)
    }

    fn torch(&self, op: &'static str) -> impl Fn(tch::TchError) -> DistError {
        let rank = self.mpi.rank;
        move |source| DistError::Torch { op, rank, source }
    }

    fn read<T: tch::kind::Element + Default + Clone>(
        &self,
        op: &'static str,
        tensor: &Tensor,
    ) -> Result<Vec<T>, DistError> {
        let n = tensor.numel();
        let mut buf = vec![T::default(); n];
        tensor.f_copy_data(&mut buf, n).map_err(self.torch(op))?;
        Ok(buf)
    }

    fn write<T: tch::kind::Element>(&self, op: &'static str, buf: &[T], shape: &[i64]) -> Result<Tensor, DistError> {
        Tensor::f_from_slice(buf).and_then(|t| t.f_reshape(shape)).map_err(self.torch(op))
    }

    fn all_gather_typed<T: tch::kind::Element + Equivalence + Default + Clone>(
        &self,
        tensor: &Tensor,
        rows: i64,
    ) -> Result<Tensor, DistError> {
        let send: Vec<T> = self.read("all_gather", tensor)?;
        let mut recv = vec![T::default(); send.len() * self.mpi.size];
        self.mpi.world.all_gather_into(&send[..], &mut recv[..]);
        let mut shape = tensor.size();
        shape[0] = rows * self.mpi.size as i64;
        self.write("all_gather", &recv, &shape)
    }

    fn all_reduce_typed<T: tch::kind::Element + Equivalence + Default + Clone>(
        &self,
        tensor: &mut Tensor,
        op: ReduceOp,
    ) -> Result<(), DistError> {
        let send: Vec<T> = self.read("all_reduce", tensor)?;
        let mut recv = vec![T::default(); send.len()];
        self.mpi.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        let reduced = self.write("all_reduce", &recv, &tensor.size())?;
        let reduced = average(reduced, op, self.mpi.size);
        // no_grad: parameters (leaves that require grad) may be reduced or broadcast in place.
        tch::no_grad(|| tensor.f_copy_(&reduced)).map_err(self.torch("all_reduce"))
    }

    fn broadcast_typed<T: tch::kind::Element + Equivalence + Default + Clone>(
        &self,
        tensor: &mut Tensor,
        root: usize,
    ) -> Result<(), DistError> {
        let mut buf: Vec<T> = self.read("broadcast", tensor)?;
        self.mpi.world.process_at_rank(root as i32).broadcast_into(&mut buf[..]);
        let got = self.write("broadcast", &buf, &tensor.size())?;
        tch::no_grad(|| tensor.f_copy_(&got)).map_err(self.torch("broadcast"))
    }

    fn reduce_scatter_typed<T: tch::kind::Element + Equivalence + Default + Clone>(
        &self,
        tensor: &Tensor,
        op: ReduceOp,
        rows: i64,
    ) -> Result<Tensor, DistError> {
        let send: Vec<T> = self.read("reduce_scatter", tensor)?;
        let mut recv = vec![T::default(); send.len() / self.mpi.size];
        self.mpi.world.reduce_scatter_block_into(&send[..], &mut recv[..], SystemOperation::sum());
        let mut shape = tensor.size();
        shape[0] = rows / self.mpi.size as i64;
        Ok(average(self.write("reduce_scatter", &recv, &shape)?, op, self.mpi.size))
    }
}

fn average(sum: Tensor, op: ReduceOp, world_size: usize) -> Tensor {
    match op {
        ReduceOp::Sum => sum,
        ReduceOp::Avg => sum / world_size as f64,
    }
}

impl ProcessGroup for MpiGroup {
    fn backend(&self) -> Backend {
        Backend::Mpi
    }
    fn rank(&self) -> usize {
        self.mpi.rank
    }
    fn world_size(&self) -> usize {
        self.mpi.size
    }
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        let (rows, kind) = self.check("all_gather", tensor)?;
        match kind {
            Kind::Float => self.all_gather_typed::<f32>(tensor, rows),
            _ => self.all_gather_typed::<f64>(tensor, rows),
        }
    }
    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), DistError> {
        let (_, kind) = self.check("all_reduce", tensor)?;
        match kind {
            Kind::Float => self.all_reduce_typed::<f32>(tensor, op),
            _ => self.all_reduce_typed::<f64>(tensor, op),
        }
    }
    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        check_root("broadcast", self.mpi.rank, root, self.mpi.size)?;
        let (_, kind) = self.check("broadcast", tensor)?;
        match kind {
            Kind::Float => self.broadcast_typed::<f32>(tensor, root),
            _ => self.broadcast_typed::<f64>(tensor, root),
        }
    }
    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        let (rows, kind) = self.check("reduce_scatter", tensor)?;
        match kind {
            Kind::Float => self.reduce_scatter_typed::<f32>(tensor, op, rows),
            _ => self.reduce_scatter_typed::<f64>(tensor, op, rows),
        }
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.mpi.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.mpi.world.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_detection_reads_the_launcher_variables() {
        let mut env = HashMap::new();
        assert!(!launched_by_mpi(&env));
        env.insert("PMIX_RANK".to_owned(), "0".to_owned());
        assert!(launched_by_mpi(&env));
    }

    #[test]
    fn outside_mpirun_the_backend_refuses_clearly() {
        // Only meaningful when this test itself is not under mpirun.
        if MPI_LAUNCH_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            eprintln!("SKIPPED: running under an MPI launcher");
            return;
        }
        let msg = MpiGroup::new(&WorldInfo::single()).unwrap_err().to_string();
        assert!(
            msg.contains("mpi backend on rank 0") && msg.contains("not launched under MPI") && msg.contains("mpirun"),
            "{msg}"
        );
    }
}
