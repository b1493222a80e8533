//! Shard lists and streaming shard reads: brace expansion against Python's `braceexpand`,
//! `::` sources and weights, `sizes.json`, local streaming, and object-store reads with
//! injected faults, both in memory and against a real S3 server (`moto_server`) on loopback.

#[path = "store/http.rs"]
mod http;
#[path = "store/moto.rs"]
mod moto;
#[path = "store/proxy.rs"]
mod proxy;

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clipfleet_dataloader::shards::{brace_expand, parse_sources, read_sizes_json, ShardUrl, SizesJson, UrlScheme};
use clipfleet_dataloader::store::{
    build_store, Fault, FaultyStore, RecordingSleeper, RetryPolicy, ShardStore, ShardStoreOptions,
};
use clipfleet_dataloader::DataError;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Deterministic bytes that differ at every offset modulo 251, so misplaced ranges show.
fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

fn read_fully(reader: &mut impl Read, buf_len: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; buf_len];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn options(chunk_size: usize, read_ahead: usize, retry: RetryPolicy) -> ShardStoreOptions {
    ShardStoreOptions { chunk_size, read_ahead, retry, ..ShardStoreOptions::default() }
}

/// No jitter: the delays are exactly base · 2^(k-1), capped.
fn exact_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(30),
        jitter: 0.0,
        seed: 0,
    }
}

#[test]
fn brace_expansion_matches_python_braceexpand() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store/braceexpand.json");
    let text = std::fs::read_to_string(path).expect("fixture; see gen_braceexpand.py");
    let fixture: serde_json::Value = serde_json::from_str(&text).expect("json");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30);
    for case in cases {
        let pattern = case["pattern"].as_str().expect("pattern");
        let got = brace_expand(pattern);
        match case["expanded"].as_array() {
            Some(want) => {
                let want: Vec<&str> = want.iter().map(|v| v.as_str().expect("str")).collect();
                assert_eq!(got.expect(pattern), want, "pattern {pattern:?}");
            }
            None => {
                let err = got.expect_err(pattern).to_string();
                assert!(err.contains(pattern) && err.contains("unbalanced"), "{pattern:?}: {err}");
            }
        }
    }
}

#[test]
fn sources_split_on_double_colon_with_weights() {
    let sources = parse_sources("/d/a-{00..02}.tar::s3://shards/b-{0..1}.tar", Some("1::2.5")).expect("parse");
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0].urls, ["/d/a-00.tar", "/d/a-01.tar", "/d/a-02.tar"]);
    assert_eq!(sources[1].urls, ["s3://shards/b-0.tar", "s3://shards/b-1.tar"]);
    assert_eq!((sources[0].weight, sources[1].weight), (1.0, 2.5));

    let unweighted = parse_sources("x.tar::y.tar", None).expect("parse");
    assert!(unweighted.iter().all(|s| s.weight == 1.0));

    for bad in ["1", "1::2::3", "1::0", "1::-2", "1::abc", "1::nan"] {
        let err = parse_sources("x.tar::y.tar", Some(bad)).expect_err(bad).to_string();
        assert!(err.contains("train_data_upsampling_factors"), "{bad}: {err}");
    }
    let err = parse_sources("x.tar::::y.tar", None).expect_err("empty source").to_string();
    assert!(err.contains("empty source"), "{err}");
    assert!(parse_sources("x-{1..2.tar", None).is_err());
}

#[test]
fn urls_are_classified_by_scheme() {
    let cases = [
        ("/data/a.tar", UrlScheme::Local, "", "/data/a.tar"),
        ("rel/a.tar", UrlScheme::Local, "", "rel/a.tar"),
        ("file:///data/a.tar", UrlScheme::Local, "", "/data/a.tar"),
        ("s3://shards/x/a.tar", UrlScheme::S3, "shards", "x/a.tar"),
        ("s3a://shards/a.tar", UrlScheme::S3, "shards", "a.tar"),
        ("gs://bkt/a.tar", UrlScheme::Gcs, "bkt", "a.tar"),
        ("az://ctr/a.tar", UrlScheme::Azure, "ctr", "a.tar"),
        ("abfss://ctr@acct.dfs.core.windows.net/a.tar", UrlScheme::Azure, "ctr@acct.dfs.core.windows.net", "a.tar"),
        ("azure://ctr/a.tar", UrlScheme::Azure, "ctr", "a.tar"),
        ("https://host:8443/p/a.tar", UrlScheme::Http, "https://host:8443", "p/a.tar"),
        ("http://127.0.0.1/a.tar", UrlScheme::Http, "http://127.0.0.1", "a.tar"),
    ];
    for (url, scheme, bucket, key) in cases {
        let parsed = ShardUrl::parse(url).expect(url);
        assert_eq!((parsed.scheme, parsed.bucket.as_str(), parsed.key.as_str()), (scheme, bucket, key), "{url}");
    }
    for bad in ["ftp://h/a.tar", "s3:///a.tar", "s3://bucket", "s3://bucket/", "pipe:curl x", "file://rel/a"] {
        let err = ShardUrl::parse(bad).expect_err(bad).to_string();
        assert!(err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn sizes_json_totals_and_names_missing_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes = r#"{"s-0.tar": 100, "s-1.tar": "250", "s-2.tar": 7}"#;
    std::fs::write(dir.path().join("sizes.json"), sizes).expect("write");
    let parsed = read_sizes_json(&dir.path().join("sizes.json")).expect("read");
    let urls = brace_expand(&format!("{}/s-{{0..2}}.tar", dir.path().display())).expect("expand");
    assert_eq!(parsed.total_samples(&urls).expect("total"), 357);

    let err = parsed.total_samples(&["a/s-0.tar", "a/s-9.tar", "a/t.tar"]).expect_err("missing");
    let text = err.to_string();
    assert!(text.contains("2 shard(s) missing") && text.contains("s-9.tar") && text.contains("t.tar"), "{text}");
    assert!(text.contains("sizes.json"), "{text}");

    for bad in ["[1]", r#"{"a": -1}"#, r#"{"a": "x"}"#, "not json"] {
        assert!(SizesJson::parse(bad.as_bytes(), "u/sizes.json").is_err(), "{bad}");
    }

    // Through the store: one sizes.json per folder, fetched beside the shards.
    let store = ShardStore::new(ShardStoreOptions::default()).expect("store");
    let source = clipfleet_dataloader::shards::ShardSource { urls, weight: 1.0 };
    assert_eq!(store.num_samples(&source).expect("num_samples"), 357);
    let elsewhere = clipfleet_dataloader::shards::ShardSource { urls: vec!["/nonexistent/x.tar".into()], weight: 1.0 };
    let err = store.num_samples(&elsewhere).expect_err("no sizes.json").to_string();
    assert!(err.contains("/nonexistent/sizes.json") && err.contains("--train-num-samples"), "{err}");
}

#[test]
fn local_streaming_equals_the_file_around_chunk_boundaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = 1000;
    for read_ahead in [1, 3] {
        let store = ShardStore::new(options(chunk, read_ahead, RetryPolicy::default())).expect("store");
        let counter = store.bytes_read();
        let mut total = 0u64;
        for len in [0, 1, 999, 1000, 1001, 2999, 3000, 3001, 10_500] {
            let path = dir.path().join(format!("f{len}.bin"));
            let data = pattern_bytes(len);
            std::fs::write(&path, &data).expect("write");
            for buf_len in [1, 7, 1000, 4096] {
                let mut reader = store.open(path.to_str().expect("utf-8")).expect("open");
                assert_eq!(reader.size(), len as u64);
                assert_eq!(read_fully(&mut reader, buf_len).expect("read"), data, "len {len} buf {buf_len}");
                assert_eq!(reader.position(), len as u64);
                total += len as u64;
            }
        }
        assert_eq!(counter.load(Ordering::Relaxed), total);
    }
    let store = ShardStore::new(ShardStoreOptions::default()).expect("store");
    let missing = dir.path().join("missing.tar");
    let err = store.open(missing.to_str().expect("utf-8")).expect_err("missing");
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("missing.tar"), "{err}");
}

/// A store whose `s3://mem/...` URLs are served from memory through a [`FaultyStore`].
fn faulty_memory(
    len: usize,
    chunk: usize,
    retry: RetryPolicy,
    faults: impl FnOnce(FaultyStore) -> FaultyStore,
) -> (ShardStore, Arc<FaultyStore>, Arc<RecordingSleeper>, Vec<u8>) {
    let sleeper = Arc::new(RecordingSleeper::default());
    let store = ShardStore::new(options(chunk, 1, retry)).expect("store").with_sleeper(sleeper.clone());
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let data = pattern_bytes(len);
    store
        .runtime()
        .block_on(memory.put(&ObjectPath::from("d/shard.tar"), PutPayload::from(data.clone())))
        .expect("put");
    let faulty = Arc::new(faults(FaultyStore::new(memory)));
    store.register(UrlScheme::S3, "mem", faulty.clone());
    (store, faulty, sleeper, data)
}

const MEM_URL: &str = "s3://mem/d/shard.tar";

#[test]
fn reset_mid_stream_resumes_by_byte_range() {
    // Call 1 is the HEAD; call 2 fetches chunk 0 and is reset after 1500 bytes.
    for fault in [Fault::ResetAfter(1500), Fault::EndAfter(1500), Fault::Unavailable] {
        let (store, faulty, sleeper, data) = faulty_memory(10_000, 4096, exact_policy(5), |f| f.on_call(2, fault));
        let mut reader = store.open(MEM_URL).expect("open");
        assert_eq!(read_fully(&mut reader, 777).expect("read"), data, "{fault:?}");
        assert_eq!(faulty.calls(), 1 + 3 + 1, "{fault:?}: HEAD, three chunks, one retry");
        assert_eq!(sleeper.delays(), [Duration::from_millis(10)], "{fault:?}");
        assert_eq!(store.retries().load(Ordering::Relaxed), 1);
        assert_eq!(store.bytes_read().load(Ordering::Relaxed), 10_000);
    }
}

#[test]
fn not_found_and_forbidden_fail_fast_without_retries() {
    for (call, fault) in [(1, Fault::NotFound), (1, Fault::Forbidden), (2, Fault::NotFound), (3, Fault::Forbidden)] {
        let (store, faulty, sleeper, _) = faulty_memory(10_000, 4096, exact_policy(5), |f| f.on_call(call, fault));
        let err = match store.open(MEM_URL) {
            Err(e) => e.to_string(),
            Ok(mut reader) => read_fully(&mut reader, 4096).expect_err("must fail").to_string(),
        };
        assert!(err.contains(MEM_URL), "{fault:?}: {err}");
        let word = if fault == Fault::NotFound { "not found" } else { "access denied" };
        assert!(err.contains(word), "{fault:?}: {err}");
        assert_eq!(faulty.calls(), call, "{fault:?}: no retry");
        assert!(sleeper.delays().is_empty(), "{fault:?}");
    }
}

#[test]
fn exhausted_retries_name_the_url_and_attempts_and_follow_the_backoff() {
    let (store, faulty, sleeper, _) =
        faulty_memory(10_000, 4096, exact_policy(5), |f| f.on_every_call_from(3, Fault::ResetAfter(100)));
    let mut reader = store.open(MEM_URL).expect("open");
    let err = read_fully(&mut reader, 4096).expect_err("exhausted");
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<DataError>()).expect("DataError inside");
    match inner {
        DataError::RetriesExhausted { url, attempts, offset, .. } => {
            assert_eq!((url.as_str(), *attempts), (MEM_URL, 5));
            assert_eq!(*offset, 4096 + 5 * 100, "each attempt resumed after the 100 bytes it got");
        }
        other => panic!("unexpected {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(MEM_URL) && text.contains("5 attempts"), "{text}");
    assert_eq!(faulty.calls(), 2 + 5);
    let ms: Vec<u128> = sleeper.delays().iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [10, 20, 30, 30], "base 10 ms, doubling, capped at 30 ms");
    // The bytes before the failure were delivered intact, and reading again repeats the error.
    assert_eq!(reader.position(), 4096);
    assert!(reader.read(&mut [0u8; 8]).is_err());

    // With jitter, each delay is the policy's, within [nominal/2, nominal].
    let policy = RetryPolicy { jitter: 0.5, seed: 42, ..exact_policy(4) };
    let (store, _, sleeper, _) =
        faulty_memory(1000, 4096, policy.clone(), |f| f.on_every_call_from(2, Fault::Unavailable));
    let mut reader = store.open(MEM_URL).expect("open");
    assert!(read_fully(&mut reader, 64).is_err());
    let want: Vec<Duration> = (1..=3).map(|k| policy.delay(k, 0)).collect();
    assert_eq!(sleeper.delays(), want);
    for (k, d) in want.iter().enumerate() {
        let nominal = exact_policy(4).delay(k as u32 + 1, 0);
        assert!(*d <= nominal && *d >= nominal / 2, "{d:?} vs {nominal:?}");
    }
}

// ---- against a real S3 server on loopback ----

#[test]
fn s3_multi_chunk_object_streams_back_identical() {
    let server = moto::server();
    let store =
        ShardStore::new(ShardStoreOptions { config: server.config(), ..options(64 << 10, 3, RetryPolicy::default()) })
            .expect("store");
    let data = pattern_bytes((1 << 20) + 12_345);
    server.upload(&store, "multi/shard-000000.tar", &data);
    let url = "s3://shards/multi/shard-000000.tar";
    let mut reader = store.open(url).expect("open");
    assert_eq!(reader.size(), data.len() as u64);
    assert_eq!(read_fully(&mut reader, 10_000).expect("read"), data);
    assert_eq!(store.bytes_read().load(Ordering::Relaxed), data.len() as u64);
    assert_eq!(store.retries().load(Ordering::Relaxed), 0);

    server.upload(&store, "multi/sizes.json", br#"{"shard-000000.tar": 42}"#);
    let source = parse_sources("s3://shards/multi/shard-{000000..000000}.tar", None).expect("parse");
    assert_eq!(store.num_samples(&source[0]).expect("sizes.json over S3"), 42);
}

/// A store for `s3://shards/...` on the moto server, wrapped in a [`FaultyStore`].
fn faulty_s3(
    server: &moto::Moto,
    chunk: usize,
    retry: RetryPolicy,
    faults: impl FnOnce(FaultyStore) -> FaultyStore,
) -> (ShardStore, Arc<FaultyStore>, Arc<RecordingSleeper>) {
    let sleeper = Arc::new(RecordingSleeper::default());
    let store = ShardStore::new(ShardStoreOptions { config: server.config(), ..options(chunk, 1, retry) })
        .expect("store")
        .with_sleeper(sleeper.clone());
    let s3 = build_store(&ShardUrl::parse("s3://shards/x").expect("url"), &server.config()).expect("s3");
    let faulty = Arc::new(faults(FaultyStore::new(s3)));
    store.register(UrlScheme::S3, "shards", faulty.clone());
    (store, faulty, sleeper)
}

#[test]
fn s3_not_found_fails_fast_with_the_url() {
    let server = moto::server();
    let (store, faulty, sleeper) = faulty_s3(&server, 1 << 16, exact_policy(5), |f| f);
    let url = "s3://shards/no/such-shard.tar";
    let err = store.open(url).expect_err("404");
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(url), "{err}");
    assert_eq!(faulty.calls(), 1, "one HEAD, no retry");
    assert!(sleeper.delays().is_empty());
}

#[test]
fn s3_reset_mid_stream_resumes_and_bytes_match() {
    let server = moto::server();
    let (store, faulty, sleeper) =
        faulty_s3(&server, 100_000, exact_policy(5), |f| f.on_call(3, Fault::ResetAfter(70_000)));
    let data = pattern_bytes(250_000);
    server.upload(&store, "reset/shard.tar", &data);
    let mut reader = store.open("s3://shards/reset/shard.tar").expect("open");
    assert_eq!(read_fully(&mut reader, 8192).expect("read"), data);
    assert_eq!(faulty.calls(), 1 + 3 + 1, "HEAD, three chunks, one resumed range");
    assert_eq!(sleeper.delays(), [Duration::from_millis(10)]);
}

#[test]
fn s3_retries_exhausted_give_a_clear_error() {
    let server = moto::server();
    let (store, faulty, sleeper) =
        faulty_s3(&server, 100_000, exact_policy(3), |f| f.on_every_call_from(2, Fault::ResetAfter(1000)));
    server.upload(&store, "flaky/shard.tar", &pattern_bytes(50_000));
    let url = "s3://shards/flaky/shard.tar";
    let mut reader = store.open(url).expect("open");
    let text = read_fully(&mut reader, 8192).expect_err("exhausted").to_string();
    assert!(text.contains(url) && text.contains("3 attempts") && text.contains("at byte 3000"), "{text}");
    assert_eq!(faulty.calls(), 1 + 3);
    assert_eq!(sleeper.delays().len(), 2);
}

#[test]
fn s3_connection_dropped_mid_stream_by_a_proxy_is_resumed() {
    let server = moto::server();
    let direct =
        ShardStore::new(ShardStoreOptions { config: server.config(), ..ShardStoreOptions::default() }).expect("store");
    let data = pattern_bytes(250_000);
    server.upload(&direct, "proxied/shard.tar", &data);

    // moto closes every connection after one response, so connection 1 carries the HEAD and
    // connection 2 the first 100 000-byte range; the proxy drops it 30 000 bytes in.
    let proxy = proxy::start(server.port(), 2, 30_000);
    let mut config = server.config();
    config[0].1 = format!("http://127.0.0.1:{}", proxy.port);
    let sleeper = Arc::new(RecordingSleeper::default());
    let store = ShardStore::new(ShardStoreOptions { config, ..options(100_000, 1, exact_policy(5)) })
        .expect("store")
        .with_sleeper(sleeper.clone());
    let mut reader = store.open("s3://shards/proxied/shard.tar").expect("open");
    assert_eq!(read_fully(&mut reader, 8192).expect("read"), data);
    assert_eq!(proxy.connections.load(Ordering::SeqCst), 5, "HEAD, cut range, resumed range, two more ranges");
    assert_eq!(store.retries().load(Ordering::Relaxed), 1);
    assert_eq!(sleeper.delays(), [Duration::from_millis(10)]);
}

#[test]
fn http_shard_streams_identically_through_a_dropped_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = pattern_bytes(300_000);
    std::fs::write(dir.path().join("shard.tar"), &data).expect("write");
    let server = http::serve(dir.path());

    // Straight from the server, in 64 KiB ranges.
    let direct = ShardStore::new(options(65_536, 2, exact_policy(3))).expect("store");
    let mut reader = direct.open(&server.url("shard.tar")).expect("open");
    assert_eq!(read_fully(&mut reader, 8192).expect("read"), data);
    let missing = direct.open(&server.url("missing.tar")).expect_err("404");
    assert!(matches!(missing, DataError::NotFound { .. }), "{missing}");
    assert!(missing.to_string().contains("missing.tar"), "{missing}");

    // Through a proxy that drops the second connection (the first range) 30 000 bytes in.
    let proxy = proxy::start(server.port, 2, 30_000);
    let sleeper = Arc::new(RecordingSleeper::default());
    let store = ShardStore::new(options(100_000, 1, exact_policy(5))).expect("store").with_sleeper(sleeper.clone());
    let url = format!("http://127.0.0.1:{}/shard.tar", proxy.port);
    let mut reader = store.open(&url).expect("open");
    assert_eq!(read_fully(&mut reader, 8192).expect("read"), data, "bytes identical after the resume");
    assert_eq!(store.retries().load(Ordering::Relaxed), 1);
    assert_eq!(sleeper.delays(), [Duration::from_millis(10)]);
}

/// An object replaced while it is being read is an error that names it, not a stream that
/// splices two versions: every ranged GET after the `HEAD` carries `If-Match` with its ETag.
#[test]
fn s3_object_replaced_during_a_read_is_an_error_not_a_spliced_stream() {
    let server = moto::server();
    let store = ShardStore::new(ShardStoreOptions { config: server.config(), ..options(64 << 10, 1, exact_policy(3)) })
        .expect("store");
    let old = pattern_bytes(400_000);
    server.upload(&store, "replaced/shard.tar", &old);
    let url = "s3://shards/replaced/shard.tar";
    let mut reader = store.open(url).expect("open");
    let mut first = vec![0u8; 10_000];
    std::io::Read::read_exact(&mut reader, &mut first).expect("first bytes");
    assert_eq!(first, old[..10_000]);
    let new: Vec<u8> = old.iter().map(|b| b ^ 0xFF).collect();
    server.upload(&store, "replaced/shard.tar", &new);
    let mut rest = Vec::new();
    let err = std::io::Read::read_to_end(&mut reader, &mut rest).expect_err("the object changed");
    let text = err.to_string();
    assert!(text.contains(url), "{text}");
    assert!(text.to_lowercase().contains("precondition") || text.contains("changed"), "{text}");
    // Whatever was read before the error came from the old version only.
    assert_eq!(rest, old[10_000..10_000 + rest.len()], "bytes of the new version were spliced in");
    assert!(rest.len() < old.len() - 10_000, "the read stopped at the change");
}
