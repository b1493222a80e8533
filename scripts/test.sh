#!/usr/bin/env bash
# Runs the test suite in the release profile (the one the binary is built in, so CI builds
# every dependency once). Expects scripts/setup.sh --test to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo test --release --workspace 2>&1
