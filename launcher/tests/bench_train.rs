//! `clipfleet bench train` times the step that `clipfleet train` runs (issue 10): K bench
//! steps and K training steps with the same seed end with bitwise identical weights, and
//! OpenCLIP's own step runs beside it.

use std::path::Path;

use crate::common::{ok, run};

fn weights(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn bench_train_steps_equal_train_steps_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (run_dir, bench_weights) = (tmp.path().join("run"), tmp.path().join("bench.safetensors"));
    // train's defaults (lr warm-up included) with the bench's model, batch, seed and device.
    let r = run_dir.to_str().expect("utf-8");
    let train = ["train", "--model", "tiny", "--batch-size", "16", "--steps", "3", "--seed", "7", "--device", "cpu"];
    ok(run(&[&train[..], &["--checkpoint-every", "0", "--eval-samples", "32", "--output", r]].concat()));
    let out = ok(run(&[
        "bench",
        "train",
        "--model",
        "tiny",
        "--batch-size",
        "16",
        "--steps",
        "3",
        "--warmup",
        "0",
        "--seed",
        "7",
        "--device",
        "cpu",
        "--save-weights",
        bench_weights.to_str().expect("utf-8"),
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!((report["steps"].as_i64(), report["batch_size"].as_i64()), (Some(3), Some(16)), "{report}");
    assert!(report["samples_per_second"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    assert!(report["peak_tflops"].is_null() && report["mfu"].is_null(), "no peak is known for a CPU: {report}");
    let trained = weights(&run_dir.join("checkpoints/step_3/model.safetensors"));
    let benched = weights(&bench_weights);
    assert_eq!(trained.len(), benched.len());
    for ((name, a), (other, b)) in trained.iter().zip(&benched) {
        assert_eq!(name, other);
        assert!(a.equal(b), "{name} differs between 3 train steps and 3 bench steps");
    }
}

/// The OpenCLIP reference behind the headline ratio runs (once, on the tiny model), so that
/// an API change in open_clip shows up here rather than on the GPU machine.
#[test]
fn bench_train_runs_openclips_step_beside_its_own() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/setup.sh --test", python.display());
    let python = python.to_str().expect("utf-8");
    let args = ["bench", "train", "--model", "tiny", "--batch-size", "8", "--steps", "2", "--warmup", "1"];
    let out =
        ok(run(&[&args[..], &["--device", "cpu", "--grad-clip-norm", "1.0", "--reference-python", python, "--json"]]
            .concat()));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let reference = &report["reference"];
    assert!(reference["samples_per_second"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    assert!(reference["reference"].as_str().is_some_and(|r| r.contains("open_clip")), "{report}");
    assert_eq!(reference["precision"], "fp32", "{report}");
    let ratio = report["ratio"].as_f64().expect("ratio");
    let expected = report["samples_per_second"].as_f64().expect("ours")
        / reference["samples_per_second"].as_f64().expect("theirs");
    assert!((ratio - expected).abs() <= 1e-9 * expected, "{report}");
}
