//! Checkpoint commit, verification and resolution.

use std::fs;

use clipfleet_trainer::checkpoint::{self, Checkpoint, CheckpointState, RngState, FORMAT_VERSION};
use clipfleet_trainer::data::DataPosition;
use clipfleet_trainer::model::{Clip, ClipConfig};
use clipfleet_trainer::optim::AdamW;
use clipfleet_trainer::TrainConfig;
use tch::Device;

fn tiny() -> (Clip, AdamW) {
    tch::manual_seed(0);
    let model = Clip::new(&ClipConfig::tiny(), Device::Cpu).unwrap();
    let opt = AdamW::new(model.named_parameters(), Default::default());
    (model, opt)
}

fn state(step: i64) -> CheckpointState {
    CheckpointState {
        format_version: FORMAT_VERSION,
        step,
        data: DataPosition { epoch: 0, samples_in_epoch: step as u64 * 8 },
        shards: None,
        rng: RngState { kind: "counter".into(), seed: 0, step },
        train_config: TrainConfig::default(),
        model_config: ClipConfig::tiny(),
        world_size: Some(1),
        global_batch: Some(8),
        clipfleet_version: "test".into(),
    }
}

#[test]
fn save_then_open_round_trips_and_prunes() {
    let run = tempfile::tempdir().unwrap();
    let (model, opt) = tiny();
    for step in [1, 2, 3] {
        checkpoint::save(run.path(), &model, &opt, &state(step), 2).unwrap();
    }
    let committed: Vec<i64> =
        checkpoint::list_committed(&run.path().join("checkpoints")).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(committed, vec![2, 3], "keeps the newest 2");
    let dir = checkpoint::resolve(run.path()).unwrap().unwrap();
    assert!(dir.ends_with("step_3"));
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.state, state(3));
    let (mut other, mut other_opt) = tiny();
    tch::no_grad(|| {
        let _ = other.named_parameters()[0].1.shallow_clone().fill_(0.5);
    });
    ck.load_model(&mut other).unwrap();
    ck.load_optimizer(&mut other_opt).unwrap();
    for ((n, a), (_, b)) in model.named_parameters().iter().zip(other.named_parameters()) {
        assert!(a.equal(&b), "{n} differs after load");
    }
}

#[test]
fn corrupt_or_truncated_files_are_named() {
    let run = tempfile::tempdir().unwrap();
    let (model, opt) = tiny();
    let dir = checkpoint::save(run.path(), &model, &opt, &state(5), 0).unwrap();
    let weights = dir.join("model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("corrupt or truncated"), "{err}");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    fs::write(&weights, &flipped).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn uncommitted_folder_is_never_loaded() {
    let run = tempfile::tempdir().unwrap();
    let (model, opt) = tiny();
    checkpoint::save(run.path(), &model, &opt, &state(1), 0).unwrap();
    let dir2 = checkpoint::save(run.path(), &model, &opt, &state(2), 0).unwrap();
    // Simulate a crash between writing the files and committing: no manifest, `latest` stale.
    fs::remove_file(dir2.join("manifest.json")).unwrap();
    let resolved = checkpoint::resolve(run.path()).unwrap().unwrap();
    assert!(resolved.ends_with("step_1"), "{}", resolved.display());
    let err = checkpoint::resolve(&dir2).unwrap_err().to_string();
    assert!(err.contains("never committed"), "{err}");
}

#[test]
fn model_mismatch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny();
    let path = dir.path().join("w.safetensors");
    model.save_safetensors(&path).unwrap();
    let mut small = Clip::new(&ClipConfig::small(), Device::Cpu).unwrap();
    let err = small.load_safetensors(&path).unwrap_err().to_string();
    assert!(err.contains("w.safetensors") && err.contains("does not match the model config"), "{err}");
    let err = small.load_safetensors(&dir.path().join("missing.safetensors")).unwrap_err().to_string();
    assert!(err.contains("no such file"), "{err}");
}
