//! [`ShardReader`]: a blocking [`Read`] over one object, fed by ranged GETs that a
//! background task issues ahead of the reader, with retries that resume by byte range.

use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectMeta, ObjectStore};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use super::retry::{classify, ErrorClass, RetryPolicy, Sleeper};
use crate::DataError;

/// Everything one object's fetches share.
#[derive(Debug)]
pub(super) struct Fetcher {
    pub(super) url: String,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) path: Path,
    pub(super) policy: RetryPolicy,
    pub(super) sleeper: Arc<dyn Sleeper>,
    pub(super) retries: Arc<AtomicU64>,
}

/// Why one attempt failed.
enum Failure {
    Store(object_store::Error),
    EndedEarly { got: u64, want: u64 },
}

/// Consecutive failures of one request, and the waits between them.
struct Attempts<'a> {
    fetcher: &'a Fetcher,
    failures: u32,
}

impl Attempts<'_> {
    /// Fails fast on errors that retrying cannot fix; otherwise waits and returns `Ok`,
    /// or gives up once the policy's attempts are spent.
    async fn failed(&mut self, failure: Failure, offset: u64) -> Result<(), DataError> {
        let f = self.fetcher;
        let (class, text) = match &failure {
            Failure::Store(e) => (classify(e), e.to_string()),
            Failure::EndedEarly { got, want } => {
                (ErrorClass::Transient, format!("stream ended early: {got} of {want} bytes"))
            }
        };
        match class {
            ErrorClass::NotFound => return Err(DataError::NotFound { url: f.url.clone() }),
            ErrorClass::Forbidden => return Err(DataError::Forbidden { url: f.url.clone() }),
            ErrorClass::Fatal => return Err(DataError::Store { url: f.url.clone(), reason: text }),
            ErrorClass::Transient => {}
        }
        self.failures += 1;
        if self.failures >= f.policy.max_attempts.max(1) {
            return Err(DataError::RetriesExhausted {
                url: f.url.clone(),
                attempts: self.failures,
                offset,
                last: text,
            });
        }
        f.retries.fetch_add(1, Ordering::Relaxed);
        f.sleeper.sleep(f.policy.delay(self.failures, offset)).await;
        Ok(())
    }
}

impl Fetcher {
    /// The object's metadata (a `HEAD`), retried like any read.
    pub(super) async fn head(&self) -> Result<ObjectMeta, DataError> {
        let mut attempts = Attempts { fetcher: self, failures: 0 };
        loop {
            let options = GetOptions { head: true, ..GetOptions::default() };
            match self.store.get_opts(&self.path, options).await {
                Ok(result) => return Ok(result.meta),
                Err(e) => attempts.failed(Failure::Store(e), 0).await?,
            }
        }
    }

    /// Exactly the bytes of `range`, resuming after every transient failure from the first
    /// byte not yet received. `etag` (from the `HEAD`) makes a changed object an error.
    pub(super) async fn fetch(&self, range: Range<u64>, etag: Option<String>) -> Result<Bytes, DataError> {
        let want = range.end - range.start;
        let mut buf = BytesMut::with_capacity(usize::try_from(want).unwrap_or(0));
        let mut attempts = Attempts { fetcher: self, failures: 0 };
        loop {
            let at = range.start + buf.len() as u64;
            let failure = match self.fetch_once(at..range.end, etag.clone(), &mut buf).await {
                Ok(()) if buf.len() as u64 == want => return Ok(buf.freeze()),
                Ok(()) => Failure::EndedEarly { got: buf.len() as u64, want },
                Err(e) => Failure::Store(e),
            };
            attempts.failed(failure, range.start + buf.len() as u64).await?;
        }
    }

    /// One ranged GET, appending what arrives to `buf` (never past `range.end`).
    async fn fetch_once(
        &self,
        range: Range<u64>,
        etag: Option<String>,
        buf: &mut BytesMut,
    ) -> object_store::Result<()> {
        let want = range.end - range.start;
        let options = GetOptions { range: Some(GetRange::Bounded(range)), if_match: etag, ..GetOptions::default() };
        let result = self.store.get_opts(&self.path, options).await?;
        let start = result.range.start;
        match result.payload {
            GetResultPayload::File(file, _) => {
                let piece = tokio::task::spawn_blocking(move || read_file_range(file, start, want))
                    .await?
                    .map_err(|e| object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) })?;
                buf.extend_from_slice(&piece);
            }
            GetResultPayload::Stream(mut body) => {
                let mut got = 0u64;
                while let Some(piece) = body.next().await {
                    let piece = piece?;
                    let take = piece.len().min(usize::try_from(want - got).unwrap_or(usize::MAX));
                    buf.extend_from_slice(&piece[..take]);
                    got += take as u64;
                    if got == want {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

fn read_file_range(mut file: std::fs::File, start: u64, len: u64) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(start))?;
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len).read_to_end(&mut out)?;
    Ok(out)
}

/// A spawned task that is cancelled when this handle is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Fetches the chunks of `0..size` in order, at most `read_ahead` at a time, and sends them
/// to the reader; stops at the first error (after sending it) or when the reader is gone.
async fn pump(
    fetcher: Arc<Fetcher>,
    size: u64,
    etag: Option<String>,
    chunk: u64,
    read_ahead: usize,
    tx: mpsc::Sender<Result<Bytes, DataError>>,
) {
    let starts = (0..size).step_by(usize::try_from(chunk).unwrap_or(usize::MAX));
    let mut chunks = futures::stream::iter(starts)
        .map(|start| {
            let (fetcher, etag) = (Arc::clone(&fetcher), etag.clone());
            let range = start..(start + chunk).min(size);
            AbortOnDrop(tokio::spawn(async move { fetcher.fetch(range, etag).await }))
        })
        .buffered(read_ahead.max(1));
    while let Some(joined) = chunks.next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(DataError::Store { url: fetcher.url.clone(), reason: format!("fetch task failed: {e}") })
        });
        let failed = result.is_err();
        if tx.send(result).await.is_err() || failed {
            return;
        }
    }
}

/// A blocking, streaming [`Read`] over one shard in an object store or on disk.
///
/// Chunks of the object are fetched by ranged GETs on the store's runtime, up to
/// `read_ahead` ahead of the reader, so memory stays near `(read_ahead + 2) · chunk_size`
/// whatever the shard's size. Transient failures are retried inside the fetch of a chunk
/// and resume from the first missing byte, so the bytes read are exactly the object's.
///
/// `read` must not be called from inside an async task (it blocks). An error is returned as
/// an [`io::Error`] wrapping the [`DataError`] (`NotFound`, `Forbidden`,
/// `RetriesExhausted`, ...), which `get_ref()` + `downcast_ref` recover.
#[derive(Debug)]
pub struct ShardReader {
    url: String,
    size: u64,
    position: u64,
    current: Bytes,
    rx: mpsc::Receiver<Result<Bytes, DataError>>,
    failed: Option<(io::ErrorKind, String)>,
    bytes_read: Arc<AtomicU64>,
    task: JoinHandle<()>,
    _runtime: Arc<Runtime>,
}

impl ShardReader {
    pub(super) fn start(
        runtime: Arc<Runtime>,
        fetcher: Arc<Fetcher>,
        meta: &ObjectMeta,
        chunk_size: usize,
        read_ahead: usize,
        bytes_read: Arc<AtomicU64>,
    ) -> ShardReader {
        let (tx, rx) = mpsc::channel(1);
        let url = fetcher.url.clone();
        let chunk = (chunk_size.max(1)) as u64;
        let task = runtime.spawn(pump(fetcher, meta.size, meta.e_tag.clone(), chunk, read_ahead, tx));
        ShardReader {
            url,
            size: meta.size,
            position: 0,
            current: Bytes::new(),
            rx,
            failed: None,
            bytes_read,
            task,
            _runtime: runtime,
        }
    }

    /// The shard URL this reader reads.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many bytes this reader has returned so far.
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl Read for ShardReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, text)) = &self.failed {
            return Err(io::Error::new(*kind, text.clone()));
        }
        while self.current.is_empty() {
            if out.is_empty() || self.position == self.size {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    let kind = match e {
                        DataError::NotFound { .. } => io::ErrorKind::NotFound,
                        DataError::Forbidden { .. } => io::ErrorKind::PermissionDenied,
                        _ => io::ErrorKind::Other,
                    };
                    self.failed = Some((kind, e.to_string()));
                    return Err(io::Error::new(kind, e));
                }
                None => {
                    let text = format!(
                        "reading {}: the fetch task stopped at byte {} of {}",
                        self.url, self.position, self.size
                    );
                    self.failed = Some((io::ErrorKind::Other, text.clone()));
                    return Err(io::Error::other(text));
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        self.position += n as u64;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Drop for ShardReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
