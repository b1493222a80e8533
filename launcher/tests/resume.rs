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

/// `--report-to tensorboard`: the event files, read back by the `tensorboard` package's own
/// reader, hold the scalars of every logged step (as the log printed them) and of each evaluation.
#[test]
fn tensorboard_events_hold_the_logged_and_evaluated_scalars() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let mut args = tiny_args(&run_dir, 6, 0);
    args.extend(["--eval-every", "3", "--report-to", "tensorboard"].map(String::from));
    let out = ok(run(&refs(&args)));
    // The log's `train` lines: step → (loss, lr), as printed (4 decimals, 4 significant digits).
    let mut logged = std::collections::BTreeMap::new();
    for line in crate::common::stderr(&out).lines().filter(|l| l.contains("\"message\":\"train\"")) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
        let f = &v["fields"];
        let num = |k: &str| f[k].as_str().expect(k).parse::<f64>().expect(k);
        logged.insert(f["step"].as_i64().expect("step"), (num("loss"), num("lr")));
    }
    assert_eq!(logged.keys().copied().collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1]); ea.Reload()
print(json.dumps({tag: [[s.step, s.value] for s in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}))
"#;
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let read = std::process::Command::new(py)
        .args(["-c", script, run_dir.join("tensorboard").to_str().expect("utf-8")])
        .output()
        .expect("python with the tensorboard package (scripts/setup.sh --test)");
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let scalars: serde_json::Value = serde_json::from_slice(&read.stdout).expect("json");
    let series = |tag: &str| -> Vec<(i64, f64)> {
        scalars[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in {scalars}"))
            .iter()
            .map(|p| (p[0].as_i64().expect("step"), p[1].as_f64().expect("value")))
            .collect()
    };
    let (loss, lr) = (series("train/loss"), series("train/lr"));
    assert_eq!(loss.len(), 6, "{loss:?}");
    for ((step, l), (_, r)) in loss.iter().zip(&lr) {
        let (want_loss, want_lr) = logged[step];
        assert!((l - want_loss).abs() <= 6e-5, "step {step}: loss {l} vs logged {want_loss}");
        assert!((r - want_lr).abs() <= 1e-3 * want_lr.abs().max(1e-12), "step {step}: lr {r} vs logged {want_lr}");
    }
    for tag in ["train/samples_per_second", "train/scale", "train/grad_norm"] {
        assert_eq!(series(tag).len(), 6, "{tag}");
    }
    // Evaluations at step 3 and at the end; the final one is eval.json's.
    let r1 = series("val/image_to_text_R@1");
    assert_eq!(r1.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 6]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("eval.json")).expect("eval.json")).expect("json");
    let want = report["image_to_text_r1"].as_f64().expect("r1");
    assert!((r1[1].1 - want).abs() < 1e-6, "{} vs eval.json {want}", r1[1].1);
    assert_eq!(series("val/zeroshot-top1").len(), 2);
}
