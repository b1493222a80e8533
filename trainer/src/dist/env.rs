//! Where this worker sits in the job: its rank, world size and master address, derived from the
//! environment that a launcher left behind, so that `clipfleet launch`, `torchrun`-style
//! launchers, `mpirun`, `srun` and Kubernetes Indexed Jobs all work without extra flags.
//!
//! Detection is a pure function over an environment map ([`detect`]); [`detect_from_env`] reads
//! the process environment. The first rule that matches wins:
//!
//! 0. **Kubeflow** (a PyTorchJob or TrainJob pod that runs the worker itself): `PET_NNODES` or
//!    `PET_NPROC_PER_NODE` without `LOCAL_RANK` (nor an MPI rank: `clipfleet launch` may start
//!    mpirun in such a pod). The pod is one node with one worker: its rank is
//!    `PET_NODE_RANK` (else `RANK`, the pod index), the world is `PET_NNODES` (else `WORLD_SIZE`),
//!    the master `MASTER_ADDR`/`MASTER_PORT` (else `PET_MASTER_ADDR`/`PET_MASTER_PORT`).
//!    `PET_NPROC_PER_NODE` > 1 needs `clipfleet launch` as the pod's command. A missing
//!    `LOCAL_RANK` here does not mean one node, as it does for rule 1.
//! 1. **torchrun names** (`clipfleet launch`, torchrun, any launcher that sets them): `RANK` and
//!    `WORLD_SIZE`; `LOCAL_RANK` and `LOCAL_WORLD_SIZE` (defaults: `RANK`, `WORLD_SIZE`, i.e. one
//!    node); `MASTER_ADDR` and `MASTER_PORT` (required when `WORLD_SIZE` > 1).
//! 2. **OpenMPI** (`mpirun`): `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
//!    `OMPI_COMM_WORLD_LOCAL_RANK`, `OMPI_COMM_WORLD_LOCAL_SIZE`.
//! 3. **PMIx** (`srun --mpi=pmix`, other PMIx launchers): `PMIX_RANK`, with the sizes taken from
//!    Slurm (`SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`).
//! 4. **Slurm** (`srun clipfleet train …`): `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
//!    `SLURM_NTASKS_PER_NODE` (or `SLURM_TASKS_PER_NODE`), and the master is the first host of
//!    `SLURM_JOB_NODELIST` (or `SLURM_NODELIST`). Only inside a job step (`SLURM_STEP_ID` set): the
//!    batch script itself also carries `SLURM_PROCID=0` and is not a launch.
//! 5. **Kubernetes Indexed Job**: `JOB_COMPLETION_INDEX` is the rank (one worker per pod);
//!    `CLIPFLEET_NNODES` is the world size (the Job's `completions`); the master is
//!    `CLIPFLEET_MASTER_ADDR`, or else `<job>-0.<CLIPFLEET_SERVICE>`, where `<job>` is
//!    `CLIPFLEET_JOB_NAME` or `HOSTNAME` without its `-<index>` suffix (the Job controller names
//!    pods `<job>-<index>`, and the headless service named by the pods' `subdomain` resolves
//!    `<job>-<index>.<service>`). `CLIPFLEET_NPROC_PER_NODE` > 1 needs `clipfleet launch` in the
//!    pod, which then sets the torchrun names (rule 1).
//! 6. Otherwise one process: rank 0 of 1.
//!
//! In every mode `MASTER_ADDR` and `MASTER_PORT`, when set, override the derived master, and the
//! port defaults to [`DEFAULT_MASTER_PORT`].

use std::collections::HashMap;
use std::fmt;

use super::DistError;

/// The port of the rendezvous when no `MASTER_PORT` is set (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// How this worker was started, i.e. which rule of the module docs matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// No launcher: one process.
    Single,
    /// The torchrun variables (`clipfleet launch`, torchrun).
    Torchrun,
    /// `mpirun` (OpenMPI) or a PMIx launcher: MPI can be initialised.
    Mpi,
    /// `srun` without MPI.
    Slurm,
    /// A Kubernetes Indexed Job.
    Kubernetes,
    /// A Kubeflow PyTorchJob or TrainJob pod (`PET_*` variables, no `LOCAL_RANK`).
    Kubeflow,
}

impl LaunchMode {
    /// The mode's name as logged.
    pub fn name(self) -> &'static str {
        match self {
            LaunchMode::Single => "single",
            LaunchMode::Torchrun => "torchrun",
            LaunchMode::Mpi => "mpi",
            LaunchMode::Slurm => "slurm",
            LaunchMode::Kubernetes => "kubernetes",
            LaunchMode::Kubeflow => "kubeflow",
        }
    }
}

impl fmt::Display for LaunchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// This worker's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldInfo {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Rank among the workers of this node; picks the GPU.
    pub local_rank: usize,
    /// Number of workers in the job.
    pub world_size: usize,
    /// Number of workers on this node.
    pub local_world_size: usize,
    /// Host of rank 0's rendezvous (NCCL unique-id exchange).
    pub master_addr: String,
    /// Port of rank 0's rendezvous.
    pub master_port: u16,
    /// Which launcher was detected.
    pub mode: LaunchMode,
}

impl WorldInfo {
    /// One process: rank 0 of 1, master on loopback.
    pub fn single() -> Self {
        WorldInfo {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_MASTER_PORT,
            mode: LaunchMode::Single,
        }
    }

    /// Whether this is rank 0.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn validate(self) -> Result<Self, DistError> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(DistError::Env {
                var: "rank/world size".into(),
                reason: format!("rank {} is not below world size {} ({} mode)", self.rank, self.world_size, self.mode),
            });
        }
        if self.local_world_size == 0
            || self.local_rank >= self.local_world_size
            || self.local_world_size > self.world_size
        {
            return Err(DistError::Env {
                var: "local rank/local world size".into(),
                reason: format!(
                    "local rank {} of local world size {} does not fit world size {} ({} mode)",
                    self.local_rank, self.local_world_size, self.world_size, self.mode
                ),
            });
        }
        Ok(self)
    }
}

/// Reads the process environment, applies [`detect`] and logs the mode detected.
pub fn detect_from_env() -> Result<WorldInfo, DistError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let world = detect(&env)?;
    tracing::info!(
        mode = world.mode.name(),
        rank = world.rank,
        world_size = world.world_size,
        local_rank = world.local_rank,
        local_world_size = world.local_world_size,
        master = %format!("{}:{}", world.master_addr, world.master_port),
        "launch mode detected: {}",
        world.mode
    );
    Ok(world)
}

/// Detects the launch mode and this worker's place from an environment map; see the module docs
/// for the rules and their precedence.
pub fn detect(env: &HashMap<String, String>) -> Result<WorldInfo, DistError> {
    let has = |k: &str| env.get(k).is_some_and(|v| !v.trim().is_empty());
    let mpi_rank = has("OMPI_COMM_WORLD_RANK") || has("PMIX_RANK");
    let info = if (has("PET_NNODES") || has("PET_NPROC_PER_NODE")) && !has("LOCAL_RANK") && !mpi_rank {
        kubeflow(env)?
    } else if has("RANK") || has("WORLD_SIZE") {
        torchrun(env)?
    } else if has("OMPI_COMM_WORLD_RANK") {
        open_mpi(env)?
    } else if has("PMIX_RANK") {
        pmix(env)?
    } else if has("SLURM_PROCID") && (has("SLURM_STEP_ID") || has("SLURM_STEPID")) {
        slurm(env, LaunchMode::Slurm, "SLURM_PROCID")?
    } else if has("JOB_COMPLETION_INDEX") {
        kubernetes(env)?
    } else {
        let mut info = WorldInfo::single();
        master_override(env, &mut info)?;
        info
    };
    info.validate()
}

fn torchrun(env: &HashMap<String, String>) -> Result<WorldInfo, DistError> {
    let rank = required(env, "RANK")?;
    let world_size = required(env, "WORLD_SIZE")?;
    let local_rank = optional(env, "LOCAL_RANK")?.unwrap_or(rank);
    let local_world_size = optional(env, "LOCAL_WORLD_SIZE")?.unwrap_or(world_size);
    let (master_addr, master_port) = if world_size > 1 {
        (required_str(env, "MASTER_ADDR")?, port(env)?.ok_or_else(|| missing("MASTER_PORT"))?)
    } else {
        (
            env.get("MASTER_ADDR").cloned().unwrap_or_else(|| "127.0.0.1".into()),
            port(env)?.unwrap_or(DEFAULT_MASTER_PORT),
        )
    };
    Ok(WorldInfo {
        rank,
        local_rank,
        world_size,
        local_world_size,
        master_addr,
        master_port,
        mode: LaunchMode::Torchrun,
    })
}

/// A Kubeflow pod that runs the worker itself. PyTorchJob sets `RANK` to the pod index and
/// `WORLD_SIZE` to pods × `nprocPerNode`, besides `PET_NNODES`, `PET_NODE_RANK`,
/// `PET_NPROC_PER_NODE` and `MASTER_ADDR`/`MASTER_PORT`; Trainer v2's TrainJob sets only the
/// `PET_*` names, with `PET_MASTER_ADDR`/`PET_MASTER_PORT`. Neither sets `LOCAL_RANK`, so the
/// pod is one node: with one worker per pod it is that node's worker; with several, they need
/// `clipfleet launch` (which reads the same variables) as the container's command.
fn kubeflow(env: &HashMap<String, String>) -> Result<WorldInfo, DistError> {
    let nproc = match env.get("PET_NPROC_PER_NODE").map(|v| v.trim()) {
        None | Some("") => 1,
        Some(v) => v.parse::<usize>().map_err(|_| DistError::Env {
            var: "PET_NPROC_PER_NODE".into(),
            reason: format!("{v:?} is not a number of workers; set nprocPerNode to a number"),
        })?,
    };
    if nproc != 1 {
        return Err(DistError::Env {
            var: "PET_NPROC_PER_NODE".into(),
            reason: format!(
                "is {nproc}: a pod with several workers needs `clipfleet launch -- train …` as its command, \
                 which starts them and sets LOCAL_RANK for each"
            ),
        });
    }
    let node_rank = match optional(env, "PET_NODE_RANK")? {
        Some(r) => r,
        None => required(env, "RANK")?,
    };
    let nnodes = match optional(env, "PET_NNODES")? {
        Some(n) => n,
        None => required(env, "WORLD_SIZE")?,
    };
    let master_addr = env
        .get("MASTER_ADDR")
        .or_else(|| env.get("PET_MASTER_ADDR"))
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    let master_addr = match master_addr {
        Some(addr) => addr,
        None if nnodes > 1 => return Err(missing("MASTER_ADDR")),
        None => "127.0.0.1".into(),
    };
    let master_port = match port(env)? {
        Some(p) => p,
        None => pet_master_port(env)?.unwrap_or(DEFAULT_MASTER_PORT),
    };
    Ok(WorldInfo {
        rank: node_rank,
        local_rank: 0,
        world_size: nnodes,
        local_world_size: 1,
        master_addr,
        master_port,
        mode: LaunchMode::Kubeflow,
    })
}

/// `PET_MASTER_PORT` (Kubeflow Trainer's name for `MASTER_PORT`): `None` when unset.
pub fn pet_master_port(env: &HashMap<String, String>) -> Result<Option<u16>, DistError> {
    match env.get("PET_MASTER_PORT").map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<u16>().ok().filter(|&p| p > 0).map(Some).ok_or_else(|| DistError::Env {
            var: "PET_MASTER_PORT".into(),
            reason: format!("{v:?} is not a port number (1-65535)"),
        }),
    }
}

fn open_mpi(env: &HashMap<String, String>) -> Result<WorldInfo, DistError> {
    let mut info = WorldInfo {
        rank: required(env, "OMPI_COMM_WORLD_RANK")?,
        world_size: required(env, "OMPI_COMM_WORLD_SIZE")?,
        local_rank: required(env, "OMPI_COMM_WORLD_LOCAL_RANK")?,
        local_world_size: required(env, "OMPI_COMM_WORLD_LOCAL_SIZE")?,
        ..WorldInfo::single()
    };
    info.mode = LaunchMode::Mpi;
    master_override(env, &mut info)?;
    Ok(info)
}

fn pmix(env: &HashMap<String, String>) -> Result<WorldInfo, DistError> {
    if env.contains_key("SLURM_NTASKS") || env.contains_key("SLURM_NPROCS") {
        return slurm(env, LaunchMode::Mpi, "PMIX_RANK");
    }
    Err(DistError::Env {
        var: "PMIX_RANK".into(),
        reason: "is set, but neither OpenMPI's OMPI_COMM_WORLD_SIZE nor Slurm's SLURM_NTASKS gives the world size; \
                 set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE instead"
            .into(),
    })
}

fn slurm(env: &HashMap<String, String>, mode: LaunchMode, rank_var: &str) -> Result<WorldInfo, DistError> {
    let rank = required(env, rank_var)?;
    let world_size = match optional(env, "SLURM_NTASKS")? {
        Some(n) => n,
        None => required(env, "SLURM_NPROCS")?,
    };
    let local_rank = required(env, "SLURM_LOCALID")?;
    let local_world_size = match first_count(env, "SLURM_NTASKS_PER_NODE")? {
        Some(n) => n,
        None => first_count(env, "SLURM_TASKS_PER_NODE")?.unwrap_or(1),
    };
    let (list_var, nodelist) = match env.get("SLURM_JOB_NODELIST") {
        Some(v) => ("SLURM_JOB_NODELIST", v),
        None => ("SLURM_NODELIST", env.get("SLURM_NODELIST").ok_or_else(|| missing("SLURM_JOB_NODELIST"))?),
    };
    let master_addr = first_host(nodelist).map_err(|reason| DistError::Env { var: list_var.into(), reason })?;
    let mut info = WorldInfo {
        rank,
        local_rank,
        world_size,
        local_world_size,
        master_addr,
        master_port: DEFAULT_MASTER_PORT,
        mode,
    };
    master_override(env, &mut info)?;
    Ok(info)
}

fn kubernetes(env: &HashMap<String, String>) -> Result<WorldInfo, DistError> {
    let rank = required(env, "JOB_COMPLETION_INDEX")?;
    let world_size = required(env, "CLIPFLEET_NNODES")?;
    if let Some(nproc) = optional(env, "CLIPFLEET_NPROC_PER_NODE")? {
        if nproc != 1 {
            return Err(DistError::Env {
                var: "CLIPFLEET_NPROC_PER_NODE".into(),
                reason: format!(
                    "is {nproc}: several workers per pod need `clipfleet launch` as the pod's command, \
                     which sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE for them"
                ),
            });
        }
    }
    let master_addr = kubernetes_master_addr(env, rank)?;
    let mut info = WorldInfo {
        rank,
        local_rank: 0,
        world_size,
        local_world_size: 1,
        master_addr,
        master_port: DEFAULT_MASTER_PORT,
        mode: LaunchMode::Kubernetes,
    };
    master_override(env, &mut info)?;
    Ok(info)
}

/// The master of a Kubernetes Indexed Job, seen from the pod with completion index `index`:
/// `CLIPFLEET_MASTER_ADDR`, or else `<job>-0.<CLIPFLEET_SERVICE>`, where `<job>` is
/// `CLIPFLEET_JOB_NAME` or `HOSTNAME` without its `-<index>` suffix. `MASTER_ADDR` is not
/// consulted here (callers apply it on top). Used by the workers (rule 5) and by `clipfleet launch`.
pub fn kubernetes_master_addr(env: &HashMap<String, String>, index: usize) -> Result<String, DistError> {
    if let Some(addr) = env.get("CLIPFLEET_MASTER_ADDR") {
        return Ok(addr.clone());
    }
    let service = required_str(env, "CLIPFLEET_SERVICE")?;
    let job = match env.get("CLIPFLEET_JOB_NAME") {
        Some(job) => job.clone(),
        None => {
            let host = env.get("HOSTNAME").ok_or_else(|| missing("CLIPFLEET_JOB_NAME"))?;
            let suffix = format!("-{index}");
            host.strip_suffix(&suffix).map(str::to_owned).ok_or_else(|| DistError::Env {
                var: "HOSTNAME".into(),
                reason: format!("{host:?} does not end in {suffix:?}; set CLIPFLEET_JOB_NAME"),
            })?
        }
    };
    Ok(format!("{job}-0.{service}"))
}

/// `MASTER_PORT` from an environment map: `None` when unset, an error naming the variable when it
/// is not a port number (1-65535).
pub fn master_port(env: &HashMap<String, String>) -> Result<Option<u16>, DistError> {
    port(env)
}

/// `MASTER_ADDR` / `MASTER_PORT`, when set, win over the derived master.
fn master_override(env: &HashMap<String, String>, info: &mut WorldInfo) -> Result<(), DistError> {
    if let Some(addr) = env.get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) {
        info.master_addr = addr.trim().to_owned();
    }
    if let Some(p) = port(env)? {
        info.master_port = p;
    }
    Ok(())
}

fn missing(var: &str) -> DistError {
    DistError::Env { var: var.into(), reason: "is not set".into() }
}

fn required_str(env: &HashMap<String, String>, var: &str) -> Result<String, DistError> {
    match env.get(var).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(missing(var)),
    }
}

fn optional(env: &HashMap<String, String>, var: &str) -> Result<Option<usize>, DistError> {
    env.get(var)
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| DistError::Env { var: var.into(), reason: format!("{v:?} is not a non-negative integer") })
        })
        .transpose()
}

fn required(env: &HashMap<String, String>, var: &str) -> Result<usize, DistError> {
    optional(env, var)?.ok_or_else(|| missing(var))
}

fn port(env: &HashMap<String, String>) -> Result<Option<u16>, DistError> {
    env.get("MASTER_PORT")
        .map(|v| {
            v.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| DistError::Env {
                var: "MASTER_PORT".into(),
                reason: format!("{v:?} is not a port number (1-65535)"),
            })
        })
        .transpose()
}

/// Slurm's per-node task counts look like `4`, `4(x2)` or `2(x3),1`; the first count is this
/// job's count on its first node, which equals every node's when the layout is uniform.
fn first_count(env: &HashMap<String, String>, var: &str) -> Result<Option<usize>, DistError> {
    let Some(v) = env.get(var) else { return Ok(None) };
    let digits: String = v.trim().chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse::<usize>()
        .map(Some)
        .map_err(|_| DistError::Env { var: var.into(), reason: format!("{v:?} does not start with a task count") })
}

/// The first host of a Slurm node list in its compressed form: `node[001-004,007],gpu5` →
/// `node001`; `a1,a2` → `a1`; `rack[1-2]-n[3-4]` → `rack1-n3`. Zero padding is kept.
pub fn first_host(nodelist: &str) -> Result<String, String> {
    let list = nodelist.trim();
    if list.is_empty() {
        return Err("is empty".into());
    }
    // The first entry ends at the first comma outside brackets.
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or_else(|| format!("{list:?} has an unmatched `]`"))?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let entry = &list[..end];
    // Replace every bracket group by its first value.
    let mut host = String::new();
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..].find(']').ok_or_else(|| format!("{list:?} has an unmatched `[`"))? + open;
        let group = &rest[open + 1..close];
        let first = group.split(',').next().unwrap_or("");
        let first = first.split('-').next().unwrap_or("").trim();
        if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("{list:?}: range `[{group}]` does not start with a number"));
        }
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    host.push_str(rest);
    if host.is_empty() {
        return Err(format!("{list:?} names no host"));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn err_var(e: DistError) -> String {
        match e {
            DistError::Env { var, .. } => var,
            other => panic!("expected an Env error, got {other}"),
        }
    }

    #[test]
    fn empty_environment_is_single_process() {
        assert_eq!(detect(&env(&[])).unwrap(), WorldInfo::single());
    }

    #[test]
    fn torchrun_names_are_read() {
        let e = env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
            // Lower precedence: ignored.
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("SLURM_PROCID", "3"),
        ]);
        let w = detect(&e).unwrap();
        assert_eq!(
            w,
            WorldInfo {
                rank: 5,
                local_rank: 1,
                world_size: 8,
                local_world_size: 4,
                master_addr: "10.0.0.1".into(),
                master_port: 1234,
                mode: LaunchMode::Torchrun
            }
        );
    }

    #[test]
    fn torchrun_errors_name_the_variable() {
        assert_eq!(err_var(detect(&env(&[("RANK", "1")])).unwrap_err()), "WORLD_SIZE");
        assert_eq!(err_var(detect(&env(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err()), "RANK");
        assert_eq!(err_var(detect(&env(&[("RANK", "1"), ("WORLD_SIZE", "2")])).unwrap_err()), "MASTER_ADDR");
        let e = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        assert_eq!(err_var(detect(&e).unwrap_err()), "MASTER_PORT");
        let e = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")]);
        let msg = detect(&e).unwrap_err().to_string();
        assert!(msg.contains("MASTER_PORT") && msg.contains("99999"), "{msg}");
        let e = env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
        assert!(detect(&e).unwrap_err().to_string().contains("not below world size"));
    }

    #[test]
    fn torchrun_single_rank_needs_no_master() {
        let w = detect(&env(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.local_world_size), (0, 1, 0, 1));
        assert_eq!((w.master_addr.as_str(), w.master_port), ("127.0.0.1", DEFAULT_MASTER_PORT));
    }

    #[test]
    fn open_mpi_names_are_read() {
        let e = env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_ID", "0"),
        ]);
        let w = detect(&e).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.local_world_size, w.mode), (3, 4, 1, 2, LaunchMode::Mpi));
        let e = env(&[("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "4")]);
        assert_eq!(err_var(detect(&e).unwrap_err()), "OMPI_COMM_WORLD_LOCAL_RANK");
    }

    fn slurm_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SLURM_PROCID", "6"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_NTASKS_PER_NODE", "4"),
            ("SLURM_JOB_NODELIST", "gpu[017-018]"),
        ]
    }

    #[test]
    fn slurm_rank_and_master_from_the_nodelist() {
        let w = detect(&env(&slurm_env())).unwrap();
        assert_eq!(
            w,
            WorldInfo {
                rank: 6,
                local_rank: 2,
                world_size: 8,
                local_world_size: 4,
                master_addr: "gpu017".into(),
                master_port: DEFAULT_MASTER_PORT,
                mode: LaunchMode::Slurm
            }
        );
        let mut e = slurm_env();
        e.push(("MASTER_PORT", "4000"));
        e.push(("MASTER_ADDR", "login1"));
        let w = detect(&env(&e)).unwrap();
        assert_eq!((w.master_addr.as_str(), w.master_port), ("login1", 4000));
    }

    #[test]
    fn slurm_tasks_per_node_forms() {
        let mut e = slurm_env();
        e.retain(|(k, _)| *k != "SLURM_NTASKS_PER_NODE");
        e.push(("SLURM_TASKS_PER_NODE", "4(x2)"));
        assert_eq!(detect(&env(&e)).unwrap().local_world_size, 4);
        let mut e = slurm_env();
        e.retain(|(k, _)| *k != "SLURM_NTASKS_PER_NODE");
        e.push(("SLURM_TASKS_PER_NODE", "x"));
        assert_eq!(err_var(detect(&env(&e)).unwrap_err()), "SLURM_TASKS_PER_NODE");
    }

    #[test]
    fn slurm_errors_name_the_variable() {
        let mut e = slurm_env();
        e.retain(|(k, _)| *k != "SLURM_NTASKS");
        assert_eq!(err_var(detect(&env(&e)).unwrap_err()), "SLURM_NPROCS");
        let mut e = slurm_env();
        e.retain(|(k, _)| *k != "SLURM_JOB_NODELIST");
        assert_eq!(err_var(detect(&env(&e)).unwrap_err()), "SLURM_JOB_NODELIST");
        let mut e = slurm_env();
        e.retain(|(k, _)| *k != "SLURM_JOB_NODELIST");
        e.push(("SLURM_JOB_NODELIST", "node[a-b]"));
        assert_eq!(err_var(detect(&env(&e)).unwrap_err()), "SLURM_JOB_NODELIST");
    }

    #[test]
    fn slurm_batch_script_outside_a_step_is_single() {
        let mut e = slurm_env();
        e.retain(|(k, _)| *k != "SLURM_STEP_ID");
        assert_eq!(detect(&env(&e)).unwrap().mode, LaunchMode::Single);
    }

    #[test]
    fn pmix_under_slurm_is_mpi() {
        let mut e = slurm_env();
        e.push(("PMIX_RANK", "6"));
        let w = detect(&env(&e)).unwrap();
        assert_eq!((w.rank, w.world_size, w.mode, w.master_addr.as_str()), (6, 8, LaunchMode::Mpi, "gpu017"));
        assert_eq!(err_var(detect(&env(&[("PMIX_RANK", "0")])).unwrap_err()), "PMIX_RANK");
    }

    /// What Kubeflow's training operator sets in a PyTorchJob pod (pkg/controller.v1/pytorch/
    /// envvar.go): RANK is the pod index and WORLD_SIZE counts pods × nprocPerNode; no LOCAL_RANK.
    #[test]
    fn kubeflow_pytorchjob_and_trainjob_pods() {
        let worker1 = env(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "3"),
            ("MASTER_ADDR", "tj-master-0"),
            ("MASTER_PORT", "23456"),
            ("PET_NPROC_PER_NODE", "1"),
            ("PET_NNODES", "3"),
            ("PET_NODE_RANK", "2"),
        ]);
        let w = detect(&worker1).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.local_world_size), (2, 3, 0, 1));
        assert_eq!((w.master_addr.as_str(), w.master_port, w.mode), ("tj-master-0", 23456, LaunchMode::Kubeflow));
        // Trainer v2's TrainJob: only the PET_* names.
        let trainjob = env(&[
            ("PET_NNODES", "2"),
            ("PET_NPROC_PER_NODE", "1"),
            ("PET_NODE_RANK", "1"),
            ("PET_MASTER_ADDR", "job-node-0-0.job"),
            ("PET_MASTER_PORT", "29400"),
        ]);
        let w = detect(&trainjob).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (1, 2, 0));
        assert_eq!((w.master_addr.as_str(), w.master_port), ("job-node-0-0.job", 29400));
        // Several workers per pod need the launcher; a non-number names the variable.
        let eight = env(&[("PET_NPROC_PER_NODE", "8"), ("PET_NNODES", "2"), ("RANK", "1"), ("MASTER_ADDR", "m")]);
        let e = detect(&eight).unwrap_err();
        assert!(e.to_string().contains("clipfleet launch"), "{e}");
        assert_eq!(
            err_var(detect(&env(&[("PET_NPROC_PER_NODE", "auto"), ("PET_NNODES", "2")])).unwrap_err()),
            "PET_NPROC_PER_NODE"
        );
        assert_eq!(err_var(detect(&env(&[("PET_NNODES", "2"), ("PET_NODE_RANK", "1")])).unwrap_err()), "MASTER_ADDR");
        // Workers that clipfleet launch started in such a pod carry LOCAL_RANK: torchrun names.
        let mut launched = eight.clone();
        launched.extend(env(&[
            ("RANK", "9"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("MASTER_PORT", "1"),
        ]));
        let w = detect(&launched).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.mode), (9, 16, 1, LaunchMode::Torchrun));
    }

    #[test]
    fn kubernetes_indexed_job() {
        let e = env(&[
            ("JOB_COMPLETION_INDEX", "2"),
            ("CLIPFLEET_NNODES", "4"),
            ("CLIPFLEET_SERVICE", "clip-workers"),
            ("HOSTNAME", "clip-train-2"),
        ]);
        let w = detect(&e).unwrap();
        assert_eq!(
            w,
            WorldInfo {
                rank: 2,
                local_rank: 0,
                world_size: 4,
                local_world_size: 1,
                master_addr: "clip-train-0.clip-workers".into(),
                master_port: DEFAULT_MASTER_PORT,
                mode: LaunchMode::Kubernetes
            }
        );
        let mut e2 = e.clone();
        e2.insert("CLIPFLEET_JOB_NAME".into(), "other".into());
        assert_eq!(detect(&e2).unwrap().master_addr, "other-0.clip-workers");
        let mut e3 = e.clone();
        e3.insert("CLIPFLEET_MASTER_ADDR".into(), "10.1.2.3".into());
        assert_eq!(detect(&e3).unwrap().master_addr, "10.1.2.3");
    }

    #[test]
    fn kubernetes_errors_name_the_variable() {
        let base = [("JOB_COMPLETION_INDEX", "1"), ("CLIPFLEET_NNODES", "2"), ("CLIPFLEET_SERVICE", "svc")];
        let mut e = env(&base);
        e.insert("HOSTNAME".into(), "weird".into());
        assert_eq!(err_var(detect(&e).unwrap_err()), "HOSTNAME");
        let e = env(&base);
        assert_eq!(err_var(detect(&e).unwrap_err()), "CLIPFLEET_JOB_NAME");
        let e = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(err_var(detect(&e).unwrap_err()), "CLIPFLEET_NNODES");
        let mut e = env(&base);
        e.insert("CLIPFLEET_NPROC_PER_NODE".into(), "4".into());
        let msg = detect(&e).unwrap_err().to_string();
        assert!(msg.contains("CLIPFLEET_NPROC_PER_NODE") && msg.contains("clipfleet launch"), "{msg}");
    }

    #[test]
    fn first_host_expands_slurm_lists() {
        assert_eq!(first_host("node[001-004,007]").unwrap(), "node001");
        assert_eq!(first_host("node[007,001-004]").unwrap(), "node007");
        assert_eq!(first_host("a1,a2").unwrap(), "a1");
        assert_eq!(first_host("gpu5").unwrap(), "gpu5");
        assert_eq!(first_host(" rack[1-2]-n[03-04],x[1] ").unwrap(), "rack1-n03");
        assert_eq!(first_host("login.cluster[2-3].org").unwrap(), "login.cluster2.org");
        assert!(first_host("").is_err());
        assert!(first_host("node[1-2").is_err());
        assert!(first_host("node1-2]").is_err());
        assert!(first_host("node[]").is_err());
    }
}
