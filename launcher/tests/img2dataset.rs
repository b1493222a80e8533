//! Datasets as the real img2dataset writes them (`dataloader/tests/fixtures/gen_img2dataset.py`:
//! 240 images and 11 broken URLs served on loopback, shards of 96, 95 and 49 good samples):
//! `shards inspect` counts them, and `train` with nothing but `--train-data` runs an epoch and
//! resumes bit for bit.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::{ok, refs, run, run_env, stderr, tiny_args};

/// The generated dataset, made once per test process.
pub(crate) fn img2dataset_output() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = std::env::var_os("CLIPFLEET_IMG2DATASET_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv-img2dataset/bin/python"));
        let out = std::process::Command::new(&python)
            .arg(root.join("dataloader/tests/fixtures/gen_img2dataset.py"))
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {} (scripts/setup.sh --test installs it): {e}", python.display()));
        assert!(out.status.success(), "gen_img2dataset.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
    .path()
}

fn pattern(format: &str) -> String {
    let ext = if format == "wds" { "tar" } else { "parquet" };
    format!("{}/{format}/{{00000..00002}}.{ext}", img2dataset_output().display())
}

#[test]
fn shards_inspect_counts_the_good_samples() {
    for (format, not_downloaded) in [("wds", 0), ("parquet", 11)] {
        let out = ok(run(&["shards", "inspect", &pattern(format), "--json"]));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            report,
            serde_json::json!({"shards": 3, "samples": 240, "skipped": {}, "not_downloaded": not_downloaded}),
            "{format}"
        );
    }
}

#[test]
fn train_runs_an_epoch_with_default_flags_and_resumes_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    for format in ["wds", "parquet"] {
        let args = |output: &Path| {
            let mut a = tiny_args(output, 16, 8);
            a.extend(["--train-data".to_string(), pattern(format)]);
            a
        };
        let straight = tmp.path().join(format!("{format}-straight"));
        let out = ok(run(&refs(&args(&straight))));
        let log = stderr(&out);
        // 240 samples, batch 16: 15 steps an epoch, and step 16 starts epoch 1.
        assert!(log.contains(r#""samples":240"#) && log.contains(r#""steps_per_epoch":15"#), "{format}: {log}");
        assert!(!log.contains("skipped"), "{format}: failed downloads are not skips: {log}");

        let resumed = tmp.path().join(format!("{format}-resumed"));
        let out = run_env(&refs(&args(&resumed)), &[("CLIPFLEET_FAULT", "exit-after-checkpoint:8")]);
        assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
        let mut again = args(&resumed);
        again.extend(["--resume".to_string(), "latest".to_string()]);
        ok(run(&refs(&again)));
        for file in ["model.safetensors", "optimizer.safetensors"] {
            let a = std::fs::read(straight.join("checkpoints/step_16").join(file)).expect("straight");
            let b = std::fs::read(resumed.join("checkpoints/step_16").join(file)).expect("resumed");
            assert!(a == b, "{format}: {file} differs between the straight and the resumed run");
        }
    }
}
