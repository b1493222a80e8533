//! The `image_decode` fuzz target: see [`../harness/image_decode.rs`](../harness/image_decode.rs), which the
//! dataloader's regression test (`dataloader/tests/fuzz_regressions.rs`) runs too.
#![no_main]

#[path = "../harness/image_decode.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
