//! Integration tests of the trainer crate: parity with open_clip 3.3.0, checkpoints, and the
//! Prometheus exporter against a real Prometheus server.

#![allow(clippy::unwrap_used)]

mod checkpoints;
mod coca_parity;
mod common;
mod dist;
mod loss_parity;
mod metrics;
mod parity;
mod resnet_parity;
