//! Committing a run's state: the checkpoint (written by rank 0, with every rank's shard
//! cursors merged into it) and atomically written JSON files of the run folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clipfleet_dataloader::loader::LoaderState;

use crate::checkpoint::{CheckpointDir, CheckpointState};
use crate::config::TrainConfig;
use crate::dist::ProcessGroup;
use crate::error::{Result, TrainError};
use crate::metrics::Metrics;
use crate::run::Learner;
use crate::step::all_gather_bytes;

/// Writes `value` as pretty JSON to `path` through a temporary file and a rename.
pub(super) fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|source| TrainError::Json { what: format!("writing {}", path.display()), source })?;
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

/// Appends `value` as one JSON line to `path` (created if missing), in one write, as
/// OpenCLIP's `results.jsonl` holds one line per evaluation.
pub(super) fn append_json_line(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let mut line = serde_json::to_vec(value)
        .map_err(|source| TrainError::Json { what: format!("writing {}", path.display()), source })?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(&line))
        .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

/// The whole job's shard position: every rank holds the cursors of its own partitions; rank
/// 0 gets them all, merged (`None` elsewhere, and for synthetic data).
pub(super) fn merge_shard_states(
    group: &dyn ProcessGroup,
    local: Option<&LoaderState>,
    device: tch::Device,
) -> Result<Option<LoaderState>> {
    let Some(local) = local else { return Ok(None) };
    if group.world_size() == 1 {
        return Ok(Some(local.clone()));
    }
    let json = |source| TrainError::Json { what: "exchanging the shard loader's position".into(), source };
    let bytes = serde_json::to_vec(local).map_err(json)?;
    let all = all_gather_bytes(group, &bytes, device)?;
    if group.rank() != 0 {
        return Ok(None);
    }
    let states =
        all.iter().map(|b| serde_json::from_slice::<LoaderState>(b).map_err(json)).collect::<Result<Vec<_>>>()?;
    Ok(Some(LoaderState::merge(&states)?))
}

/// Writes and commits a checkpoint on rank 0 (the parameters and optimizer state are the same
/// on every rank), logs how long it took, and holds every rank until it is committed.
pub(super) fn commit_checkpoint(
    cfg: &TrainConfig,
    checkpoints: &CheckpointDir,
    group: &dyn ProcessGroup,
    learner: &Learner<'_>,
    state: &CheckpointState,
    metrics: &Metrics,
) -> Result<PathBuf> {
    let t = Instant::now();
    let dir = if group.rank() == 0 {
        let scratch = super::start::scratch_dir(cfg);
        let at = checkpoints.save(&scratch, learner.model(), learner.optimizer(), state, cfg.keep_checkpoints)?;
        let seconds = t.elapsed().as_secs_f64();
        metrics.observe_checkpoint(seconds);
        tracing::info!(step = state.step, path = %at, seconds = format_args!("{seconds:.2}"), "checkpoint");
        at
    } else {
        checkpoints.step_location(state.step)
    };
    group.barrier()?;
    Ok(PathBuf::from(dir))
}
