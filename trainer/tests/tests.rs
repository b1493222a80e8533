//! Integration tests of the trainer crate: parity with open_clip 3.3.0 and checkpoints.

#![allow(clippy::unwrap_used)]

mod checkpoints;
mod common;
mod metrics;
mod parity;
