//! Bad input gives a clear error and a non-zero exit, and overwrites nothing; every
//! subcommand has help.

use crate::common::{ok, refs, run, snapshot, stderr, tiny_args};

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
    }
}

#[test]
fn bad_config_values_name_the_key_and_allowed_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let o = out.to_str().expect("utf-8");
    // A flag's error names the flag as typed; a file's names the key.
    fails_with(&["train", "--output", o, "--lr-scheduler", "step"], &["--lr-scheduler", "cosine, const"]);
    fails_with(&["train", "--output", o, "--precision", "fp16"], &["--precision", "amp_bf16", "pure_bf16"]);
    fails_with(&["train", "--output", o, "--loss", "infonce"], &["--loss", "clip, siglip"]);
    fails_with(&["train", "--output", o, "--dist-backend", "gloo"], &["--dist-backend", "nccl", "mpi"]);
    fails_with(&["train", "--output", o, "--caption-key", "yaml"], &["caption_key", "json:FIELD"]);
    fails_with(&["train", "--output", o, "--model", "ViT-X-99"], &["model", "ViT-B-32", "tiny"]);
    fails_with(&["train", "--output", o, "--batch-size", "0"], &["batch_size", ">= 1"]);
    fails_with(&["train", "--output", o, "--device", "tpu"], &["device", "cuda:N"]);
    fails_with(&["train", "--output", o, "--lr=-1"], &["lr", "> 0"]);
    fails_with(&["train", "--output", o, "--stop-signal", "TERM"], &["--stop-signal", "USR1, USR2 and HUP"]);
    fails_with(&["train", "--output", o, "--report-to", "wandb"], &["report_to", "tensorboard"]);
    fails_with(&["train", "--output", o, "--stop-grace", "soon"], &["--stop-grace", "seconds"]);
    fails_with(&["train", "--output", "s3://bucket/run"], &["output", "set checkpoint_dir to its URL"]);
    fails_with(
        &["train", "--output", o, "--checkpoint-dir", "http://host/run"],
        &["checkpoint_dir", "s3://, gs:// or az://"],
    );
    fails_with(&["train", "--output", o, "--on-nonfinite", "ignore"], &["on_nonfinite", "stop or rollback"]);
    fails_with(&["train", "--output", o, "--max-nonfinite-skips=-1"], &["max_nonfinite_skips", ">= 0"]);
    fails_with(&["train", "--output", o, "--dataset-type", "parquet"], &["dataset_type", "auto, webdataset or csv"]);
    fails_with(
        &["train", "--output", o, "--lock-image-unlocked-groups", "2"],
        &["lock_image_unlocked_groups", "lock_image"],
    );
    fails_with(
        &["train", "--output", o, "--zero-shot-data", "x", "--zero-shot-templates", "/nonexistent"],
        &["zero_shot_templates", "openai, simple"],
    );
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "batch_size = 8\nlearnin_rate = 0.1\n").expect("write");
    fails_with(&["train", "--output", o, "--config", cfg.to_str().expect("utf-8")], &["learnin_rate", "bad.toml"]);
    std::fs::write(&cfg, "lr_scheduler = \"linear\"\n").expect("write");
    fails_with(&["train", "--output", o, "--config", cfg.to_str().expect("utf-8")], &["lr_scheduler", "cosine"]);
    assert!(!out.exists(), "a rejected config must not create the run folder");
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = tmp.path().join("run");
    let o = o.to_str().expect("utf-8");
    fails_with(&["train", "--output", o, "--config", "/nonexistent/c.toml"], &["/nonexistent/c.toml"]);
    fails_with(&["train", "--output", o, "--model-config", "/nonexistent/m.json"], &["/nonexistent/m.json"]);
    fails_with(&["eval", "--checkpoint", "/nonexistent/run"], &["/nonexistent/run"]);
    let bad_json = tmp.path().join("m.json");
    std::fs::write(&bad_json, r#"{"embed_dim": 8, "vision_cfg": {"image_size": 30, "layers": 1, "width": 64, "patch_size": 8}, "text_cfg": {}}"#)
        .expect("write");
    fails_with(
        &["train", "--output", o, "--model-config", bad_json.to_str().expect("utf-8")],
        &["vision_cfg.image_size", "multiple"],
    );
}

#[test]
fn corrupt_checkpoint_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    ok(run(&refs(&tiny_args(&run_dir, 2, 0))));
    let weights = run_dir.join("checkpoints/step_2/model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).expect("truncate");
    let before = snapshot(&run_dir);

    fails_with(
        &["eval", "--checkpoint", run_dir.to_str().expect("utf-8")],
        &["model.safetensors", "corrupt or truncated"],
    );
    let mut args = tiny_args(&run_dir, 4, 0);
    args.extend(["--resume".to_string(), "latest".to_string()]);
    fails_with(&refs(&args), &["model.safetensors", "corrupt or truncated"]);
    assert_eq!(snapshot(&run_dir), before, "a failed command modified the run folder");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["train", "--help"],
        vec!["eval", "--help"],
        vec!["embed", "--help"],
        vec!["bench", "train", "--help"],
    ] {
        let out = ok(run(&args));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}

#[test]
fn eval_json_reports_every_metric() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    ok(run(&refs(&tiny_args(&run_dir, 2, 0))));
    let out = ok(run(&[
        "eval",
        "--checkpoint",
        run_dir.join("checkpoints/step_2").to_str().expect("utf-8"),
        "--json",
        "--samples",
        "40",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "zero_shot_top1",
        "zero_shot_top5",
        "image_to_text_r1",
        "image_to_text_r5",
        "image_to_text_r10",
        "text_to_image_r1",
        "text_to_image_r5",
        "text_to_image_r10",
        "val_loss",
    ] {
        let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {r}"));
        assert!(v.is_finite(), "{key} = {v}");
    }
    assert_eq!(r["num_samples"], 40);
    assert_eq!(r["num_classes"], 30);
}

#[test]
fn bench_train_json_reports_throughput_flops_and_memory() {
    let out = ok(run(&[
        "bench",
        "train",
        "--model",
        "tiny",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--json",
        "--peak-tflops",
        "1",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["samples_per_second", "ms_per_step", "tflops", "mfu"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()), "{key} in {r}");
    }
    // 3 × (image + text) forward FLOPs of the tiny preset, from the analytic count.
    assert!((r["train_gflops_per_sample"].as_f64().expect("flops") - 0.3771).abs() < 1e-3, "{r}");
    assert!(r["peak_memory_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{r}");
}

#[test]
fn tokenize_prints_open_clip_ids() {
    // open_clip.tokenize(["a photo of a cat"], context_length=10) in open_clip 3.3.0.
    let out = ok(run(&["tokenize", "--context-length", "10", "a photo of a cat", "A  PHOTO of a cat!"]));
    let lines: Vec<Vec<i64>> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON array")).collect();
    assert_eq!(lines[0], vec![49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]);
    assert_eq!(&lines[1][..6], &[49406, 320, 1125, 539, 320, 2368]);
    assert_eq!(lines[1].len(), 10);
    fails_with(&["tokenize", "--vocab", "/nonexistent/bpe.txt.gz", "x"], &["/nonexistent/bpe.txt.gz"]);
}

#[test]
fn tokenize_reads_a_hugging_face_tokenizer_json() {
    // Ids from the Python `tokenizers` package: dataloader/tests/fixtures/hf/gen_hf_tokenizer.py.
    let hf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataloader/tests/fixtures/hf");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("expected.json")).expect("expected.json")).expect("json");
    let cases = expected["files"]["clip_bpe.json"]["cases"].as_array().expect("cases");
    let texts: Vec<&str> = cases.iter().take(5).map(|c| c["text"].as_str().expect("text")).collect();
    let json = hf.join("clip_bpe.json");
    let mut args = vec!["tokenize", "--tokenizer", json.to_str().expect("utf-8")];
    args.extend(&texts);
    let out = ok(run(&args));
    let lines: Vec<Vec<i64>> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON array")).collect();
    assert_eq!(lines.len(), texts.len());
    for (line, case) in lines.iter().zip(cases) {
        let mut want: Vec<i64> = serde_json::from_value(case["ids"].clone()).expect("ids");
        want.resize(77, 0);
        assert_eq!(line, &want, "{}", case["text"]);
    }

    let bert = hf.join("bert_wordpiece.json");
    fails_with(
        &["tokenize", "--tokenizer", bert.to_str().expect("utf-8"), "x"],
        &["bert_wordpiece.json", "largest id"],
    );
    fails_with(&["tokenize", "--tokenizer", "/nonexistent/tokenizer.json", "x"], &["/nonexistent/tokenizer.json"]);
    fails_with(&["tokenize", "--tokenizer", json.to_str().expect("utf-8"), "--vocab", "v.txt.gz", "x"], &["--vocab"]);
}
