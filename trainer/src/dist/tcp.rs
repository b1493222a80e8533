//! The tcp backend: collectives on CPU tensors over the TCP rendezvous
//! ([`super::rendezvous`]), for CPU workers that no MPI launcher starts, such as one worker per
//! Kubernetes pod. It needs only `MASTER_ADDR:MASTER_PORT`, like the NCCL backend's start.
//!
//! Every rank is connected to rank 0, which relays (a star): an all-reduce sends every rank's
//! tensor to rank 0, which sums them **in rank order** and sends the result back, so that every
//! rank holds the same bits, and the sum is the one a single process makes of the same rows.
//! Rank 0 moves W times the data of the others, which is fine for the small CPU jobs this
//! backend is for (smoke tests, CPU clusters); GPU jobs use NCCL. Tensors travel in chunks of at
//! most [`CHUNK_BYTES`] per rank, so a large parameter stays under the rendezvous's message limit.
//!
//! A collective waits at most [`COLLECTIVE_TIMEOUT`] for the other ranks (NCCL's default
//! watchdog is the same 30 minutes): rank 0 evaluating or checkpointing while the others wait
//! in a barrier is a normal, long wait; a dead peer shows up as a closed connection at once.

use std::sync::Mutex;
use std::time::Duration;

use tch::{Kind, Tensor};

use super::rendezvous::Rendezvous;
use super::{check_cpu_float, check_root, Backend, DistError, ProcessGroup, ReduceOp, WorldInfo};

/// The longest a collective waits for the other ranks.
pub const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The most bytes of one tensor that one rank sends in one exchange.
pub const CHUNK_BYTES: usize = 4 << 20;

/// The process group of the tcp backend.
#[derive(Debug)]
pub struct TcpGroup {
    rank: usize,
    world_size: usize,
    link: Mutex<Rendezvous>,
}

impl TcpGroup {
    /// Joins the rendezvous of `world` (rank 0 listens on `master_port`, the others connect to
    /// `master_addr:master_port`), waiting at most `timeout` for the others.
    pub fn new(world: &WorldInfo, timeout: Duration) -> Result<Self, DistError> {
        let mut link = Rendezvous::join(world, timeout)?;
        link.set_timeout(COLLECTIVE_TIMEOUT);
        Ok(TcpGroup { rank: world.rank, world_size: world.world_size, link: Mutex::new(link) })
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Rendezvous> {
        self.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check(&self, op: &'static str, tensor: &Tensor) -> Result<(i64, Kind), DistError> {
        check_cpu_float("tcp", op, self.rank, self.world_size, tensor)
    }

    fn torch(&self, op: &'static str) -> impl Fn(tch::TchError) -> DistError {
        let rank = self.rank;
        move |source| DistError::Torch { op, rank, source }
    }

    /// The elements of one exchange: [`CHUNK_BYTES`] of `kind`.
    fn chunk_elements(kind: Kind) -> i64 {
        (CHUNK_BYTES / kind.elt_size_in_bytes()) as i64
    }

    /// Sums (or averages) `flat` over the ranks in rank order, on rank 0, and gives every rank
    /// the result. `flat` is one-dimensional.
    fn reduce_flat(&self, op: &'static str, flat: &Tensor, reduce: ReduceOp) -> Result<Tensor, DistError> {
        let kind = flat.kind();
        let n = flat.numel() as i64;
        let step = Self::chunk_elements(kind);
        let mut link = self.link();
        let mut out = Vec::new();
        for (start, len) in chunks(n, step) {
            let part = flat.narrow(0, start, len);
            let reduced_bytes = match link.gather_bytes(&to_bytes(&part))? {
                Some(parts) => {
                    let mut sum: Option<Tensor> = None;
                    for bytes in &parts {
                        let t = from_bytes(bytes, &[len], kind).map_err(self.torch(op))?;
                        sum = Some(match sum {
                            None => t,
                            Some(acc) => acc + t,
                        });
                    }
                    let sum = sum.expect("a world has rank 0");
                    let sum = match reduce {
                        ReduceOp::Sum => sum,
                        ReduceOp::Avg => sum / self.world_size as f64,
                    };
                    link.broadcast_bytes(&to_bytes(&sum))?
                }
                None => link.broadcast_bytes(&[])?,
            };
            out.push(from_bytes(&reduced_bytes, &[len], kind).map_err(self.torch(op))?);
        }
        Tensor::f_cat(&out, 0).map_err(self.torch(op))
    }
}

/// `(start, len)` of the chunks of at most `step` elements that cover `0..n`; one empty chunk
/// when `n` is 0, so that every rank still takes part in one exchange.
fn chunks(n: i64, step: i64) -> impl Iterator<Item = (i64, i64)> {
    let count = if n == 0 { 1 } else { (n + step - 1) / step };
    (0..count).map(move |i| (i * step, step.min(n - i * step)))
}

/// The bytes of a contiguous CPU tensor.
fn to_bytes(tensor: &Tensor) -> Vec<u8> {
    let numel = tensor.numel();
    let mut buf = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
    tensor.copy_data_u8(&mut buf, numel);
    buf
}

/// A CPU tensor of `shape` and `kind` from its bytes.
fn from_bytes(bytes: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor, tch::TchError> {
    Tensor::f_from_data_size(bytes, shape, kind)
}

impl ProcessGroup for TcpGroup {
    fn backend(&self) -> Backend {
        Backend::Tcp
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        let (rows, kind) = self.check("all_gather", tensor)?;
        let flat = tensor.reshape([-1]);
        let n = flat.numel() as i64;
        // Rank 0 sends every rank's chunk in one reply: keep that reply within the limit too.
        let step = (Self::chunk_elements(kind) / self.world_size as i64).max(1);
        let mut per_rank: Vec<Vec<Tensor>> = (0..self.world_size).map(|_| Vec::new()).collect();
        let mut link = self.link();
        for (start, len) in chunks(n, step) {
            let parts = link.all_gather_bytes(&to_bytes(&flat.narrow(0, start, len)))?;
            for (rank, bytes) in parts.iter().enumerate() {
                per_rank[rank].push(from_bytes(bytes, &[len], kind).map_err(self.torch("all_gather"))?);
            }
        }
        let whole: Vec<Tensor> = per_rank.iter().map(|chunks| Tensor::cat(chunks, 0)).collect();
        let mut shape = tensor.size();
        shape[0] = rows * self.world_size as i64;
        Tensor::f_cat(&whole, 0).and_then(|t| t.f_reshape(&shape)).map_err(self.torch("all_gather"))
    }

    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), DistError> {
        self.check("all_reduce", tensor)?;
        let reduced = self.reduce_flat("all_reduce", &tensor.reshape([-1]), op)?;
        let reduced = reduced.f_reshape(tensor.size()).map_err(self.torch("all_reduce"))?;
        // no_grad: parameters (leaves that require grad) may be reduced in place.
        tch::no_grad(|| tensor.f_copy_(&reduced)).map_err(self.torch("all_reduce"))
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        check_root("broadcast", self.rank, root, self.world_size)?;
        let (_, kind) = self.check("broadcast", tensor)?;
        let flat = tensor.reshape([-1]);
        let n = flat.numel() as i64;
        let step = Self::chunk_elements(kind);
        let mut link = self.link();
        let mut out = Vec::new();
        for (start, len) in chunks(n, step) {
            // Rank 0 relays: the root's chunk goes to rank 0 in an all-gather, then to everyone.
            let mine = if self.rank == root { to_bytes(&flat.narrow(0, start, len)) } else { Vec::new() };
            let got =
                if root == 0 { link.broadcast_bytes(&mine)? } else { link.all_gather_bytes(&mine)?.swap_remove(root) };
            out.push(from_bytes(&got, &[len], kind).map_err(self.torch("broadcast"))?);
        }
        let got = Tensor::f_cat(&out, 0).and_then(|t| t.f_reshape(tensor.size())).map_err(self.torch("broadcast"))?;
        tch::no_grad(|| tensor.f_copy_(&got)).map_err(self.torch("broadcast"))
    }

    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        let (rows, _) = self.check("reduce_scatter", tensor)?;
        let reduced = self.reduce_flat("reduce_scatter", &tensor.reshape([-1]), op)?;
        let reduced = reduced.f_reshape(tensor.size()).map_err(self.torch("reduce_scatter"))?;
        let block = rows / self.world_size as i64;
        Ok(reduced.narrow(0, self.rank as i64 * block, block).contiguous())
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.link().barrier()
    }

    fn abort(&self, code: i32) -> ! {
        // The other ranks see their connection to this one close and fail in turn.
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::LaunchMode;
    use tch::Device;

    /// Runs `body` on a world of `n` tcp ranks on loopback, one thread each.
    fn world<R: Send + 'static>(n: usize, body: impl Fn(TcpGroup) -> R + Send + Sync + Clone + 'static) -> Vec<R> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let threads: Vec<_> = (0..n)
            .map(|rank| {
                let body = body.clone();
                std::thread::spawn(move || {
                    let info = WorldInfo {
                        rank,
                        local_rank: rank,
                        world_size: n,
                        local_world_size: n,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        mode: LaunchMode::Torchrun,
                    };
                    body(TcpGroup::new(&info, Duration::from_secs(30)).unwrap())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn collectives_agree_with_their_definitions_in_rank_order() {
        let results = world(3, |g| {
            let r = g.rank() as f64;
            let mine = Tensor::from_slice(&[r, 10.0 + r, 100.0 + r, -r, 0.5, r * r]).reshape([3, 2]);
            let gathered = g.all_gather(&mine).unwrap();
            let mut summed = mine.copy();
            g.all_reduce(&mut summed, ReduceOp::Sum).unwrap();
            let mut avg = mine.to_kind(Kind::Float);
            g.all_reduce(&mut avg, ReduceOp::Avg).unwrap();
            let mut from_two = Tensor::from_slice(&[r, r]);
            g.broadcast(&mut from_two, 2).unwrap();
            let scattered = g.reduce_scatter(&Tensor::arange(6, (Kind::Double, Device::Cpu)), ReduceOp::Sum).unwrap();
            g.barrier().unwrap();
            (gathered, summed, avg, from_two, scattered)
        });
        for (rank, (gathered, summed, avg, from_two, scattered)) in results.iter().enumerate() {
            assert_eq!(gathered.size(), [9, 2]);
            assert_eq!(gathered.double_value(&[4, 1]), -1.0, "rank 1's second row");
            let want: Vec<f64> = vec![3.0, 33.0, 303.0, -3.0, 1.5, 5.0];
            assert_eq!(Vec::<f64>::try_from(summed.reshape([-1])).unwrap(), want);
            assert_eq!(avg.kind(), Kind::Float);
            assert!((avg.double_value(&[2, 1]) - 5.0 / 3.0).abs() < 1e-6);
            assert_eq!(Vec::<f64>::try_from(from_two).unwrap(), vec![2.0, 2.0]);
            let block: Vec<f64> = Vec::try_from(scattered).unwrap();
            assert_eq!(block, vec![(rank * 2) as f64 * 3.0, (rank * 2 + 1) as f64 * 3.0], "rank {rank}");
        }
    }

    #[test]
    fn a_tensor_larger_than_one_chunk_travels_whole() {
        let n = (CHUNK_BYTES / 4) as i64 * 2 + 5;
        let results = world(2, move |g| {
            let mut t = Tensor::arange(n, (Kind::Float, Device::Cpu)) * (g.rank() as f64 + 1.0);
            g.all_reduce(&mut t, ReduceOp::Sum).unwrap();
            let mut b = Tensor::full([n], g.rank() as f64, (Kind::Float, Device::Cpu));
            g.broadcast(&mut b, 1).unwrap();
            let gathered = g.all_gather(&Tensor::full([n], g.rank() as f64, (Kind::Float, Device::Cpu))).unwrap();
            (t.double_value(&[n - 1]), b.min().double_value(&[]), gathered.sum(Kind::Double).double_value(&[]))
        });
        for (last, min, sum) in results {
            assert_eq!(last, (n - 1) as f64 * 3.0);
            assert_eq!(min, 1.0);
            assert_eq!(sum, n as f64);
        }
    }

    #[test]
    fn chunks_cover_the_range_once() {
        assert_eq!(chunks(10, 4).collect::<Vec<_>>(), [(0, 4), (4, 4), (8, 2)]);
        assert_eq!(chunks(8, 4).collect::<Vec<_>>(), [(0, 4), (4, 4)]);
        assert_eq!(chunks(0, 4).collect::<Vec<_>>(), [(0, 0)]);
    }

    #[test]
    fn gpu_tensors_and_integers_are_refused_with_the_reason() {
        let results = world(1, |g| {
            let err = g.all_gather(&Tensor::from_slice(&[1i64, 2])).unwrap_err().to_string();
            assert!(err.contains("not supported"), "{err}");
        });
        assert_eq!(results.len(), 1);
    }
}
