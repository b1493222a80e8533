//! Crash safety: SIGKILL while a checkpoint is being written never damages the
//! previous checkpoint, and the run resumes from it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bin, ok, refs, run, snapshot, tiny_args};

fn eval_step(run_dir: &std::path::Path) -> i64 {
    let out = ok(run(&["eval", "--checkpoint", run_dir.to_str().expect("utf-8"), "--json", "--device", "cpu"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval JSON");
    report["step"].as_i64().expect("step")
}

#[test]
fn sigkill_during_checkpoint_write_keeps_previous_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let mut child = Command::new(bin())
        .args(refs(&tiny_args(&run_dir, 6, 2)))
        .args(["--log-format", "json"])
        .env("CLIPFLEET_FAULT", "stall-in-checkpoint:4")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut stalled = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("line");
        if line.contains("clipfleet-fault: stalled in checkpoint 4") {
            stalled = true;
            break;
        }
    }
    assert!(stalled, "the run never reached the checkpoint write");
    let before = snapshot(&run_dir.join("checkpoints/step_2"));
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    // step_4 was half-written: weights present, never committed.
    assert!(run_dir.join("checkpoints/step_4.tmp/model.safetensors").is_file());
    assert!(!run_dir.join("checkpoints/step_4").exists());
    assert_eq!(snapshot(&run_dir.join("checkpoints/step_2")), before, "step_2 changed");
    assert_eq!(eval_step(&run_dir), 2, "the previous checkpoint is the one that loads");

    let mut args = tiny_args(&run_dir, 6, 2);
    args.extend(["--resume".to_string(), "latest".to_string()]);
    ok(run(&refs(&args)));
    assert_eq!(eval_step(&run_dir), 6);
    assert!(!run_dir.join("checkpoints/step_4.tmp").exists(), "stale temporary folder cleaned up");
}

#[test]
fn sigkill_at_arbitrary_times_always_leaves_a_loadable_checkpoint() {
    // Real kills at varied moments of a run that checkpoints every step.
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, delay_ms) in [2500u64, 3300, 4100].into_iter().enumerate() {
        let run_dir = tmp.path().join(format!("run{i}"));
        let mut child = Command::new(bin())
            .args(refs(&tiny_args(&run_dir, 400, 1)))
            .args(["--log-format", "json"])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let start = Instant::now();
        // Wait until the first checkpoint exists, then a little more, then kill.
        while !run_dir.join("checkpoints/latest").exists() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(delay_ms - 2000));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let step = eval_step(&run_dir);
        assert!(step >= 1, "run {i}: loaded step {step}");
    }
}
