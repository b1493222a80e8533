//! Streaming shard reads from local disk, S3, GCS, Azure and HTTP(S), through `object_store`.
//!
//! [`ShardStore`] turns a shard URL into a blocking [`ShardReader`]: it builds one
//! `ObjectStore` per (scheme, bucket) from the usual environment (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`) plus optional explicit settings, caches it, and runs the async requests on a
//! tokio runtime of its own, so that the pipeline's reader threads can use plain
//! [`std::io::Read`]. Reads stream in ranged chunks with bounded read-ahead; transient errors
//! are retried with back-off and resume by byte range (see [`RetryPolicy`]); 403 and 404
//! fail at once. Credentials are only handed to the builders; they are never logged and
//! never appear in an error.

mod fault;
mod reader;
mod retry;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

pub use fault::{Fault, FaultyStore};
pub use reader::ShardReader;
pub use retry::{classify, ErrorClass, RecordingSleeper, RetryPolicy, Sleeper, TokioSleeper};

use crate::shards::{sizes_json_url, ShardSource, ShardUrl, SizesJson, UrlScheme};
use crate::DataError;
use reader::Fetcher;

/// Settings of a [`ShardStore`].
#[derive(Debug, Clone)]
pub struct ShardStoreOptions {
    /// Bytes per ranged GET (default 8 MiB).
    pub chunk_size: usize,
    /// Chunks fetched ahead of the reader, concurrently (default 2).
    pub read_ahead: usize,
    /// Retries of transient errors.
    pub retry: RetryPolicy,
    /// Worker threads of the store's tokio runtime (default 2).
    pub io_threads: usize,
    /// Extra builder settings applied over the environment, as `object_store` config keys
    /// (`aws_endpoint`, `aws_allow_http`, `google_service_account`, `azure_storage_account_name`,
    /// `timeout`, ...). Each is given to the builders that know the key. Values are secret:
    /// they are never logged or shown.
    pub config: Vec<(String, String)>,
}

impl Default for ShardStoreOptions {
    fn default() -> Self {
        ShardStoreOptions {
            chunk_size: 8 << 20,
            read_ahead: 2,
            retry: RetryPolicy::default(),
            io_threads: 2,
            config: Vec::new(),
        }
    }
}

type StoreKey = (UrlScheme, String);

/// Opens shards by URL; see the [module docs](self).
#[derive(Debug)]
pub struct ShardStore {
    runtime: Arc<tokio::runtime::Runtime>,
    options: ShardStoreOptions,
    sleeper: Arc<dyn Sleeper>,
    stores: Mutex<HashMap<StoreKey, Arc<dyn ObjectStore>>>,
    bytes_read: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
}

impl ShardStore {
    /// A store with its own tokio runtime, sleeping on the tokio timer between retries.
    ///
    /// # Errors
    /// [`DataError::Store`] if the runtime cannot start.
    pub fn new(options: ShardStoreOptions) -> Result<ShardStore, DataError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.io_threads.max(1))
            .thread_name("clipfleet-shard-io")
            .enable_all()
            .build()
            .map_err(|e| DataError::Store {
                url: "(shard store)".to_owned(),
                reason: format!("cannot start the tokio runtime: {e}"),
            })?;
        Ok(ShardStore {
            runtime: Arc::new(runtime),
            options,
            sleeper: Arc::new(TokioSleeper),
            stores: Mutex::new(HashMap::new()),
            bytes_read: Arc::new(AtomicU64::new(0)),
            retries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Replaces the sleeper used between retries (tests pass a [`RecordingSleeper`]).
    pub fn with_sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> ShardStore {
        self.sleeper = sleeper;
        self
    }

    /// Total bytes returned by all readers of this store (`clipfleet_shard_bytes_read_total`).
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_read)
    }

    /// Total retries (failed attempts that were retried) by all readers of this store.
    pub fn retries(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.retries)
    }

    /// The runtime on which the store's requests run (for async readers such as Parquet's).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Uses `store` for every URL of `scheme` and `bucket` (as [`ShardUrl`] splits them),
    /// instead of one built from the environment. Tests wrap stores in a [`FaultyStore`].
    pub fn register(&self, scheme: UrlScheme, bucket: &str, store: Arc<dyn ObjectStore>) {
        self.lock_stores().insert((scheme, bucket.to_owned()), store);
    }

    fn lock_stores(&self) -> std::sync::MutexGuard<'_, HashMap<StoreKey, Arc<dyn ObjectStore>>> {
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The object store and the path within it for `url`, building and caching the store
    /// on first use.
    ///
    /// # Errors
    /// [`DataError::ShardPattern`] for an unsupported URL, [`DataError::NotFound`] for a
    /// missing local file, and [`DataError::Store`] when the store cannot be built.
    pub fn resolve(&self, url: &str) -> Result<(Arc<dyn ObjectStore>, Path), DataError> {
        let parsed = ShardUrl::parse(url)?;
        let path = match parsed.scheme {
            UrlScheme::Local => Path::from_filesystem_path(&parsed.key).map_err(|e| match e {
                object_store::path::Error::Canonicalize { .. } => DataError::NotFound { url: url.to_owned() },
                e => DataError::Store { url: url.to_owned(), reason: e.to_string() },
            })?,
            _ => Path::from_url_path(&parsed.key)
                .map_err(|e| DataError::Store { url: url.to_owned(), reason: e.to_string() })?,
        };
        let key = (parsed.scheme, parsed.bucket.clone());
        if let Some(store) = self.lock_stores().get(&key) {
            return Ok((Arc::clone(store), path));
        }
        let store = build_store(&parsed, &self.options.config)
            .map_err(|e| DataError::Store { url: url.to_owned(), reason: e.to_string() })?;
        let store = Arc::clone(self.lock_stores().entry(key).or_insert(store));
        Ok((store, path))
    }

    fn fetcher(&self, url: &str) -> Result<Arc<Fetcher>, DataError> {
        let (store, path) = self.resolve(url)?;
        Ok(Arc::new(Fetcher {
            url: url.to_owned(),
            store,
            path,
            policy: self.options.retry.clone(),
            sleeper: Arc::clone(&self.sleeper),
            retries: Arc::clone(&self.retries),
        }))
    }

    /// Opens `url` for streaming. Blocks for one `HEAD` (retried like reads), so a missing
    /// or forbidden shard fails here. Must not be called from inside an async task.
    ///
    /// # Errors
    /// [`DataError::NotFound`], [`DataError::Forbidden`], [`DataError::RetriesExhausted`],
    /// or whatever [`ShardStore::resolve`] returns.
    pub fn open(&self, url: &str) -> Result<ShardReader, DataError> {
        let fetcher = self.fetcher(url)?;
        let meta = self.runtime.block_on(fetcher.head())?;
        Ok(ShardReader::start(
            Arc::clone(&self.runtime),
            fetcher,
            &meta,
            self.options.chunk_size,
            self.options.read_ahead,
            Arc::clone(&self.bytes_read),
        ))
    }

    /// The whole object at `url` (for small files such as `sizes.json`).
    ///
    /// # Errors
    /// As [`ShardStore::open`], plus any error met while reading.
    pub fn read_all(&self, url: &str) -> Result<Vec<u8>, DataError> {
        let mut out = Vec::new();
        let mut reader = self.open(url)?;
        std::io::Read::read_to_end(&mut reader, &mut out).map_err(|e| match e.into_inner() {
            Some(inner) => match inner.downcast::<DataError>() {
                Ok(data) => *data,
                Err(other) => DataError::Store { url: url.to_owned(), reason: other.to_string() },
            },
            None => DataError::Store { url: url.to_owned(), reason: "read failed".to_owned() },
        })?;
        Ok(out)
    }

    /// The `sizes.json` beside `shard_url`.
    ///
    /// # Errors
    /// [`DataError::SizesJson`] when it is missing or malformed.
    pub fn read_sizes_json(&self, shard_url: &str) -> Result<SizesJson, DataError> {
        let url = sizes_json_url(shard_url);
        let bytes = self.read_all(&url).map_err(|e| DataError::SizesJson {
            url: url.clone(),
            reason: format!("cannot read it ({e}); pass --train-num-samples instead"),
        })?;
        SizesJson::parse(&bytes, &url)
    }

    /// The retry policy of shard reads.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.options.retry
    }

    /// Waits `delay` with the store's sleeper (tests observe it instead of waiting).
    pub async fn sleep(&self, delay: std::time::Duration) {
        self.sleeper.sleep(delay).await;
    }

    /// The whole object at `url`, with the retries of shard reads, from async code; `None`
    /// when it does not exist.
    ///
    /// # Errors
    /// As [`ShardStore::open`] (but not for a missing object), plus any error met while reading.
    pub async fn read_optional(&self, url: &str) -> Result<Option<bytes::Bytes>, DataError> {
        let fetcher = match self.fetcher(url) {
            Ok(f) => f,
            Err(DataError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = match fetcher.head().await {
            Ok(meta) => meta,
            Err(DataError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.size == 0 {
            return Ok(Some(bytes::Bytes::new()));
        }
        fetcher.fetch(0..meta.size, meta.e_tag.clone()).await.map(Some)
    }

    /// The `sizes.json` beside `shard_url`, keeping the store's error: a missing file is
    /// [`DataError::NotFound`], which callers may take as "no sizes here".
    ///
    /// # Errors
    /// The store's errors, and [`DataError::SizesJson`] when it is malformed.
    pub fn read_sizes_json_strict(&self, shard_url: &str) -> Result<SizesJson, DataError> {
        let url = sizes_json_url(shard_url);
        SizesJson::parse(&self.read_all(&url)?, &url)
    }

    /// The number of samples in `source`, from the `sizes.json` of each folder its shards
    /// are in.
    ///
    /// # Errors
    /// [`DataError::SizesJson`] when a `sizes.json` is missing, malformed, or lacks shards.
    pub fn num_samples(&self, source: &ShardSource) -> Result<u64, DataError> {
        let mut by_folder: Vec<(String, Vec<&str>)> = Vec::new();
        for url in &source.urls {
            let folder = sizes_json_url(url);
            match by_folder.iter_mut().find(|(f, _)| *f == folder) {
                Some((_, urls)) => urls.push(url),
                None => by_folder.push((folder, vec![url])),
            }
        }
        let mut total = 0;
        for (_, urls) in &by_folder {
            total += self.read_sizes_json(urls[0])?.total_samples(urls)?;
        }
        Ok(total)
    }
}

/// Builds the object store for `url`'s scheme and bucket from the environment and `config`.
/// `object_store`'s own retries are turned off: [`ShardReader`] retries, by byte range.
///
/// # Errors
/// The builder's error (which never includes credential values).
pub fn build_store(url: &ShardUrl, config: &[(String, String)]) -> object_store::Result<Arc<dyn ObjectStore>> {
    build_store_with_retry(url, config, RetryConfig { max_retries: 0, ..RetryConfig::default() })
}

/// As [`build_store`], with `object_store`'s own retries of each request set by `retry` (the
/// checkpoint writer keeps them: a multipart upload retries part by part).
///
/// # Errors
/// The builder's error (which never includes credential values).
pub fn build_store_with_retry(
    url: &ShardUrl,
    config: &[(String, String)],
    retry: RetryConfig,
) -> object_store::Result<Arc<dyn ObjectStore>> {
    let root = format!("{}://{}", url.scheme.as_str(), url.bucket);
    Ok(match url.scheme {
        UrlScheme::Local => Arc::new(LocalFileSystem::new()),
        UrlScheme::S3 => {
            let mut b = AmazonS3Builder::from_env().with_url(root).with_retry(retry);
            for (k, v) in config {
                if let Ok(key) = k.parse::<AmazonS3ConfigKey>() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build()?)
        }
        UrlScheme::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env().with_url(root).with_retry(retry);
            for (k, v) in config {
                if let Ok(key) = k.parse::<GoogleConfigKey>() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build()?)
        }
        UrlScheme::Azure => {
            let mut b = MicrosoftAzureBuilder::from_env().with_url(root).with_retry(retry);
            for (k, v) in config {
                if let Ok(key) = k.parse::<AzureConfigKey>() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build()?)
        }
        UrlScheme::Http => {
            let mut b = HttpBuilder::new().with_url(url.bucket.clone()).with_retry(retry);
            if url.bucket.starts_with("http://") {
                b = b.with_config(ClientConfigKey::AllowHttp, "true");
            }
            for (k, v) in config {
                if let Ok(key) = k.parse::<ClientConfigKey>() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build()?)
        }
    })
}
