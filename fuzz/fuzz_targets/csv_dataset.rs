//! The `csv_dataset` fuzz target: see [`../harness/csv_dataset.rs`](../harness/csv_dataset.rs), which the
//! dataloader's regression test (`dataloader/tests/fuzz_regressions.rs`) runs too.
#![no_main]

#[path = "../harness/csv_dataset.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
