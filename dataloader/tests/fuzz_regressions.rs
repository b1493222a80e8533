//! Every input that made a fuzz target fail (`fuzz/regressions/<target>/`), and every seed
//! (`fuzz/seeds/<target>/`), through the same harness as the fuzz target
//! (`fuzz/harness/<target>.rs`): a panic fails the test. Errors from the readers are expected.
//! The long coverage-guided runs are in `fuzz/README.md`.

#[allow(dead_code)]
#[path = "../../fuzz/harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for kind in ["regressions", "seeds"] {
        if let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no inputs for {target} under {}", fuzz.display());
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for path in inputs(target) {
        let data = std::fs::read(&path).expect("read input");
        eprintln!("{target}: {} ({} bytes)", path.display(), data.len());
        run(&data);
    }
}

#[test]
fn tar_reader_inputs() {
    replay("tar_reader", harness::tar_reader::run);
}

#[test]
fn parquet_reader_inputs() {
    replay("parquet_reader", harness::parquet_reader::run);
}

#[test]
fn image_decode_inputs() {
    replay("image_decode", harness::image_decode::run);
}

#[test]
fn brace_expansion_inputs() {
    replay("brace_expansion", harness::brace_expansion::run);
}

#[test]
fn csv_dataset_inputs() {
    replay("csv_dataset", harness::csv_dataset::run);
}

#[test]
fn tokenizers_inputs() {
    replay("tokenizers", harness::tokenizers::run);
}

/// The findings of the fuzzers, fixed: what each input now gives.
mod findings {
    use super::*;
    use clipfleet_dataloader::shards::parse_sources;
    use clipfleet_dataloader::webdataset::TarSamples;

    fn input(target: &str, name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions").join(target).join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn a_tar_size_field_near_2_pow_64_is_a_bad_header_not_a_wrapped_sum() {
        let data = input("tar_reader", "skip-data-size-add-overflow");
        let items: Vec<_> = TarSamples::new(&data[..], "fuzz://shard.tar").collect();
        let err = items.last().expect("an item").as_ref().expect_err("an error").to_string();
        assert!(err.contains("member size of 18446744073709551615 bytes"), "{err}");
    }

    #[test]
    fn brace_patterns_that_would_exhaust_memory_are_refused_quickly() {
        for (name, why) in [
            ("oom-comma-list-of-full-ranges", "expands to more than 2000000 names"),
            ("oom-range-4.4M-names", "expands to more than 2000000 names"),
            ("oom-range-times-long-literal", "expands to more than 128 MiB of names"),
            ("slow-range-at-max-expansion", "expands to more than 2000000 names"),
        ] {
            let spec = String::from_utf8_lossy(&input("brace_expansion", name)).into_owned();
            let started = std::time::Instant::now();
            let err = parse_sources(&spec, None).expect_err(name).to_string();
            assert!(err.contains(why), "{name}: {err}");
            assert!(started.elapsed().as_secs_f64() < 2.0, "{name}: {:?}", started.elapsed());
        }
    }

    #[test]
    fn parquet_files_that_make_the_parquet_crate_panic_are_errors_naming_the_shard() {
        use clipfleet_dataloader::parquet_reader::{parquet_num_rows, ParquetReadOptions, ParquetShardReader};
        use object_store::{memory::InMemory, path::Path as ObjectPath, ObjectStoreExt, PutPayload};
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        for name in ["negative-column-chunk-size", "byte-array-divide-by-zero"] {
            let store = std::sync::Arc::new(InMemory::new());
            let path = ObjectPath::from("bad.parquet");
            runtime.block_on(store.put(&path, PutPayload::from(input("parquet_reader", name)))).expect("put");
            let url = "memory:///bad.parquet";
            let rows = runtime.block_on(async {
                let opened =
                    ParquetShardReader::open(store.clone(), path.clone(), url, &ParquetReadOptions::default()).await;
                let mut errors = Vec::new();
                match opened {
                    Err(e) => errors.push(e.to_string()),
                    Ok(mut reader) => loop {
                        match reader.next_row().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => {
                                errors.push(e.to_string());
                                break;
                            }
                        }
                    },
                }
                if let Err(e) = parquet_num_rows(store.clone(), path.clone(), url).await {
                    errors.push(e.to_string());
                }
                errors
            });
            assert!(rows.iter().any(|e| e.contains("parquet reader failed")), "{name}: {rows:?}");
            assert!(rows.iter().all(|e| e.contains(url)), "{name}: {rows:?}");
        }
    }
}
