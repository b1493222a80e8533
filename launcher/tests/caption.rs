//! `clipfleet caption`: greedy and beam captions from a CoCa model, the same ids as the library's
//! decoding (which tests/coca_parity.rs checks against OpenCLIP's `generate`), decoded to text.

use std::path::{Path, PathBuf};

use clipfleet_dataloader::synthetic::{Split, SyntheticDataset};
use clipfleet_trainer::data::images_to_tensor;
use clipfleet_trainer::model::coca::{Decoding, SpecialTokens};
use clipfleet_trainer::model::{Clip, ClipConfig};
use tch::Tensor;

use crate::common::{ok, run};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures")
}

#[test]
fn captions_match_the_librarys_decoding() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = SyntheticDataset::new(32, 4);
    let mut paths = Vec::new();
    for i in 0..3u64 {
        let path = tmp.path().join(format!("img{i}.png"));
        data.sample(Split::Val, i, None).image.save(&path).expect("save png");
        paths.push(path.to_str().expect("utf-8").to_string());
    }
    let config = fixtures().join("small-coca_config.json");
    let weights = fixtures().join("small-coca_model.safetensors");
    let cfg = ClipConfig::from_json_file(&config).expect("config");
    let mut model = Clip::new(&cfg, tch::Device::Cpu).expect("model");
    model.load_safetensors(&weights).expect("weights");
    let images: Vec<_> = paths.iter().map(|p| image::open(p).expect("png").to_rgb8()).collect();
    let batch = images_to_tensor(
        &clipfleet_dataloader::batch::ImageBatch::from_images(&images).expect("batch"),
        tch::Device::Cpu,
    );
    let decoding = Decoding {
        seq_len: 10,
        min_seq_len: 5,
        fixed_output_length: false,
        tokens: SpecialTokens { sot: 510, eot: 511, pad: 0 },
    };
    for (beam, want) in [
        (false, model.generate_greedy(&batch, decoding).expect("greedy")),
        (true, model.generate_beam(&batch, decoding, 2).expect("beam")),
    ] {
        let mut args = vec!["caption", "--model-config", config.to_str().expect("utf-8")];
        args.extend(["--weights", weights.to_str().expect("utf-8"), "--device", "cpu", "--json"]);
        args.extend(["--seq-len", "10", "--batch-size", "2", "--images"]);
        args.extend(paths.iter().map(String::as_str));
        if beam {
            args.push("--beam");
        }
        let out = ok(run(&args));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per image"))
            .collect();
        assert_eq!(lines.len(), 3);
        let want: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(want).expect("ids");
        for ((line, path), ids) in lines.iter().zip(&paths).zip(want) {
            assert_eq!(line["image"], path.as_str());
            let got: Vec<i64> = line["ids"].as_array().expect("ids").iter().map(|v| v.as_i64().expect("id")).collect();
            // Each row as decoded alone: the batch's padding columns are the library's too.
            let n = got.len().min(ids.len());
            assert_eq!(got[..n], ids[..n], "beam {beam}: {path}");
            assert!(got[0] == 510, "starts with the start token");
            let words = line["caption"].as_str().expect("caption");
            assert!(!words.contains("<"), "specials stripped: {words}");
        }
    }
}

/// A CoCa trains like a CLIP (`--model tiny-coca`: contrastive + caption loss), resumes exactly,
/// evaluates, and captions from its checkpoint; what CoCa cannot do is refused by key.
#[test]
fn coca_trains_resumes_evaluates_and_captions() {
    use crate::common::{refs, stderr, tiny_args};
    let tmp = tempfile::tempdir().expect("tempdir");
    let coca = |dir: &Path, steps: i64, extra: &[&str]| {
        let mut a = tiny_args(dir, steps, 2);
        let at = a.iter().position(|x| x == "tiny").expect("--model tiny");
        a[at] = "tiny-coca".into();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let whole = tmp.path().join("whole");
    let out = ok(run(&refs(&coca(&whole, 4, &[]))));
    assert!(stderr(&out).contains("\"model\":\"tiny-coca\""), "{}", stderr(&out));
    let resumed = tmp.path().join("resumed");
    ok(run(&refs(&coca(&resumed, 2, &[]))));
    ok(run(&refs(&coca(&resumed, 4, &["--resume", "latest"]))));
    let weights = |dir: &Path| -> std::collections::BTreeMap<String, Tensor> {
        Tensor::read_safetensors(dir.join("checkpoints/step_4/model.safetensors"))
            .expect("weights")
            .into_iter()
            .collect()
    };
    let (a, b) = (weights(&whole), weights(&resumed));
    assert!(a.contains_key("text_decoder.text_projection") && a.contains_key("visual.attn_pool.query"));
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "{k} differs after resume");
    }
    let out = ok(run(&["eval", "--checkpoint", whole.to_str().expect("utf-8"), "--device", "cpu", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report["image_to_text_r1"].as_f64().is_some() && report["step"] == 4, "{report}");

    let image = tmp.path().join("img.png");
    SyntheticDataset::new(64, 1).sample(Split::Val, 0, None).image.save(&image).expect("png");
    let w = whole.join("checkpoints/step_4/model.safetensors");
    let out = ok(run(&[
        "caption",
        "--model",
        "tiny-coca",
        "--weights",
        w.to_str().expect("utf-8"),
        "--images",
        image.to_str().expect("utf-8"),
        "--device",
        "cpu",
        "--seq-len",
        "12",
    ]));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.starts_with(image.to_str().expect("utf-8")) && line.contains('\t'), "{line}");

    for (flag, value, key) in [
        ("--loss", "siglip", "loss"),
        ("--grad-checkpointing", "true", "grad_checkpointing"),
        ("--lock-text", "true", "lock_text"),
    ] {
        let out = run(&refs(&coca(&tmp.path().join("bad"), 1, &[flag, value])));
        assert!(!out.status.success());
        assert!(stderr(&out).contains(key) && stderr(&out).contains("CoCa"), "{}", stderr(&out));
    }
    let out = run(&[
        "caption",
        "--model",
        "tiny",
        "--weights",
        w.to_str().expect("utf-8"),
        "--images",
        image.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success() && stderr(&out).contains("allowed a CoCa"), "{}", stderr(&out));
}
