//! The shard loader end to end on real shards written by `ShardWriter`: elastic determinism,
//! exact resume, epochs, resampling, evaluation passes and bad input.

#[path = "store/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "store/moto.rs"]
mod moto;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use clipfleet_dataloader::loader::{DataSpec, LoadedBatch, Loader, LoaderConfig, LoaderState};
use clipfleet_dataloader::shard_writer::{ShardFormat, ShardRecord, ShardWriter, ShardWriterOptions};
use clipfleet_dataloader::skip::SkipReason;
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::synthetic::{Split, SyntheticDataset};
use clipfleet_dataloader::tokenizer::word::WordTokenizer;
use clipfleet_dataloader::tokenizer::Tokenizer;
use clipfleet_dataloader::DataError;
use image::codecs::jpeg::JpegEncoder;

const SIDE: u32 = 24;
const CTX: usize = 16;

/// Writes `n` synthetic samples into shards of `per_shard`, returning the brace pattern.
fn write_shards(dir: &Path, n: u64, per_shard: u64, format: ShardFormat) -> String {
    write_labelled_shards(dir, n, per_shard, format, 0)
}

/// [`write_shards`] with `label_offset` added to every `cls` label.
fn write_labelled_shards(dir: &Path, n: u64, per_shard: u64, format: ShardFormat, label_offset: i64) -> String {
    let mut writer = ShardWriter::new(ShardWriterOptions {
        output: dir.to_path_buf(),
        format,
        samples_per_shard: per_shard,
        prefix: "shard".into(),
    })
    .expect("writer");
    let data = SyntheticDataset::new(32, 7);
    for i in 0..n {
        let s = data.sample(Split::Train, i, None);
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), 85).encode_image(&s.image).expect("jpeg");
        writer
            .write(ShardRecord {
                image: jpeg,
                image_ext: "jpg".into(),
                caption: s.caption,
                width: 32,
                height: 32,
                label: Some(i64::from(s.label) + label_offset),
            })
            .expect("write");
    }
    let summary = writer.finish().expect("finish");
    let last = summary.sizes.len() - 1;
    format!("{}/shard-{{000000..{last:06}}}.{}", dir.display(), format.extension())
}

fn store() -> Arc<ShardStore> {
    Arc::new(ShardStore::new(ShardStoreOptions::default()).expect("store"))
}

fn tokenizer() -> Arc<dyn Tokenizer> {
    Arc::new(WordTokenizer::new())
}

fn spec(urls: &str, threads: usize, window: u64) -> DataSpec {
    let mut spec = DataSpec::new(urls);
    spec.decode_threads = threads;
    spec.shuffle_window = window;
    spec
}

fn loader(spec: &DataSpec, world: usize, rank: usize, batch: usize, resume: Option<LoaderState>) -> Loader {
    let store = store();
    let cfg = LoaderConfig::training(spec, &store, world, rank, batch, 11, SIDE, CTX, resume.as_ref()).expect("config");
    Loader::new(cfg, store, tokenizer(), resume).expect("loader")
}

fn next(l: &mut Loader) -> LoadedBatch {
    l.next_batch().expect("batch").expect("training never ends")
}

#[test]
fn global_batches_do_not_depend_on_world_size_or_threads() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = write_shards(dir.path(), 300, 25, ShardFormat::WebDataset);
    let mut one = loader(&spec(&urls, 1, 40), 1, 0, 64, None);
    let mut two = [loader(&spec(&urls, 3, 40), 2, 0, 64, None), loader(&spec(&urls, 2, 40), 2, 1, 64, None)];
    let steps = one.config().steps_per_epoch.expect("epoch length");
    assert_eq!(one.config().partitions, 8, "auto partitions: largest divisor of 64 up to 12 shards");
    // 300 samples cut into 8 partitions of 37 or 38; 8 rows of each per batch.
    assert_eq!(steps, 37 / 8);
    let mut seen = BTreeSet::new();
    for step in 0..steps + 2 {
        let a = next(&mut one);
        let b0 = next(&mut two[0]);
        let b1 = next(&mut two[1]);
        assert_eq!(a.keys.len(), 64);
        assert_eq!((b0.keys.len(), b1.keys.len()), (32, 32));
        let joined: Vec<String> = b0.keys.iter().chain(&b1.keys).cloned().collect();
        assert_eq!(a.keys, joined, "step {step}: same rows in the same order");
        let pixels: Vec<u8> = b0.images.data.iter().chain(&b1.images.data).copied().collect();
        assert_eq!(a.images.data, pixels, "step {step}: same augmentation");
        let tokens: Vec<i64> = b0.tokens.iter().chain(&b1.tokens).copied().collect();
        assert_eq!(a.tokens, tokens);
        if step < steps {
            assert_eq!(a.state_after.epoch, 0);
            for k in &a.keys {
                assert!(seen.insert(k.clone()), "{k} twice in epoch 0");
            }
        } else {
            assert_eq!(a.state_after.epoch, 1, "the stream rolls over into epoch 1");
        }
    }
    assert_eq!(seen.len() as u64, steps * 64);
}

#[test]
fn epochs_reshuffle() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = write_shards(dir.path(), 120, 20, ShardFormat::WebDataset);
    let mut l = loader(&spec(&urls, 2, 16), 1, 0, 24, None);
    let steps = l.config().steps_per_epoch.expect("steps");
    let e0: Vec<String> = (0..steps).flat_map(|_| next(&mut l).keys).collect();
    let e1: Vec<String> = (0..steps).flat_map(|_| next(&mut l).keys).collect();
    assert_ne!(e0, e1);
    assert_eq!(l.state().epoch, 1);
}

#[test]
fn resume_continues_the_epoch_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = write_shards(dir.path(), 260, 30, ShardFormat::WebDataset);
    let mut straight = loader(&spec(&urls, 2, 13), 1, 0, 32, None);
    let steps = straight.config().steps_per_epoch.expect("steps");
    let reference: Vec<LoadedBatch> = (0..steps).map(|_| next(&mut straight)).collect();
    for (cut, threads) in [(1u64, 1usize), (3, 4), (steps - 1, 2)] {
        let mut first = loader(&spec(&urls, threads, 13), 1, 0, 32, None);
        let mut keys: Vec<String> = Vec::new();
        for _ in 0..cut {
            keys.extend(next(&mut first).keys);
        }
        // A checkpoint stores the state as JSON; the loader is dropped mid-prefetch.
        let saved = serde_json::to_string(first.state()).expect("json");
        drop(first);
        let state: LoaderState = serde_json::from_str(&saved).expect("state");
        let mut resumed = loader(&spec(&urls, 5 - threads, 13), 1, 0, 32, Some(state));
        for s in cut..steps {
            let b = next(&mut resumed);
            assert_eq!(b.images.data, reference[s as usize].images.data, "cut {cut}, step {s}: same pixels");
            keys.extend(b.keys);
        }
        let expected: Vec<String> = reference.iter().flat_map(|b| b.keys.clone()).collect();
        assert_eq!(keys, expected, "cut {cut}: before + after = one uninterrupted epoch");
        assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len(), "no duplicates");
    }
}

#[test]
fn resume_with_another_world_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = write_shards(dir.path(), 200, 25, ShardFormat::WebDataset);
    let mut straight = loader(&spec(&urls, 2, 10), 1, 0, 32, None);
    let steps = straight.config().steps_per_epoch.expect("steps");
    let reference: Vec<Vec<String>> = (0..steps).map(|_| next(&mut straight).keys).collect();
    let mut ranks = [loader(&spec(&urls, 1, 10), 2, 0, 32, None), loader(&spec(&urls, 1, 10), 2, 1, 32, None)];
    let a = next(&mut ranks[0]);
    let b = next(&mut ranks[1]);
    let merged = LoaderState::merge(&[a.state_after, b.state_after]).expect("same step");
    let mut single = loader(&spec(&urls, 2, 10), 1, 0, 32, Some(merged));
    for (s, keys) in reference.iter().enumerate().skip(1) {
        assert_eq!(&next(&mut single).keys, keys, "step {s} after resuming 2 ranks as 1");
    }
}

#[test]
fn parquet_shards_read_like_tars() {
    let dir = tempfile::tempdir().expect("tmp");
    let tars = write_shards(&dir.path().join("wds"), 100, 20, ShardFormat::WebDataset);
    let pq = write_shards(&dir.path().join("pq"), 100, 20, ShardFormat::Parquet);
    let mut a = loader(&spec(&tars, 2, 8), 1, 0, 20, None);
    let mut b = loader(&spec(&pq, 2, 8), 1, 0, 20, None);
    assert_eq!(a.config().steps_per_epoch, b.config().steps_per_epoch);
    for _ in 0..a.config().steps_per_epoch.unwrap_or(0) {
        let (x, y) = (next(&mut a), next(&mut b));
        assert_eq!(x.images.data, y.images.data);
        assert_eq!(x.tokens, y.tokens);
    }
}

#[test]
fn evaluation_reads_every_sample_once_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = write_shards(dir.path(), 45, 10, ShardFormat::WebDataset);
    let cfg = LoaderConfig::evaluation(&spec(&urls, 3, 1), 16, SIDE, CTX).expect("config");
    let mut l = Loader::new(cfg, store(), tokenizer(), None).expect("loader");
    let mut sizes = Vec::new();
    let mut keys = Vec::new();
    while let Some(b) = l.next_batch().expect("batch") {
        sizes.push(b.keys.len());
        assert_eq!(b.labels.len(), b.keys.len());
        assert!(b.labels.iter().all(Option::is_some), "cls labels are read");
        keys.extend(b.keys);
    }
    assert_eq!(sizes, vec![16, 16, 13]);
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "shard order, sample order");
}

#[test]
fn resampled_mode_draws_by_source_weight() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = write_shards(&dir.path().join("a"), 40, 10, ShardFormat::WebDataset);
    let b = write_labelled_shards(&dir.path().join("b"), 40, 10, ShardFormat::WebDataset, 1000);
    let mut s = spec(&format!("{a}::{b}"), 2, 8);
    s.resampled = true;
    s.upsampling_factors = Some("1::3".into());
    s.num_samples = Some(320);
    let mut l = loader(&s, 1, 0, 32, None);
    assert_eq!(l.config().steps_per_epoch, Some(10));
    let mut from_b = 0;
    let mut total = 0;
    for _ in 0..10 {
        let batch = next(&mut l);
        total += batch.keys.len();
        from_b += batch.labels.iter().filter(|l| l.is_some_and(|l| l >= 1000)).count();
    }
    assert_eq!(total, 320);
    // Each shard of source b weighs 3, so b gives ~3/4 of the draws.
    assert!((180..=300).contains(&from_b), "{from_b} of 320 from source b");
    let mut no_count = spec(&a, 1, 8);
    no_count.resampled = true;
    let err = LoaderConfig::training(&no_count, &store(), 1, 0, 8, 1, SIDE, CTX, None).expect_err("needs a count");
    assert!(err.to_string().contains("train_num_samples"), "{err}");
    let mut weights_without_resampling = spec(&format!("{a}::{b}"), 1, 8);
    weights_without_resampling.upsampling_factors = Some("1::2".into());
    let err = LoaderConfig::training(&weights_without_resampling, &store(), 1, 0, 8, 1, SIDE, CTX, None)
        .expect_err("weights need resampling");
    assert!(err.to_string().contains("train_data_upsampling_factors"), "{err}");
}

#[test]
fn one_shard_is_cut_for_two_ranks_and_unknown_counts_deal_whole_shards() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = write_shards(dir.path(), 30, 30, ShardFormat::WebDataset);
    let mut ranks = [loader(&spec(&urls, 1, 8), 2, 0, 8, None), loader(&spec(&urls, 1, 8), 2, 1, 8, None)];
    assert_eq!(ranks[0].config().steps_per_epoch, Some(3), "15 samples per partition, 4 rows each");
    let mut keys = BTreeSet::new();
    for _ in 0..3 {
        for r in &mut ranks {
            for k in next(r).keys {
                assert!(keys.insert(k.clone()), "{k} read by both ranks");
            }
        }
    }
    assert_eq!(keys.len(), 24);
    // Without sizes.json, whole shards are dealt: one shard cannot feed two ranks.
    std::fs::remove_file(dir.path().join("sizes.json")).expect("rm sizes.json");
    let mut counted = spec(&urls, 1, 8);
    counted.num_samples = Some(24);
    let err = LoaderConfig::training(&counted, &store(), 2, 0, 8, 1, SIDE, CTX, None).expect_err("1 shard, 2 ranks");
    let text = err.to_string();
    assert!(text.contains("train_data") && text.contains("at least one shard per rank"), "{text}");
    let err = LoaderConfig::training(&spec(&urls, 1, 8), &store(), 1, 0, 8, 1, SIDE, CTX, None).expect_err("no sizes");
    assert!(err.to_string().contains("--train-num-samples"), "{err}");
}

/// Shards of 1, 100 and 7 samples, as three folders (each with its `sizes.json`); the labels
/// of folder `i` are offset by `1000 i`, so that [`ids`] tells samples apart.
fn uneven_shards(dir: &Path) -> String {
    [(1, "a", 0), (100, "b", 1000), (7, "c", 2000)]
        .iter()
        .map(|&(n, name, offset)| write_labelled_shards(&dir.join(name), n, n, ShardFormat::WebDataset, offset))
        .collect::<Vec<_>>()
        .join("::")
}

/// `folder/key` of each row of a batch from [`uneven_shards`].
fn ids(batch: LoadedBatch) -> Vec<String> {
    batch.labels.iter().zip(&batch.keys).map(|(l, k)| format!("{}/{k}", l.unwrap_or(-1) / 1000)).collect()
}

#[test]
fn very_uneven_shards_give_full_epochs_that_do_not_depend_on_the_world_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = uneven_shards(dir.path());
    let mut s = spec(&urls, 2, 10);
    s.partitions = Some(4);
    let mut one = loader(&s, 1, 0, 8, None);
    // 108 samples in 4 partitions of 27; 2 rows of each per batch.
    let steps = one.config().steps_per_epoch.expect("steps");
    assert_eq!(steps, 13);
    let mut two = [loader(&s, 2, 0, 8, None), loader(&s, 2, 1, 8, None)];
    let mut four: Vec<Loader> = (0..4).map(|r| loader(&s, 4, r, 8, None)).collect();
    let mut epoch0 = BTreeSet::new();
    for step in 0..2 * steps + 1 {
        let a = ids(next(&mut one));
        let b: Vec<String> = two.iter_mut().flat_map(|l| ids(next(l))).collect();
        let c: Vec<String> = four.iter_mut().flat_map(|l| ids(next(l))).collect();
        assert_eq!(a, b, "step {step}: 1 rank and 2 ranks");
        assert_eq!(a, c, "step {step}: 1 rank and 4 ranks");
        if step < steps {
            for k in &a {
                assert!(epoch0.insert(k.clone()), "{k} twice in epoch 0");
            }
        }
    }
    assert_eq!(epoch0.len(), 104, "every sample at most once, 108 - 4 left for later epochs");
    assert_eq!(one.state().epoch, 2);

    // Resume exactly, mid-epoch, from 2 ranks onto 1.
    let mut reference = loader(&s, 1, 0, 8, None);
    let expected: Vec<Vec<String>> = (0..steps).map(|_| ids(next(&mut reference))).collect();
    let mut ranks = [loader(&s, 2, 0, 8, None), loader(&s, 2, 1, 8, None)];
    let mut states = Vec::new();
    for _ in 0..6 {
        states = ranks.iter_mut().map(|l| next(l).state_after).collect();
    }
    let merged = LoaderState::merge(&states).expect("same step");
    let mut resumed = loader(&s, 1, 0, 8, Some(merged));
    for (step, keys) in expected.iter().enumerate().skip(6) {
        assert_eq!(&ids(next(&mut resumed)), keys, "step {step} after resuming");
    }
}

#[test]
fn a_partition_short_of_valid_samples_reads_its_shards_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = uneven_shards(dir.path());
    let corrupted = corrupt_images(&dir.path().join("c/shard-000000.tar"), 2);
    assert_eq!(corrupted, 4);
    let mut s = spec(&urls, 2, 10);
    s.partitions = Some(4);
    s.max_skip_fraction = 0.5;
    let mut one = loader(&s, 1, 0, 8, None);
    let mut two = [loader(&s, 2, 0, 8, None), loader(&s, 2, 1, 8, None)];
    let steps = one.config().steps_per_epoch.expect("steps");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for step in 0..steps {
        let a = ids(next(&mut one));
        let b: Vec<String> = two.iter_mut().flat_map(|l| ids(next(l))).collect();
        assert_eq!(a.len(), 8, "full batches");
        assert_eq!(a, b, "step {step}");
        for k in a {
            *counts.entry(k).or_default() += 1;
        }
    }
    assert_eq!(one.skips().get(SkipReason::CorruptImage), 4, "each corrupt sample skipped once");
    let twice = counts.values().filter(|&&n| n == 2).count();
    assert!(twice <= 4, "only the samples making up for the skipped ones repeat: {twice}");
    assert!(counts.values().all(|&n| n <= 2));
}

/// Replaces the image of every `every`-th sample of a tar shard with garbage bytes.
fn corrupt_images(path: &Path, every: usize) -> usize {
    let bytes = std::fs::read(path).expect("read");
    let mut archive = tar::Archive::new(Cursor::new(bytes));
    let mut out = tar::Builder::new(Vec::new());
    let mut n = 0;
    let mut corrupted = 0;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
        if name.ends_with(".jpg") {
            if n % every == 0 {
                data = b"not a jpeg at all".to_vec();
                corrupted += 1;
            }
            n += 1;
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, &name, data.as_slice()).expect("append");
    }
    std::fs::write(path, out.into_inner().expect("tar")).expect("write");
    corrupted
}

#[test]
fn corrupt_samples_are_skipped_counted_and_limited() {
    let dir = tempfile::tempdir().expect("tmp");
    let urls = write_shards(dir.path(), 200, 50, ShardFormat::WebDataset);
    let corrupted = corrupt_images(&dir.path().join("shard-000001.tar"), 25);
    assert_eq!(corrupted, 2);
    let mut tolerant = spec(&urls, 2, 16);
    tolerant.max_skip_fraction = 0.05;
    let mut l = loader(&tolerant, 1, 0, 16, None);
    let steps = l.config().steps_per_epoch.expect("steps");
    let mut keys = BTreeMap::new();
    for _ in 0..steps {
        for k in next(&mut l).keys {
            *keys.entry(k).or_insert(0) += 1;
        }
    }
    assert!(keys.values().all(|&n| n == 1));
    let skips = l.skips();
    assert_eq!(skips.get(SkipReason::CorruptImage) as usize, corrupted, "{:?}", skips.snapshot());
    assert_eq!(skips.total() as usize, corrupted);
    // With a limit below 1/200 the run stops, naming the limit and the reasons.
    let mut strict = spec(&urls, 2, 16);
    strict.max_skip_fraction = 0.001;
    let mut l = loader(&strict, 1, 0, 16, None);
    let mut error = None;
    for _ in 0..l.config().steps_per_epoch.unwrap_or(0) {
        match l.next_batch() {
            Ok(_) => {}
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let err = error.unwrap_or_else(|| {
        panic!(
            "skips over the limit stop the run; skips {:?}, steps {steps}, state {:?}",
            l.skips().snapshot(),
            l.state()
        )
    });
    assert!(matches!(err, DataError::TooManySkips { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("max_skip_fraction") && text.contains("corrupt_image="), "{text}");
}

#[test]
fn shards_on_s3_read_like_local_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let local = write_shards(dir.path(), 90, 30, ShardFormat::WebDataset);
    let server = moto::server();
    let s3_store = Arc::new(
        ShardStore::new(ShardStoreOptions {
            config: server.config(),
            chunk_size: 4096,
            ..ShardStoreOptions::default()
        })
        .expect("store"),
    );
    for name in ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "sizes.json"] {
        let bytes = std::fs::read(dir.path().join(name)).expect("read");
        server.upload(&s3_store, &format!("loader/{name}"), &bytes);
    }
    let remote = format!("s3://{}/loader/shard-{{000000..000002}}.tar", moto::BUCKET);
    let make = |urls: &str, store: Arc<ShardStore>| {
        let cfg = LoaderConfig::training(&spec(urls, 2, 8), &store, 1, 0, 24, 3, SIDE, CTX, None).expect("config");
        Loader::new(cfg, store, tokenizer(), None).expect("loader")
    };
    let mut a = make(&local, store());
    let mut b = make(&remote, Arc::clone(&s3_store));
    assert_eq!(b.config().steps_per_epoch, Some(3), "sizes.json read from S3");
    for _ in 0..3 {
        let (x, y) = (next(&mut a), next(&mut b));
        assert_eq!(x.keys, y.keys);
        assert_eq!(x.images.data, y.images.data);
    }
    assert!(s3_store.bytes_read().load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn shards_over_http_read_like_local_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let local = write_shards(dir.path(), 90, 30, ShardFormat::Parquet);
    let server = http::serve(dir.path());
    let remote = server.url("shard-{000000..000002}.parquet");
    let make = |urls: &str| {
        let store = store();
        let cfg = LoaderConfig::training(&spec(urls, 2, 8), &store, 1, 0, 24, 3, SIDE, CTX, None).expect("config");
        Loader::new(cfg, store, tokenizer(), None).expect("loader")
    };
    let (mut a, mut b) = (make(&local), make(&remote));
    assert_eq!(b.config().steps_per_epoch, Some(3), "sizes.json read over HTTP");
    for _ in 0..3 {
        let (x, y) = (next(&mut a), next(&mut b));
        assert_eq!(x.keys, y.keys);
        assert_eq!(x.images.data, y.images.data);
    }
}

/// A CSV dataset as OpenCLIP's `--dataset-type csv` reads it: `n` PNG files and a TSV with
/// `filepath` (relative to the TSV) and `title`; the rows listed in `broken` name missing files.
fn write_csv_dataset(dir: &Path, n: u64, broken: &[u64]) -> String {
    std::fs::create_dir_all(dir.join("images")).expect("mkdir");
    let data = SyntheticDataset::new(32, 5);
    let mut tsv = String::from("filepath\ttitle\n");
    for i in 0..n {
        let s = data.sample(Split::Train, i, None);
        let name = format!("images/{i:04}.png");
        if !broken.contains(&i) {
            s.image.save(dir.join(&name)).expect("png");
        }
        tsv.push_str(&format!("{name}\t\"{}, number {i}\"\n", s.caption));
    }
    std::fs::write(dir.join("train.tsv"), tsv).expect("tsv");
    dir.join("train.tsv").display().to_string()
}

#[test]
fn csv_datasets_are_read_directly_cut_for_any_world_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let tsv = write_csv_dataset(dir.path(), 50, &[7]);
    let mut s = spec(&tsv, 2, 8);
    s.partitions = Some(2);
    s.max_skip_fraction = 0.1;
    let mut one = loader(&s, 1, 0, 8, None);
    assert_eq!(one.config().steps_per_epoch, Some(6), "50 rows in 2 partitions of 25, 4 rows each");
    let mut two = [loader(&s, 2, 0, 8, None), loader(&s, 2, 1, 8, None)];
    let mut seen = BTreeSet::new();
    for step in 0..6 {
        let a = next(&mut one);
        let b: Vec<String> = two.iter_mut().flat_map(|l| next(l).keys).collect();
        assert_eq!(a.keys, b, "step {step}");
        assert!(a.keys.iter().all(|k| k.starts_with("train.tsv#")), "{:?}", a.keys);
        seen.extend(a.keys);
    }
    assert_eq!(seen.len(), 48);
    assert!(!seen.contains("train.tsv#7"), "the row whose image is missing is skipped");
    assert_eq!(one.skips().get(SkipReason::MissingImage), 1);

    // Another separator and other column names, as OpenCLIP's --csv-* flags give them.
    let csv = dir.path().join("other.csv");
    let huge = "x".repeat(clipfleet_dataloader::skip::MAX_CAPTION_BYTES + 1);
    let text =
        format!("caption,path\n\"a photo, with a comma\",images/0000.png\n,images/0001.png\n{huge},images/0002.png\n");
    std::fs::write(&csv, text).expect("csv");
    let mut c = spec(&csv.display().to_string(), 1, 4);
    c.max_skip_fraction = 1.0;
    c.format.csv = clipfleet_dataloader::csv_dataset::CsvColumns {
        image: "path".into(),
        caption: "caption".into(),
        separator: ',',
    };
    let cfg = LoaderConfig::evaluation(&c, 4, SIDE, CTX).expect("config");
    let mut l = Loader::new(cfg, store(), tokenizer(), None).expect("loader");
    let batch = l.next_batch().expect("batch").expect("one batch");
    assert_eq!(batch.keys, ["other.csv#0"], "the rows with an empty and a 1 MiB caption are skipped");
    assert!(l.next_batch().expect("end").is_none());
    assert_eq!(l.skips().get(SkipReason::MissingCaption), 1);
    assert_eq!(l.skips().get(SkipReason::OversizedCaption), 1, "{:?}", l.skips().snapshot());
    // A header without the image column names it and the key to set.
    let err = LoaderConfig::evaluation(&spec(&csv.display().to_string(), 1, 4), 4, SIDE, CTX)
        .map(|cfg| Loader::new(cfg, store(), tokenizer(), None).expect("loader").next_batch())
        .expect("config")
        .expect_err("no filepath column");
    assert!(err.to_string().contains("csv_img_key"), "{err}");
}

#[test]
fn parquet_shards_survive_transient_store_errors_with_the_same_samples() {
    use clipfleet_dataloader::shards::UrlScheme;
    use clipfleet_dataloader::store::{Fault, FaultyStore};
    let dir = tempfile::tempdir().expect("tmp");
    let urls = write_shards(dir.path(), 60, 20, ShardFormat::Parquet);
    let read = |store: Arc<ShardStore>| {
        let cfg = LoaderConfig::evaluation(&spec(&urls, 1, 1), 16, SIDE, CTX).expect("config");
        let mut l = Loader::new(cfg, store, tokenizer(), None).expect("loader");
        let mut out = Vec::new();
        while let Some(b) = l.next_batch().expect("no fatal error") {
            out.push((b.keys, b.images.data));
        }
        (out, l.skips().total())
    };
    let (clean, skips) = read(store());
    assert_eq!(skips, 0);
    // A 503 while opening, a reset inside a column chunk, and a 503 on a later shard's data.
    let options = ShardStoreOptions {
        retry: clipfleet_dataloader::store::RetryPolicy {
            base_delay: std::time::Duration::from_millis(1),
            ..Default::default()
        },
        ..ShardStoreOptions::default()
    };
    let faulty = Arc::new(ShardStore::new(options).expect("store"));
    let local: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
    let injected = Arc::new(
        FaultyStore::new(local)
            .on_call(1, Fault::Unavailable)
            .on_call(3, Fault::ResetAfter(200))
            .on_call(7, Fault::Unavailable),
    );
    faulty.register(UrlScheme::Local, "", Arc::clone(&injected) as Arc<dyn object_store::ObjectStore>);
    let (survived, skips) = read(faulty);
    assert!(injected.calls() > 7, "the faults were reached: {} calls", injected.calls());
    assert_eq!(skips, 0, "no shard was given up");
    assert_eq!(survived, clean, "same samples, same pixels");
}
