//! `clipfleet shards make` and `clipfleet shards inspect`: datasets written here read back
//! here and in Python's `webdataset` (the reference reader), and bad shards are counted by
//! skip reason.

use std::path::{Path, PathBuf};

use crate::common::{ok, run, stderr};

fn fixture(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataloader/tests/fixtures/wds");
    dir.join(name).to_str().expect("utf-8").to_string()
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// `shards inspect ARGS --json`, parsed.
fn inspect(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["shards", "inspect", "--json"];
    all.extend_from_slice(args);
    let out = ok(run(&all));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn sizes(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("sizes.json")).expect("sizes.json")).expect("json")
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn synthetic_webdataset_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("wds");
    let o = out_dir.to_str().expect("utf-8");
    let made = ok(run(&["shards", "make", "--synthetic", "25", "--samples-per-shard", "10", "--output", o, "--json"]));
    let summary: serde_json::Value = serde_json::from_slice(&made.stdout).expect("json");
    assert_eq!(summary["shards"], 3);
    assert_eq!(summary["samples"], 25);
    assert_eq!(files(&out_dir), ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "sizes.json"]);
    assert_eq!(
        sizes(&out_dir),
        serde_json::json!({"shard-000000.tar": 10, "shard-000001.tar": 10, "shard-000002.tar": 5})
    );
    let pattern = format!("{o}/shard-{{000000..000002}}.tar");
    assert_eq!(
        inspect(&[&pattern]),
        serde_json::json!({"shards": 3, "samples": 25, "skipped": {}, "not_downloaded": 0})
    );

    // The reference reader sees the same samples: keys, captions (txt == json caption), labels,
    // and img2dataset's sha256 field, checked with hashlib on the raw image bytes.
    let script = r#"
import hashlib, io, json, sys, webdataset as wds
from PIL import Image
ds = wds.WebDataset(sys.argv[1], shardshuffle=False)
rows = []
for s in ds:
    meta = json.loads(s["json"])
    txt = s["txt"].decode("utf-8")
    assert meta["key"] == s["__key__"] and meta["caption"] == txt, meta
    assert meta["sha256"] == hashlib.sha256(s["jpg"]).hexdigest(), meta
    assert Image.open(io.BytesIO(s["jpg"])).size == (meta["width"], meta["height"]) == (64, 64)
    rows.append([s["__key__"], txt, int(s["cls"])])
print(json.dumps(rows))
"#;
    let py = std::process::Command::new(python()).args(["-c", script, &pattern]).output().expect("python");
    assert!(py.status.success(), "python webdataset failed:\n{}", String::from_utf8_lossy(&py.stderr));
    let rows: Vec<(String, String, i64)> = serde_json::from_slice(&py.stdout).expect("rows");
    assert_eq!(rows.len(), 25);
    let keys: Vec<String> = (0..25).map(|i| format!("{i:09}")).collect();
    assert_eq!(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), keys);
    assert!(rows.iter().all(|r| !r.1.is_empty() && (0..30).contains(&r.2)));
}

#[test]
fn synthetic_parquet_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("pq");
    let o = out_dir.to_str().expect("utf-8");
    ok(run(&[
        "shards",
        "make",
        "--format",
        "parquet",
        "--synthetic",
        "25",
        "--samples-per-shard",
        "10",
        "--output",
        o,
    ]));
    assert_eq!(files(&out_dir), ["shard-000000.parquet", "shard-000001.parquet", "shard-000002.parquet", "sizes.json"]);
    assert_eq!(sizes(&out_dir)["shard-000002.parquet"], 5);
    let pattern = format!("{o}/shard-{{000000..000002}}.parquet");
    assert_eq!(
        inspect(&[&pattern]),
        serde_json::json!({"shards": 3, "samples": 25, "skipped": {}, "not_downloaded": 0})
    );

    // pyarrow, the reference reader: the labels in a nullable int64 `cls` column, and
    // img2dataset's `sha256` column matching hashlib on the image bytes.
    let script = r#"
import glob, hashlib, json, sys
import pyarrow as pa, pyarrow.parquet as pq
rows = []
for path in sorted(glob.glob(sys.argv[1] + "/*.parquet")):
    table = pq.read_table(path)
    field = table.schema.field("cls")
    assert field.type == pa.int64() and field.nullable, field
    for r in table.to_pylist():
        assert r["sha256"] == hashlib.sha256(r["jpg"]).hexdigest(), r["key"]
        rows.append([r["key"], r["cls"]])
print(json.dumps(rows))
"#;
    let py = std::process::Command::new(python()).args(["-c", script, o]).output().expect("python");
    assert!(py.status.success(), "python pyarrow failed:\n{}", String::from_utf8_lossy(&py.stderr));
    let rows: Vec<(String, i64)> = serde_json::from_slice(&py.stdout).expect("rows");
    assert_eq!(rows.len(), 25);
    assert!(rows.iter().enumerate().all(|(i, r)| r.0 == format!("{i:09}") && (0..30).contains(&r.1)), "{rows:?}");
}

/// Writes `n` small PNGs into `dir` and a CSV naming them (one caption quoted, with a comma).
fn images_and_csv(dir: &Path, n: u32) -> PathBuf {
    std::fs::create_dir_all(dir.join("img")).expect("mkdir");
    let mut csv = String::from("filepath,caption\n");
    for i in 0..n {
        let img = image::RgbImage::from_fn(20 + i, 10, |x, y| image::Rgb([x as u8 * 10, y as u8 * 20, i as u8 * 50]));
        img.save(dir.join(format!("img/{i}.png"))).expect("save png");
        csv.push_str(&format!("img/{i}.png,\"picture {i}, in colour\"\n"));
    }
    let path = dir.join("captions.csv");
    std::fs::write(&path, csv).expect("write csv");
    path
}

#[test]
fn images_dir_with_csv_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = images_and_csv(tmp.path(), 3);
    let out_dir = tmp.path().join("out");
    let o = out_dir.to_str().expect("utf-8");
    let (d, c) = (tmp.path().to_str().expect("utf-8"), csv.to_str().expect("utf-8"));
    ok(run(&["shards", "make", "--images-dir", d, "--captions", c, "--samples-per-shard", "2", "--output", o]));
    assert_eq!(files(&out_dir), ["shard-000000.tar", "shard-000001.tar", "sizes.json"]);
    let pattern = format!("{o}/shard-{{000000..000001}}.tar");
    assert_eq!(
        inspect(&[&pattern]),
        serde_json::json!({"shards": 2, "samples": 3, "skipped": {}, "not_downloaded": 0})
    );

    let script = r#"
import json, sys, webdataset as wds
ds = wds.WebDataset(sys.argv[1], shardshuffle=False).decode("pil")
print(json.dumps([[s["__key__"], s["txt"], list(s["png"].size)] for s in ds]))
"#;
    let py = std::process::Command::new(python()).args(["-c", script, &pattern]).output().expect("python");
    assert!(py.status.success(), "python webdataset failed:\n{}", String::from_utf8_lossy(&py.stderr));
    let rows: Vec<(String, String, [u32; 2])> = serde_json::from_slice(&py.stdout).expect("rows");
    let want: Vec<(String, String, [u32; 2])> =
        (0..3).map(|i| (format!("{i:09}"), format!("picture {i}, in colour"), [20 + i, 10])).collect();
    assert_eq!(rows, want, "the PNGs are copied as they are, with their captions");

    let pq = tmp.path().join("pq");
    let p = pq.to_str().expect("utf-8");
    ok(run(&["shards", "make", "--format", "parquet", "--images-dir", d, "--captions", c, "--output", p]));
    let shard = format!("{p}/shard-000000.parquet");
    assert_eq!(
        inspect(&["--image-column", "png", &shard]),
        serde_json::json!({"shards": 1, "samples": 3, "skipped": {}, "not_downloaded": 0})
    );
    // Without labels there is no `cls` column; sha256 is there as img2dataset writes it.
    let script = r#"
import hashlib, sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
assert "cls" not in t.column_names, t.column_names
assert all(r["sha256"] == hashlib.sha256(r["png"]).hexdigest() for r in t.to_pylist())
"#;
    let py = std::process::Command::new(python()).args(["-c", script, &shard]).output().expect("python");
    assert!(py.status.success(), "python pyarrow failed:\n{}", String::from_utf8_lossy(&py.stderr));
}

#[test]
fn a_missing_image_is_an_error_naming_it_and_leaves_no_shard() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = images_and_csv(tmp.path(), 3);
    std::fs::remove_file(tmp.path().join("img/2.png")).expect("rm");
    let out_dir = tmp.path().join("out");
    let (d, c) = (tmp.path().to_str().expect("utf-8"), csv.to_str().expect("utf-8"));
    let out = run(&[
        "shards",
        "make",
        "--images-dir",
        d,
        "--captions",
        c,
        "--samples-per-shard",
        "1",
        "--output",
        out_dir.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("img/2.png") && err.contains("captions.csv:4"), "{err}");
    assert_eq!(files(&out_dir), Vec::<String>::new(), "no shard, temporary or complete, is left behind");

    std::fs::write(&csv, "filepath,caption\nimg/0.png,\n").expect("write");
    let out =
        run(&["shards", "make", "--images-dir", d, "--captions", c, "--output", out_dir.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("captions.csv:2: empty caption"), "{}", stderr(&out));

    // A PNG cut after its header: the header is fine, the image is not; it is decoded, so refused.
    let png = std::fs::read(tmp.path().join("img/0.png")).expect("png");
    std::fs::write(tmp.path().join("img/1.png"), &png[..png.len() / 2]).expect("truncate");
    std::fs::write(&csv, "filepath,caption\nimg/0.png,a picture\nimg/1.png,half a picture\n").expect("write");
    let out =
        run(&["shards", "make", "--images-dir", d, "--captions", c, "--output", out_dir.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("img/1.png is unreadable (corrupt_image)"), "{}", stderr(&out));
    assert_eq!(files(&out_dir), Vec::<String>::new());
}

#[test]
fn inspect_counts_the_bad_fixtures_by_reason() {
    // See dataloader/tests/fixtures/wds/gen_wds_fixtures.py. clean: 5 good samples (jpg, png,
    // webp, grey jpeg). edge: e0, e6, data.v1/e7, __key__, e9 and long/k... are good; e1, e2
    // corrupt; e3, e11 and the second e10 lack a caption; e4's is not UTF-8; e5, dir/ and the
    // first e10 lack an image. truncated: 000000 and 000001, then the cut. garbage: not a tar.
    let args: Vec<String> = ["clean.tar", "edge.tar", "truncated.tar", "garbage.tar"].map(fixture).into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = inspect(&args);
    assert_eq!(
        report,
        serde_json::json!({"shards": 4, "samples": 13, "skipped": {
            "caption_not_utf8": 1, "corrupt_image": 2, "missing_caption": 3, "missing_image": 3, "truncated_shard": 2,
        }, "not_downloaded": 0})
    );

    // A missing shard is one unreadable_shard skip and the run goes on.
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing.tar");
    let report = inspect(&[&fixture("clean.tar"), missing.to_str().expect("utf-8")]);
    assert_eq!(
        report,
        serde_json::json!({"shards": 2, "samples": 5, "skipped": {"unreadable_shard": 1}, "not_downloaded": 0})
    );

    // json:FIELD captions; usage errors exit non-zero.
    let report = inspect(&["--caption", "json:caption", &fixture("json_caption.tar")]);
    assert_eq!(report["shards"], 1);
    let out = run(&["shards", "inspect", "--caption", "yaml", &fixture("clean.tar")]);
    assert!(!out.status.success() && stderr(&out).contains("json:FIELD"), "{}", stderr(&out));
    let out = run(&["shards", "inspect", missing.to_str().expect("utf-8")]);
    assert!(!out.status.success() && stderr(&out).contains("no shard found"), "{}", stderr(&out));
}

#[test]
fn every_skipped_sample_is_logged_with_its_shard_and_key() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataloader/tests/fixtures");
    let edge = fixtures.join("wds/edge.tar");
    let parquet = fixtures.join("parquet/null_rows.parquet");
    let out =
        ok(run(&["shards", "inspect", edge.to_str().expect("utf-8"), parquet.to_str().expect("utf-8"), "--json"]));
    let logs = stderr(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let total: u64 = report["skipped"].as_object().expect("skipped").values().map(|v| v.as_u64().expect("count")).sum();
    let warnings: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "skipped sample")
        .collect();
    assert_eq!(warnings.len() as u64, total, "one warning per skip:\n{logs}");
    for w in &warnings {
        let shard = w["fields"]["shard"].as_str().expect("shard");
        assert!(shard.ends_with("edge.tar") || shard.ends_with("null_rows.parquet"), "{w}");
        assert!(w["fields"]["key"].as_str().is_some_and(|k| !k.is_empty()), "{w}");
        assert!(w["fields"]["reason"].as_str().is_some(), "{w}");
    }
}
