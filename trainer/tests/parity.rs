//! Parity with open_clip 3.3.0 (the oracle). Fixtures come from
//! `tests/fixtures/gen_openclip_parity.py`; see the README there.

use std::path::Path;

use clipfleet_trainer::loss::clip_loss_global;
use clipfleet_trainer::model::{Clip, ClipConfig};
use clipfleet_trainer::optim::AdamW;
use tch::{Device, Kind, Tensor};

use crate::common::{fixtures, max_abs_diff, read_tensors, run_oracle};

/// Embedding tolerance (fp32, CPU), from the issue: 1e-4.
const EMBED_TOL: f64 = 1e-4;
/// Loss and feature-gradient tolerance: 1e-5.
const LOSS_TOL: f64 = 1e-5;

fn load_model(config: &Path, weights: &Path) -> Clip {
    let cfg = ClipConfig::from_json_file(config).unwrap();
    let mut model = Clip::new(&cfg, Device::Cpu).unwrap();
    model.load_safetensors(weights).unwrap();
    model
}

/// Checks encode_image/encode_text against the oracle's outputs in `io`.
fn check_embeddings(model: &Clip, io: &Path) {
    let t = read_tensors(io);
    tch::no_grad(|| {
        let (img, txt) = model.forward(&t["image"], &t["text"]);
        let d_img = max_abs_diff(&img, &t["image_features"]);
        let d_txt = max_abs_diff(&txt, &t["text_features"]);
        let d_img_raw = max_abs_diff(&model.encode_image(&t["image"]), &t["image_embeds"]);
        let d_txt_raw = max_abs_diff(&model.encode_text(&t["text"]), &t["text_embeds"]);
        println!("max |Δ| image {d_img:.2e} text {d_txt:.2e} (unnormalised {d_img_raw:.2e} {d_txt_raw:.2e})");
        assert!(d_img < EMBED_TOL && d_txt < EMBED_TOL, "features differ: image {d_img}, text {d_txt}");
        assert!(d_img_raw < EMBED_TOL && d_txt_raw < EMBED_TOL, "embeddings differ: {d_img_raw}, {d_txt_raw}");
        assert!(max_abs_diff(model.logit_scale(), &t["logit_scale"]) == 0.0);
    });
}

fn check_wd_groups(model: &Clip, groups_json: &Path) {
    let groups: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(groups_json).unwrap()).unwrap();
    let sorted = |v: &serde_json::Value| {
        let mut names: Vec<String> = v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        names.sort();
        names
    };
    let opt = AdamW::new(model.named_parameters(), Default::default());
    let (decay, no_decay) = opt.groups();
    let mut decay: Vec<String> = decay.iter().map(|s| s.to_string()).collect();
    let mut no_decay: Vec<String> = no_decay.iter().map(|s| s.to_string()).collect();
    decay.sort();
    no_decay.sort();
    assert_eq!(decay, sorted(&groups["decay"]), "decay group differs from OpenCLIP's");
    assert_eq!(no_decay, sorted(&groups["no_decay"]), "no-decay group differs from OpenCLIP's");
}

/// Matches open_clip 3.3.0 `CLIP.encode_image/encode_text` on the small config, same weights.
#[test]
fn small_model_embeddings_match_open_clip() {
    let f = fixtures();
    let model = load_model(&f.join("small_config.json"), &f.join("small_model.safetensors"));
    check_embeddings(&model, &f.join("small_io.safetensors"));
}

/// Matches open_clip 3.3.0's weight-decay exclusion (open_clip_train/main.py).
#[test]
fn weight_decay_groups_match_open_clip() {
    let f = fixtures();
    let model = load_model(&f.join("small_config.json"), &f.join("small_model.safetensors"));
    check_wd_groups(&model, &f.join("small_wd_groups.json"));
}

/// Matches open_clip 3.3.0 `ClipLoss` (world size 1): value and gradients w.r.t. both
/// feature matrices and the logit scale.
#[test]
fn clip_loss_and_gradients_match_open_clip() {
    let t = read_tensors(&fixtures().join("loss.safetensors"));
    let image = t["image_features"].copy().set_requires_grad(true);
    let text = t["text_features"].copy().set_requires_grad(true);
    let scale = t["logit_scale"].copy().set_requires_grad(true);
    let loss = clip_loss_global(&image, &text, &scale);
    loss.backward();
    let d_loss = max_abs_diff(&loss, &t["loss"]);
    let d_gi = max_abs_diff(&image.grad(), &t["grad_image"]);
    let d_gt = max_abs_diff(&text.grad(), &t["grad_text"]);
    let d_gs = max_abs_diff(&scale.grad(), &t["grad_logit_scale"]);
    println!("loss Δ {d_loss:.2e}, grad Δ image {d_gi:.2e} text {d_gt:.2e} scale {d_gs:.2e}");
    for (what, d) in [("loss", d_loss), ("grad_image", d_gi), ("grad_text", d_gt), ("grad_logit_scale", d_gs)] {
        assert!(d < LOSS_TOL, "{what} differs by {d}");
    }
}

/// A file that clipfleet saves loads in open_clip 3.3.0 (`strict=True`) and gives the
/// same embeddings there.
#[test]
fn clipfleet_weights_load_in_open_clip() {
    let f = fixtures();
    let cfg_path = f.join("small_config.json");
    let cfg = ClipConfig::from_json_file(&cfg_path).unwrap();
    tch::manual_seed(11);
    let model = Clip::new(&cfg, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("model.safetensors");
    model.save_safetensors(&weights).unwrap();
    // Inputs from the committed fixture, features from clipfleet.
    let io = read_tensors(&f.join("small_io.safetensors"));
    let (img, txt) = tch::no_grad(|| model.forward(&io["image"], &io["text"]));
    let io_path = dir.path().join("io.safetensors");
    let tensors = [
        ("image", io["image"].shallow_clone()),
        ("text", io["text"].shallow_clone()),
        ("image_features", img),
        ("text_features", txt),
    ];
    Tensor::write_safetensors(&tensors, &io_path).unwrap();
    let script = f.join("check_openclip_load.py");
    let out = run_oracle(&[
        script.to_str().unwrap(),
        weights.to_str().unwrap(),
        cfg_path.to_str().unwrap(),
        io_path.to_str().unwrap(),
    ]);
    let diffs: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    println!("open_clip on clipfleet weights: {diffs}");
    assert!(diffs["max_abs_diff_image"].as_f64().unwrap() < EMBED_TOL, "{diffs}");
    assert!(diffs["max_abs_diff_text"].as_f64().unwrap() < EMBED_TOL, "{diffs}");
}

/// A model config with FLIP patch dropout evaluates exactly as OpenCLIP's (whose
/// `PatchDropout` is the identity in `eval()`): every patch, the same features as the fixture.
#[test]
fn patch_dropout_model_evaluates_as_open_clip() {
    let f = fixtures();
    let mut cfg = ClipConfig::from_json_file(&f.join("small_config.json")).unwrap();
    cfg.vision_cfg.patch_dropout = 0.5;
    let mut model = Clip::new(&cfg, Device::Cpu).unwrap();
    model.load_safetensors(&f.join("small_model.safetensors")).unwrap();
    let io = read_tensors(&f.join("small_io.safetensors"));
    let trained = tch::no_grad(|| model.encode_image(&io["image"]));
    assert!(max_abs_diff(&trained, &io["image_embeds"]) > 1e-3, "training mode drops patches");
    let _eval = model.eval_mode();
    check_embeddings(&model, &f.join("small_io.safetensors"));
}

/// A randomly initialised open_clip ViT-B-32 (generated now, 600 MB, not committed) gives the
/// same embeddings in clipfleet, and the same weight-decay groups.
#[test]
fn vit_b_32_embeddings_match_open_clip() {
    let dir = tempfile::tempdir().unwrap();
    let script = fixtures().join("gen_openclip_parity.py");
    run_oracle(&[script.to_str().unwrap(), "--model", "ViT-B-32", "--out", dir.path().to_str().unwrap()]);
    let cfg = ClipConfig::from_json_file(&dir.path().join("ViT-B-32_config.json")).unwrap();
    assert_eq!(cfg, ClipConfig::vit_b_32(), "the ViT-B-32 preset equals open_clip's config");
    let model = load_model(&dir.path().join("ViT-B-32_config.json"), &dir.path().join("ViT-B-32_model.safetensors"));
    check_embeddings(&model, &dir.path().join("ViT-B-32_io.safetensors"));
    check_wd_groups(&model, &dir.path().join("ViT-B-32_wd_groups.json"));
    let _ = Kind::Float;
}
