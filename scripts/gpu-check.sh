#!/usr/bin/env bash
# The GPU check: runs on the GPU machine (one H100, torch 2.11.0+cu130 in its python3, no
# package registry), from the repository root, next to the release binaries built on a CPU
# machine. About 5 minutes. Prints every figure and writes them under $OUT.
#
#   scripts/gpu-wheels.sh                      # on the CPU machine: OpenCLIP as wheels in .whl/
#   # carry target/release/{clipfleet,clipfleet-core,clipfleet-dist-check} and .whl/, then:
#   OUT=/tmp/out scripts/gpu-check.sh
#
# Sections (each reports PASS/FAIL or its figures; the script exits non-zero if a check fails):
#   1. correctness: NCCL collectives with one rank; one step on CUDA against the CPU in fp32
#      (TF32 off), amp_bf16 and pure_bf16; a short NCCL training run whose checkpoint is
#      evaluated again after loading (the round trip);
#   2. throughput: clipfleet bench train beside OpenCLIP in the same run (amp_bf16), per row;
#      OpenCLIP's own script (eager and torch.compile) for ViT-B-32;
#   3. end to end: ViT-B-32 at batch 256 from JPEG WebDataset shards made here.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/clipfleet}
CHECK=${CHECK:-target/release/clipfleet-dist-check}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
failed=0
pass() { echo "PASS $*" | tee -a "$OUT/summary.txt"; }
fail() { echo "FAIL $*" | tee -a "$OUT/summary.txt"; failed=1; }

TORCH_LIB=$($PY -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
NCCL_LIB=$($PY -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))")
LINK_DIR=$(mktemp -d) && ln -sf "$NCCL_LIB/libnccl.so.2" "$LINK_DIR/libnccl.so"
export LD_LIBRARY_PATH="$TORCH_LIB:$NCCL_LIB:$LINK_DIR:${LD_LIBRARY_PATH:-}"
if [ -d .whl ]; then
  SITE=$(mktemp -d) && $PY -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl && export PYTHONPATH="$SITE"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$BIN" --version | tee -a "$OUT/gpu.txt"

# --- 1. correctness -------------------------------------------------------------------------
echo "== correctness" | tee -a "$OUT/summary.txt"
if timeout 120 "$CHECK" nccl >"$OUT/nccl.txt" 2>&1 && grep -q "13 checks ok" "$OUT/nccl.txt"; then
  pass "nccl collectives, 1 rank: $(tail -1 "$OUT/nccl.txt")"
else
  fail "nccl collectives: $(tail -3 "$OUT/nccl.txt")"
fi
# Tolerances: fp32 (TF32 off) differs from the CPU only by kernels and summation order;
# bf16 has 8 mantissa bits.
for spec in "clip fp32 1e-3 1e-5" "siglip fp32 1e-3 1e-5" "clip amp_bf16 1e-1 1e-2" "clip pure_bf16 3e-1 2e-2"; do
  set -- $spec
  line=$(timeout 120 "$CHECK" devices "$1" 64 cuda "$2" 2>&1 | tail -1)
  echo "$line" >>"$OUT/devices.txt"
  g=$(sed -n 's/.*max relative gradient error \([^,]*\),.*/\1/p' <<<"$line")
  l=$(sed -n 's/.*loss relative error \(.*\)$/\1/p' <<<"$line")
  if [ -n "$g" ] && $PY -c "import sys; sys.exit(0 if $g <= $3 and $l <= $4 else 1)"; then
    pass "cuda vs cpu, $1 $2 (gradients <= $3, loss <= $4): $line"
  else
    fail "cuda vs cpu, $1 $2 (gradients <= $3, loss <= $4): $line"
  fi
done
RUN="$OUT/nccl-run"
rm -rf "$RUN"
if timeout 300 "$BIN" launch --nproc-per-node 1 --backend nccl -- train --model tiny --device cuda \
     --dist-backend nccl --batch-size 256 --steps 40 --warmup 5 --checkpoint-every 20 --eval-samples 512 \
     --log-every 10 --output "$RUN" --json >"$OUT/nccl-run.json" 2>"$OUT/nccl-run.log" \
   && timeout 120 "$BIN" eval --checkpoint "$RUN" --samples 512 --json >"$OUT/nccl-eval.json" 2>>"$OUT/nccl-run.log" \
   && $PY - "$OUT/nccl-run.json" "$OUT/nccl-eval.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for k in ("image_to_text_r1", "text_to_image_r1", "val_loss", "zero_shot_top1"):
    assert abs(a[k] - b[k]) <= 1e-3, (k, a[k], b[k])
print("train and eval-after-load agree:", {k: a[k] for k in ("zero_shot_top1", "val_loss")})
PY
then
  pass "NCCL training run (1 rank, amp_bf16) and checkpoint round trip: $(grep -o '"message":"train".*' "$OUT/nccl-run.log" | tail -1 | cut -c1-200)"
else
  fail "NCCL training run / checkpoint round trip: $(tail -3 "$OUT/nccl-run.log")"
fi

# --- 2. throughput ----------------------------------------------------------------------------
echo "== throughput (same run, same card)" | tee -a "$OUT/summary.txt"
for row in "ViT-B-32 256" "ViT-B-16 256" "ViT-L-14 128"; do
  set -- $row
  if timeout 240 "$BIN" bench train --model "$1" --batch-size "$2" --steps 30 --warmup 5 --device cuda \
       --precision amp_bf16 --reference-python "$PY" --json >"$OUT/bench-$1.json" 2>"$OUT/bench-$1.log"; then
    $PY - "$OUT/bench-$1.json" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
ref = r.get("reference") or {}
gib = lambda b: f"{b / 2**30:.1f} GiB" if b else "n/a"
print(f"{r['model']} bs={r['batch_size']} {r['precision']}: clipfleet {r['samples_per_second']:.0f} samples/s "
      f"{r['ms_per_step']:.1f} ms/step MFU {100 * (r['mfu'] or 0):.1f}% peak {gib(r['peak_memory_bytes'])} | "
      f"open_clip {ref.get('samples_per_second', float('nan')):.0f} samples/s peak {gib(ref.get('peak_memory_bytes'))} | "
      f"ratio {r['ratio'] or float('nan'):.2f}x")
PY
  else
    fail "bench train $1: $(tail -3 "$OUT/bench-$1.log")"
  fi
done
timeout 300 $PY scripts/gpu/bench_openclip.py ViT-B-32:256:30:5:0 ViT-B-32:256:30:5:1 2>&1 | tee -a "$OUT/summary.txt" "$OUT/openclip.txt"

# --- 3. end to end from shards ---------------------------------------------------------------
echo "== end to end from JPEG shards" | tee -a "$OUT/summary.txt"
SHARDS="$OUT/shards"
rm -rf "$SHARDS"
if timeout 240 "$BIN" shards make --synthetic 20480 --samples-per-shard 1024 --image-size 256 --output "$SHARDS" \
     >"$OUT/shards.log" 2>&1; then
  last=$(printf '%06d' $(( $(ls "$SHARDS"/*.tar | wc -l) - 1 )))
  timeout 300 "$BIN" train --model ViT-B-32 --device cuda --batch-size 256 --steps 60 --warmup 5 \
    --checkpoint-every 0 --eval-samples 256 --log-every 10 --workers 14 --output "$OUT/e2e" \
    --train-data "$SHARDS/shard-{000000..$last}.tar" --log-format json >"$OUT/e2e.out" 2>"$OUT/e2e.log"
  grep '"message":"train"' "$OUT/e2e.log" | tail -3 | sed 's/.*"fields"://' | tee -a "$OUT/summary.txt"
  w=$(grep '"message":"train"' "$OUT/e2e.log" | tail -1 | sed -n 's/.*"data_wait_fraction":"\([0-9.]*\)".*/\1/p')
  if [ -n "$w" ] && $PY -c "import sys; sys.exit(0 if $w < 0.05 else 1)"; then
    pass "end to end ViT-B-32 bs=256: data wait fraction $w < 0.05"
  else
    fail "end to end ViT-B-32 bs=256: data wait fraction ${w:-unknown} (want < 0.05); $(tail -2 "$OUT/e2e.log" | cut -c1-300)"
  fi
else
  fail "shards make: $(tail -3 "$OUT/shards.log")"
fi

echo "== summary"; cat "$OUT/summary.txt"
exit $failed
