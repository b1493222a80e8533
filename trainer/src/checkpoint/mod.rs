//! Crash-consistent checkpoints (DESIGN §6).
//!
//! Layout of a run folder:
//! ```text
//! OUTPUT/checkpoints/step_N/model.safetensors      weights, OpenCLIP keys, float32
//! OUTPUT/checkpoints/step_N/optimizer.safetensors  AdamW moments and step
//! OUTPUT/checkpoints/step_N/state.json             step, data position, RNG, configs, version
//! OUTPUT/checkpoints/step_N/manifest.json          sha256 and size of each file above
//! OUTPUT/checkpoints/latest                        "step_N", replaced atomically
//! ```
//! Commit protocol: everything is written under `step_N.tmp/` and fsynced, the manifest
//! last; the folder is renamed to `step_N/` and the parent fsynced; then `latest` is
//! replaced through a fsynced temporary file and a rename. A crash at any point leaves the
//! previous checkpoint intact and `latest` pointing at a complete one. A folder without a
//! manifest was never committed and is never loaded.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::config::TrainConfig;
use crate::data::DataPosition;
use crate::error::{Result, TrainError};
use crate::model::{Clip, ClipConfig};
use crate::optim::AdamW;

mod store;

pub use store::StoreDir;

/// Current `state.json` format.
pub const FORMAT_VERSION: u32 = 1;
const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
const MANIFEST_FILE: &str = "manifest.json";
const LATEST_FILE: &str = "latest";
/// The files a manifest lists, in the order they are written.
const DATA_FILES: [&str; 3] = [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE];

/// How the random streams are reproduced on resume. All randomness in clipfleet is
/// counter-based: data order and augmentation derive from (seed, epoch, sample index),
/// and libtorch's generator is re-seeded from (seed, step) before every step, so the
/// seed and the step are the complete RNG state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Always `"counter"`.
    pub kind: String,
    /// The run seed.
    pub seed: u64,
    /// The next step to run.
    pub step: i64,
}

/// `state.json`: everything beyond tensors needed to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Optimizer steps completed.
    pub step: i64,
    /// Where the data stream continues.
    pub data: DataPosition,
    /// The shard loader's exact position (runs on `train_data` shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<clipfleet_dataloader::loader::LoaderState>,
    /// The RNG state.
    pub rng: RngState,
    /// The resolved training config.
    pub train_config: TrainConfig,
    /// The model config (OpenCLIP JSON).
    pub model_config: ClipConfig,
    /// Workers that wrote it (absent in checkpoints of older versions: one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// Pairs per optimizer step over all workers: `batch_size × accum_freq × world_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<i64>,
    /// clipfleet version that wrote the checkpoint.
    pub clipfleet_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileEntry {
    sha256: String,
    bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    step: i64,
    files: BTreeMap<String, FileEntry>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

fn fsync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err(path))
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// The folder holding a run's checkpoints.
pub fn checkpoints_dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

fn step_dir_name(step: i64) -> String {
    format!("step_{step}")
}

/// The folder of the checkpoint of optimizer step `step` in the run folder `output`.
pub fn step_dir(output: &Path, step: i64) -> PathBuf {
    checkpoints_dir(output).join(step_dir_name(step))
}

fn parse_step(name: &str) -> Option<i64> {
    name.strip_prefix("step_")?.parse().ok()
}

/// Committed checkpoints (folders with a manifest) under `dir`, oldest first.
pub fn list_committed(dir: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = parse_step(&name) {
            if entry.path().join(MANIFEST_FILE).is_file() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes and commits checkpoint `state.step` under `OUTPUT/checkpoints/`, then prunes to
/// the newest `keep` (0 keeps all). Returns the committed folder.
pub fn save(output: &Path, model: &Clip, optimizer: &AdamW, state: &CheckpointState, keep: usize) -> Result<PathBuf> {
    save_in(&checkpoints_dir(output), model, optimizer, state, keep)
}

/// Writes the checkpoint's files into the folder `dir` (which exists), each fsynced, the
/// manifest last. The `stall-in-checkpoint` fault hits after the weights when `fault` is set.
pub(crate) fn write_files(
    dir: &Path,
    model: &Clip,
    optimizer: &AdamW,
    state: &CheckpointState,
    fault: bool,
) -> Result<()> {
    let model_path = dir.join(MODEL_FILE);
    model.save_safetensors(&model_path)?;
    fsync_file(&model_path)?;
    if fault {
        crate::fault::maybe_inject(crate::fault::FaultPoint::InCheckpoint, state.step);
    }
    let opt_path = dir.join(OPTIMIZER_FILE);
    Tensor::write_safetensors(&optimizer.state_tensors(), &opt_path).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!("cannot write the optimizer state: {e}"),
    })?;
    fsync_file(&opt_path)?;
    let state_json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!("cannot serialise state: {e}"),
    })?;
    write_synced(&dir.join(STATE_FILE), &state_json)?;

    let mut files = BTreeMap::new();
    for name in DATA_FILES {
        let (sha256, bytes) = sha256_file(&dir.join(name))?;
        files.insert(name.to_string(), FileEntry { sha256, bytes });
    }
    let manifest = serde_json::to_vec_pretty(&Manifest { step: state.step, files }).map_err(|e| {
        TrainError::Checkpoint { path: dir.to_path_buf(), reason: format!("cannot serialise manifest: {e}") }
    })?;
    write_synced(&dir.join(MANIFEST_FILE), &manifest)?;
    fsync_dir(dir)
}

/// [`save`] into the checkpoints folder `dir` itself (`checkpoint_dir`).
pub fn save_in(dir: &Path, model: &Clip, optimizer: &AdamW, state: &CheckpointState, keep: usize) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let final_dir = dir.join(step_dir_name(state.step));
    let tmp = dir.join(format!("{}.tmp", step_dir_name(state.step)));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    write_files(&tmp, model, optimizer, state, true)?;
    if final_dir.exists() {
        // A folder for this step from an abandoned run (resumed from an older checkpoint):
        // move it aside first; `latest` still names a complete checkpoint meanwhile, and the
        // moved folder is removed by `prune`.
        let stale = dir.join(format!("{}.replaced.tmp", step_dir_name(state.step)));
        if stale.exists() {
            fs::remove_dir_all(&stale).map_err(io_err(&stale))?;
        }
        fs::rename(&final_dir, &stale).map_err(io_err(&final_dir))?;
    }
    fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
    fsync_dir(dir)?;
    update_latest(dir, state.step)?;
    prune(dir, keep, state.step)?;
    crate::fault::maybe_inject(crate::fault::FaultPoint::AfterCheckpoint, state.step);
    Ok(final_dir)
}

fn update_latest(dir: &Path, step: i64) -> Result<()> {
    let tmp = dir.join(format!("{LATEST_FILE}.tmp"));
    write_synced(&tmp, format!("{}\n", step_dir_name(step)).as_bytes())?;
    let latest = dir.join(LATEST_FILE);
    fs::rename(&tmp, &latest).map_err(io_err(&latest))?;
    fsync_dir(dir)
}

fn prune(dir: &Path, keep: usize, current: i64) -> Result<()> {
    // Uncommitted leftovers of crashed writes are garbage.
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step_") && name.ends_with(".tmp") && name != format!("{}.tmp", step_dir_name(current)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    if keep == 0 {
        return Ok(());
    }
    let committed = list_committed(dir)?;
    let excess = committed.len().saturating_sub(keep);
    for (step, path) in committed.into_iter().take(excess) {
        if step != current {
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Resolves what `--resume` or `--checkpoint` names: a checkpoint folder (`step_N/`), a run
/// folder (its `checkpoints/latest`), or a `checkpoints/` folder. Returns `None` when a run
/// folder has no committed checkpoint yet.
pub fn resolve(path: &Path) -> Result<Option<PathBuf>> {
    if path.join(MANIFEST_FILE).is_file() {
        return Ok(Some(path.to_path_buf()));
    }
    if parse_step(&path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).is_some() {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: if path.exists() {
                "incomplete: it has no manifest.json, so it was never committed".into()
            } else {
                "no such checkpoint folder".into()
            },
        });
    }
    if !path.exists() {
        return Err(TrainError::Checkpoint { path: path.to_path_buf(), reason: "no such folder".into() });
    }
    let dir = if path.join(LATEST_FILE).is_file() { path.to_path_buf() } else { checkpoints_dir(path) };
    newest_in(&dir)
}

/// The checkpoint that `latest` names in the checkpoints folder `dir`, else the newest
/// committed one; `None` when there is none (or no folder).
pub fn newest_in(dir: &Path) -> Result<Option<PathBuf>> {
    let latest = dir.join(LATEST_FILE);
    if let Ok(text) = fs::read_to_string(&latest) {
        let name = text.trim();
        let target = dir.join(name);
        if parse_step(name).is_some() && target.join(MANIFEST_FILE).is_file() {
            return Ok(Some(target));
        }
        tracing::warn!(pointer = %latest.display(), target = name, "`latest` names no committed checkpoint; using the newest committed one");
    }
    Ok(list_committed(dir)?.pop().map(|(_, p)| p))
}

/// Whether `spec` names an object-store location (`scheme://…`) rather than a path.
pub fn is_url(spec: &str) -> bool {
    spec.contains("://") && !spec.starts_with("file://")
}

/// Where a run writes its checkpoints: `checkpoint_dir`, else `OUTPUT/checkpoints/`. A
/// folder, or a prefix on an object store (S3, GCS, Azure) with the same layout and commit
/// protocol.
#[derive(Debug, Clone)]
pub enum CheckpointDir {
    /// A folder on a local or mounted file system.
    Local(PathBuf),
    /// A prefix on an object store.
    Store(StoreDir),
}

impl CheckpointDir {
    /// The checkpoints location of the run configured by `cfg`.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when `checkpoint_dir` is a URL whose store cannot be built.
    pub fn of_run(cfg: &TrainConfig) -> Result<Self> {
        match cfg.checkpoint_dir.as_deref() {
            None => Ok(CheckpointDir::Local(checkpoints_dir(&cfg.output))),
            Some(spec) if is_url(spec) => Ok(CheckpointDir::Store(StoreDir::open(spec)?)),
            Some(spec) => Ok(CheckpointDir::Local(PathBuf::from(spec.strip_prefix("file://").unwrap_or(spec)))),
        }
    }

    /// The folder or URL of checkpoint `step`.
    pub fn step_location(&self, step: i64) -> String {
        match self {
            CheckpointDir::Local(dir) => dir.join(step_dir_name(step)).display().to_string(),
            CheckpointDir::Store(store) => store.step_url(step),
        }
    }

    /// Writes and commits checkpoint `state.step`, then keeps the newest `keep` (0: all).
    /// `scratch` is a local folder for the files on their way to an object store. Returns the
    /// committed folder or URL.
    ///
    /// # Errors
    /// Any failure to write, upload or commit; the previous checkpoint stays loadable.
    pub fn save(
        &self,
        scratch: &Path,
        model: &Clip,
        optimizer: &AdamW,
        state: &CheckpointState,
        keep: usize,
    ) -> Result<String> {
        match self {
            CheckpointDir::Local(dir) => Ok(save_in(dir, model, optimizer, state, keep)?.display().to_string()),
            CheckpointDir::Store(store) => store.save(scratch, model, optimizer, state, keep),
        }
    }

    /// The checkpoint `latest` names, else the newest committed one; `None` when there is none.
    ///
    /// # Errors
    /// A folder or store that cannot be read.
    pub fn newest(&self) -> Result<Option<Found>> {
        match self {
            CheckpointDir::Local(dir) => Ok(newest_in(dir)?.map(Found::Local)),
            CheckpointDir::Store(store) => Ok(store.newest()?.map(|step| Found::Store(store.clone(), step))),
        }
    }
}

/// A committed checkpoint, not yet read.
#[derive(Debug, Clone)]
pub enum Found {
    /// A `step_N/` folder.
    Local(PathBuf),
    /// Step N under an object-store prefix.
    Store(StoreDir, i64),
}

impl Found {
    /// Where it is: the folder or the URL.
    pub fn location(&self) -> String {
        match self {
            Found::Local(dir) => dir.display().to_string(),
            Found::Store(store, step) => store.step_url(*step),
        }
    }

    /// Reads and verifies it. A checkpoint on a store is downloaded into a private temporary
    /// folder under `scratch` (created if missing) first.
    ///
    /// # Errors
    /// As [`Checkpoint::open`], and any download failure.
    pub fn open(&self, scratch: &Path) -> Result<Checkpoint> {
        match self {
            Found::Local(dir) => Checkpoint::open(dir),
            Found::Store(store, step) => {
                fs::create_dir_all(scratch).map_err(io_err(scratch))?;
                let download = tempfile::Builder::new()
                    .prefix("checkpoint-download-")
                    .tempdir_in(scratch)
                    .map_err(io_err(scratch))?;
                store.download(*step, download.path())?;
                let mut ck = Checkpoint::open(download.path())?;
                ck.source = store.step_url(*step);
                ck.download = Some(Arc::new(download));
                Ok(ck)
            }
        }
    }
}

/// Resolves what `--resume` or `--checkpoint` names: a folder as [`resolve`] takes it, or a
/// URL of a checkpoint (`…/step_N`), of a checkpoints prefix (holding `latest`), or of a prefix
/// holding `checkpoints/`. `None` when it holds no committed checkpoint yet.
///
/// # Errors
/// As [`resolve`]; for a URL, an unreadable store or a `step_N` that was never committed.
pub fn find(spec: &Path) -> Result<Option<Found>> {
    let text = spec.to_string_lossy();
    if !is_url(&text) {
        return Ok(resolve(spec)?.map(Found::Local));
    }
    let url = text.trim_end_matches('/');
    if let Some((parent, last)) = url.rsplit_once('/') {
        if let Some(step) = parse_step(last) {
            let store = StoreDir::open(parent)?;
            return if store.is_committed(step)? {
                Ok(Some(Found::Store(store, step)))
            } else {
                Err(TrainError::Checkpoint {
                    path: spec.to_path_buf(),
                    reason: "no committed checkpoint there (no manifest.json): missing or never committed".into(),
                })
            };
        }
    }
    let store = StoreDir::open(url)?;
    if let Some(step) = store.newest()? {
        return Ok(Some(Found::Store(store, step)));
    }
    let nested = StoreDir::open(&format!("{url}/checkpoints"))?;
    Ok(nested.newest()?.map(|step| Found::Store(nested, step)))
}

/// A verified checkpoint: its folder and its state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The `step_N/` folder (for a checkpoint on an object store, the private temporary
    /// folder it was downloaded into, deleted when the last clone is dropped).
    pub dir: PathBuf,
    /// Where it was read from: the folder, or the object store URL of `step_N`.
    pub source: String,
    /// Its `state.json`.
    pub state: CheckpointState,
    download: Option<Arc<tempfile::TempDir>>,
}

impl Checkpoint {
    /// Opens a checkpoint folder, verifying every file against the manifest's sha256 and
    /// size; a truncated or altered file is an error that names it.
    pub fn open(dir: &Path) -> Result<Self> {
        let bad = |reason: String| TrainError::Checkpoint { path: dir.to_path_buf(), reason };
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_text = fs::read_to_string(&manifest_path)
            .map_err(|e| bad(format!("cannot read {MANIFEST_FILE} ({e}); the checkpoint was never committed")))?;
        let manifest: Manifest =
            serde_json::from_str(&manifest_text).map_err(|e| bad(format!("{MANIFEST_FILE} is corrupt: {e}")))?;
        for name in DATA_FILES {
            let entry = manifest.files.get(name).ok_or_else(|| bad(format!("{MANIFEST_FILE} does not list {name}")))?;
            let path = dir.join(name);
            if !path.is_file() {
                return Err(bad(format!("{name} is missing")));
            }
            let (sha, bytes) = sha256_file(&path)?;
            if bytes != entry.bytes || sha != entry.sha256 {
                return Err(bad(format!(
                    "{name} is corrupt or truncated: {bytes} bytes with sha256 {sha}, the manifest says {} bytes with sha256 {}",
                    entry.bytes, entry.sha256
                )));
            }
        }
        let state_text = fs::read_to_string(dir.join(STATE_FILE)).map_err(io_err(dir))?;
        let state: CheckpointState =
            serde_json::from_str(&state_text).map_err(|e| bad(format!("{STATE_FILE} is not valid: {e}")))?;
        if state.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} is not supported (this clipfleet reads {FORMAT_VERSION})",
                state.format_version
            )));
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), source: dir.display().to_string(), state, download: None })
    }

    /// Path of the weights.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    /// Loads the weights into `model`.
    pub fn load_model(&self, model: &mut Clip) -> Result<()> {
        model.load_safetensors(&self.model_path())
    }

    /// Loads the optimizer state into `optimizer`.
    pub fn load_optimizer(&self, optimizer: &mut AdamW) -> Result<()> {
        let path = self.dir.join(OPTIMIZER_FILE);
        let tensors = Tensor::read_safetensors(&path).map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            reason: format!("cannot read the optimizer state: {e}"),
        })?;
        optimizer.load_state_tensors(tensors, &path)
    }
}
