//! `clipfleet bench loss` (issue 4): runs at a small global batch, one child process per local
//! batch size, and its JSON report is self-consistent.

use crate::common::{ok, run};

fn bench(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "loss", "--json", "--device", "cpu"];
    all.extend_from_slice(args);
    let out = ok(run(&all));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn bench_loss_reports_each_local_batch_with_its_memory() {
    let r = bench(&[
        "--global-batch",
        "512",
        "--dim",
        "32",
        "--local-batch",
        "64,512",
        "--block-size",
        "48",
        "--unblocked",
        "--unblocked-max-gib",
        "0.003",
    ]);
    assert_eq!(
        (r["global_batch"].as_i64(), r["dim"].as_i64(), r["loss"].as_str()),
        (Some(512), Some(32), Some("clip"))
    );
    assert_eq!(num(&r["nxn_matrix_bytes"]), 512.0 * 512.0 * 4.0);
    let rows = r["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    for (row, b) in rows.iter().zip([64.0, 512.0]) {
        assert_eq!(num(&row["local_batch"]), b);
        assert_eq!(num(&row["world_size"]), 512.0 / b);
        assert_eq!(num(&row["bxn_matrix_bytes"]), b * 512.0 * 4.0);
        assert_eq!(num(&row["tile_bytes"]), b.min(48.0) * 512.0 * 4.0);
        assert!(num(&row["seconds"]) > 0.0 && num(&row["gflops_per_second"]) > 0.0, "{row}");
        // Random unit features at s = 100: the loss is finite and positive.
        assert!(num(&row["loss"]).is_finite() && num(&row["loss"]) > 0.0, "{row}");
        assert!(row["peak_extra_bytes"].is_u64(), "peak memory is measured on the CPU: {row}");
    }
    // --unblocked runs the autograd form where its estimate fits the limit (3 MiB): b = 64
    // (4·64·512·4 + 2·512·32·4 bytes ≈ 0.6 MiB), not b = 512 (~4.1 MiB).
    assert!(num(&rows[0]["unblocked_seconds"]) > 0.0 && rows[0]["unblocked_peak_extra_bytes"].is_u64(), "{}", rows[0]);
    assert!(rows[1]["unblocked_seconds"].is_null(), "{}", rows[1]);
}

#[test]
fn bench_loss_siglip_with_column_tiles_and_bad_flags() {
    let r = bench(&[
        "--global-batch",
        "256",
        "--dim",
        "16",
        "--local-batch",
        "32",
        "--block-cols",
        "100",
        "--loss",
        "siglip",
    ]);
    assert_eq!(r["loss"], "siglip");
    assert_eq!(r["block_cols"], 100);
    assert_eq!(num(&r["rows"][0]["tile_bytes"]), 32.0 * 100.0 * 4.0);
    let out = run(&["bench", "loss", "--device", "cpu", "--global-batch", "64", "--local-batch", "128"]);
    assert!(!out.status.success(), "a local batch above the global batch is refused");
    let out =
        run(&["bench", "loss", "--device", "cpu", "--global-batch", "64", "--local-batch", "8", "--block-size", "0"]);
    assert!(!out.status.success(), "a zero block size is refused");
}
