# The two commands of the README. Each installs what it needs (scripts/setup.sh) first.
.PHONY: demo test setup

setup:
	@scripts/setup.sh

## make demo: train the tiny CLIP on the built-in synthetic data with 2 CPU workers (OpenMPI), a few minutes, into runs/demo/
demo:
	@scripts/setup.sh
	@rm -rf runs/demo
	target/release/clipfleet launch --log-format human --nproc-per-node 2 --backend mpi -- train --config docs/examples/demo.toml --output runs/demo --log-format human

## make test: the whole test suite (unit, parity against open_clip 3.3.0, integration)
test:
	@scripts/setup.sh --test
	@scripts/test.sh
