//! The fuzz harnesses: each `run(data)` feeds one input through a reader of
//! `clipfleet-dataloader` and panics on a finding. The fuzz targets (`../fuzz_targets/`) and the
//! regression test of the normal suite (`dataloader/tests/fuzz_regressions.rs`) share them.

pub(crate) mod brace_expansion;
pub(crate) mod csv_dataset;
pub(crate) mod image_decode;
pub(crate) mod parquet_reader;
pub(crate) mod tar_reader;
pub(crate) mod tokenizers;
