//! `clipfleet train --train-data/--val-data` on shards written by `clipfleet shards make`:
//! exact resume after a crash, validation on shards, and clear errors for bad data settings.

use std::path::Path;

use crate::common::{ok, refs, run, run_env, stderr, tiny_args};

/// Writes `n` synthetic samples as WebDataset shards of `per_shard` and returns the pattern.
fn make_shards(dir: &Path, n: u32, per_shard: u32) -> String {
    let o = dir.to_str().expect("utf-8");
    ok(run(&[
        "shards",
        "make",
        "--synthetic",
        &n.to_string(),
        "--samples-per-shard",
        &per_shard.to_string(),
        "--output",
        o,
    ]));
    let last = n.div_ceil(per_shard) - 1;
    format!("{o}/shard-{{000000..{last:06}}}.tar")
}

fn shard_args(output: &Path, train: &str, val: &str, steps: i64, checkpoint_every: i64) -> Vec<String> {
    let mut args = tiny_args(output, steps, checkpoint_every);
    args.extend(
        ["--train-data", train, "--val-data", val, "--workers", "2", "--shuffle-window", "16"].map(String::from),
    );
    args
}

#[test]
fn shard_training_resumes_bitwise_after_a_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let train = make_shards(&tmp.path().join("train"), 240, 30);
    let val = make_shards(&tmp.path().join("val"), 40, 20);
    let straight = tmp.path().join("straight");
    let resumed = tmp.path().join("resumed");
    let out = ok(run(&refs(&shard_args(&straight, &train, &val, 8, 4))));
    let log = stderr(&out);
    assert!(log.contains("training data") && log.contains("\"partitions\":8"), "{log}");

    let out =
        run_env(&refs(&shard_args(&resumed, &train, &val, 8, 4)), &[("CLIPFLEET_FAULT", "exit-after-checkpoint:4")]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(resumed.join("checkpoints/step_4/state.json")).expect("state.json"),
    )
    .expect("json");
    assert_eq!(state["shards"]["step"], 4, "{state}");
    assert_eq!(state["shards"]["cursors"].as_object().map(|c| c.len()), Some(8), "{state}");

    let mut args = shard_args(&resumed, &train, &val, 8, 4);
    args.extend(["--resume", "latest"].map(String::from));
    ok(run(&refs(&args)));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(straight.join("checkpoints/step_8").join(file)).expect("straight");
        let b = std::fs::read(resumed.join("checkpoints/step_8").join(file)).expect("resumed");
        assert!(a == b, "{file} differs between the straight and the resumed run");
    }
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("eval.json")).expect("eval.json")).expect("json");
    assert_eq!(eval["num_samples"], 32, "eval-samples caps the validation shards: {eval}");
    assert!(eval["zero_shot_top1"].is_null(), "no zero-shot classes on shards: {eval}");
    assert!(eval["val_loss"].as_f64().is_some_and(f64::is_finite), "{eval}");
    let resumed_eval = std::fs::read_to_string(resumed.join("eval.json")).expect("eval.json");
    assert_eq!(eval, serde_json::from_str::<serde_json::Value>(&resumed_eval).expect("json"));

    // `clipfleet eval --val-data` on the same shards gives the same report.
    let out = ok(run(&["eval", "--checkpoint", straight.to_str().expect("utf-8"), "--samples", "32", "--json"]));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(again, eval);
}

#[test]
fn bad_data_settings_name_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let train = make_shards(&tmp.path().join("train"), 40, 20);
    let output = tmp.path().join("run");
    let cases: [(&[&str], &str); 4] = [
        (&["--dataset-resampled"], "train_num_samples"),
        (&["--caption-key", "json"], "caption_key"),
        (&["--data-partitions", "3"], "data_partitions"),
        (&["--train-data-upsampling-factors", "1"], "train_data_upsampling_factors"),
    ];
    for (extra, key) in cases {
        let mut args = tiny_args(&output, 2, 0);
        args.extend(["--train-data".to_string(), train.clone()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = run(&refs(&args));
        assert!(!out.status.success(), "{extra:?} should fail");
        assert!(stderr(&out).contains(key), "{extra:?}: {}", stderr(&out));
    }
    let mut args = tiny_args(&output, 2, 0);
    args.extend(["--train-data".to_string(), format!("{}/missing-{{0..3}}.tar", tmp.path().display())]);
    args.extend(["--train-num-samples".to_string(), "64".to_string()]);
    let out = run(&refs(&args));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/missing-") && stderr(&out).contains(".tar: not found"), "{}", stderr(&out));
}

/// Replaces the first image of a tar shard with bytes that are not an image (Python's tarfile).
fn corrupt_first_image(shard: &Path) {
    let script = r#"
import sys, tarfile, io
path = sys.argv[1]
with tarfile.open(path) as t:
    members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
done = False
with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
    for m, data in members:
        if not done and m.name.endswith(".jpg"):
            data, done = b"definitely not a jpeg", True
        m.size = len(data)
        out.addfile(m, io.BytesIO(data))
"#;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let out = std::process::Command::new(python).arg("-c").arg(script).arg(shard).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// GET http://127.0.0.1:port/metrics, or `None` while nothing listens.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn training_exports_metrics_with_skips_by_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let train = make_shards(&tmp.path().join("train"), 240, 30);
    corrupt_first_image(&tmp.path().join("train/shard-000001.tar"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut args = tiny_args(&tmp.path().join("run"), 60, 0);
    args.extend(["--train-data".into(), train, "--metrics-port".into(), port.to_string()]);
    args.extend(["--metrics-host", "127.0.0.1", "--job-name", "metrics-test"].map(String::from));
    let log = tmp.path().join("train.log");
    let mut child = std::process::Command::new(crate::common::bin())
        .args(&args)
        .args(["--log-format", "json"])
        .env("OMP_NUM_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    let mut last = String::new();
    let mut seen = false;
    while std::time::Instant::now() < deadline {
        if let Some(body) = scrape(port) {
            let has = |needle: &str| body.lines().any(|l| l.starts_with(needle));
            let step_done = body
                .lines()
                .find(|l| l.starts_with("clipfleet_step{"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 1.0);
            if step_done
                && has(
                    "clipfleet_data_samples_skipped_total{job=\"metrics-test\",rank=\"0\",reason=\"corrupt_image\"} 1",
                )
            {
                assert!(has("clipfleet_data_wait_seconds_count{"), "{body}");
                assert!(has("clipfleet_shard_bytes_read_total{"), "{body}");
                seen = true;
                break;
            }
            last = body;
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(seen, "no step with the corrupt_image skip counted was scraped; last scrape:\n{last}\nlog:\n{log}");
}

#[test]
fn a_csv_dataset_trains_with_openclips_flags_and_resumes_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = clipfleet_dataloader::synthetic::SyntheticDataset::new(48, 3);
    std::fs::create_dir(tmp.path().join("img")).expect("mkdir");
    let mut csv = String::from("filepath;title\n");
    for i in 0..80u64 {
        let s = data.sample(clipfleet_dataloader::synthetic::Split::Train, i, None);
        s.image.save(tmp.path().join(format!("img/{i}.png"))).expect("png");
        csv.push_str(&format!("img/{i}.png;{}\n", s.caption));
    }
    let list = tmp.path().join("train.txt");
    std::fs::write(&list, csv).expect("csv");
    let args = |output: &Path| {
        let mut a = tiny_args(output, 6, 3);
        a.extend(
            ["--train-data", list.to_str().expect("utf-8"), "--dataset-type", "csv", "--csv-separator", ";"]
                .map(String::from),
        );
        a
    };
    let straight = tmp.path().join("straight");
    let out = ok(run(&refs(&args(&straight))));
    assert!(stderr(&out).contains(r#""samples":80"#), "{}", stderr(&out));
    let resumed = tmp.path().join("resumed");
    let out = run_env(&refs(&args(&resumed)), &[("CLIPFLEET_FAULT", "exit-after-checkpoint:3")]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let mut again = args(&resumed);
    again.extend(["--resume", "latest"].map(String::from));
    ok(run(&refs(&again)));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(straight.join("checkpoints/step_6").join(file)).expect("straight");
        let b = std::fs::read(resumed.join("checkpoints/step_6").join(file)).expect("resumed");
        assert!(a == b, "{file} differs between the straight and the resumed run");
    }
    let mut bad = args(&tmp.path().join("bad"));
    let at = bad.iter().position(|a| a == ";").expect("separator");
    bad[at] = "ab".into();
    let out = run(&refs(&bad));
    assert!(!out.status.success() && stderr(&out).contains("csv_separator"), "{}", stderr(&out));
}
