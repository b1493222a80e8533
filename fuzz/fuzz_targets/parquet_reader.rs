//! The `parquet_reader` fuzz target: see [`../harness/parquet_reader.rs`](../harness/parquet_reader.rs),
//! which the dataloader's regression test (`dataloader/tests/fuzz_regressions.rs`) runs too.
//!
//! The reader catches the parquet crate's panics on malformed files and returns an error for the
//! shard (`parquet_reader::guarded`). libFuzzer's panic hook aborts at the panic itself, before
//! any `catch_unwind`; `init` puts back a hook that does not, so only a panic that escapes the
//! reader (which `fuzz_target!` still turns into an abort) is a finding.
#![no_main]

#[path = "../harness/parquet_reader.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| harness::run(data)
);
