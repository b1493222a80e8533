//! The Parquet reader against img2dataset-layout files written by pyarrow.
//!
//! Fixtures and `expected.json` come from `tests/fixtures/parquet/gen_parquet_fixtures.py`
//! (pyarrow 26.0.1 and Pillow): expected.json holds what pyarrow reads back from each file,
//! and every comparison here is exact (keys, captions, image bytes, counts).

use std::path::PathBuf;
use std::sync::Arc;

use clipfleet_dataloader::parquet_reader::{
    parquet_num_rows_blocking, read_all_blocking, ParquetColumns, ParquetReadOptions, ParquetRow, ParquetShardReader,
};
use clipfleet_dataloader::skip::{SkipCounts, SkipReason};
use clipfleet_dataloader::DataError;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet")
}

fn store_at(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(dir).expect("fixture dir exists"))
}

fn url(name: &str) -> String {
    format!("file://{}", fixture_dir().join(name).display())
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    let all: Value = serde_json::from_str(&text).expect("expected.json parses");
    all[name].clone()
}

fn read(name: &str, options: &ParquetReadOptions) -> Result<Vec<ParquetRow>, DataError> {
    read_all_blocking(store_at(&fixture_dir()), Path::from(name), &url(name), options)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn with_columns(image: &str, caption: Option<&str>, key: Option<&str>) -> ParquetReadOptions {
    ParquetReadOptions {
        columns: ParquetColumns {
            image: image.to_string(),
            caption: caption.map(str::to_string),
            key: key.map(str::to_string),
        },
        ..ParquetReadOptions::default()
    }
}

/// Asserts that `rows` are exactly pyarrow's rows of `name` (all expected to be valid).
fn assert_matches_pyarrow(name: &str, rows: &[ParquetRow], format: &str, key_of: impl Fn(usize, &Value) -> String) {
    let exp = expected(name);
    let exp_rows = exp["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), exp_rows.len(), "{name}: row count");
    for (i, (row, e)) in rows.iter().zip(exp_rows).enumerate() {
        let pair = row.as_ref().unwrap_or_else(|r| panic!("{name} row {i} skipped: {r}"));
        assert_eq!(pair.key, key_of(i, e), "{name} row {i} key");
        assert_eq!(pair.caption, e["caption"].as_str().expect("caption"), "{name} row {i} caption");
        assert_eq!(pair.image, unhex(e["image_hex"].as_str().expect("hex")), "{name} row {i} image bytes");
        assert_eq!(pair.image_format, format);
        assert_eq!(pair.shard, url(name));
        assert_eq!(pair.label, None);
    }
}

#[test]
fn normal_file_matches_pyarrow_across_row_groups_and_batch_sizes() {
    assert_eq!(expected("normal.parquet")["num_row_groups"], 2, "the fixture must span row groups");
    for batch_size in [1, 2, 3, 4, 1024] {
        let options = ParquetReadOptions { batch_size, ..ParquetReadOptions::default() };
        let rows = read("normal.parquet", &options).expect("normal.parquet reads");
        assert_matches_pyarrow("normal.parquet", &rows, "jpg", |_, e| e["key"].as_str().expect("key").to_string());
    }
}

#[tokio::test]
async fn projection_fetches_only_image_caption_key_and_status() {
    let name = "normal.parquet";
    let mut reader =
        ParquetShardReader::open(store_at(&fixture_dir()), Path::from(name), url(name), &ParquetReadOptions::default())
            .await
            .expect("opens");
    let projected: Vec<&str> = reader.projected_schema().fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(projected, ["key", "caption", "status", "jpg"], "projected schema, in file order");
    assert_eq!(reader.metadata().num_row_groups(), 2);
    let mut fetched_per_row = Vec::new();
    while let Some(row) = reader.next_row().await.expect("reads") {
        row.expect("valid row");
        fetched_per_row.push(reader.bytes_read());
    }
    assert_eq!(fetched_per_row.len(), 6);

    // Only the projected column chunks and the footer may be fetched. The footer's 8-byte tail
    // (length and magic) is fetched twice: once to learn the footer length, then with it.
    let bytes = std::fs::read(fixture_dir().join(name)).expect("fixture");
    let len = bytes.len();
    let footer_len = u64::from(u32::from_le_bytes(bytes[len - 8..len - 4].try_into().expect("4 bytes")));
    let (mut projected_bytes, mut other_bytes) = (0u64, 0u64);
    let mut first_group_bytes = 0u64;
    for (g, rg) in reader.metadata().row_groups().iter().enumerate() {
        for col in rg.columns() {
            if ["key", "caption", "status", "jpg"].contains(&col.column_path().string().as_str()) {
                projected_bytes += col.byte_range().1;
                if g == 0 {
                    first_group_bytes += col.byte_range().1;
                }
            } else {
                other_bytes += col.byte_range().1;
            }
        }
    }
    assert!(other_bytes > 20_000, "the unprojected columns (mostly exif) are half the file ({other_bytes} bytes)");
    assert_eq!(4 + projected_bytes + other_bytes + footer_len + 8, len as u64, "the file is chunks and footer");
    let fetched = reader.bytes_read();
    assert_eq!(fetched, projected_bytes + footer_len + 16, "fetched {fetched} bytes of {len}");
    // Row groups stream one at a time: rows 0-2 came from the first group's chunks alone.
    assert_eq!(fetched_per_row[..3], [first_group_bytes + footer_len + 16; 3]);
    assert_eq!(fetched_per_row[3..], [fetched; 3]);
}

#[test]
fn failed_downloads_are_passed_over_and_bad_rows_are_skipped_and_counted() {
    let name = "null_rows.parquet";
    let rows = read(name, &ParquetReadOptions::default()).expect("reads");
    let exp = expected(name);
    // The rows with a null image are img2dataset's failed downloads (status
    // failed_to_download): not rows at all for a reader.
    let exp_rows: Vec<&serde_json::Value> =
        exp["rows"].as_array().expect("rows").iter().filter(|e| !e["image_hex"].is_null()).collect();
    assert_eq!(rows.len(), exp_rows.len());
    let counts = SkipCounts::default();
    let mut valid = Vec::new();
    for (row, e) in rows.iter().zip(exp_rows) {
        let want = if e["caption"].as_str().is_none_or(|c| c.trim().is_empty()) {
            Err(SkipReason::MissingCaption)
        } else {
            Ok(e["key"].as_str().expect("key"))
        };
        match row {
            Ok(pair) => {
                assert_eq!(Ok(pair.key.as_str()), want);
                assert_eq!(pair.caption, e["caption"].as_str().expect("caption"));
                valid.push(pair.key.clone());
            }
            Err(reason) => {
                assert_eq!(Err(*reason), want, "row {}", e["key"]);
                counts.record(*reason);
            }
        }
    }
    assert_eq!(valid, ["000010000", "000010005"]);
    assert_eq!(counts.get(SkipReason::MissingCaption), 2);
    assert_eq!(counts.total(), 2);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let not_downloaded = runtime.block_on(async {
        let mut reader = ParquetShardReader::open(
            store_at(&fixture_dir()),
            Path::from(name),
            url(name),
            &ParquetReadOptions::default(),
        )
        .await
        .expect("opens");
        while reader.next_row().await.expect("reads").is_some() {}
        (reader.not_downloaded(), reader.rows_read())
    });
    assert_eq!(not_downloaded, (2, 6), "2 of the 6 rows were not downloaded");
}

#[test]
fn caption_falls_back_to_txt_and_keys_fall_back_to_row_numbers() {
    let name = "txt_caption.parquet";
    assert!(!expected(name)["columns"].as_array().expect("columns").contains(&Value::from("caption")));
    let rows = read(name, &ParquetReadOptions::default()).expect("reads");
    assert_matches_pyarrow(name, &rows, "jpg", |i, _| format!("{name}#{i}"));

    // Naming the column explicitly reads the same rows.
    let rows = read(name, &with_columns("jpg", Some("txt"), None)).expect("reads");
    assert_matches_pyarrow(name, &rows, "jpg", |i, _| format!("{name}#{i}"));
}

#[test]
fn custom_image_caption_and_key_columns() {
    let name = "custom_png.parquet";
    let options = with_columns("png", Some("prompt"), Some("id"));
    let rows = read(name, &options).expect("reads");
    assert_matches_pyarrow(name, &rows, "png", |_, e| e["key"].as_str().expect("key").to_string());
    assert!(rows.iter().flatten().all(|p| p.image.starts_with(b"\x89PNG")));
}

#[tokio::test]
async fn custom_projection_leaves_out_the_default_caption() {
    let name = "custom_png.parquet";
    let options = with_columns("png", Some("prompt"), Some("id"));
    let reader =
        ParquetShardReader::open(store_at(&fixture_dir()), Path::from(name), url(name), &options).await.expect("opens");
    let projected: Vec<&str> = reader.projected_schema().fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(projected, ["id", "prompt", "png"]);
    let rows: Vec<_> = reader.into_stream().collect().await;
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| matches!(r, Ok(Ok(p)) if p.caption.starts_with("png prompt"))));
}

fn schema_error(name: &str, options: &ParquetReadOptions) -> String {
    match read(name, options) {
        Err(e @ DataError::Schema { .. }) => e.to_string(),
        other => panic!("{name}: expected a schema error, got {other:?}"),
    }
}

#[test]
fn wrong_schema_is_a_clear_error_naming_url_found_and_expected_columns() {
    let msg = schema_error("wrong_schema.parquet", &ParquetReadOptions::default());
    assert!(msg.contains(&url("wrong_schema.parquet")), "{msg}");
    assert!(msg.contains("no image column `jpg`"), "{msg}");
    assert!(msg.contains("columns found: [key: Utf8, caption: Utf8, url: Utf8]"), "{msg}");

    let msg = schema_error("normal.parquet", &with_columns("url", None, None));
    assert!(msg.contains("image column `url` is Utf8, expected binary"), "{msg}");

    let msg = schema_error("normal.parquet", &with_columns("jpg", Some("alt_text"), None));
    assert!(msg.contains(r#"no caption column (expected one of ["alt_text"])"#), "{msg}");
}

#[test]
fn missing_caption_candidates_and_named_key_are_schema_errors() {
    // custom_png has `prompt` and `caption` but the default candidates are caption, txt: fine.
    assert!(read("custom_png.parquet", &with_columns("png", None, None)).is_ok());

    let msg = schema_error("custom_png.parquet", &with_columns("png", Some("txt"), None));
    assert!(msg.contains(r#"expected one of ["txt"]"#), "{msg}");
    assert!(msg.contains("png: LargeBinary"), "{msg}");

    let msg = schema_error("normal.parquet", &with_columns("jpg", None, Some("uid")));
    assert!(msg.contains("no key column `uid`"), "{msg}");
}

#[test]
fn row_count_comes_from_the_footer_and_the_status_column_alone() {
    for name in ["normal.parquet", "null_rows.parquet", "txt_caption.parquet", "custom_png.parquet"] {
        let n = parquet_num_rows_blocking(store_at(&fixture_dir()), Path::from(name), &url(name)).expect("count");
        let failed = if name == "null_rows.parquet" { 2 } else { 0 };
        assert_eq!(n, expected(name)["num_rows"].as_u64().expect("num_rows") - failed, "{name}: downloaded rows");
    }

    // Zero every byte between the leading magic and the footer: the count must not notice.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = std::fs::read(fixture_dir().join("normal.parquet")).expect("fixture");
    let len = bytes.len();
    let footer_len = u32::from_le_bytes(bytes[len - 8..len - 4].try_into().expect("4 bytes")) as usize;
    // Keep the `status` column chunks: the count reads that column to leave out failed
    // downloads, and nothing else.
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(bytes.clone()))
        .expect("footer");
    let status: Vec<(u64, u64)> = meta
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns().iter().filter(|c| c.column_path().string() == "status").map(|c| c.byte_range()))
        .collect();
    assert_eq!(status.len(), 2);
    for (i, byte) in bytes.iter_mut().enumerate().take(len - 8 - footer_len).skip(4) {
        if !status.iter().any(|&(start, n)| (start..start + n).contains(&(i as u64))) {
            *byte = 0;
        }
    }
    std::fs::write(dir.path().join("zeroed.parquet"), &bytes).expect("write");
    let store = store_at(dir.path());
    let n = parquet_num_rows_blocking(Arc::clone(&store), Path::from("zeroed.parquet"), "zeroed").expect("count");
    assert_eq!(n, 6);
    // ...while reading the rows does fail, with the URL in the message.
    let err = read_all_blocking(store, Path::from("zeroed.parquet"), "file:///zeroed", &ParquetReadOptions::default())
        .expect_err("data pages are gone");
    assert!(matches!(err, DataError::Parquet { .. }), "{err:?}");
    assert!(err.to_string().contains("file:///zeroed"), "{err}");
}

#[test]
fn missing_file_and_bad_arguments_are_errors() {
    let err = read("absent.parquet", &ParquetReadOptions::default()).expect_err("absent");
    assert!(err.to_string().contains("absent.parquet"), "{err}");

    let options = ParquetReadOptions { batch_size: 0, ..ParquetReadOptions::default() };
    assert!(matches!(read("normal.parquet", &options), Err(DataError::InvalidArgument { name: "batch_size", .. })));
}

#[tokio::test]
async fn blocking_helpers_refuse_to_run_inside_a_runtime() {
    let err = read("normal.parquet", &ParquetReadOptions::default()).expect_err("inside a runtime");
    assert!(err.to_string().contains("inside a tokio runtime"), "{err}");
}

#[tokio::test]
async fn labels_written_by_shard_writer_read_back_from_the_cls_column() {
    use clipfleet_dataloader::shard_writer::{ShardFormat, ShardRecord, ShardWriter, ShardWriterOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ShardWriterOptions {
        output: dir.path().to_path_buf(),
        format: ShardFormat::Parquet,
        samples_per_shard: 10,
        prefix: String::new(),
    };
    let mut writer = ShardWriter::new(options).expect("writer");
    let labels = [Some(3), None, Some(-1), Some(i64::MAX)];
    for (i, label) in labels.iter().enumerate() {
        let record = ShardRecord {
            image: vec![0xff, 0xd8, i as u8],
            image_ext: "jpg".to_string(),
            caption: format!("caption {i}"),
            width: 1,
            height: 1,
            label: *label,
        };
        writer.write(record).expect("write");
    }
    writer.finish().expect("finish");

    let store = store_at(dir.path());
    let reader = ParquetShardReader::open(store, Path::from("000000.parquet"), "mem", &ParquetReadOptions::default())
        .await
        .expect("opens");
    let projected: Vec<&str> = reader.projected_schema().fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(projected, ["key", "caption", "jpg", "cls"], "sha256, width and height are not fetched");
    let rows: Vec<_> = reader.into_stream().collect().await;
    let got: Vec<Option<i64>> = rows.into_iter().map(|r| r.expect("reads").expect("valid row").label).collect();
    assert_eq!(got, labels);

    // Files without a `cls` column (img2dataset's) read with no labels, as before.
    let name = "normal.parquet";
    let reader =
        ParquetShardReader::open(store_at(&fixture_dir()), Path::from(name), url(name), &ParquetReadOptions::default())
            .await
            .expect("opens");
    let rows: Vec<_> = reader.into_stream().collect().await;
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| matches!(r, Ok(Ok(p)) if p.label.is_none())));
}
