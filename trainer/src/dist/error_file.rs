//! Worker error files: how a failed worker tells `clipfleet launch` why it failed.
//!
//! The launcher gives every worker of an attempt the same folder in `CLIPFLEET_ERROR_DIR`. A
//! worker that fails writes `rank-<R>.json` there (atomically: a temporary file, then a
//! rename) with its rank, its error and the time. When an attempt fails, the launcher reports
//! the earliest of these files: the root cause, not the peers that failed because of it (under
//! `mpirun`, one rank's `MPI_Abort` ends all the others; mpirun's own report of which rank
//! called it is not always printed). torchrun's `TORCHELASTIC_ERROR_FILE` plays the same part.
//!
//! ```no_run
//! use clipfleet_trainer::dist::error_file;
//! error_file::record(1, "data pipeline: no shards match s3://bucket/train-*.tar");
//! // In the launcher, after the attempt failed:
//! let first = error_file::first_in(std::path::Path::new("/tmp/clipfleet-launch-42/attempt-0"));
//! ```

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The variable that names the folder for the error files.
pub const ERROR_DIR_VAR: &str = "CLIPFLEET_ERROR_DIR";

/// What a failed worker wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerError {
    /// The failed worker's global rank.
    pub rank: usize,
    /// The error, with its causes joined by `": "`.
    pub message: String,
    /// When the worker failed, in nanoseconds since the Unix epoch.
    pub unix_time_ns: u128,
}

/// Writes this worker's error file when `CLIPFLEET_ERROR_DIR` is set (under `clipfleet launch`);
/// does nothing otherwise. A file that cannot be written is logged, never a second failure.
pub fn record(rank: usize, message: &str) {
    let Some(dir) = std::env::var_os(ERROR_DIR_VAR).filter(|d| !d.is_empty()) else {
        return;
    };
    let error = WorkerError {
        rank,
        message: message.to_owned(),
        unix_time_ns: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    };
    if let Err(e) = write(Path::new(&dir), &error) {
        tracing::warn!("cannot write the error file for rank {rank} in {}: {e}", Path::new(&dir).display());
    }
}

/// Writes `error` as `dir/rank-<R>.json`, replacing an earlier one atomically.
pub fn write(dir: &Path, error: &WorkerError) -> std::io::Result<()> {
    let path = dir.join(format!("rank-{}.json", error.rank));
    let tmp = dir.join(format!(".rank-{}.json.{}.tmp", error.rank, std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(error)?)?;
    std::fs::rename(&tmp, &path)
}

/// The earliest error in `dir` (ties go to the lower rank); `None` when there is none. Files
/// that are not error files, or that cannot be read, are skipped.
pub fn first_in(dir: &Path) -> Option<WorkerError> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            if !(name.starts_with("rank-") && name.ends_with(".json")) {
                return None;
            }
            serde_json::from_slice::<WorkerError>(&std::fs::read(&path).ok()?).ok()
        })
        .min_by_key(|e| (e.unix_time_ns, e.rank))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(rank: usize, message: &str, unix_time_ns: u128) -> WorkerError {
        WorkerError { rank, message: message.into(), unix_time_ns }
    }

    #[test]
    fn the_earliest_error_is_the_root_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(first_in(dir.path()), None);
        write(dir.path(), &error(0, "NCCL: remote process exited", 300)).expect("write");
        write(dir.path(), &error(3, "out of memory", 100)).expect("write");
        write(dir.path(), &error(2, "out of memory", 100)).expect("write");
        std::fs::write(dir.path().join("rank-9.json"), b"{ half").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        assert_eq!(first_in(dir.path()), Some(error(2, "out of memory", 100)));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_missing_folder_has_no_error() {
        assert_eq!(first_in(Path::new("/nonexistent/clipfleet-errors")), None);
    }
}
