#!/usr/bin/env bash
# Runs the test suite in the release profile (the one the binary is built in, so CI builds
# every dependency once), after the formatting and lint gates. Expects scripts/setup.sh --test
# to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
echo "test.sh: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test.sh: cargo clippy --all-targets -D warnings" >&2
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
cargo test --release --workspace 2>&1
# The Slurm job scripts against a real Slurm started on this machine (root; slurm/README.md#testing).
echo "test.sh: slurm/tests/run.sh" >&2
slurm/tests/run.sh
# The Kubernetes job definitions, rendered and checked offline (k8s/README.md#testing).
echo "test.sh: k8s/tests/run.sh" >&2
k8s/tests/run.sh
# The Grafana dashboard and the alert rules: lint, promtool, and every query against a real
# Prometheus scraping a 2-worker run (monitoring/README.md#what-is-tested).
echo "test.sh: monitoring/tests/run.sh" >&2
monitoring/tests/run.sh
