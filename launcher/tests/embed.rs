//! `clipfleet embed`: L2-normalised embeddings in input order.

use clipfleet_dataloader::synthetic::{Split, SyntheticDataset};
use tch::Tensor;

use crate::common::{ok, refs, run, stderr, tiny_args};

#[test]
fn embeds_images_and_texts_in_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    ok(run(&refs(&tiny_args(&run_dir, 2, 0))));
    let weights = run_dir.join("checkpoints/step_2/model.safetensors");
    let data = SyntheticDataset::new(96, 1);
    let mut images = Vec::new();
    for i in 0..3u64 {
        let path = tmp.path().join(format!("img{i}.png"));
        data.sample(Split::Val, i, None).image.save(&path).expect("save png");
        images.push(path.to_str().expect("utf-8").to_string());
    }
    let texts = tmp.path().join("captions.txt");
    std::fs::write(&texts, "a red circle\na blue square in the top left\na green star\na red circle\n").expect("write");
    let output = tmp.path().join("emb.safetensors");
    let mut args = vec!["embed", "--model", "tiny", "--weights", weights.to_str().expect("utf-8"), "--device", "cpu"];
    args.push("--images");
    args.extend(images.iter().map(String::as_str));
    args.extend(["--texts", texts.to_str().expect("utf-8"), "--output", output.to_str().expect("utf-8")]);
    ok(run(&args));

    let t: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(&output).expect("read").into_iter().collect();
    assert_eq!(t["image_embeddings"].size(), vec![3, 128]);
    assert_eq!(t["text_embeddings"].size(), vec![4, 128]);
    for name in ["image_embeddings", "text_embeddings"] {
        let norms = t[name].norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        let err = (norms - 1.0).abs().max().double_value(&[]);
        assert!(err < 1e-5, "{name} not unit-norm: {err}");
    }
    let txt = &t["text_embeddings"];
    assert!(txt.get(0).equal(&txt.get(3)), "same caption, same embedding");
    assert!(!txt.get(0).equal(&txt.get(1)), "captions kept apart and in order");
}

#[test]
fn unreadable_image_is_named_and_nothing_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    ok(run(&refs(&tiny_args(&run_dir, 1, 0))));
    let weights = run_dir.join("checkpoints/step_1/model.safetensors");
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 not really a jpeg").expect("write");
    let output = tmp.path().join("emb.safetensors");
    let embed_one = |image: &std::path::Path| {
        run(&[
            "embed",
            "--model",
            "tiny",
            "--weights",
            weights.to_str().expect("utf-8"),
            "--images",
            image.to_str().expect("utf-8"),
            "--output",
            output.to_str().expect("utf-8"),
            "--device",
            "cpu",
        ])
    };
    let out = embed_one(&bad);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("broken.jpg"), "{}", stderr(&out));
    assert!(!output.exists());

    // A PNG whose header claims 100000 x 100000 pixels is refused before any decoding.
    let bomb = tmp.path().join("bomb.png");
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(
        &[&100_000u32.to_be_bytes()[..], &100_000u32.to_be_bytes(), &[8, 2, 0, 0, 0, 0, 0, 0, 0]].concat(),
    );
    std::fs::write(&bomb, png).expect("write");
    let out = embed_one(&bomb);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bomb.png") && stderr(&out).contains("decompression-bomb"), "{}", stderr(&out));
    assert!(!output.exists());
}

/// Matches open_clip 3.3.0's eval preprocessing (`image_transform(is_train=False)`: PIL bicubic
/// resize of the short side, centre crop, normalise) and image encoder, on non-square PNGs
/// (decoded identically by both) within 1e-4, and on a JPEG (different decoders) within 1e-3.
#[test]
fn image_embeddings_match_open_clip_preprocessing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures");
    let config = fixtures.join("small_config.json");
    let weights = fixtures.join("small_model.safetensors");
    let data = SyntheticDataset::new(97, 3);
    let mut paths = Vec::new();
    for (i, (w, h)) in [(97u32, 61u32), (45, 130), (32, 32), (20, 25)].into_iter().enumerate() {
        let img = image::imageops::resize(
            &data.sample(Split::Val, i as u64, None).image,
            w,
            h,
            image::imageops::FilterType::Triangle,
        );
        let path = tmp.path().join(format!("img{i}.png"));
        img.save(&path).expect("png");
        paths.push(path);
    }
    let jpeg = tmp.path().join("photo.jpg");
    data.sample(Split::Val, 9, None).image.save(&jpeg).expect("jpeg");
    paths.push(jpeg);
    let path_strs: Vec<&str> = paths.iter().map(|p| p.to_str().expect("utf-8")).collect();

    let output = tmp.path().join("emb.safetensors");
    let mut args =
        vec!["embed", "--model-config", config.to_str().expect("utf-8"), "--weights", weights.to_str().expect("utf-8")];
    args.extend(["--device", "cpu", "--output", output.to_str().expect("utf-8"), "--images"]);
    args.extend(path_strs.iter().copied());
    ok(run(&args));
    let ours: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(&output).expect("read").into_iter().collect();
    let ours = &ours["image_embeddings"];

    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip_embed_images.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&config)
        .arg(&weights)
        .args(&path_strs)
        .output()
        .expect("run the open_clip oracle (scripts/setup.sh --test installs it)");
    assert!(out.status.success(), "oracle failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).expect("oracle JSON");
    let rows = reference["image_embeddings"].as_array().expect("rows");
    assert_eq!(rows.len(), paths.len());
    for (i, row) in rows.iter().enumerate() {
        let expected: Vec<f32> = row.as_array().expect("row").iter().map(|v| v.as_f64().expect("f64") as f32).collect();
        let diff = (ours.get(i as i64) - Tensor::from_slice(&expected)).abs().max().double_value(&[]);
        let tol = if paths[i].extension().is_some_and(|e| e == "jpg") { 1e-3 } else { 1e-4 };
        println!("{}: max |Δ| {diff:.2e} (tolerance {tol:.0e})", paths[i].display());
        assert!(diff < tol, "{}: embeddings differ by {diff}", paths[i].display());
    }
}
