//! A `--config` file: arbitrary TOML through parsing, validation and everything derived from a
//! valid config without touching the file system (the model preset, the data spec, the loss
//! tiles, the lock rules). Errors are expected; a panic, a hang or an unbounded allocation is a
//! finding.
#![no_main]

use std::path::Path;

use clipfleet_trainer::config::TrainConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = TrainConfig::from_toml_str(text, Path::new("fuzz.toml")) else { return };
    if cfg.validate().is_err() {
        return;
    }
    // Only presets: a `model_config` or `vocab` path would read whatever file it names.
    if cfg.model_config.is_none() {
        let _ = cfg.model_config();
    }
    if let Some(urls) = cfg.train_data.as_deref() {
        let _ = cfg.data_spec(urls, 1);
        let _ = cfg.data_spec(urls, 8);
    }
    let _ = cfg.csv_separator_char();
    let _ = cfg.loss_blocks();
    let _ = cfg.lock_spec();
    let _ = cfg.local_batch();
    let _ = cfg.adamw();
});
