//! `--pretrained` (OpenCLIP-written weights as the start of a run) and LiT (`--lock-image`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

use crate::common::{ok, refs, run, stderr, tiny_args};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// A small model with OpenCLIP's vocabulary, initialised and written by open_clip:
/// (config, weights).
fn openclip_weights(dir: &Path) -> (PathBuf, PathBuf) {
    let out = Command::new(python())
        .arg(fixtures().join("gen_zero_shot_model.py"))
        .arg(dir)
        .output()
        .expect("python (scripts/setup.sh --test)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (dir.join("small_bpe_config.json"), dir.join("small_bpe_model.safetensors"))
}

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).expect("safetensors").into_iter().collect()
}

/// `tiny_args` with `--model-config` instead of `--model tiny`, plus `extra`.
fn args(output: &Path, steps: i64, config: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = tiny_args(output, steps, 0);
    let at = a.iter().position(|x| x == "tiny").expect("--model tiny");
    a.splice(at - 1..=at, ["--model-config".to_string(), config.to_str().expect("utf-8").to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn pretrained_openclip_weights_then_embed_give_openclip_embeddings() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (config, weights) = openclip_weights(&tmp.path().join("w"));
    let run_dir = tmp.path().join("run");
    // A learning rate of 1e-20 moves no float32 weight: the checkpoint holds the loaded weights.
    let out = ok(run(&refs(&args(
        &run_dir,
        1,
        &config,
        &["--pretrained", weights.to_str().expect("utf-8"), "--lr", "1e-20"],
    ))));
    assert!(stderr(&out).contains("starting from pretrained weights"), "{}", stderr(&out));
    let trained = run_dir.join("checkpoints/step_1/model.safetensors");
    let (a, b) = (tensors(&weights), tensors(&trained));
    for (name, t) in &a {
        if name != "logit_scale" {
            assert!(t.equal(&b[name]), "{name} moved");
        }
    }
    // Embeddings of the run's checkpoint, by `clipfleet embed`, against OpenCLIP's of its weights.
    let images_dir = tmp.path().join("images");
    std::fs::create_dir(&images_dir).expect("mkdir");
    let data = clipfleet_dataloader::synthetic::SyntheticDataset::new(80, 3);
    let mut images = Vec::new();
    for i in 0..4u64 {
        let path = images_dir.join(format!("{i}.png"));
        data.sample(clipfleet_dataloader::synthetic::Split::Val, i, None).image.save(&path).expect("png");
        images.push(path.to_str().expect("utf-8").to_string());
    }
    let output = tmp.path().join("emb.safetensors");
    let mut embed =
        vec!["embed", "--model-config", config.to_str().expect("utf-8"), "--weights", trained.to_str().expect("utf-8")];
    embed.extend(["--device", "cpu", "--output", output.to_str().expect("utf-8"), "--images"]);
    embed.extend(images.iter().map(String::as_str));
    ok(run(&embed));
    let ours = &tensors(&output)["image_embeddings"];
    let out = Command::new(python())
        .arg(fixtures().join("openclip_embed_images.py"))
        .arg(&config)
        .arg(&weights)
        .args(&images)
        .output()
        .expect("oracle");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for (i, row) in reference["image_embeddings"].as_array().expect("rows").iter().enumerate() {
        let expected: Vec<f32> = row.as_array().expect("row").iter().map(|v| v.as_f64().expect("f64") as f32).collect();
        let diff = (ours.get(i as i64) - Tensor::from_slice(&expected)).abs().max().double_value(&[]);
        assert!(diff <= 1e-4, "image {i}: |Δ| {diff}");
    }
}

#[test]
fn lit_keeps_the_image_tower_bitwise_and_trains_the_text_tower() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (config, weights) = openclip_weights(&tmp.path().join("w"));
    let run_dir = tmp.path().join("run");
    let w = weights.to_str().expect("utf-8");
    let out = ok(run(&refs(&args(&run_dir, 4, &config, &["--pretrained", w, "--lock-image"]))));
    assert!(stderr(&out).contains("locked parameters"), "{}", stderr(&out));
    let (before, after) = (tensors(&weights), tensors(&run_dir.join("checkpoints/step_4/model.safetensors")));
    let mut text_moved = 0;
    for (name, t) in &before {
        if name.starts_with("visual.") {
            assert!(t.equal(&after[name]), "{name}: the locked image tower changed");
        } else if !t.equal(&after[name]) {
            text_moved += 1;
        }
    }
    let text_params = before.keys().filter(|n| !n.starts_with("visual.") && *n != "logit_scale").count();
    assert_eq!(text_moved, text_params + 1, "every text parameter and the logit scale learn");
    let optimizer = tensors(&run_dir.join("checkpoints/step_4/optimizer.safetensors"));
    assert!(optimizer.keys().all(|k| !k.contains(".visual.")), "no optimizer state for locked parameters");
    assert!(optimizer.contains_key("exp_avg.text_projection"));

    // The last image groups can stay trainable; unlocked counts need their lock.
    let partial = tmp.path().join("partial");
    ok(run(&refs(&args(
        &partial,
        2,
        &config,
        &["--pretrained", w, "--lock-image", "--lock-image-unlocked-groups", "1"],
    ))));
    let after = tensors(&partial.join("checkpoints/step_2/model.safetensors"));
    assert!(!before["visual.proj"].equal(&after["visual.proj"]), "visual.proj is in the last group");
    assert!(before["visual.ln_post.weight"].equal(&after["visual.ln_post.weight"]));
    let out = run(&refs(&args(&tmp.path().join("bad"), 2, &config, &["--lock-text-unlocked-layers", "2"])));
    assert!(!out.status.success() && stderr(&out).contains("lock_text_unlocked_layers"), "{}", stderr(&out));
}

/// EVA-style MIM end to end: a 2-step CLIP run is the teacher (its checkpoint folder), `clipfleet
/// mim` writes an image tower, and `train --pretrained` starts a CLIP image tower from it
/// (the text tower from scratch); a text-only file is refused with the keys named.
#[test]
fn mim_student_starts_a_clip_image_tower() {
    let tmp = tempfile::tempdir().expect("tmp");
    let teacher = tmp.path().join("teacher");
    ok(run(&refs(&tiny_args(&teacher, 2, 0))));
    let mim = tmp.path().join("mim");
    let out = ok(run(&[
        "mim",
        "--model",
        "tiny",
        "--teacher",
        teacher.to_str().expect("utf-8"),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--warmup",
        "1",
        "--log-every",
        "2",
        "--device",
        "cpu",
        "--output",
        mim.to_str().expect("utf-8"),
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("clipfleet mim: 4 steps, loss"), "{stdout}");
    let log = std::fs::read_to_string(mim.join("mim.jsonl")).expect("mim.jsonl");
    assert_eq!(log.lines().count(), 3, "steps 1, 2 and 4:\n{log}");
    let tower = mim.join("image_tower.safetensors");
    let student = tensors(&tower);
    assert!(student.keys().all(|k| k.starts_with("visual.")) && student.contains_key("visual.conv1.weight"));
    assert!(tensors(&mim.join("student.safetensors")).contains_key("mim.mask_token"));

    let run_dir = tmp.path().join("clip");
    let mut a = tiny_args(&run_dir, 1, 0);
    a.extend(["--pretrained".into(), tower.to_str().expect("utf-8").into(), "--lr".into(), "1e-20".into()]);
    let out = ok(run(&refs(&a)));
    assert!(stderr(&out).contains("ImageTower"), "{}", stderr(&out));
    let trained = tensors(&run_dir.join("checkpoints/step_1/model.safetensors"));
    for (name, t) in &student {
        assert!(trained[name].allclose(t, 1e-6, 1e-6, false), "{name} not loaded");
    }

    // A file of text-tower tensors only is a whole state dict with keys missing.
    let text_only: Vec<(String, Tensor)> = trained
        .iter()
        .filter(|(k, _)| !k.starts_with("visual."))
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let bad = tmp.path().join("text.safetensors");
    Tensor::write_safetensors(&text_only, &bad).expect("write");
    let mut a = tiny_args(&tmp.path().join("bad"), 1, 0);
    a.extend(["--pretrained".into(), bad.to_str().expect("utf-8").into()]);
    let out = run(&refs(&a));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing") && stderr(&out).contains("visual.conv1.weight"), "{}", stderr(&out));
}
