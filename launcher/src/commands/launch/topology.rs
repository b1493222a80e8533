//! Where this node sits in the job: how many nodes, which one this is, how many workers it
//! starts and where the rendezvous is. Explicit flags win over everything; then `MASTER_ADDR` /
//! `MASTER_PORT`; then what Slurm, a Kubernetes Indexed Job or a Kubeflow pod (`PET_*`) tells;
//! then one node on loopback.

use std::collections::HashMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use clipfleet_trainer::dist::env::{
    first_host, kubernetes_master_addr, master_port, pet_master_port, DEFAULT_MASTER_PORT,
};

/// The placement flags as given on the command line (`None`: not given).
#[derive(Debug, Clone, Default)]
pub(crate) struct PlacementFlags {
    pub(crate) nproc_per_node: Option<u32>,
    pub(crate) nnodes: Option<u32>,
    pub(crate) node_rank: Option<u32>,
    pub(crate) master_addr: Option<String>,
    pub(crate) master_port: Option<u16>,
}

/// Where the node count and node rank came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// `--nnodes` and `--node-rank`.
    Flags,
    /// `SLURM_NNODES` and `SLURM_NODEID`.
    Slurm,
    /// `CLIPFLEET_NNODES` and `JOB_COMPLETION_INDEX`.
    Kubernetes,
    /// Kubeflow's `PET_NNODES` and `PET_NODE_RANK` (or `RANK`, the pod index).
    Kubeflow,
    /// Nothing: the only node.
    OneNode,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Flags => "flags",
            Source::Slurm => "slurm",
            Source::Kubernetes => "kubernetes",
            Source::Kubeflow => "kubeflow",
            Source::OneNode => "one node",
        })
    }
}

/// This node's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topology {
    /// Workers started on this node.
    pub(crate) nproc_per_node: usize,
    /// Nodes in the job.
    pub(crate) nnodes: usize,
    /// This node's index, `0..nnodes`.
    pub(crate) node_rank: usize,
    /// Host of rank 0's rendezvous.
    pub(crate) master_addr: String,
    /// Port of rank 0's rendezvous.
    pub(crate) master_port: u16,
    /// Where `nnodes` and `node_rank` came from.
    pub(crate) source: Source,
}

impl Topology {
    /// Workers in the whole job.
    pub(crate) fn world_size(&self) -> usize {
        self.nnodes * self.nproc_per_node
    }

    /// The global rank of this node's worker `local_rank`.
    pub(crate) fn rank(&self, local_rank: usize) -> usize {
        self.node_rank * self.nproc_per_node + local_rank
    }
}

/// What the environment says about the node's place.
struct Derived {
    nnodes: usize,
    node_rank: usize,
    master_addr: Option<String>,
    source: Source,
}

/// Resolves the topology from the flags and an environment map; `cuda_devices` is asked only
/// when neither `--nproc-per-node` nor `CLIPFLEET_NPROC_PER_NODE` is given.
pub(crate) fn resolve(
    flags: &PlacementFlags,
    env: &HashMap<String, String>,
    cuda_devices: impl FnOnce() -> usize,
) -> Result<Topology> {
    // Kubeflow's PET_NPROC_PER_NODE may also be `auto`, `cpu` or `gpu`: only a number counts.
    let pet_nproc = env.get("PET_NPROC_PER_NODE").and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0);
    let nproc_per_node = match (flags.nproc_per_node, env_count(env, "CLIPFLEET_NPROC_PER_NODE")?) {
        (Some(n), _) => n as usize,
        (None, Some(0)) => bail!("environment variable CLIPFLEET_NPROC_PER_NODE: must be at least 1"),
        (None, Some(n)) => n,
        (None, None) => pet_nproc.unwrap_or_else(|| cuda_devices().max(1)),
    };
    let derived = from_environment(env)?;
    let source = if flags.nnodes.is_some() && flags.node_rank.is_some() { Source::Flags } else { derived.source };
    let nnodes = flags.nnodes.map_or(derived.nnodes, |n| n as usize);
    let node_rank = match flags.node_rank {
        Some(r) => r as usize,
        None if nnodes > 1 && derived.source == Source::OneNode => {
            bail!("--nnodes {nnodes} needs --node-rank (or the Slurm or Kubernetes variables that give it)")
        }
        None => derived.node_rank,
    };
    if node_rank >= nnodes {
        bail!("node rank {node_rank} is not below the node count {nnodes} (node rank and count from {source})");
    }
    let env_master = env.get("MASTER_ADDR").map(|a| a.trim()).filter(|a| !a.is_empty()).map(str::to_owned);
    let master_addr =
        flags.master_addr.clone().or(env_master).or(derived.master_addr).unwrap_or_else(|| "127.0.0.1".to_owned());
    let master_port = match flags.master_port {
        Some(p) => p,
        None => match master_port(env)? {
            Some(p) => p,
            None => pet_master_port(env)?.unwrap_or(DEFAULT_MASTER_PORT),
        },
    };
    Ok(Topology { nproc_per_node, nnodes, node_rank, master_addr, master_port, source })
}

fn from_environment(env: &HashMap<String, String>) -> Result<Derived> {
    let has = |k: &str| env.get(k).is_some_and(|v| !v.trim().is_empty());
    if has("SLURM_JOB_ID") && has("SLURM_NNODES") {
        let nnodes = required_count(env, "SLURM_NNODES")?;
        let node_rank = required_count(env, "SLURM_NODEID")?;
        let master_addr = if nnodes > 1 {
            let (var, list) = match env.get("SLURM_JOB_NODELIST") {
                Some(list) => ("SLURM_JOB_NODELIST", list),
                None => (
                    "SLURM_NODELIST",
                    env.get("SLURM_NODELIST").context("environment variable SLURM_JOB_NODELIST: is not set")?,
                ),
            };
            if !has("SLURM_STEP_ID") && !has("SLURM_STEPID") {
                tracing::warn!(
                    "SLURM_NNODES is {nnodes}, but this is the batch script, not a job step: only this node starts \
                     workers; run `srun --ntasks-per-node=1 clipfleet launch …` to start one launcher per node"
                );
            }
            Some(first_host(list).map_err(|reason| anyhow::anyhow!("environment variable {var}: {reason}"))?)
        } else {
            None
        };
        return Ok(Derived { nnodes, node_rank, master_addr, source: Source::Slurm });
    }
    if has("JOB_COMPLETION_INDEX") {
        let node_rank = required_count(env, "JOB_COMPLETION_INDEX")?;
        let nnodes = required_count(env, "CLIPFLEET_NNODES")?;
        let master_addr = if nnodes > 1 { Some(kubernetes_master_addr(env, node_rank)?) } else { None };
        return Ok(Derived { nnodes, node_rank, master_addr, source: Source::Kubernetes });
    }
    if has("PET_NNODES") {
        // Kubeflow: a PyTorchJob sets RANK to the pod index (and PET_NODE_RANK); a TrainJob
        // only the PET_* names. The master is MASTER_ADDR (applied by the caller) or PET_MASTER_ADDR.
        let nnodes = required_count(env, "PET_NNODES")?;
        let node_rank = match env_count(env, "PET_NODE_RANK")? {
            Some(r) => r,
            None => required_count(env, "RANK").context("Kubeflow sets PET_NODE_RANK or RANK")?,
        };
        let master_addr = env.get("PET_MASTER_ADDR").map(|a| a.trim().to_owned()).filter(|a| !a.is_empty());
        return Ok(Derived { nnodes, node_rank, master_addr, source: Source::Kubeflow });
    }
    Ok(Derived { nnodes: 1, node_rank: 0, master_addr: None, source: Source::OneNode })
}

fn env_count(env: &HashMap<String, String>, var: &str) -> Result<Option<usize>> {
    env.get(var)
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("environment variable {var}: {v:?} is not a non-negative integer"))
        })
        .transpose()
}

fn required_count(env: &HashMap<String, String>, var: &str) -> Result<usize> {
    env_count(env, var)?.with_context(|| format!("environment variable {var}: is not set"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn no_gpu() -> usize {
        0
    }

    /// A Kubeflow PyTorchJob pod (RANK is the pod index) and a TrainJob pod (PET_* only).
    #[test]
    fn kubeflow_pods_give_the_node_count_rank_and_master() {
        let pytorchjob = env(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "16"),
            ("MASTER_ADDR", "pj-master-0"),
            ("MASTER_PORT", "23456"),
            ("PET_NPROC_PER_NODE", "8"),
            ("PET_NNODES", "2"),
            ("PET_NODE_RANK", "1"),
        ]);
        let t = resolve(&PlacementFlags::default(), &pytorchjob, no_gpu).unwrap();
        assert_eq!((t.nnodes, t.node_rank, t.nproc_per_node, t.source), (2, 1, 8, Source::Kubeflow));
        assert_eq!((t.master_addr.as_str(), t.master_port, t.rank(3)), ("pj-master-0", 23456, 11));
        let trainjob = env(&[
            ("PET_NPROC_PER_NODE", "auto"),
            ("PET_NNODES", "4"),
            ("PET_NODE_RANK", "3"),
            ("PET_MASTER_ADDR", "tj-node-0-0.tj"),
            ("PET_MASTER_PORT", "29400"),
        ]);
        let t = resolve(&PlacementFlags::default(), &trainjob, || 4).unwrap();
        assert_eq!((t.nnodes, t.node_rank, t.nproc_per_node), (4, 3, 4), "`auto`: one worker per GPU");
        assert_eq!((t.master_addr.as_str(), t.master_port), ("tj-node-0-0.tj", 29400));
    }

    #[test]
    fn nothing_set_is_one_node_with_one_worker_per_gpu() {
        let t = resolve(&PlacementFlags::default(), &env(&[]), no_gpu).unwrap();
        assert_eq!(
            t,
            Topology {
                nproc_per_node: 1,
                nnodes: 1,
                node_rank: 0,
                master_addr: "127.0.0.1".into(),
                master_port: DEFAULT_MASTER_PORT,
                source: Source::OneNode
            }
        );
        assert_eq!(resolve(&PlacementFlags::default(), &env(&[]), || 8).unwrap().nproc_per_node, 8);
        let e = env(&[("CLIPFLEET_NPROC_PER_NODE", "3")]);
        assert_eq!(resolve(&PlacementFlags::default(), &e, || 8).unwrap().nproc_per_node, 3);
        let e = env(&[("CLIPFLEET_NPROC_PER_NODE", "x")]);
        let msg = resolve(&PlacementFlags::default(), &e, no_gpu).unwrap_err().to_string();
        assert!(msg.contains("CLIPFLEET_NPROC_PER_NODE"), "{msg}");
    }

    fn slurm() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SLURM_JOB_ID", "77"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_NNODES", "4"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[017-020]"),
        ]
    }

    #[test]
    fn slurm_gives_nodes_rank_and_master() {
        let t = resolve(&PlacementFlags::default(), &env(&slurm()), || 8).unwrap();
        assert_eq!((t.nnodes, t.node_rank, t.nproc_per_node, t.source), (4, 2, 8, Source::Slurm));
        assert_eq!((t.master_addr.as_str(), t.master_port), ("gpu017", DEFAULT_MASTER_PORT));
        assert_eq!((t.world_size(), t.rank(3)), (32, 19));
        let mut e = slurm();
        e.retain(|(k, _)| *k != "SLURM_NODEID");
        let msg = resolve(&PlacementFlags::default(), &env(&e), no_gpu).unwrap_err().to_string();
        assert!(msg.contains("SLURM_NODEID"), "{msg}");
    }

    #[test]
    fn master_env_overrides_derived_and_flags_override_all() {
        let mut e = slurm();
        e.push(("MASTER_ADDR", "login1"));
        e.push(("MASTER_PORT", "4000"));
        let t = resolve(&PlacementFlags::default(), &env(&e), no_gpu).unwrap();
        assert_eq!((t.master_addr.as_str(), t.master_port), ("login1", 4000));
        let flags = PlacementFlags {
            nproc_per_node: Some(2),
            nnodes: Some(3),
            node_rank: Some(0),
            master_addr: Some("10.0.0.9".into()),
            master_port: Some(5000),
        };
        let t = resolve(&flags, &env(&e), || 8).unwrap();
        assert_eq!(
            t,
            Topology {
                nproc_per_node: 2,
                nnodes: 3,
                node_rank: 0,
                master_addr: "10.0.0.9".into(),
                master_port: 5000,
                source: Source::Flags
            }
        );
        let bad = env(&[("MASTER_PORT", "70000")]);
        let msg = resolve(&PlacementFlags::default(), &bad, no_gpu).unwrap_err().to_string();
        assert!(msg.contains("MASTER_PORT"), "{msg}");
    }

    #[test]
    fn kubernetes_indexed_job() {
        let e = env(&[
            ("JOB_COMPLETION_INDEX", "1"),
            ("CLIPFLEET_NNODES", "2"),
            ("CLIPFLEET_SERVICE", "workers"),
            ("HOSTNAME", "clip-train-1"),
            ("CLIPFLEET_NPROC_PER_NODE", "4"),
        ]);
        let t = resolve(&PlacementFlags::default(), &e, no_gpu).unwrap();
        assert_eq!((t.nnodes, t.node_rank, t.nproc_per_node, t.source), (2, 1, 4, Source::Kubernetes));
        assert_eq!(t.master_addr, "clip-train-0.workers");
        let e = env(&[("JOB_COMPLETION_INDEX", "1")]);
        let msg = resolve(&PlacementFlags::default(), &e, no_gpu).unwrap_err().to_string();
        assert!(msg.contains("CLIPFLEET_NNODES"), "{msg}");
    }

    #[test]
    fn inconsistent_placement_is_refused() {
        let flags = PlacementFlags { nnodes: Some(2), ..Default::default() };
        let msg = resolve(&flags, &env(&[]), no_gpu).unwrap_err().to_string();
        assert!(msg.contains("--node-rank"), "{msg}");
        let flags = PlacementFlags { nnodes: Some(2), node_rank: Some(2), ..Default::default() };
        let msg = resolve(&flags, &env(&[]), no_gpu).unwrap_err().to_string();
        assert!(msg.contains("not below the node count 2"), "{msg}");
        // A node count from the flags, the node rank from Slurm.
        let flags = PlacementFlags { nnodes: Some(8), ..Default::default() };
        let t = resolve(&flags, &env(&slurm()), no_gpu).unwrap();
        assert_eq!((t.nnodes, t.node_rank, t.source), (8, 2, Source::Slurm));
    }
}
