#!/usr/bin/env bash
# Tests the Kubernetes job definitions in k8s/ offline, in a few seconds (no cluster needed):
#   1. renders every overlay and variant, and the renamed test overlays in k8s/tests/renamed/
#      (namePrefix, nameSuffix, namespace), with `kubectl kustomize`;
#   2. check.py: the rendezvous (every pod finds the same master, and it is node rank 0's DNS
#      name), Service name = pod subdomain = CLIPFLEET_SERVICE, selectors = the Job's name, node
#      count = completions = parallelism = CLIPFLEET_NNODES, podFailurePolicy, grace period,
#      /dev/shm, the PodMonitor's selector and ports, the required fields of the custom
#      resources (JobSet, PyTorchJob, PodMonitor);
#   3. check_selftest.py: each of check.py's checks fails on a manifest broken on purpose;
#   4. kubernetes-validate --strict for Kubernetes 1.29 to 1.33 on every built-in object, and on
#      the Job and pod templates inside the custom resources;
#   5. check_dockerfile.py: k8s/Dockerfile, without building it;
#   6. rendezvous.py (root): the cpu-smoke pods and the CPU PyTorchJob's pods, run with their own
#      resolved command lines, environments, hostnames and DNS names in network namespaces,
#      rendezvous, train and match one process (about 30 s).
# Needs kubectl with kustomize v5 (on PATH, or .cache/bin/kubectl from scripts/setup.sh --test)
# and .venv with kubernetes-validate and PyYAML (scripts/setup.sh --test). KUBECTL overrides the
# kubectl, KEEP_SCRATCH=1 keeps the rendered files.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
K8S=$ROOT/k8s
VERSIONS=(1.29.0 1.30.0 1.31.0 1.32.0 1.33.0)
TARGETS=(overlays/cpu-smoke overlays/gpu-1x8 overlays/gpu-4x8 variants/jobset variants/pytorchjob/cpu variants/pytorchjob/gpu)

say() { echo "k8s tests: $*" >&2; }
fail() { echo "k8s tests: FAILED: $*" >&2; exit 1; }

PY=$ROOT/.venv/bin/python
VALIDATE=$ROOT/.venv/bin/kubernetes-validate
[ -x "$PY" ] && "$PY" -c 'import yaml' 2>/dev/null || fail "$PY with PyYAML is missing: run scripts/setup.sh --test"
[ -x "$VALIDATE" ] || fail "$VALIDATE is missing: run scripts/setup.sh --test"

# A kubectl whose built-in kustomize is v5 (kubectl 1.27 or later): components, replacements and
# the nameReference configurations used here.
kustomize_major() { "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'; }
if [ -z "${KUBECTL:-}" ]; then
  for k in "$(command -v kubectl || true)" "$ROOT/.cache/bin/kubectl"; do
    if [ -n "$k" ] && [ -x "$k" ] && [ "$(kustomize_major "$k")" -ge 5 ] 2>/dev/null; then KUBECTL=$k; break; fi
  done
fi
[ -n "${KUBECTL:-}" ] || fail "no kubectl with kustomize v5 on PATH or in .cache/bin: run scripts/setup.sh --test"
say "$KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/clipfleet-k8s-tests.XXXXXX")
cleanup() { if [ "${KEEP_SCRATCH:-0}" = 1 ]; then say "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi; }
trap cleanup EXIT
mkdir -p "$SCRATCH/rendered"

passed=0
# 1. Render.
render() { # kustomization folder, output name
  if ! "$KUBECTL" kustomize "$1" > "$SCRATCH/rendered/$2.yaml" 2> "$SCRATCH/$2.err"; then
    cat "$SCRATCH/$2.err" >&2
    fail "kubectl kustomize ${1#"$ROOT"/} failed"
  fi
}
for t in "${TARGETS[@]}"; do
  name=${t#overlays/}; name=${name#variants/}; name=${name//\//-}
  render "$K8S/$t" "$name"
done
for d in "$HERE"/renamed/*/; do
  render "$d" "renamed-$(basename "$d")"
done
n=$(ls "$SCRATCH/rendered" | wc -l)
say "rendered $n kustomizations"; passed=$((passed + 1))

# 2, 3. The invariants, and the proof that they catch what they claim.
"$PY" "$HERE/check.py" "$SCRATCH/rendered" "$SCRATCH/out" || fail "check.py found problems (above)"
passed=$((passed + 1))
"$PY" "$HERE/check_selftest.py" "$SCRATCH/rendered" || fail "check_selftest.py: check.py misses a problem (above)"
passed=$((passed + 1))

# 4. Strict schemas. Custom resources are not passed here (check.py covers them): any warning,
# such as a kind without a schema, is a failure.
files=("$SCRATCH"/out/builtin/*.yaml "$SCRATCH"/out/embedded/*.yaml "$K8S/storage/pvc.yaml")
for v in "${VERSIONS[@]}"; do
  if ! out=$("$VALIDATE" -k "$v" --strict --quiet "${files[@]}" 2>&1) || [ -n "$out" ]; then
    echo "$out" | sed "s|$SCRATCH/out/||g" >&2
    fail "kubernetes-validate -k $v --strict"
  fi
  passed=$((passed + 1))
done
say "kubernetes-validate --strict: ${#files[@]} files for Kubernetes ${VERSIONS[*]}"

# 5. The worker image's Dockerfile.
"$PY" "$HERE/check_dockerfile.py" || fail "k8s/Dockerfile (above)"
passed=$((passed + 1))

# 6. The manifests' own environment, run: two workers in two network namespaces.
KUBECTL=$KUBECTL "$PY" "$HERE/rendezvous.py" || fail "rendezvous.py (above)"
passed=$((passed + 1))

echo "k8s: $passed passed, 0 failed"
