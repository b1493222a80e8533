//! The NCCL process group, for CUDA tensors, through cudarc's result-level functions (DESIGN §2).
//!
//! **Loading.** cudarc dlopens NCCL (`libnccl.so`) and the CUDA driver (`libcuda.so.1`) on first
//! use, so the build needs neither CUDA nor NCCL. pip's `nvidia-nccl-cu13` wheel (a torch
//! dependency) ships only `libnccl.so.2`, in `site-packages/nvidia/nccl/lib/`, and cudarc does not
//! look for that name: a folder holding a `libnccl.so` link to it must be on `LD_LIBRARY_PATH`
//! when the worker starts ([`link_libnccl`] makes one; `clipfleet launch` and the job scripts put
//! it on the path). [`NcclGroup::new`] checks this first and names the file it found.
//!
//! **Streams.** libtorch queues its kernels on the current CUDA stream, which clipfleet leaves at
//! the legacy default stream; the collectives are queued on that same (null) stream, so they run
//! after the kernels that wrote their inputs and before the kernels that read their outputs, and
//! no host synchronisation is needed. Code that moves work to another stream must synchronise
//! with the default stream before and after a collective.
//!
//! **Unique id.** Rank 0 asks NCCL for a 128-byte unique id and sends it to the others by an MPI
//! broadcast when launched under MPI, or else through the TCP rendezvous at
//! `MASTER_ADDR:MASTER_PORT` ([`super::rendezvous`]).
//!
//! **Device.** The worker uses CUDA device `local_rank % device_count`, made current (its primary
//! context) on the calling thread before the communicator is created; every collective must be
//! called from a thread where that device is current (the training thread).

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cudarc::nccl::result as nccl;
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use tch::{Device, Kind, Tensor};

use super::mpi::MpiWorld;
use super::rendezvous::Rendezvous;
use super::{check_root, check_tensor, Backend, DistError, LaunchMode, ProcessGroup, ReduceOp, WorldInfo};

/// The reason given when no CUDA device is visible.
pub const NO_CUDA_DEVICE: &str = "nccl backend needs a CUDA device; none is visible";

/// The NCCL process group of one worker (one GPU).
#[derive(Debug)]
pub struct NcclGroup {
    comm: ncclComm_t,
    rank: usize,
    world_size: usize,
    device: Device,
    /// Kept alive (and finalised last) when the unique id went through MPI.
    _mpi: Option<MpiWorld>,
}

impl NcclGroup {
    /// Creates the communicator of `world` on CUDA device `local_rank % device_count`; the
    /// rendezvous (when used) waits at most `timeout` for the other ranks.
    pub fn new(world: &WorldInfo, timeout: Duration) -> Result<Self, DistError> {
        let rank = world.rank;
        let unavailable = |reason: String| DistError::Unavailable { backend: "nccl", rank, reason };
        let count = tch::Cuda::device_count();
        if count <= 0 {
            return Err(unavailable(NO_CUDA_DEVICE.to_owned()));
        }
        // SAFETY: dlopen of the NCCL library by its usual names; nothing else is touched.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(unavailable(missing_library_reason()));
        }
        // The same device as super::cuda_device_for.
        let ordinal = (world.local_rank as i64 % count) as i32;
        make_device_current(ordinal).map_err(unavailable)?;
        let nccl_err =
            |op: &'static str| move |e: nccl::NcclError| DistError::Nccl { op, rank, reason: format!("{:?}", e.0) };

        // The unique id: made by rank 0, sent to the others.
        let mut id_bytes = [0u8; 128];
        if rank == 0 {
            let id = nccl::get_uniqueid().map_err(nccl_err("ncclGetUniqueId"))?;
            for (b, c) in id_bytes.iter_mut().zip(id.internal.iter()) {
                *b = *c as u8;
            }
        }
        let mpi = if world.mode == LaunchMode::Mpi && world.world_size > 1 {
            let mpi = MpiWorld::init(rank)?;
            mpi.broadcast_bytes(&mut id_bytes);
            Some(mpi)
        } else {
            let mut rendezvous = Rendezvous::join(world, timeout)?;
            let got = rendezvous.broadcast_bytes(&id_bytes)?;
            id_bytes.copy_from_slice(got.get(..128).ok_or_else(|| DistError::Rendezvous {
                addr: format!("{}:{}", world.master_addr, world.master_port),
                rank,
                world_size: world.world_size,
                reason: format!("NCCL unique id of {} bytes, expected 128", got.len()),
            })?);
            None
        };
        let mut id = ncclUniqueId { internal: [0; 128] };
        for (c, b) in id.internal.iter_mut().zip(id_bytes) {
            *c = b as _;
        }

        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; rank < world_size was checked by env detection.
        unsafe { nccl::comm_init_rank(&mut comm, world.world_size as i32, id, rank as i32) }
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(NcclGroup { comm, rank, world_size: world.world_size, device: Device::Cuda(ordinal as usize), _mpi: mpi })
    }

    /// The CUDA device of this worker.
    pub fn device(&self) -> Device {
        self.device
    }

    fn check(&self, op: &'static str, tensor: &Tensor) -> Result<(i64, ncclDataType_t), DistError> {
        let rows = check_tensor(op, self.rank, self.world_size, tensor)?;
        if tensor.device() != self.device {
            return Err(DistError::Tensor {
                op,
                rank: self.rank,
                reason: format!("the tensor is on {:?}, the NCCL group on {:?}", tensor.device(), self.device),
            });
        }
        let dtype = match tensor.kind() {
            Kind::Float => ncclDataType_t::ncclFloat32,
            Kind::Double => ncclDataType_t::ncclFloat64,
            Kind::Half => ncclDataType_t::ncclFloat16,
            Kind::BFloat16 => ncclDataType_t::ncclBfloat16,
            Kind::Int => ncclDataType_t::ncclInt32,
            Kind::Int64 => ncclDataType_t::ncclInt64,
            Kind::Uint8 => ncclDataType_t::ncclUint8,
            k => {
                return Err(DistError::Tensor {
                    op,
                    rank: self.rank,
                    reason: format!("dtype {k:?} is not supported by NCCL"),
                })
            }
        };
        Ok((rows, dtype))
    }

    fn nccl_err(&self, op: &'static str) -> impl Fn(nccl::NcclError) -> DistError {
        let rank = self.rank;
        move |e| DistError::Nccl { op, rank, reason: format!("{:?}", e.0) }
    }

    fn torch(&self, op: &'static str) -> impl Fn(tch::TchError) -> DistError {
        let rank = self.rank;
        move |source| DistError::Torch { op, rank, source }
    }
}

/// libtorch's current stream: the legacy default stream (see the module docs).
fn stream() -> cudaStream_t {
    std::ptr::null_mut()
}

fn red_op(op: ReduceOp) -> ncclRedOp_t {
    match op {
        ReduceOp::Sum => ncclRedOp_t::ncclSum,
        ReduceOp::Avg => ncclRedOp_t::ncclAvg,
    }
}

impl ProcessGroup for NcclGroup {
    fn backend(&self) -> Backend {
        Backend::Nccl
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        let (rows, dtype) = self.check("all_gather", tensor)?;
        let mut shape = tensor.size();
        shape[0] = rows * self.world_size as i64;
        let out = Tensor::f_empty(&shape, (tensor.kind(), self.device)).map_err(self.torch("all_gather"))?;
        // SAFETY: both buffers are contiguous on this group's device, `out` holds world_size
        // times `tensor`'s elements, and both outlive the call; the collective is queued on the
        // stream that libtorch uses for its kernels, so later reads of `out` wait for it.
        unsafe {
            nccl::all_gather(
                tensor.data_ptr() as *const c_void,
                out.data_ptr(),
                tensor.numel(),
                dtype,
                self.comm,
                stream(),
            )
        }
        .map_err(self.nccl_err("ncclAllGather"))?;
        Ok(out)
    }
    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), DistError> {
        let (_, dtype) = self.check("all_reduce", tensor)?;
        let ptr = tensor.data_ptr();
        // SAFETY: in place on a contiguous buffer of this device (NCCL allows send == recv).
        unsafe { nccl::all_reduce(ptr as *const c_void, ptr, tensor.numel(), dtype, red_op(op), self.comm, stream()) }
            .map_err(self.nccl_err("ncclAllReduce"))?;
        Ok(())
    }
    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        check_root("broadcast", self.rank, root, self.world_size)?;
        let (_, dtype) = self.check("broadcast", tensor)?;
        let ptr = tensor.data_ptr();
        // SAFETY: in place on a contiguous buffer of this device.
        unsafe { nccl::broadcast(ptr as *const c_void, ptr, tensor.numel(), dtype, root as i32, self.comm, stream()) }
            .map_err(self.nccl_err("ncclBroadcast"))?;
        Ok(())
    }
    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        let (rows, dtype) = self.check("reduce_scatter", tensor)?;
        let mut shape = tensor.size();
        shape[0] = rows / self.world_size as i64;
        let out = Tensor::f_empty(&shape, (tensor.kind(), self.device)).map_err(self.torch("reduce_scatter"))?;
        // SAFETY: `out` holds 1/world_size of `tensor`'s elements (first dimension divisible,
        // checked); both contiguous on this device.
        unsafe {
            nccl::reduce_scatter(
                tensor.data_ptr() as *const c_void,
                out.data_ptr(),
                out.numel(),
                dtype,
                red_op(op),
                self.comm,
                stream(),
            )
        }
        .map_err(self.nccl_err("ncclReduceScatter"))?;
        Ok(out)
    }
    fn barrier(&self) -> Result<(), DistError> {
        // A one-element all-reduce, waited for on the host.
        let mut one = Tensor::f_ones([1], (Kind::Float, self.device)).map_err(self.torch("barrier"))?;
        self.all_reduce(&mut one, ReduceOp::Sum)?;
        one.f_double_value(&[0]).map_err(self.torch("barrier"))?;
        Ok(())
    }
    fn completion_marker(&self) -> Result<Option<Box<dyn super::Completion>>, DistError> {
        GpuMarker::record()
            .map(|m| Some(Box::new(m) as Box<dyn super::Completion>))
            .map_err(|reason| DistError::Unavailable { backend: "nccl", rank: self.rank, reason })
    }
    fn abort_handle(&self) -> Option<super::AbortHandle> {
        let comm = SendComm(self.comm);
        let rank = self.rank;
        Some(Box::new(move || {
            let comm = &comm;
            // SAFETY: ncclCommAbort may be called from any thread while other threads are blocked
            // in (or queue work behind) the communicator; the caller ends the process right
            // after, so the communicator is never used again.
            if let Err(e) = unsafe { nccl::comm_abort(comm.0) } {
                eprintln!("rank {rank}: ncclCommAbort failed: {:?}", e.0);
            }
        }))
    }
    fn abort(&self, code: i32) -> ! {
        // SAFETY: `comm` is a live communicator; the process exits right after, so the
        // communicator is never used (or destroyed by Drop) again.
        if let Err(e) = unsafe { nccl::comm_abort(self.comm) } {
            tracing::warn!(rank = self.rank, "ncclCommAbort failed: {:?}", e.0);
        }
        std::process::exit(code)
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        // SAFETY: `comm` was created by ncclCommInitRank and is destroyed once.
        if let Err(e) = unsafe { nccl::comm_destroy(self.comm) } {
            tracing::warn!(rank = self.rank, "ncclCommDestroy failed: {:?}", e.0);
        }
    }
}

/// A communicator handle moved to the watchdog thread, for `ncclCommAbort` only.
struct SendComm(ncclComm_t);

// SAFETY: NCCL documents ncclCommAbort as callable from another thread than the one using the
// communicator; nothing else is done with the handle.
unsafe impl Send for SendComm {}
// SAFETY: as above; the handle is only read.
unsafe impl Sync for SendComm {}

/// The completion of the work queued so far on libtorch's stream: a CUDA event recorded after
/// a collective, queried (never waited for) by the watchdog thread.
struct GpuMarker {
    event: cudarc::driver::sys::CUevent,
    context: cudarc::driver::sys::CUcontext,
}

// SAFETY: CUDA driver handles are plain handles usable from any thread once the context is
// made current there, which `is_done` does.
unsafe impl Send for GpuMarker {}

impl GpuMarker {
    /// Records an event on the legacy default stream (where the collectives are queued) of the
    /// calling thread's current context.
    fn record() -> Result<GpuMarker, String> {
        use cudarc::driver::{result as cu, sys};
        let context = cu::ctx::get_current()
            .map_err(|e| format!("cuCtxGetCurrent: {e:?}"))?
            .ok_or("no CUDA context is current on the training thread")?;
        let event = cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| format!("cuEventCreate: {e:?}"))?;
        // SAFETY: `event` was just created; the null stream is the legacy default stream.
        if let Err(e) = unsafe { cu::event::record(event, std::ptr::null_mut()) } {
            // SAFETY: the event is not used after this.
            let _ = unsafe { cu::event::destroy(event) };
            return Err(format!("cuEventRecord: {e:?}"));
        }
        Ok(GpuMarker { event, context })
    }
}

impl super::Completion for GpuMarker {
    fn is_done(&self) -> Result<bool, String> {
        use cudarc::driver::{result as cu, sys};
        // SAFETY: `context` is the primary context the event was recorded in, retained for the
        // process; `event` is alive until drop.
        unsafe {
            cu::ctx::set_current(self.context).map_err(|e| format!("cuCtxSetCurrent: {e:?}"))?;
            match cu::event::query(self.event) {
                Ok(()) => Ok(true),
                Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NOT_READY => Ok(false),
                Err(e) => Err(format!("cuEventQuery: {e:?}")),
            }
        }
    }
}

impl Drop for GpuMarker {
    fn drop(&mut self) {
        // SAFETY: the event was created by `record` and is destroyed once; CUDA defers the
        // release of an event still pending on a stream.
        let _ = unsafe { cudarc::driver::result::event::destroy(self.event) };
    }
}

/// Makes device `ordinal`'s primary context current on this thread, which is where NCCL (and
/// the CUDA runtime under it) takes its device from.
fn make_device_current(ordinal: i32) -> Result<(), String> {
    use cudarc::driver::result as cu;
    // SAFETY: dlopen of the CUDA driver by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so.1) cannot be loaded".into());
    }
    let fail = |what: &str, e: cu::DriverError| format!("cannot make CUDA device {ordinal} current ({what}): {e:?}");
    cu::init().map_err(|e| fail("cuInit", e))?;
    let dev = cu::device::get(ordinal).map_err(|e| fail("cuDeviceGet", e))?;
    // SAFETY: `dev` comes from cuDeviceGet; the primary context stays retained for the process,
    // as libtorch's own does.
    unsafe {
        let ctx = cu::primary_ctx::retain(dev).map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
        cu::ctx::set_current(ctx).map_err(|e| fail("cuCtxSetCurrent", e))?;
    }
    Ok(())
}

/// Where pip put `libnccl.so.2`, if anywhere this process can tell: the folders on
/// `LD_LIBRARY_PATH`, then `nvidia/nccl/lib` next to the torch that the binary was built against.
pub fn find_libnccl() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("LD_LIBRARY_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(torch_lib) = option_env!("CLIPFLEET_LIBTORCH_DIR") {
        // site-packages/torch/lib → site-packages/nvidia/nccl/lib
        dirs.push(Path::new(torch_lib).join("../../nvidia/nccl/lib"));
    }
    for dir in &dirs {
        if dir.as_os_str().is_empty() {
            continue;
        }
        for torch_lib in [dir.clone(), dir.join("../../nvidia/nccl/lib")] {
            let candidate = torch_lib.join("libnccl.so.2");
            if candidate.is_file() {
                return Some(candidate.canonicalize().unwrap_or(candidate));
            }
        }
    }
    None
}

/// Creates `dir/libnccl.so` as a link to `libnccl` (replacing an older link) and returns `dir`,
/// the folder to put on the workers' `LD_LIBRARY_PATH`.
pub fn link_libnccl(libnccl: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join("libnccl.so");
    if std::fs::read_link(&link).is_ok_and(|target| target == libnccl) {
        return Ok(dir.to_path_buf());
    }
    let tmp = dir.join(format!(".libnccl.so.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(libnccl, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    Ok(dir.to_path_buf())
}

fn missing_library_reason() -> String {
    match find_libnccl() {
        Some(found) => format!(
            "cannot load libnccl.so: NCCL is at {} but cudarc looks for `libnccl.so`; start workers with \
             `clipfleet launch` (it links it in a private folder), or run `d=$(mktemp -d) && ln -s {} \
             $d/libnccl.so` and start the worker with $d first on LD_LIBRARY_PATH (docs/distributed.md)",
            found.display(),
            found.display()
        ),
        None => "cannot load libnccl.so: install NCCL (pip's nvidia-nccl-cu13 comes with torch) and put a folder \
                 holding libnccl.so on LD_LIBRARY_PATH (docs/distributed.md)"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_the_backend_refuses_clearly() {
        if tch::Cuda::device_count() > 0 {
            eprintln!("SKIPPED: a CUDA device is visible; the GPU check covers NCCL");
            return;
        }
        let msg = NcclGroup::new(&WorldInfo::single(), Duration::from_secs(1)).unwrap_err().to_string();
        assert_eq!(msg, format!("nccl backend on rank 0: {NO_CUDA_DEVICE}"));
    }

    #[test]
    fn link_libnccl_makes_and_refreshes_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("libnccl.so.2");
        std::fs::write(&target, b"").unwrap();
        let links = dir.path().join("links");
        assert_eq!(link_libnccl(&target, &links).unwrap(), links);
        assert_eq!(std::fs::read_link(links.join("libnccl.so")).unwrap(), target);
        let other = dir.path().join("other.so.2");
        link_libnccl(&other, &links).unwrap();
        assert_eq!(std::fs::read_link(links.join("libnccl.so")).unwrap(), other);
    }

    #[test]
    fn the_venv_nccl_is_found_next_to_torch() {
        // The build's torch comes from pip, whose nvidia-nccl-cu13 wheel sits beside it.
        match find_libnccl() {
            Some(path) => assert!(path.ends_with("libnccl.so.2"), "{}", path.display()),
            None => eprintln!("SKIPPED: no pip NCCL next to the build's torch"),
        }
    }
}
