//! Exact resume: 2N steps equal N steps, a crash, a resume and N more, bit for bit.

use crate::common::{ok, refs, run, run_env, tiny_args};

#[test]
fn resume_after_crash_is_bitwise_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let straight = tmp.path().join("straight");
    let resumed = tmp.path().join("resumed");
    ok(run(&refs(&tiny_args(&straight, 8, 4))));

    // The same run, killed right after committing step 4 (cosine schedule over 8 steps).
    let out = run_env(&refs(&tiny_args(&resumed, 8, 4)), &[("CLIPFLEET_FAULT", "exit-after-checkpoint:4")]);
    assert_eq!(out.status.code(), Some(137), "{}", crate::common::stderr(&out));
    assert!(!resumed.join("checkpoints/step_8").exists());
    let mut args = tiny_args(&resumed, 8, 4);
    args.extend(["--resume".to_string(), "latest".to_string()]);
    let out = ok(run(&refs(&args)));
    assert!(crate::common::stderr(&out).contains("resumed"));

    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(straight.join("checkpoints/step_8").join(file)).expect("straight");
        let b = std::fs::read(resumed.join("checkpoints/step_8").join(file)).expect("resumed");
        assert!(a == b, "{file} differs between the straight and the resumed run");
    }
    let eval = |run: &std::path::Path| std::fs::read_to_string(run.join("eval.json")).expect("eval.json");
    assert_eq!(eval(&straight), eval(&resumed));
}

#[test]
fn resume_latest_without_checkpoint_starts_fresh() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("fresh");
    let mut args = tiny_args(&run_dir, 2, 0);
    args.extend(["--resume".to_string(), "latest".to_string()]);
    let out = ok(run(&refs(&args)));
    assert!(crate::common::stderr(&out).contains("starting from scratch"));
    assert!(run_dir.join("checkpoints/step_2/manifest.json").is_file());
}

/// Every evaluation appends one line to `results.jsonl`, as OpenCLIP's does; the last line is
/// the final report in `eval.json`.
#[test]
fn every_evaluation_appends_a_line_to_results_jsonl() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let mut args = tiny_args(&run_dir, 4, 0);
    args.extend(["--eval-every", "2"].map(String::from));
    ok(run(&refs(&args)));
    let text = std::fs::read_to_string(run_dir.join("results.jsonl")).expect("results.jsonl");
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let steps: Vec<i64> = lines.iter().map(|l| l["step"].as_i64().expect("step")).collect();
    assert_eq!(steps, [2, 4], "{text}");
    let final_report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("eval.json")).expect("eval.json")).expect("json");
    assert_eq!(lines[1], final_report);
}
