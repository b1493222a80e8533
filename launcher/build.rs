//! Build script: bakes the libtorch folder into the binaries (see build/link_libtorch.rs).

include!("../build/link_libtorch.rs");

fn main() {
    // Only the worker binary links libtorch; the `clipfleet` front end stays free of it so
    // that it can explain a missing libtorch instead of failing in the dynamic loader.
    link_libtorch(Some("clipfleet-core"));
    // Tests spawn the binaries; they link nothing from libtorch themselves.
}
