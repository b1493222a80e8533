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
    let out = run(&[
        "embed",
        "--model",
        "tiny",
        "--weights",
        weights.to_str().expect("utf-8"),
        "--images",
        bad.to_str().expect("utf-8"),
        "--output",
        output.to_str().expect("utf-8"),
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("broken.jpg"), "{}", stderr(&out));
    assert!(!output.exists());
}
