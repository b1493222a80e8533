//! The `parquet_reader` fuzz target: see [`../harness/parquet_reader.rs`](../harness/parquet_reader.rs), which the
//! dataloader's regression test (`dataloader/tests/fuzz_regressions.rs`) runs too.
#![no_main]

#[path = "../harness/parquet_reader.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
