//! A fault-injecting [`ObjectStore`] wrapper, for deterministic tests of the retry logic.
//!
//! [`FaultyStore`] delegates every call to the store it wraps, except that the K-th
//! `get_opts` call (counted from 1, `HEAD` requests included) can be made to fail before
//! any byte, or to have its body stream reset or end early after N bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = object_store::Result<T>> + Send + 'a>>;

/// What goes wrong with one `get_opts` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with HTTP 404.
    NotFound,
    /// The call fails with HTTP 403.
    Forbidden,
    /// The call fails with HTTP 503 before any byte.
    Unavailable,
    /// The body stream fails with "connection reset" after this many bytes.
    ResetAfter(u64),
    /// The body stream ends cleanly, but early, after this many bytes.
    EndAfter(u64),
}

/// An [`ObjectStore`] that injects [`Fault`]s into chosen `get_opts` calls.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    on_call: Mutex<BTreeMap<u64, Fault>>,
    from_call: Mutex<Option<(u64, Fault)>>,
    calls: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`, with no faults yet.
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultyStore {
        FaultyStore {
            inner,
            on_call: Mutex::new(BTreeMap::new()),
            from_call: Mutex::new(None),
            calls: AtomicU64::new(0),
        }
    }

    /// Injects `fault` into the `call`-th `get_opts` call (1-based, `HEAD`s included).
    pub fn on_call(self, call: u64, fault: Fault) -> FaultyStore {
        self.on_call.lock().unwrap_or_else(PoisonError::into_inner).insert(call, fault);
        self
    }

    /// Injects `fault` into every `get_opts` call from the `call`-th on.
    pub fn on_every_call_from(self, call: u64, fault: Fault) -> FaultyStore {
        *self.from_call.lock().unwrap_or_else(PoisonError::into_inner) = Some((call, fault));
        self
    }

    /// How many `get_opts` calls were made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn fault_for(&self, call: u64) -> Option<Fault> {
        let single = self.on_call.lock().unwrap_or_else(PoisonError::into_inner).get(&call).copied();
        let from = *self.from_call.lock().unwrap_or_else(PoisonError::into_inner);
        single.or(from.filter(|(first, _)| call >= *first).map(|(_, fault)| fault))
    }

    async fn faulty_get(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let path = location.to_string();
        let (cut, reset) = match self.fault_for(call) {
            None => return self.inner.get_opts(location, options).await,
            Some(Fault::NotFound) => {
                let source = format!("injected 404 on call {call}").into();
                return Err(object_store::Error::NotFound { path, source });
            }
            Some(Fault::Forbidden) => {
                let source = format!("injected 403 on call {call}").into();
                return Err(object_store::Error::PermissionDenied { path, source });
            }
            Some(Fault::Unavailable) => {
                let source =
                    format!("Server returned non-2xx status code: 503 Service Unavailable (injected on call {call})");
                return Err(object_store::Error::Generic { store: "FaultyStore", source: source.into() });
            }
            Some(Fault::ResetAfter(n)) => (n, true),
            Some(Fault::EndAfter(n)) => (n, false),
        };
        let mut result = self.inner.get_opts(location, options).await?;
        let payload = std::mem::replace(&mut result.payload, GetResultPayload::Stream(stream::empty().boxed()));
        let body = match payload {
            GetResultPayload::Stream(body) => body,
            GetResultPayload::File(file, _) => file_range_stream(file, result.range.clone()),
        };
        result.payload = GetResultPayload::Stream(cut_stream(body, cut, reset));
        Ok(result)
    }
}

/// The bytes of `range` of a local file, as a one-piece stream.
fn file_range_stream(
    mut file: std::fs::File,
    range: std::ops::Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let read = || -> std::io::Result<Bytes> {
        file.seek(SeekFrom::Start(range.start))?;
        let mut buf = Vec::new();
        file.take(range.end - range.start).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    };
    let piece = read().map_err(|e| object_store::Error::Generic { store: "FaultyStore", source: Box::new(e) });
    stream::once(futures::future::ready(piece)).boxed()
}

/// Passes the first `after` bytes of `body`, then fails with a reset (or ends, if not `reset`).
fn cut_stream(
    body: BoxStream<'static, object_store::Result<Bytes>>,
    after: u64,
    reset: bool,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    stream::unfold((body, after, false), move |(mut body, left, done)| async move {
        if done {
            return None;
        }
        if left == 0 {
            if !reset {
                return None;
            }
            let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected connection reset");
            return Some((
                Err(object_store::Error::Generic { store: "FaultyStore", source: Box::new(err) }),
                (body, 0, true),
            ));
        }
        match body.next().await {
            None => None,
            Some(Err(e)) => Some((Err(e), (body, left, true))),
            Some(Ok(mut piece)) => {
                piece.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - piece.len() as u64;
                Some((Ok(piece), (body, left, false)))
            }
        }
    })
    .boxed()
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

// The trait is declared with `#[async_trait]`; these are its expanded signatures, written
// out so that this crate needs no `async-trait` dependency.
impl ObjectStore for FaultyStore {
    fn put_opts<'l0, 'l1, 'a>(
        &'l0 self,
        location: &'l1 Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> StoreFuture<'a, PutResult>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        Box::pin(self.inner.put_opts(location, payload, opts))
    }

    fn put_multipart_opts<'l0, 'l1, 'a>(
        &'l0 self,
        location: &'l1 Path,
        opts: PutMultipartOptions,
    ) -> StoreFuture<'a, Box<dyn MultipartUpload>>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        Box::pin(self.inner.put_multipart_opts(location, opts))
    }

    fn get_opts<'l0, 'l1, 'a>(&'l0 self, location: &'l1 Path, options: GetOptions) -> StoreFuture<'a, GetResult>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        Box::pin(self.faulty_get(location, options))
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_delimiter<'l0, 'l1, 'a>(&'l0 self, prefix: Option<&'l1 Path>) -> StoreFuture<'a, ListResult>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        Box::pin(self.inner.list_with_delimiter(prefix))
    }

    fn copy_opts<'l0, 'l1, 'l2, 'a>(
        &'l0 self,
        from: &'l1 Path,
        to: &'l2 Path,
        options: CopyOptions,
    ) -> StoreFuture<'a, ()>
    where
        'l0: 'a,
        'l1: 'a,
        'l2: 'a,
        Self: 'a,
    {
        Box::pin(self.inner.copy_opts(from, to, options))
    }
}
