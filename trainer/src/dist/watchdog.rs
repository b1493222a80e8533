//! Hang detection for the process groups (MPI and TCP have no deadline of their own; NCCL's
//! collectives only queue work on the GPU): every collective has a deadline, and a rank that
//! waits past it names the suspects and ends its process, so that the launcher restarts the
//! group instead of the job hanging.
//!
//! A CPU collective is in progress until its call returns. An NCCL collective stays in
//! progress after its call returns, until a CUDA event recorded after it on the stream has
//! completed ([`ProcessGroup::completion_marker`]); the watchdog thread polls the oldest
//! such event every tick. Before it ends a hung process, the watchdog aborts the communicator
//! (`ncclCommAbort`, [`ProcessGroup::abort_handle`]) so that the GPU work queued behind the
//! hung collective ends too.
//!
//! Each worker's watchdog thread writes a heartbeat file every tick,
//! `DIR/rank-R.json`: its step, the collective it is in (name, sequence number, bytes, for how
//! long) and the time. `DIR` is in the run folder; where the nodes share no file system
//! (checkpoints on an object store), the other nodes' heartbeats are missing, which counts as
//! stale. A rank whose collective has lasted longer than the deadline fires when it can tell the
//! job is stuck rather than slow:
//! - some other rank's heartbeat is stale (a stopped, frozen or dead process), or
//! - every rank has been in a collective for longer than the deadline (a deadlock).
//!
//! Rank 0 evaluating or committing a checkpoint while the others wait is neither: its heartbeat
//! is fresh and it is in no collective, so a long evaluation never fires. The suspects are the
//! stale ranks, else the ranks furthest behind in the collective sequence. The message names
//! them and this rank's collective (name, step, size, time waited); it goes to the log, to
//! stderr and to the launcher's error file (the root cause it reports), and the process exits
//! with status 1.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{AbortHandle, Backend, Completion, DistError, ProcessGroup, ReduceOp};
use crate::run::Heartbeat;

/// The collective a rank is in.
#[derive(Debug, Clone)]
struct Current {
    name: &'static str,
    seq: u64,
    bytes: u64,
    started: Instant,
}

/// What the watchdog thread and the collectives share.
struct Shared {
    rank: usize,
    world: usize,
    dir: PathBuf,
    timeout: Duration,
    tick: Duration,
    steps: Heartbeat,
    seq: AtomicU64,
    current: Mutex<Option<Current>>,
    /// Collectives that returned but whose queued device work may not have finished, oldest first.
    queued: Mutex<VecDeque<(Current, Box<dyn Completion>)>>,
    abort: Option<AbortHandle>,
}

impl Shared {
    /// The collective in progress: the host call, else the oldest queued one not yet done
    /// (the finished ones are dropped).
    fn in_progress(&self) -> Option<Current> {
        if let Some(c) = self.current.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Some(c);
        }
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((c, marker)) = queued.front() {
            match marker.is_done() {
                Ok(false) => return Some(c.clone()),
                Ok(true) => {}
                Err(e) => tracing::warn!(
                    rank = self.rank,
                    collective = c.name,
                    seq = c.seq,
                    "cannot tell whether the collective finished: {e}"
                ),
            }
            queued.pop_front();
        }
        None
    }
}

/// One rank's heartbeat file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Beat {
    rank: usize,
    pid: u32,
    unix_ms: u64,
    step: i64,
    collective: Option<String>,
    seq: u64,
    bytes: u64,
    waited_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A process group whose collectives have a deadline ([module docs](self)).
pub struct WatchedGroup {
    inner: Box<dyn ProcessGroup>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WatchedGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedGroup").field("rank", &self.shared.rank).field("timeout", &self.shared.timeout).finish()
    }
}

impl WatchedGroup {
    /// Wraps `inner`, with heartbeats in `dir` and collectives that may last `timeout`;
    /// `steps` is the run's step boundary heartbeat. Starts the watchdog thread.
    ///
    /// # Errors
    /// [`DistError`] when `dir` cannot be created or the thread cannot start.
    pub fn new(
        inner: Box<dyn ProcessGroup>,
        dir: &Path,
        timeout: Duration,
        steps: Heartbeat,
    ) -> Result<Self, DistError> {
        let rank = inner.rank();
        let abort = inner.abort_handle();
        let setup = |reason: String| DistError::Unavailable { backend: "watchdog", rank, reason };
        std::fs::create_dir_all(dir).map_err(|e| setup(format!("cannot create {}: {e}", dir.display())))?;
        let tick = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let shared = Arc::new(Shared {
            rank: inner.rank(),
            world: inner.world_size(),
            dir: dir.to_path_buf(),
            timeout,
            tick,
            steps,
            seq: AtomicU64::new(0),
            current: Mutex::new(None),
            queued: Mutex::new(VecDeque::new()),
            abort,
        });
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("clipfleet-watchdog".into())
            .spawn(move || watch(&s))
            .map_err(|e| setup(format!("cannot start the watchdog thread: {e}")))?;
        Ok(WatchedGroup { inner, shared })
    }

    /// Runs the collective `name` on `tensor` with the deadline: in progress while `call`
    /// runs, and after it until its queued device work is done.
    fn watched<T>(
        &self,
        name: &'static str,
        tensor: Option<&Tensor>,
        call: impl FnOnce(&dyn ProcessGroup) -> Result<T, DistError>,
    ) -> Result<T, DistError> {
        let bytes = tensor.map_or(0, |t| (t.numel() * t.kind().elt_size_in_bytes()) as u64);
        let seq = self.shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let current = Current { name, seq, bytes, started: Instant::now() };
        *self.shared.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
        let out = call(self.inner.as_ref());
        let marker = match &out {
            Ok(_) => self.inner.completion_marker(),
            Err(_) => Ok(None),
        };
        let marker = marker.map(|m| {
            if let Some(m) = m {
                self.shared.queued.lock().unwrap_or_else(PoisonError::into_inner).push_back((current, m));
            }
        });
        *self.shared.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let value = out?;
        marker?;
        Ok(value)
    }
}

impl ProcessGroup for WatchedGroup {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        self.watched("all_gather", Some(tensor), |g| g.all_gather(tensor))
    }

    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), DistError> {
        let shallow = tensor.shallow_clone();
        self.watched("all_reduce", Some(&shallow), |g| g.all_reduce(tensor, op))
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        let shallow = tensor.shallow_clone();
        self.watched("broadcast", Some(&shallow), |g| g.broadcast(tensor, root))
    }

    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        self.watched("reduce_scatter", Some(tensor), |g| g.reduce_scatter(tensor, op))
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.watched("barrier", None, |g| g.barrier())
    }

    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}

/// The watchdog thread: a heartbeat every tick, and the deadline check.
fn watch(s: &Shared) {
    let me = s.dir.join(format!("rank-{}.json", s.rank));
    let stale_ms = (4 * s.tick).max(Duration::from_secs(2)).as_millis() as u64;
    loop {
        let current = s.in_progress();
        let beat = Beat {
            rank: s.rank,
            pid: std::process::id(),
            unix_ms: unix_ms(),
            step: s.steps.last_step(),
            collective: current.as_ref().map(|c| c.name.to_owned()),
            seq: current.as_ref().map_or(s.seq.load(Ordering::SeqCst), |c| c.seq),
            bytes: current.as_ref().map_or(0, |c| c.bytes),
            waited_ms: current.as_ref().map_or(0, |c| c.started.elapsed().as_millis() as u64),
        };
        write_atomically(&me, &beat);
        if let Some(c) = current.filter(|c| c.started.elapsed() > s.timeout) {
            let others: Vec<(usize, Option<Beat>)> = (0..s.world)
                .filter(|&r| r != s.rank)
                .map(|r| (r, read(&s.dir.join(format!("rank-{r}.json")))))
                .collect();
            let now = unix_ms();
            let stale: Vec<usize> = others
                .iter()
                .filter(|(_, b)| b.as_ref().is_none_or(|b| now.saturating_sub(b.unix_ms) > stale_ms))
                .map(|(r, _)| *r)
                .collect();
            let all_stuck = others.iter().all(|(_, b)| {
                b.as_ref().is_some_and(|b| b.collective.is_some() && b.waited_ms > s.timeout.as_millis() as u64)
            });
            if !stale.is_empty() || all_stuck {
                fire(s, &c, beat.step, &others, &stale, now);
            }
        }
        std::thread::sleep(s.tick);
    }
}

fn fire(s: &Shared, c: &Current, step: i64, others: &[(usize, Option<Beat>)], stale: &[usize], now: u64) -> ! {
    let suspects: Vec<usize> = if stale.is_empty() {
        let lowest = others.iter().filter_map(|(_, b)| b.as_ref().map(|b| b.seq)).min().unwrap_or(c.seq);
        others
            .iter()
            .filter(|(_, b)| b.as_ref().is_some_and(|b| b.seq == lowest && b.seq < c.seq))
            .map(|(r, _)| *r)
            .collect()
    } else {
        stale.to_vec()
    };
    let seen: Vec<String> = others
        .iter()
        .map(|(r, b)| match b {
            None => format!("rank {r}: no heartbeat"),
            Some(b) => format!(
                "rank {r}: last heartbeat {:.1} s ago at step {}, {}",
                now.saturating_sub(b.unix_ms) as f64 / 1000.0,
                b.step,
                match &b.collective {
                    Some(name) => format!("in {name} #{} for {:.1} s", b.seq, b.waited_ms as f64 / 1000.0),
                    None => format!("outside collectives after #{}", b.seq),
                }
            ),
        })
        .collect();
    let who = if suspects.is_empty() {
        "every rank is waiting in a collective (a deadlock)".to_owned()
    } else {
        format!("suspect rank(s) {}", suspects.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
    };
    let message = format!(
        "collective {} #{} at step {} ({} bytes) did not finish within the collective_timeout of {} s (waited {:.1} s): {who}; {}",
        c.name,
        c.seq,
        step + 1,
        c.bytes,
        s.timeout.as_secs_f64(),
        c.started.elapsed().as_secs_f64(),
        seen.join("; ")
    );
    tracing::error!(rank = s.rank, "{message}");
    eprintln!("error: worker rank {} of {} hung: {message}", s.rank, s.world);
    super::error_file::record(s.rank, &message);
    if let Some(abort) = &s.abort {
        // The GPU work queued behind the hung collective ends too, instead of outliving us.
        abort();
    }
    // No destructor or finaliser may run: the other threads are blocked in the collective.
    // SAFETY: `_exit` ends the process at once; nothing after it runs.
    unsafe { libc::_exit(1) }
}

fn write_atomically(path: &Path, beat: &Beat) {
    let tmp = path.with_extension("json.tmp");
    if let Ok(text) = serde_json::to_vec(beat) {
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

fn read(path: &Path) -> Option<Beat> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// One rank whose collectives return at once and leave "device work" queued until `done`.
    #[derive(Debug, Default)]
    struct Queueing {
        done: Arc<AtomicBool>,
    }

    struct Flag(Arc<AtomicBool>);

    impl Completion for Flag {
        fn is_done(&self) -> Result<bool, String> {
            Ok(self.0.load(Ordering::SeqCst))
        }
    }

    impl ProcessGroup for Queueing {
        fn backend(&self) -> Backend {
            Backend::Nccl
        }
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
            Ok(tensor.shallow_clone())
        }
        fn all_reduce(&self, _: &mut Tensor, _: ReduceOp) -> Result<(), DistError> {
            Ok(())
        }
        fn broadcast(&self, _: &mut Tensor, _: usize) -> Result<(), DistError> {
            Ok(())
        }
        fn reduce_scatter(&self, tensor: &Tensor, _: ReduceOp) -> Result<Tensor, DistError> {
            Ok(tensor.shallow_clone())
        }
        fn barrier(&self) -> Result<(), DistError> {
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
        fn completion_marker(&self) -> Result<Option<Box<dyn Completion>>, DistError> {
            Ok(Some(Box::new(Flag(Arc::clone(&self.done)))))
        }
    }

    #[test]
    fn a_collective_that_only_queued_work_stays_in_progress_until_the_work_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Queueing::default();
        let done = Arc::clone(&inner.done);
        // A long deadline: the watchdog thread only writes heartbeats here.
        let group =
            WatchedGroup::new(Box::new(inner), dir.path(), Duration::from_secs(3600), Heartbeat::default()).unwrap();
        assert!(group.shared.in_progress().is_none());
        let mut t = Tensor::zeros([4, 8], (tch::Kind::Float, tch::Device::Cpu));
        group.all_reduce(&mut t, ReduceOp::Sum).unwrap();
        let _gathered = group.all_gather(&t).unwrap();
        let first = group.shared.in_progress().expect("queued work in progress");
        assert_eq!((first.name, first.seq, first.bytes), ("all_reduce", 1, 128), "the oldest queued collective");
        assert_eq!(group.shared.queued.lock().unwrap().len(), 2);
        done.store(true, Ordering::SeqCst);
        assert!(group.shared.in_progress().is_none(), "finished work is no longer in progress");
        assert!(group.shared.queued.lock().unwrap().is_empty(), "and is dropped");
    }
}
