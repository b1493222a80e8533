//! `clipfleet bench data`: the data-pipeline benchmark runs end to end on a tiny generated set
//! and on user shards, and its JSON report is self-consistent (issue 3); OpenCLIP's reference
//! pipeline runs once, on the smallest set.

use crate::common::{ok, run, stderr};

/// `bench data ARGS --json`, parsed, with stderr for messages.
fn bench(args: &[&str]) -> (serde_json::Value, String) {
    let mut all = vec!["bench", "data", "--json"];
    all.extend_from_slice(args);
    let out = ok(run(&all));
    (serde_json::from_slice(&out.stdout).expect("one JSON object on stdout"), stderr(&out))
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn bench_data_reports_sane_figures_and_reuses_its_shards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("shards");
    let d = dir.to_str().expect("utf-8");
    let args = ["--no-reference", "--images", "16", "--batch-size", "8", "--batches", "3", "--shards-dir", d];
    let (r, _) = bench(&args);
    assert_eq!(r["batch_size"], 8);
    assert_eq!(r["data"]["source"], "generated");
    assert_eq!(r["data"]["images"], 16);
    assert!(num(&r["data"]["bytes"]) > 16.0 * 5_000.0, "photo-like JPEGs are not tiny: {}", r["data"]);
    assert_eq!(r["clipfleet"]["timed_batches"], 3);
    assert_eq!(r["clipfleet"]["images"], 24);
    assert_eq!(r["clipfleet"]["skipped"], 0);
    let (ips, cores) = (num(&r["images_per_second"]), num(&r["cores"]));
    assert!(ips > 0.0 && ips.is_finite(), "{r}");
    assert!(cores >= 1.0 && num(&r["threads"]) >= 1.0);
    assert!((num(&r["images_per_second_per_core"]) * cores - ips).abs() < 1e-6 * ips);
    assert!((num(&r["clipfleet"]["images"]) / num(&r["clipfleet"]["seconds"]) - ips).abs() < 1e-6 * ips);
    assert!(!r["cpu_model"].as_str().expect("cpu_model").is_empty());
    assert!(r["reference"].is_null() && r["ratio"].is_null());
    assert_eq!(
        std::fs::read_dir(&dir)
            .expect("shards dir")
            .filter_map(Result::ok)
            .filter(|e| { e.file_name().to_string_lossy().ends_with(".tar") })
            .count(),
        8
    );

    // The same settings reuse the shards; one thread is pinned to one core.
    let (again, log) = bench(&[&args[..], &["--threads", "1"]].concat());
    assert!(log.contains("reusing the benchmark shards"), "{log}");
    assert_eq!((again["threads"].as_u64(), again["cores"].as_u64()), (Some(1), Some(1)));

    // The user's shards, read as training reads them (sizes.json, no resampling).
    let urls = format!("{d}/bench-{{000000..000007}}.tar");
    let (user, _) = bench(&["--train-data", &urls, "--batch-size", "8", "--batches", "2"]);
    assert_eq!(user["data"]["source"], "user");
    assert_eq!(user["data"]["resampled"], false);
    assert_eq!(user["clipfleet"]["images"], 16);
    assert!(user["reference"].is_null(), "the reference runs with --train-data only when asked");
}

/// OpenCLIP's data pipeline (scripts/bench_data_reference.py) runs once on a tiny generated
/// set, so that an API change in webdataset or open_clip shows up here (issue 10).
#[test]
fn bench_data_runs_openclips_pipeline_beside_its_own() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/setup.sh --test", python.display());
    let args = ["--images", "16", "--batch-size", "8", "--batches", "2", "--threads", "1"];
    let (r, _) = bench(&[&args[..], &["--reference-python", python.to_str().expect("utf-8")]].concat());
    let reference = &r["reference"];
    assert!(num(&reference["images_per_second"]) > 0.0, "{r}");
    let expected = num(&r["images_per_second"]) / num(&reference["images_per_second"]);
    assert!((num(&r["ratio"]) - expected).abs() <= 1e-9 * expected, "{r}");
}
