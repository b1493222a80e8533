//! Starting the workers of one attempt: one process per worker (spawn mode: NCCL or a single
//! worker) or one `mpirun` (MPI mode), and delivering signals to them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clipfleet_trainer::dist::error_file::ERROR_DIR_VAR;
use libc::{c_int, pid_t};

use super::signals;
use super::topology::Topology;
use crate::cli::LaunchBackend;

/// How the workers talk, which decides how they are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// One process per GPU with the torchrun variables.
    Nccl,
    /// One worker, no collectives.
    Single,
    /// One `mpirun -np N` on this node.
    Mpi,
}

impl Transport {
    /// The value of `CLIPFLEET_DIST_BACKEND` given to the workers.
    pub(crate) fn backend_name(self) -> &'static str {
        match self {
            Transport::Nccl => "nccl",
            Transport::Single => "single",
            Transport::Mpi => "mpi",
        }
    }
}

/// Picks the transport: `auto` is nccl when a CUDA device is visible, else mpi for a world of
/// more than one worker, else a single worker. MPI mode starts one node only.
pub(crate) fn choose_transport(
    requested: LaunchBackend,
    cuda_visible: impl FnOnce() -> bool,
    topology: &Topology,
) -> Result<Transport> {
    let transport = match requested {
        LaunchBackend::Nccl => Transport::Nccl,
        LaunchBackend::Mpi => Transport::Mpi,
        LaunchBackend::Auto if cuda_visible() => Transport::Nccl,
        LaunchBackend::Auto if topology.world_size() > 1 => Transport::Mpi,
        LaunchBackend::Auto => Transport::Single,
    };
    if transport == Transport::Mpi && topology.nnodes > 1 {
        bail!(
            "the mpi backend starts one node only, but the job has {} nodes ({}): for several nodes run \
             `srun --mpi=pmix clipfleet train …` under Slurm, or `mpirun --hostfile HOSTS -np N clipfleet train …`",
            topology.nnodes,
            topology.source
        );
    }
    Ok(transport)
}

/// The arguments of `mpirun` for `nproc` ranks of `worker ARGS` (attempt `restart`).
pub(crate) fn mpirun_args(nproc: usize, as_root: bool, restart: u32, worker: &Path, args: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec!["-np".into(), nproc.to_string().into()];
    if as_root {
        out.push("--allow-run-as-root".into());
    }
    for a in ["--oversubscribe", "--bind-to", "none", "-x", "CLIPFLEET_DIST_BACKEND=mpi", "-x"] {
        out.push(a.into());
    }
    out.push(format!("CLIPFLEET_RESTART_COUNT={restart}").into());
    // The error-file folder, from mpirun's environment (set by the launcher).
    out.extend(["-x".into(), ERROR_DIR_VAR.into()]);
    out.push(worker.into());
    out.extend(args.iter().map(OsString::from));
    out
}

/// The first executable called `name` on `path` (a `PATH` value).
pub(crate) fn find_on_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// What mpirun said about the first rank that failed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MpirunReport {
    /// The rank that failed first.
    pub(crate) rank: Option<usize>,
    /// The signal that killed it, when it was killed.
    pub(crate) signal: Option<c_int>,
}

/// Reads one line of mpirun's stderr: OpenMPI prints `Process name: [[12356,1],1]` (rank 1)
/// after a non-zero exit, `process rank 1 with PID … exited on signal 9 (Killed)`, and
/// `MPI_ABORT was invoked on rank 1 in communicator …` when a worker aborts the job (a
/// clipfleet worker does so when it fails while the others wait in a collective).
pub(crate) fn scan_mpirun_line(line: &str, report: &mut MpirunReport) {
    if report.rank.is_some() {
        return;
    }
    if let Some(at) = line.find("Process name:") {
        let name = &line[at..];
        if let Some(close) = name.rfind(']') {
            let inner = &name[..close];
            if let Some(comma) = inner.rfind(',') {
                report.rank = inner[comma + 1..].trim().parse().ok();
            }
        }
    } else if let Some(at) = line.find("MPI_ABORT was invoked on rank ") {
        let rest = &line[at + "MPI_ABORT was invoked on rank ".len()..];
        report.rank = rest.split_whitespace().next().and_then(|r| r.parse().ok());
    } else if let Some(at) = line.find("process rank ") {
        let rest = &line[at + "process rank ".len()..];
        report.rank = rest.split_whitespace().next().and_then(|r| r.parse().ok());
        if let Some(s) = rest.find("on signal ") {
            report.signal = rest[s + "on signal ".len()..].split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
}

/// Who a worker process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    /// A worker started by the launcher, with its global and local rank.
    Rank { rank: usize, local_rank: usize },
    /// The `mpirun` of MPI mode.
    Mpirun,
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Rank { rank, .. } => write!(f, "rank {rank}"),
            Label::Mpirun => f.write_str("mpirun"),
        }
    }
}

/// One process the launcher started and supervises.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) label: Label,
    pub(crate) child: Child,
    /// mpirun's failure report, filled by the thread that relays its stderr.
    report: Option<Arc<Mutex<MpirunReport>>>,
    relay: Option<JoinHandle<()>>,
}

impl Worker {
    /// The process id (also its process group id: every worker leads a group).
    pub(crate) fn pid(&self) -> pid_t {
        self.child.id() as pid_t
    }

    /// Delivers `signal`. A worker of spawn mode gets it in its whole process group. Under
    /// mpirun the ranks get it directly (mpirun would tear the job down on SIGTERM/SIGINT), and
    /// SIGKILL goes to mpirun's group and to each of its ranks' groups (OpenMPI puts every rank
    /// in its own).
    pub(crate) fn signal(&self, signal: c_int) {
        let result = match self.label {
            Label::Rank { .. } => signals::to_group(self.pid(), signal),
            Label::Mpirun if signal == libc::SIGKILL => {
                for rank in signals::children_of(self.pid()) {
                    let _ = signals::to_group(rank, signal);
                    let _ = signals::to_process(rank, signal);
                }
                signals::to_group(self.pid(), signal)
            }
            // mpirun ends the job on SIGTERM and does not forward every signal: a stop request
            // goes to the ranks themselves (mpirun's children), once.
            Label::Mpirun => match signals::children_of(self.pid()) {
                ranks if ranks.is_empty() => signals::to_process(self.pid(), signal),
                ranks => ranks.into_iter().try_for_each(|rank| signals::to_process(rank, signal)),
            },
        };
        if let Err(e) = result {
            tracing::warn!("cannot send {} to {} (pid {}): {e}", signals::name(signal), self.label, self.pid());
        }
    }

    /// Kills what is left of the worker's process group after its leader exited.
    pub(crate) fn kill_leftovers(&self) {
        let _ = signals::to_group(self.pid(), libc::SIGKILL);
    }

    /// Waits (up to a second) for the stderr relay to drain, and returns mpirun's report.
    pub(crate) fn finish(&mut self) -> MpirunReport {
        if let Some(relay) = self.relay.take() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !relay.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if relay.is_finished() {
                let _ = relay.join();
            }
        }
        self.report.as_ref().map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    }
}

/// Everything needed to start the workers of an attempt.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) transport: Transport,
    pub(crate) topology: Topology,
    /// The worker program.
    pub(crate) worker: PathBuf,
    /// `mpirun`, in MPI mode.
    pub(crate) mpirun: Option<PathBuf>,
    /// A folder to put first on the workers' `LD_LIBRARY_PATH` (the `libnccl.so` link).
    pub(crate) library_dir: Option<PathBuf>,
}

impl Plan {
    /// Starts the workers of attempt `restart` with `args`, with `errors` for their error
    /// files. If one cannot start, those already started are killed and reaped.
    pub(crate) fn start(&self, args: &[String], restart: u32, errors: &Path) -> Result<Vec<Worker>> {
        if self.transport == Transport::Mpi {
            return Ok(vec![self.start_mpirun(args, restart, errors)?]);
        }
        let t = &self.topology;
        let mut workers: Vec<Worker> = Vec::with_capacity(t.nproc_per_node);
        for local_rank in 0..t.nproc_per_node {
            let rank = t.rank(local_rank);
            let mut cmd = Command::new(&self.worker);
            cmd.args(args)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", local_rank.to_string())
                .env("WORLD_SIZE", t.world_size().to_string())
                .env("LOCAL_WORLD_SIZE", t.nproc_per_node.to_string())
                .env("GROUP_RANK", t.node_rank.to_string())
                .env("MASTER_ADDR", &t.master_addr)
                .env("MASTER_PORT", t.master_port.to_string())
                .env("CLIPFLEET_DIST_BACKEND", self.transport.backend_name())
                .env("CLIPFLEET_RESTART_COUNT", restart.to_string())
                .env(ERROR_DIR_VAR, errors)
                .stdin(Stdio::null())
                .process_group(0);
            if let Some(dir) = &self.library_dir {
                cmd.env("LD_LIBRARY_PATH", prepend_path(dir, std::env::var_os("LD_LIBRARY_PATH")));
            }
            die_with_launcher(&mut cmd, libc::SIGKILL);
            match cmd.spawn() {
                Ok(child) => {
                    workers.push(Worker { label: Label::Rank { rank, local_rank }, child, report: None, relay: None })
                }
                Err(e) => {
                    for w in &mut workers {
                        w.signal(libc::SIGKILL);
                        let _ = w.child.wait();
                    }
                    return Err(e).with_context(|| format!("starting worker rank {rank}: {}", self.worker.display()));
                }
            }
        }
        Ok(workers)
    }

    fn start_mpirun(&self, args: &[String], restart: u32, errors: &Path) -> Result<Worker> {
        let mpirun = self.mpirun.as_deref().context("mpi mode without mpirun")?;
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut cmd = Command::new(mpirun);
        cmd.args(mpirun_args(self.topology.nproc_per_node, as_root, restart, &self.worker, args))
            .env("CLIPFLEET_DIST_BACKEND", "mpi")
            .env("CLIPFLEET_RESTART_COUNT", restart.to_string())
            .env(ERROR_DIR_VAR, errors)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // Defaults that the user's environment may override: the copy-in/copy-out shared-memory
        // path, which works in containers that forbid cross-memory attach; and waiting ranks
        // that yield their core (rank 0 evaluates while the others wait in a barrier).
        for (var, value) in
            [("OMPI_MCA_btl_vader_single_copy_mechanism", "none"), ("OMPI_MCA_mpi_yield_when_idle", "1")]
        {
            if std::env::var_os(var).is_none() {
                cmd.env(var, value);
            }
        }
        // The ranks take their place from OMPI_COMM_WORLD_*; torchrun names would win over those.
        for var in ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"] {
            cmd.env_remove(var);
        }
        // mpirun tears its job down on SIGTERM; SIGKILL would leave the ranks behind.
        die_with_launcher(&mut cmd, libc::SIGTERM);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", mpirun.display()))?;
        let report = Arc::new(Mutex::new(MpirunReport::default()));
        let relay = child.stderr.take().map(|stderr| {
            let report = Arc::clone(&report);
            std::thread::spawn(move || relay_stderr(stderr, &report))
        });
        Ok(Worker { label: Label::Mpirun, child, report: Some(report), relay })
    }
}

/// Copies mpirun's stderr to ours line by line, noting which rank it says failed.
fn relay_stderr(stderr: impl std::io::Read, report: &Mutex<MpirunReport>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let _ = std::io::stderr().write_all(&line);
                scan_mpirun_line(
                    &String::from_utf8_lossy(&line),
                    &mut report.lock().unwrap_or_else(|p| p.into_inner()),
                );
            }
        }
    }
}

fn prepend_path(dir: &Path, current: Option<OsString>) -> OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(current.iter().flat_map(std::env::split_paths).filter(|p| !p.as_os_str().is_empty()));
    std::env::join_paths(paths).unwrap_or_else(|_| dir.as_os_str().to_owned())
}

/// Asks the kernel to send `signal` to the child when the launcher dies (even by SIGKILL), so
/// that no worker outlives it.
fn die_with_launcher(cmd: &mut Command, signal: c_int) {
    let launcher = std::process::id() as pid_t;
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher may have died before the request took effect.
            if libc::getppid() != launcher {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::launch::topology::Source;

    fn topology(nnodes: usize, nproc: usize) -> Topology {
        Topology {
            nproc_per_node: nproc,
            nnodes,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            source: Source::Flags,
        }
    }

    #[test]
    fn mpirun_command_line() {
        let args = vec!["train".to_owned(), "--steps".to_owned(), "3".to_owned()];
        let line = mpirun_args(4, true, 2, Path::new("/opt/clipfleet-core"), &args);
        let line: Vec<&str> = line.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            line,
            [
                "-np",
                "4",
                "--allow-run-as-root",
                "--oversubscribe",
                "--bind-to",
                "none",
                "-x",
                "CLIPFLEET_DIST_BACKEND=mpi",
                "-x",
                "CLIPFLEET_RESTART_COUNT=2",
                "-x",
                "CLIPFLEET_ERROR_DIR",
                "/opt/clipfleet-core",
                "train",
                "--steps",
                "3"
            ]
        );
        let line = mpirun_args(2, false, 0, Path::new("w"), &[]);
        assert!(!line.iter().any(|a| a == "--allow-run-as-root"), "{line:?}");
        assert_eq!(line.last().unwrap(), "w");
    }

    #[test]
    fn auto_transport() {
        let t = |n, p| topology(n, p);
        assert_eq!(choose_transport(LaunchBackend::Auto, || true, &t(1, 1)).unwrap(), Transport::Nccl);
        assert_eq!(choose_transport(LaunchBackend::Auto, || false, &t(1, 4)).unwrap(), Transport::Mpi);
        assert_eq!(choose_transport(LaunchBackend::Auto, || false, &t(1, 1)).unwrap(), Transport::Single);
        assert_eq!(choose_transport(LaunchBackend::Nccl, || false, &t(2, 1)).unwrap(), Transport::Nccl);
        let msg = choose_transport(LaunchBackend::Auto, || false, &t(2, 2)).unwrap_err().to_string();
        assert!(msg.contains("srun --mpi=pmix") && msg.contains("hostfile"), "{msg}");
        assert!(choose_transport(LaunchBackend::Mpi, || true, &t(3, 1)).is_err());
    }

    #[test]
    fn mpirun_failure_lines_name_the_rank() {
        let mut r = MpirunReport::default();
        for line in
            ["mpirun detected that one or more processes exited", "  Process name: [[12356,1],1]", "  Exit code:    3"]
        {
            scan_mpirun_line(line, &mut r);
        }
        assert_eq!(r, MpirunReport { rank: Some(1), signal: None });
        let mut r = MpirunReport::default();
        scan_mpirun_line(
            "mpirun noticed that process rank 2 with PID 0 on node vm exited on signal 9 (Killed).",
            &mut r,
        );
        assert_eq!(r, MpirunReport { rank: Some(2), signal: Some(9) });
        // PRRTE (OpenMPI 5) names processes differently; the rank is still last.
        let mut r = MpirunReport::default();
        scan_mpirun_line("   Process name: [prterun-vm-1234@1,3]", &mut r);
        assert_eq!(r.rank, Some(3));
        let mut r = MpirunReport::default();
        scan_mpirun_line("MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD", &mut r);
        assert_eq!(r, MpirunReport { rank: Some(1), signal: None });
    }

    #[test]
    fn library_dir_goes_first() {
        let p = prepend_path(Path::new("/tmp/n"), Some("/a:/b".into()));
        assert_eq!(p, "/tmp/n:/a:/b");
        assert_eq!(prepend_path(Path::new("/tmp/n"), None), "/tmp/n");
    }
}
