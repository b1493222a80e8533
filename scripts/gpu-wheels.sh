#!/usr/bin/env bash
# On the CPU machine: fetch OpenCLIP 3.3.0 and its two pure-Python needs as wheels into .whl/,
# for scripts/gpu-check.sh on the GPU machine, which has no package registry (../shared/GPU.md);
# pure Python (wcwidth: an abi3 wheel), so the check unpacks them onto PYTHONPATH without pip.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '.whl/' .git/info/exclude 2>/dev/null || echo '.whl/' >>.git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth
ls .whl
echo "carry .whl/ with the binaries and .gpu-libs/ (scripts/gpu/carry-libs.sh); the GPU check is scripts/gpu-check.sh"
