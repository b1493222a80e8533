//! Checkpoints on an object store (S3 and S3-compatible servers, GCS, Azure): the layout
//! and commit protocol of a checkpoints folder, with objects instead of files.
//!
//! ```text
//! URL/step_N/model.safetensors, optimizer.safetensors, state.json
//! URL/step_N/manifest.json     uploaded last: its presence commits step N
//! URL/latest                   "step_N", replaced by a conditional PUT
//! ```
//! A PUT is atomic: an object is either absent or whole. The files are written to a local
//! scratch folder, uploaded (in 64 MiB parts above that size), and the manifest last, so a
//! crash at any point leaves `step_N/` without a manifest, which is never loaded. `latest` is
//! then replaced with `If-Match` on the ETag just read (`If-None-Match: *` when absent); when
//! another process changed it in between, the newer of the two steps wins, so `latest` never
//! goes back through a race. Deleting a checkpoint removes its manifest first. Every rank
//! that resumes downloads the files itself and checks each against the manifest: no shared
//! file system is needed. Requests are retried by `object_store` (10 times, with back-off),
//! and whole transfers again on transient errors.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clipfleet_dataloader::shards::{ShardUrl, UrlScheme};
use clipfleet_dataloader::store::{build_store_with_retry, classify, ErrorClass};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
    WriteMultipart,
};

use super::{io_err, parse_step, step_dir_name, write_files, Manifest, DATA_FILES, LATEST_FILE, MANIFEST_FILE};
use super::{CheckpointState, Clip};
use crate::error::{Result, TrainError};
use crate::optim::AdamW;

/// Files above this size are uploaded in parts of this size (S3 allows 10,000 parts: 640 GB).
const PART_BYTES: usize = 64 << 20;
/// Parts in flight at once, per file.
const PARTS_IN_FLIGHT: usize = 4;
/// Attempts at each request or whole transfer (each with `object_store`'s own retries of the
/// request) while it fails with a transient error.
const ATTEMPTS: u32 = 5;
/// Attempts at replacing `latest` while other writers keep changing it.
const LATEST_ATTEMPTS: u32 = 8;

/// The tokio runtime on which checkpoint transfers run (the trainer itself is synchronous).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clipfleet-checkpoint-io")
            .enable_all()
            .build()
            .expect("cannot start the checkpoint I/O runtime")
    })
}

/// The objects under a checkpoints prefix, by the step of their `step_N/` folder.
type ObjectsByStep = BTreeMap<i64, Vec<ObjectPath>>;

/// A checkpoints prefix on an object store; see the [module docs](self).
#[derive(Clone)]
pub struct StoreDir {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    part_bytes: usize,
}

impl std::fmt::Debug for StoreDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreDir").field("url", &self.url).finish_non_exhaustive()
    }
}

impl StoreDir {
    /// The prefix `url` (`s3://`, `gs://`, `az://` and their aliases), with a store built
    /// from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`) as for shards, with retries.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] for another scheme or a store that cannot be built.
    pub fn open(url: &str) -> Result<StoreDir> {
        let url = url.trim_end_matches('/');
        let bad = |reason: String| TrainError::Checkpoint { path: PathBuf::from(url), reason };
        let parsed = ShardUrl::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme, UrlScheme::S3 | UrlScheme::Gcs | UrlScheme::Azure) {
            return Err(bad(
                "checkpoints go to a folder or to s3://, gs:// or az:// (HTTP servers take no writes)".into()
            ));
        }
        let retry =
            RetryConfig { max_retries: 10, retry_timeout: Duration::from_secs(180), backoff: BackoffConfig::default() };
        let store = build_store_with_retry(&parsed, &[], retry).map_err(|e| bad(e.to_string()))?;
        let prefix = ObjectPath::from_url_path(&parsed.key).map_err(|e| bad(e.to_string()))?;
        Ok(StoreDir::with_store(url, store, prefix))
    }

    /// The prefix `prefix` of `store`, shown as `url` (tests use in-memory stores).
    pub fn with_store(url: &str, store: Arc<dyn ObjectStore>, prefix: ObjectPath) -> StoreDir {
        StoreDir { url: url.trim_end_matches('/').to_owned(), store, prefix, part_bytes: PART_BYTES }
    }

    /// Uploads files above `bytes` in parts of that size (tests exercise multipart uploads
    /// with small files).
    pub fn with_part_bytes(mut self, bytes: usize) -> StoreDir {
        self.part_bytes = bytes.max(1);
        self
    }

    /// The URL of the prefix.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of checkpoint `step`.
    pub fn step_url(&self, step: i64) -> String {
        format!("{}/{}", self.url, step_dir_name(step))
    }

    fn object(&self, rel: &str) -> ObjectPath {
        if self.prefix.as_ref().is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix.as_ref()))
        }
    }

    /// Runs `op` until it succeeds, fails with an error that is not transient, or has been
    /// tried [`ATTEMPTS`] times, pausing 1 s, 2 s, … in between. `object_store` already retries
    /// requests; this also covers what it does not: a body cut mid-stream, a conditional PUT
    /// whose answer was lost.
    fn retry<T>(&self, rel: &str, mut op: impl FnMut() -> object_store::Result<T>) -> object_store::Result<T> {
        let mut attempt = 1;
        loop {
            match op() {
                Err(e) if attempt < ATTEMPTS && classify(&e) == ErrorClass::Transient => {
                    tracing::warn!(object = %format!("{}/{rel}", self.url), attempt, error = %e, "checkpoint transfer failed; retrying");
                    std::thread::sleep(Duration::from_secs(u64::from(attempt)));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn error(&self, rel: &str, what: &str, e: impl std::fmt::Display) -> TrainError {
        TrainError::Checkpoint { path: PathBuf::from(format!("{}/{rel}", self.url)), reason: format!("{what}: {e}") }
    }

    /// Whether `step_N/manifest.json` exists.
    ///
    /// # Errors
    /// A store error other than "not found".
    pub fn is_committed(&self, step: i64) -> Result<bool> {
        let rel = format!("{}/{MANIFEST_FILE}", step_dir_name(step));
        match self.retry(&rel, || runtime().block_on(self.store.head(&self.object(&rel)))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(&rel, "cannot look it up", e)),
        }
    }

    /// Every object under the prefix, grouped by `step_N` folder; the committed steps.
    fn scan(&self) -> Result<(ObjectsByStep, BTreeSet<i64>)> {
        let listing = self
            .retry("", || {
                runtime()
                    .block_on(self.store.list(Some(&self.prefix)).collect::<Vec<_>>())
                    .into_iter()
                    .collect::<object_store::Result<Vec<object_store::ObjectMeta>>>()
            })
            .map_err(|e: object_store::Error| self.error("", "cannot list the checkpoints", e))?;
        let mut by_step = ObjectsByStep::new();
        let mut committed = BTreeSet::new();
        let depth = self.prefix.parts().count();
        for meta in listing {
            let parts: Vec<String> = meta.location.parts().skip(depth).map(|p| p.as_ref().to_owned()).collect();
            let [folder, file] = parts.as_slice() else { continue };
            let Some(step) = parse_step(folder) else { continue };
            if file == MANIFEST_FILE {
                committed.insert(step);
            }
            by_step.entry(step).or_default().push(meta.location);
        }
        Ok((by_step, committed))
    }

    /// The `latest` object's step and version, if it exists.
    fn read_latest(&self) -> Result<Option<(String, UpdateVersion)>> {
        let path = self.object(LATEST_FILE);
        let got = self.retry(LATEST_FILE, || {
            runtime().block_on(async {
                let result = self.store.get(&path).await?;
                let version = UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
                Ok((result.bytes().await?, version))
            })
        });
        match got {
            Ok((bytes, version)) => Ok(Some((String::from_utf8_lossy(&bytes).trim().to_owned(), version))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(LATEST_FILE, "cannot read it", e)),
        }
    }

    /// The step `latest` names when it is committed, else the newest committed step.
    ///
    /// # Errors
    /// The store's errors.
    pub fn newest(&self) -> Result<Option<i64>> {
        if let Some((name, _)) = self.read_latest()? {
            match parse_step(&name) {
                Some(step) if self.is_committed(step)? => return Ok(Some(step)),
                _ => tracing::warn!(
                    pointer = %format!("{}/{LATEST_FILE}", self.url),
                    target = name,
                    "`latest` names no committed checkpoint; using the newest committed one"
                ),
            }
        }
        Ok(self.scan()?.1.last().copied())
    }

    /// Writes checkpoint `state.step` to a temporary folder under `scratch`, uploads and
    /// commits it, points `latest` at it and keeps the newest `keep` (0: all). Returns its URL.
    pub(super) fn save(
        &self,
        scratch: &Path,
        model: &Clip,
        optimizer: &AdamW,
        state: &CheckpointState,
        keep: usize,
    ) -> Result<String> {
        std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
        let staging =
            tempfile::Builder::new().prefix("checkpoint-upload-").tempdir_in(scratch).map_err(io_err(scratch))?;
        write_files(staging.path(), model, optimizer, state, false)?;
        self.upload_committed(staging.path(), state.step)?;
        self.point_latest_at(state.step)?;
        self.prune(keep, state.step)?;
        crate::fault::maybe_inject(crate::fault::FaultPoint::AfterCheckpoint, state.step);
        Ok(self.step_url(state.step))
    }

    /// Uploads the files of `dir` (written by [`write_files`]) as `step_N/`, the manifest last.
    fn upload_committed(&self, dir: &Path, step: i64) -> Result<()> {
        let folder = step_dir_name(step);
        if self.is_committed(step)? {
            // A checkpoint of this step from an abandoned run (resumed from an older one): it
            // stops counting as committed before any of its files is replaced.
            tracing::warn!(checkpoint = %self.step_url(step), "replacing a committed checkpoint of an abandoned run");
            self.delete(&format!("{folder}/{MANIFEST_FILE}"))?;
        }
        for (i, name) in DATA_FILES.iter().enumerate() {
            self.upload(&dir.join(name), &format!("{folder}/{name}"))?;
            if i == 0 {
                crate::fault::maybe_inject(crate::fault::FaultPoint::InCheckpoint, step);
            }
        }
        self.upload(&dir.join(MANIFEST_FILE), &format!("{folder}/{MANIFEST_FILE}"))
    }

    /// Uploads the local file `path` as `rel`, retrying the whole transfer on transient errors.
    fn upload(&self, path: &Path, rel: &str) -> Result<()> {
        let target = self.object(rel);
        let size = std::fs::metadata(path).map_err(io_err(path))?.len();
        let mut local_error = None;
        let result = self.retry(rel, || {
            if size as usize <= self.part_bytes {
                let bytes = match std::fs::read(path) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        local_error = Some(io_err(path)(e));
                        return Ok(());
                    }
                };
                runtime().block_on(self.store.put(&target, PutPayload::from(bytes))).map(drop)
            } else {
                match self.upload_parts(path, &target) {
                    Ok(result) => result,
                    Err(e) => {
                        local_error = Some(e);
                        Ok(())
                    }
                }
            }
        });
        match (result, local_error) {
            (_, Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
            (Err(e), None) => Err(self.error(rel, "cannot upload it", e)),
        }
    }

    /// One multipart upload of `path`, aborted on failure. The outer `Result` is a local read
    /// error, the inner one the store's.
    fn upload_parts(&self, path: &Path, target: &ObjectPath) -> Result<object_store::Result<()>> {
        let mut file = std::fs::File::open(path).map_err(io_err(path))?;
        let part_bytes = self.part_bytes;
        runtime().block_on(async {
            let upload = match self.store.put_multipart(target).await {
                Ok(upload) => upload,
                Err(e) => return Ok(Err(e)),
            };
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes);
            let mut buf = vec![0u8; part_bytes];
            loop {
                let n = read_full(&mut file, &mut buf).map_err(io_err(path))?;
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = writer.abort().await;
                    return Ok(Err(e));
                }
                writer.write(&buf[..n]);
            }
            Ok(writer.finish().await.map(drop))
        })
    }

    fn delete(&self, rel: &str) -> Result<()> {
        self.delete_object(&self.object(rel))
    }

    fn delete_object(&self, path: &ObjectPath) -> Result<()> {
        match self.retry(path.as_ref(), || runtime().block_on(self.store.delete(path))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(path.as_ref(), "cannot delete it", e)),
        }
    }

    /// Replaces `latest` with `step_N` by a conditional PUT on the version just read. When
    /// another writer got in between, its step is kept if it is newer.
    fn point_latest_at(&self, step: i64) -> Result<()> {
        let path = self.object(LATEST_FILE);
        let wanted = step_dir_name(step);
        for _ in 0..LATEST_ATTEMPTS {
            let current = self.read_latest()?;
            if current.as_ref().is_some_and(|(name, _)| *name == wanted) {
                return Ok(());
            }
            let mode = match &current {
                Some((_, version)) => PutMode::Update(version.clone()),
                None => PutMode::Create,
            };
            let payload = PutPayload::from(format!("{wanted}\n").into_bytes());
            let put = runtime().block_on(self.store.put_opts(&path, payload.clone(), PutOptions::from(mode)));
            match put {
                // A lost answer: whether it was written shows in the next read.
                Err(e) if classify(&e) == ErrorClass::Transient => {
                    tracing::warn!(pointer = %format!("{}/{LATEST_FILE}", self.url), error = %e, "replacing `latest` failed; reading it again");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Ok(_) => return Ok(()),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    if let Some((name, _)) = self.read_latest()? {
                        if parse_step(&name).is_some_and(|other| other > step) {
                            tracing::warn!(
                                pointer = %format!("{}/{LATEST_FILE}", self.url),
                                theirs = name,
                                ours = wanted,
                                "another process moved `latest` to a newer checkpoint meanwhile; keeping it (is another run writing to this checkpoint_dir?)"
                            );
                            return Ok(());
                        }
                    }
                }
                Err(object_store::Error::NotImplemented { .. }) => {
                    tracing::warn!(store = %self.url, "the store has no conditional PUT: `latest` is replaced unconditionally");
                    return self
                        .retry(LATEST_FILE, || runtime().block_on(self.store.put(&path, payload.clone())))
                        .map(drop)
                        .map_err(|e| self.error(LATEST_FILE, "cannot write it", e));
                }
                Err(e) => return Err(self.error(LATEST_FILE, "cannot write it", e)),
            }
        }
        Err(self.error(
            LATEST_FILE,
            "cannot replace it",
            format!(
                "it changed {LATEST_ATTEMPTS} times while being replaced: another process is writing checkpoints here"
            ),
        ))
    }

    /// Deletes the leftovers of uncommitted uploads other than `current`, then the oldest
    /// committed checkpoints beyond `keep` (0 keeps all), each manifest first.
    fn prune(&self, keep: usize, current: i64) -> Result<()> {
        let (by_step, committed) = self.scan()?;
        for (step, objects) in &by_step {
            if !committed.contains(step) && *step != current {
                objects.iter().try_for_each(|o| self.delete_object(o))?;
            }
        }
        if keep == 0 {
            return Ok(());
        }
        let excess = committed.len().saturating_sub(keep);
        for step in committed.iter().take(excess).filter(|&&s| s != current) {
            self.delete(&format!("{}/{MANIFEST_FILE}", step_dir_name(*step)))?;
            for object in &by_step[step] {
                if !object.as_ref().ends_with(MANIFEST_FILE) {
                    self.delete_object(object)?;
                }
            }
        }
        Ok(())
    }

    /// Downloads committed checkpoint `step` into the folder `dir`: the manifest, then the
    /// files it lists (verified by [`super::Checkpoint::open`] afterwards).
    pub(super) fn download(&self, step: i64, dir: &Path) -> Result<()> {
        let folder = step_dir_name(step);
        self.fetch(&format!("{folder}/{MANIFEST_FILE}"), &dir.join(MANIFEST_FILE))?;
        let text = std::fs::read(dir.join(MANIFEST_FILE)).map_err(io_err(dir))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| self.error(&format!("{folder}/{MANIFEST_FILE}"), "it is corrupt", e))?;
        for name in manifest.files.keys().filter(|n| DATA_FILES.contains(&n.as_str())) {
            self.fetch(&format!("{folder}/{name}"), &dir.join(name))?;
        }
        tracing::info!(checkpoint = %self.step_url(step), "downloaded");
        Ok(())
    }

    /// Streams the object `rel` into the file `to`, retrying the whole transfer on transient errors.
    fn fetch(&self, rel: &str, to: &Path) -> Result<()> {
        let path = self.object(rel);
        let mut local_error = None;
        let result = self.retry(rel, || {
            let mut file = match std::fs::File::create(to) {
                Ok(file) => file,
                Err(e) => {
                    local_error = Some(e);
                    return Ok(());
                }
            };
            runtime().block_on(async {
                let mut stream = self.store.get(&path).await?.into_stream();
                while let Some(chunk) = stream.next().await {
                    if let Err(e) = file.write_all(&chunk?) {
                        local_error = Some(e);
                        break;
                    }
                }
                Ok(())
            })
        });
        match (result, local_error) {
            (_, Some(e)) => Err(io_err(to)(e)),
            (Ok(()), None) => Ok(()),
            (Err(e), None) => Err(self.error(rel, "cannot download it", e)),
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn dir(store: &Arc<InMemory>) -> StoreDir {
        StoreDir::with_store(
            "mem://bucket/run/checkpoints",
            Arc::clone(store) as _,
            ObjectPath::from("run/checkpoints"),
        )
    }

    fn put(store: &InMemory, key: &str, body: &str) {
        runtime().block_on(store.put(&ObjectPath::from(key), PutPayload::from(body.as_bytes().to_vec()))).unwrap();
    }

    fn keys(store: &InMemory) -> Vec<String> {
        let listing: Vec<_> = runtime().block_on(store.list(None).collect());
        let mut keys: Vec<String> = listing.into_iter().map(|m| m.unwrap().location.to_string()).collect();
        keys.sort();
        keys
    }

    #[test]
    fn latest_is_created_then_replaced_and_never_moves_back_through_a_race() {
        let mem = Arc::new(InMemory::new());
        let d = dir(&mem);
        for step in [2, 4] {
            put(&mem, &format!("run/checkpoints/step_{step}/{MANIFEST_FILE}"), "{}");
        }
        assert_eq!(d.newest().unwrap(), Some(4), "no `latest`: the newest committed step");
        d.point_latest_at(2).unwrap();
        assert_eq!(d.read_latest().unwrap().unwrap().0, "step_2");
        assert_eq!(d.newest().unwrap(), Some(2));
        d.point_latest_at(4).unwrap();
        assert_eq!(d.newest().unwrap(), Some(4));
        // A deliberate rewind (a resume from an older checkpoint) is no race: it goes through.
        d.point_latest_at(2).unwrap();
        assert_eq!(d.read_latest().unwrap().unwrap().0, "step_2");

        // The version read is stale (another writer moved `latest` to step_6): the
        // conditional PUT fails, and the newer step stays.
        let (_, stale) = d.read_latest().unwrap().unwrap();
        put(&mem, "run/checkpoints/latest", "step_6\n");
        let err = runtime()
            .block_on(d.store.put_opts(
                &d.object(LATEST_FILE),
                PutPayload::from(b"step_4\n".to_vec()),
                PutOptions::from(PutMode::Update(stale)),
            ))
            .unwrap_err();
        assert!(matches!(err, object_store::Error::Precondition { .. }), "{err}");
        assert_eq!(d.read_latest().unwrap().unwrap().0, "step_6");
        // `latest` naming an uncommitted step falls back to the newest committed one.
        assert_eq!(d.newest().unwrap(), Some(4));
    }

    #[test]
    fn pruning_removes_uncommitted_leftovers_and_the_oldest_checkpoints_manifest_first() {
        let mem = Arc::new(InMemory::new());
        let d = dir(&mem);
        for step in [1, 2, 3, 4] {
            for name in DATA_FILES.iter().chain([&MANIFEST_FILE]) {
                put(&mem, &format!("run/checkpoints/step_{step}/{name}"), "x");
            }
        }
        put(&mem, "run/checkpoints/step_9/model.safetensors", "half an upload");
        put(&mem, "run/other/keep.txt", "not ours");
        d.prune(2, 4).unwrap();
        let left = keys(&mem);
        assert!(
            left.iter().all(|k| !k.contains("step_1/") && !k.contains("step_2/") && !k.contains("step_9/")),
            "{left:?}"
        );
        assert_eq!(left.iter().filter(|k| k.contains("step_3/")).count(), 4, "{left:?}");
        assert_eq!(left.iter().filter(|k| k.contains("step_4/")).count(), 4, "{left:?}");
        assert!(left.contains(&"run/other/keep.txt".to_owned()));
        assert!(!d.is_committed(2).unwrap() && d.is_committed(3).unwrap());
    }

    #[test]
    fn multipart_uploads_and_downloads_give_back_the_same_bytes() {
        let mem = Arc::new(InMemory::new());
        let d = dir(&mem).with_part_bytes(1000);
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_500u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(tmp.path().join("big"), &data).unwrap();
        d.upload(&tmp.path().join("big"), "step_1/big").unwrap();
        d.fetch("step_1/big", &tmp.path().join("back")).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("back")).unwrap(), data);
        let err = d.fetch("step_1/missing", &tmp.path().join("x")).unwrap_err().to_string();
        assert!(
            err.contains("mem://bucket/run/checkpoints/step_1/missing") && err.contains("cannot download"),
            "{err}"
        );
    }
}
