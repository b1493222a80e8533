//! Datasets exactly as the real img2dataset writes them: `fixtures/gen_img2dataset.py` serves
//! 240 images and 11 broken URLs on loopback and runs img2dataset 1.47.0 (from
//! `.venv-img2dataset`, made by `scripts/setup.sh --test`) into WebDataset and Parquet shards
//! of uneven sizes (96, 95 and 49 good samples), with its `*_stats.json` beside each shard.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use clipfleet_dataloader::loader::{resolve_shards, DataSpec, Loader, LoaderConfig, SampleFormat};
use clipfleet_dataloader::shards::parse_sources;
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::tokenizer::word::WordTokenizer;
use clipfleet_dataloader::tokenizer::Tokenizer;

/// The generated dataset, made once per test process.
fn dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        let python = std::env::var_os("CLIPFLEET_IMG2DATASET_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-img2dataset/bin/python"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gen_img2dataset.py");
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {} (scripts/setup.sh --test installs it): {e}", python.display()));
        assert!(out.status.success(), "gen_img2dataset.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
    .path()
}

fn urls(format: &str) -> String {
    let ext = if format == "wds" { "tar" } else { "parquet" };
    format!("{}/{format}/{{00000..00002}}.{ext}", dataset().display())
}

fn store() -> Arc<ShardStore> {
    Arc::new(ShardStore::new(ShardStoreOptions::default()).expect("store"))
}

fn tokenizer() -> Arc<dyn Tokenizer> {
    Arc::new(WordTokenizer::new())
}

#[test]
fn counts_come_from_the_stats_files_then_from_parquet_footers() {
    for format in ["wds", "parquet"] {
        let sources = parse_sources(&urls(format), None).expect("urls");
        let shards = resolve_shards(&store(), &sources, &SampleFormat::default(), true).expect("counts");
        let counts: Vec<Option<u64>> = shards.iter().map(|s| s.samples).collect();
        assert_eq!(counts, vec![Some(96), Some(95), Some(49)], "{format}: img2dataset's `successes`");
    }
    // Without the stats files, a Parquet footer's row count less the rows not downloaded.
    let copy = tempfile::tempdir().expect("tmp");
    for i in 0..3 {
        let name = format!("{i:05}.parquet");
        std::fs::copy(dataset().join("parquet").join(&name), copy.path().join(&name)).expect("copy");
    }
    let sources = parse_sources(&format!("{}/{{00000..00002}}.parquet", copy.path().display()), None).expect("urls");
    let shards = resolve_shards(&store(), &sources, &SampleFormat::default(), true).expect("counts");
    assert_eq!(shards.iter().map(|s| s.samples).collect::<Vec<_>>(), vec![Some(96), Some(95), Some(49)]);
}

#[test]
fn an_epoch_trains_on_every_good_sample_with_default_settings() {
    for format in ["wds", "parquet"] {
        let spec = DataSpec::new(urls(format));
        let store = store();
        let cfg = LoaderConfig::training(&spec, &store, 1, 0, 16, 5, 32, 16, None).expect("config");
        // 240 samples; 2 partitions (the largest divisor of 16 up to 3 shards) of 120.
        assert_eq!((cfg.partitions, cfg.steps_per_epoch), (2, Some(15)), "{format}");
        let mut loader = Loader::new(cfg, store, tokenizer(), None).expect("loader");
        let mut keys = BTreeSet::new();
        for _ in 0..15 {
            let batch = loader.next_batch().expect("batch").expect("training never ends");
            assert_eq!(batch.keys.len(), 16);
            for k in batch.keys {
                assert!(keys.insert(k.clone()), "{format}: {k} twice in one epoch");
            }
        }
        assert_eq!(keys.len(), 240, "{format}: every good sample once");
        assert_eq!(loader.skips().total(), 0, "{format}: failed downloads are not skips");
    }
}

#[test]
fn failed_downloads_are_counted_apart_from_skips() {
    for (format, not_downloaded) in [("wds", 0), ("parquet", 11)] {
        let cfg = LoaderConfig::evaluation(&DataSpec::new(urls(format)), 64, 32, 16).expect("config");
        let mut loader = Loader::new(cfg, store(), tokenizer(), None).expect("loader");
        let mut n = 0;
        while let Some(batch) = loader.next_batch().expect("batch") {
            n += batch.keys.len();
        }
        assert_eq!(n, 240, "{format}");
        assert_eq!(loader.skips().total(), 0, "{format}: {:?}", loader.skips().snapshot());
        assert_eq!(loader.skips().not_downloaded(), not_downloaded, "{format}");
    }
}
