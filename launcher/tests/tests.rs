//! Integration tests of the `clipfleet` binary: training, exact resume, crash safety,
//! bad input, evaluation and embedding. Each test runs the real binary on the tiny model.

mod bench_data;
mod bench_loss;
mod bench_train;
mod caption;
mod cli;
mod common;
mod crash;
mod distributed;
mod embed;
mod img2dataset;
mod launch;
mod pretrained;
mod resume;
mod s3_faults;
mod shards;
mod stop;
mod store_checkpoints;
mod train_shards;
mod zero_shot;
