#!/usr/bin/env bash
# Installs what clipfleet needs on a Debian machine and builds it. Idempotent, and quiet
# when nothing is missing.
#   scripts/setup.sh          Debian packages, .venv with torch==2.11.0, release build
#   scripts/setup.sh --test   the same, plus the test oracles (open_clip_torch 3.3.0, …) and, for
#                             slurm/tests, Slurm and munge (Debian: slurmctld slurmd slurm-client munge)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

say() { echo "setup: $*" >&2; }
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

# 1. Debian packages for the build (C/C++ toolchain for torch-sys, cmake and nasm for the bundled
#    libjpeg-turbo of the turbojpeg crate, pkg-config, python venv; OpenMPI and libclang for the
#    mpi crate, whose build runs bindgen over mpi.h, and mpirun for the MPI backend and its tests).
need_pkgs=()
for pkg in build-essential pkg-config cmake nasm python3-venv python3-pip ca-certificates \
           libopenmpi-dev openmpi-bin libclang-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
# python3-venv/pip are only needed when this python3 cannot make a venv with pip by itself.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  need_pkgs=("${need_pkgs[@]/python3-venv}"); need_pkgs=("${need_pkgs[@]/python3-pip}")
fi
# The test suite starts a real Prometheus server against the trainer's /metrics exporter; only
# its binary is used (the tests start it; the package's own service does not matter).
if [ "$WITH_TEST" = 1 ] && ! command -v prometheus >/dev/null 2>&1; then
  need_pkgs+=(prometheus)
fi
# slurm/tests/run.sh starts a real Slurm (munge, slurmctld, slurmd) and two emulated nodes in
# network namespaces (ip netns, nsenter/unshare); only the binaries are used, not the services.
slurm_pkgs=()
if [ "$WITH_TEST" = 1 ]; then
  for pkg in slurmctld slurmd slurm-client munge iproute2 util-linux; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || slurm_pkgs+=("$pkg")
  done
fi
need_pkgs=($(printf '%s\n' "${need_pkgs[@]}" | sed '/^$/d'))
if [ ${#need_pkgs[@]} -gt 0 ] || [ ${#slurm_pkgs[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_pkgs[*]} ${slurm_pkgs[*]}"
  $SUDO apt-get update -qq
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if [ ${#slurm_pkgs[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${slurm_pkgs[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found: install a Rust toolchain >= 1.87 (https://rustup.rs), then rerun"; exit 1
fi

# 2. The project venv with PyTorch 2.11.0 (tch 0.24 links against it), and optionally the oracles.
PY=$ROOT/.venv/bin/python
CONSTRAINTS=$ROOT/scripts/python-constraints.txt
[ -x "$PY" ] || { say "creating .venv"; python3 -m venv "$ROOT/.venv"; }
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.11.0") else 1)' 2>/dev/null; then
  say "installing torch==2.11.0 into .venv (about 4.6 GB)"
  "$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" torch==2.11.0
fi
if [ "$WITH_TEST" = 1 ] && ! "$PY" -c 'import open_clip, safetensors, numpy, webdataset, pyarrow, moto, PIL, tokenizers, sys; sys.exit(PIL.__version__ != "12.3.0" or tokenizers.__version__ != "0.23.3")' 2>/dev/null; then
  say "installing the test oracles (open_clip_torch 3.3.0, webdataset, pyarrow, moto, tokenizers) into .venv"
  "$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" \
    torch==2.11.0 torchvision==0.26.0 open_clip_torch==3.3.0 pillow==12.3.0 safetensors numpy \
    webdataset pyarrow 'moto[server]' tokenizers==0.23.3
fi
# OpenCLIP's BPE vocabulary ships inside the open_clip_torch wheel; keep a copy in .cache/.
VOCAB=$ROOT/.cache/bpe_simple_vocab_16e6.txt.gz
if [ "$WITH_TEST" = 1 ] && [ ! -s "$VOCAB" ]; then
  mkdir -p "$ROOT/.cache"
  src=$("$PY" -c 'import open_clip, os; print(os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"))')
  cp "$src" "$VOCAB.tmp" && mv "$VOCAB.tmp" "$VOCAB"
fi

# 3. Build (release: one profile for the binary and the tests).
. "$ROOT/scripts/env.sh"
cargo build --release --quiet -p clipfleet-launcher --bins
