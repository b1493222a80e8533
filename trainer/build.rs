//! Build script: bakes the libtorch folder into the binaries (see build/link_libtorch.rs).

include!("../build/link_libtorch.rs");

fn main() {
    link_libtorch(&["cargo:rustc-link-arg="]);
}
