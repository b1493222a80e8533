//! `clipfleet eval --zero-shot`: zero-shot classification on a labelled image folder, checked
//! image by image against OpenCLIP 3.3.0 (`open_clip.build_zero_shot_classifier` and its
//! evaluation transform, in `fixtures/openclip_zero_shot.py`) on the same weights: a run's
//! checkpoint and OpenCLIP-initialised ViT-B-32 weights.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{ok, refs, run, stderr, tiny_args};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn python() -> PathBuf {
    std::env::var_os("CLIPFLEET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// Runs a Python script with the project venv and returns its stdout.
fn python_run(script: &Path, args: &[&str]) -> String {
    let out = Command::new(python()).arg(script).args(args).output().expect("running python");
    assert!(out.status.success(), "{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The labelled folder of `gen_zero_shot_folder.py`: 10 classes of 12 JPEG and PNG images of
/// varied, non-square sizes (with `labels.csv` and `classnames.txt`).
fn folder(dir: &Path) -> PathBuf {
    let out = dir.join("folder");
    python_run(&fixtures().join("gen_zero_shot_folder.py"), &[out.to_str().expect("utf-8"), "--csv"]);
    out
}

/// OpenCLIP's zero-shot predictions on `folder` (the oracle's JSON), with `extra` flags.
fn oracle(config: &Path, weights: &Path, folder: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args =
        vec![config.to_str().expect("utf-8"), weights.to_str().expect("utf-8"), folder.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    serde_json::from_str(&python_run(&fixtures().join("openclip_zero_shot.py"), &args)).expect("oracle json")
}

/// `clipfleet eval WEIGHTS… --zero-shot DATA [EXTRA] --predictions PREDICTIONS --device cpu
/// --json`, its report parsed.
fn eval_zero_shot(weights: &[&str], data: &Path, extra: &[&str], predictions: &Path) -> serde_json::Value {
    let mut args = vec!["eval"];
    args.extend_from_slice(weights);
    args.extend(["--zero-shot", data.to_str().expect("utf-8")]);
    args.extend_from_slice(extra);
    args.extend(["--predictions", predictions.to_str().expect("utf-8"), "--device", "cpu", "--json"]);
    serde_json::from_slice(&ok(run(&args)).stdout).expect("json")
}

/// Compares clipfleet's `--predictions` with the oracle's, image by image: the same images in the
/// same order, and the same top-1 class except where OpenCLIP's two best logits are within 1e-5,
/// for at most 1 image in 1,000 (rounded up).
fn assert_same_predictions(oracle: &serde_json::Value, predictions: &Path, report: &serde_json::Value) {
    let ours: Vec<serde_json::Value> = std::fs::read_to_string(predictions)
        .expect("predictions")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let theirs = oracle["predictions"].as_array().expect("oracle predictions");
    assert_eq!(ours.len(), theirs.len(), "images");
    let mut differing = 0;
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a["path"], b["path"], "image order");
        assert_eq!(a["label"], b["label"], "{}", a["path"]);
        if a["top5"][0] != b["top1"] {
            let margin = b["margin"].as_f64().unwrap_or(0.0);
            assert!(
                margin < 1e-5,
                "{}: clipfleet {} vs OpenCLIP {} (margin {margin})",
                a["path"],
                a["top5"][0],
                b["top1"]
            );
            differing += 1;
        }
    }
    assert!(differing <= ours.len().div_ceil(1000), "{differing} of {} predictions differ", ours.len());
    if differing == 0 {
        for key in ["zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall"] {
            let (x, y) = (report[key].as_f64().expect(key), oracle[key].as_f64().expect(key));
            assert!((x - y).abs() < 1e-12, "{key}: clipfleet {x}, OpenCLIP {y}");
        }
    }
}

#[test]
fn openclip_vit_b_32_weights_classify_as_in_openclip() {
    let tmp = tempfile::tempdir().expect("tmp");
    let folder = folder(tmp.path());
    let weights_dir = tmp.path().join("b32");
    let w = weights_dir.to_str().expect("utf-8");
    let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/gen_openclip_parity.py");
    python_run(&gen, &["--model", "ViT-B-32", "--out", w]);
    let config = weights_dir.join("ViT-B-32_config.json");
    let weights = weights_dir.join("ViT-B-32_model.safetensors");
    let oracle = oracle(&config, &weights, &folder, &["--templates", "simple"]);
    let predictions = tmp.path().join("predictions.jsonl");
    let source = ["--weights", weights.to_str().expect("utf-8"), "--model", "ViT-B-32"];
    let report = eval_zero_shot(&source, &folder, &["--templates", "simple"], &predictions);
    assert_eq!((report["num_images"].as_i64(), report["num_classes"].as_i64()), (Some(120), Some(10)), "{report}");
    assert_same_predictions(&oracle, &predictions, &report);
}

#[test]
fn a_runs_checkpoint_classifies_as_in_openclip_from_a_folder_or_a_csv() {
    let tmp = tempfile::tempdir().expect("tmp");
    let folder = folder(tmp.path());
    let model_dir = tmp.path().join("model");
    python_run(&fixtures().join("gen_zero_shot_model.py"), &[model_dir.to_str().expect("utf-8")]);
    let config = model_dir.join("small_bpe_config.json");
    // A short run of a small model with OpenCLIP's vocabulary, from scratch.
    let run_dir = tmp.path().join("run");
    let mut args = tiny_args(&run_dir, 3, 0);
    let at = args.iter().position(|a| a == "tiny").expect("--model tiny");
    args.splice(at - 1..=at, ["--model-config".to_string(), config.to_str().expect("utf-8").to_string()]);
    ok(run(&refs(&args)));
    let weights = run_dir.join("checkpoints/step_3/model.safetensors");
    let oracle = oracle(&config, &weights, &folder, &[]);
    for data in [folder.clone(), folder.join("labels.csv")] {
        let predictions = tmp.path().join("predictions.jsonl");
        let report = eval_zero_shot(&["--checkpoint", run_dir.to_str().expect("utf-8")], &data, &[], &predictions);
        assert_same_predictions(&oracle, &predictions, &report);
    }
}

#[test]
fn labelled_shards_and_bad_zero_shot_settings() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run_dir = tmp.path().join("run");
    ok(run(&refs(&tiny_args(&run_dir, 1, 0))));
    let shards = tmp.path().join("shards");
    ok(run(&[
        "shards",
        "make",
        "--synthetic",
        "40",
        "--samples-per-shard",
        "20",
        "--output",
        shards.to_str().expect("utf-8"),
    ]));
    let pattern = format!("{}/shard-{{000000..000001}}.tar", shards.display());
    let r = run_dir.to_str().expect("utf-8");
    let names = tmp.path().join("classnames.txt");
    std::fs::write(&names, clipfleet_dataloader::synthetic::class_names().join("\n")).expect("write");
    let out = ok(run(&[
        "eval",
        "--checkpoint",
        r,
        "--zero-shot",
        &pattern,
        "--classnames",
        names.to_str().expect("utf-8"),
        "--templates",
        "simple",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((report["num_images"].as_i64(), report["num_classes"].as_i64()), (Some(40), Some(30)), "{report}");

    // Shards carry label numbers only: class names are required, and named.
    let out = run(&["eval", "--checkpoint", r, "--zero-shot", &pattern]);
    assert!(!out.status.success() && stderr(&out).contains("--classnames"), "{}", stderr(&out));
    // A folder without class folders, and a template file without {}.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let out = run(&["eval", "--checkpoint", r, "--zero-shot", empty.to_str().expect("utf-8")]);
    assert!(!out.status.success() && stderr(&out).contains("one subfolder of images per class"), "{}", stderr(&out));
    let templates = tmp.path().join("templates.txt");
    std::fs::write(&templates, "a photo of a {}.\na photo\n").expect("write");
    let out = run(&[
        "eval",
        "--checkpoint",
        r,
        "--zero-shot",
        &pattern,
        "--classnames",
        names.to_str().expect("utf-8"),
        "--templates",
        templates.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success() && stderr(&out).contains("--templates"), "{}", stderr(&out));
}

#[test]
fn training_classifies_zero_shot_data_at_each_evaluation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let folder = folder(tmp.path());
    let run_dir = tmp.path().join("run");
    let mut args = tiny_args(&run_dir, 4, 0);
    args.extend(
        ["--eval-every", "2", "--zero-shot-data", folder.to_str().expect("utf-8"), "--zero-shot-templates", "simple"]
            .map(String::from),
    );
    ok(run(&refs(&args)));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run_dir.join("results.jsonl"))
        .expect("results.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_i64()).collect::<Vec<_>>(), [Some(2), Some(4)], "{lines:?}");
    for line in &lines {
        assert_eq!(line["num_classes"], 10, "{line}");
        for key in ["zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall"] {
            assert!(line[key].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)), "{key}: {line}");
        }
    }
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("eval.json")).expect("eval.json")).expect("json");
    // `clipfleet eval` on the checkpoint evaluates as the run did, zero-shot data included.
    let out = ok(run(&["eval", "--checkpoint", run_dir.to_str().expect("utf-8"), "--json", "--device", "cpu"]));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json"), eval);

    // A missing folder fails at the start, naming the key.
    let mut bad = tiny_args(&tmp.path().join("bad"), 2, 0);
    bad.extend(["--zero-shot-data", "/nonexistent/imagenet-val", "--zero-shot-templates", "simple"].map(String::from));
    let out = run(&refs(&bad));
    assert!(!out.status.success() && stderr(&out).contains("zero_shot_classnames"), "{}", stderr(&out));
}
