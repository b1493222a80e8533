//! The `tar_reader` fuzz target: see [`../harness/tar_reader.rs`](../harness/tar_reader.rs), which the
//! dataloader's regression test (`dataloader/tests/fuzz_regressions.rs`) runs too.
#![no_main]

#[path = "../harness/tar_reader.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
