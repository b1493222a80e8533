//! The `tokenizers` fuzz target: see [`../harness/tokenizers.rs`](../harness/tokenizers.rs), which the
//! dataloader's regression test (`dataloader/tests/fuzz_regressions.rs`) runs too.
#![no_main]

#[path = "../harness/tokenizers.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
