//! The `brace_expansion` fuzz target: see [`../harness/brace_expansion.rs`](../harness/brace_expansion.rs), which the
//! dataloader's regression test (`dataloader/tests/fuzz_regressions.rs`) runs too.
#![no_main]

#[path = "../harness/brace_expansion.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
