#!/usr/bin/env bash
# The GPU check: one command on the GPU machine (one H100 or H200, torch 2.11.0+cu130 and NCCL in
# its python3, no package registry), from the repository root, next to the release binaries
# built on a CPU machine. It fits a budget of 480 s (BUDGET) in all, OpenCLIP's runs included:
# it prints the budget left before each part, gives each command a timeout taken from what is
# left, and skips a part it has no time for with a "SKIP (budget)" line. Every figure goes to
# stdout and under $OUT (summary.txt plus one file per command). Exit status: 0 when nothing
# FAILed, 1 when a check failed, 2 when a prerequisite is missing (found within seconds).
#
# On the CPU machine:
#   cargo build --release && strip target/release/clipfleet-core target/release/clipfleet-dist-check
#   scripts/gpu-wheels.sh          # OpenCLIP 3.3.0 as wheels in .whl/ (git-excluded)
#   scripts/gpu/carry-libs.sh      # the OpenMPI libraries the binaries link, in .gpu-libs/ (git-excluded)
#   carry target/release/{clipfleet,clipfleet-core,clipfleet-dist-check}, .whl and .gpu-libs
# On the GPU machine:
#   OUT=/tmp/out scripts/gpu-check.sh
#
# Parts, in order:
#   0. prerequisites: the binaries; python3 with torch and CUDA; NCCL; OpenCLIP (from .whl/);
#      the BPE vocabulary; nvidia-smi and free GPU memory; every library the binaries load
#      (ldd, with LD_LIBRARY_PATH set up here);
#   1. correctness: NCCL collectives with one rank; one step on CUDA against the CPU (fp32 with
#      TF32 off, amp_bf16, pure_bf16); a short training run through `clipfleet launch --backend
#      nccl` whose final evaluation `clipfleet eval` reproduces from the checkpoint;
#   2. throughput: `clipfleet bench train` (amp_bf16), then OpenCLIP's step with the same settings
#      (scripts/bench_openclip_train.py) in its own process once clipfleet's has exited, for
#      ViT-B-32 256, RN50 256, coca_ViT-B-32 128, ViT-B-16 256, ViT-L-14 128; OpenCLIP's own script (scripts/gpu/bench_openclip.py)
#      for ViT-B-32, eager;
#   3. end to end: ViT-B-32 at batch 256 from JPEG WebDataset shards made here, data-wait fraction;
#   4. optional, when at least 150 s are left: OpenCLIP's own script with torch.compile.
#
# `scripts/gpu-check.sh --cpu-dry-run` runs the same parts through the same functions and the same
# output parsing on the CPU with the tiny model, small batches and 1-4 steps (no GPU prerequisites;
# collectives with the `single` backend, CPU against CPU, a 1-worker launch without NCCL; PYTHON
# defaults to .venv/bin/python). About a minute on 2 cores; CI runs it after `make test`.
#
# Environment: OUT (output folder), BUDGET (seconds, 480), PYTHON (python3; .venv/bin/python in
# the dry run), BIN, CHECK (the binaries), MIN_FREE_GIB (20), COMPILE (1 on the GPU, 0 in the dry run).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

MODE=gpu
case "${1:-}" in
  --cpu-dry-run) MODE=cpu ;;
  "") ;;
  -h | --help)
    sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [--cpu-dry-run]" >&2
    exit 2
    ;;
esac

BUDGET=${BUDGET:-480}
RESERVE=8 # seconds kept for the summary
BIN=${BIN:-target/release/clipfleet}
CORE=$(dirname "$BIN")/clipfleet-core
CHECK=${CHECK:-target/release/clipfleet-dist-check}
UTIL=scripts/gpu/check_util.py
MIN_FREE_GIB=${MIN_FREE_GIB:-20}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-out.XXXXXX")}
mkdir -p "$OUT" || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-work.XXXXXX") || exit 2 # runs, checkpoints, shards: not under $OUT
trap 'rm -rf "$WORK"' EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
CORES=$(nproc 2>/dev/null || echo 2)

# --- what differs between the modes: device, model, sizes ------------------------------------
if [ "$MODE" = gpu ]; then
  PY=${PYTHON:-python3}
  DEV=cuda
  COLLECTIVES=(nccl)
  COLLECTIVES_NAME="NCCL collectives, 1 rank"
  # LOSS BATCH DEVICE PRECISION GRAD_TOL LOSS_TOL. fp32 (TF32 off) differs from the CPU only by
  # kernels and summation order; bf16 keeps 8 mantissa bits.
  DEVICE_SPECS=("clip 64 cuda fp32 1e-3 1e-5" "siglip 64 cuda fp32 1e-3 1e-5"
    "clip 64 cuda amp_bf16 1e-1 1e-2" "clip 64 cuda pure_bf16 3e-1 2e-2")
  RT_NAME="NCCL training run (1 rank, fp32, TF32 off) and checkpoint round trip"
  RT_LAUNCH=(--backend nccl)
  RT_TRAIN=(--device cuda --dist-backend nccl --batch-size 256 --steps 20 --warmup 5 --checkpoint-every 10
    --eval-samples 512 --log-every 10)
  BENCH_PRECISION=amp_bf16
  # MODEL BATCH TIMED_STEPS WARMUP NEED(s) TIMEOUT(s per process)
  BENCH_ROWS=("ViT-B-32 256 20 5 50 90" "RN50 256 10 3 50 100" "coca_ViT-B-32 128 10 3 60 110" "ViT-B-16 256 10 3 60 110"
    "ViT-L-14 128 6 2 80 150")
  OPENCLIP_ROW=(ViT-B-32 256 20 5) # model (an open_clip name, or a clipfleet preset), batch, steps, warm-up
  E2E=(ViT-B-32 256 30 5 10 256)   # model, batch, steps, warm-up, log every, eval samples
  E2E_SHARDS=8 E2E_PER_SHARD=1024 E2E_IMAGE=256 E2E_MAX_WAIT=0.05
  E2E_WORKERS=$((CORES > 4 ? CORES - 2 : CORES))
  COMPILE=${COMPILE:-1}
else
  PY=${PYTHON:-.venv/bin/python}
  DEV=cpu
  COLLECTIVES=(single)
  COLLECTIVES_NAME="collectives, 1 rank (single backend: NCCL needs CUDA)"
  DEVICE_SPECS=("clip 16 cpu fp32 1e-3 1e-5" "siglip 16 cpu fp32 1e-3 1e-5" "clip 16 cpu pure_bf16 3e-1 2e-2")
  RT_NAME="1-worker training run through clipfleet launch (fp32, TF32 off) and checkpoint round trip"
  RT_LAUNCH=()
  RT_TRAIN=(--device cpu --batch-size 16 --steps 3 --warmup 1 --checkpoint-every 2 --eval-samples 64 --log-every 1)
  BENCH_PRECISION=fp32
  BENCH_ROWS=("tiny 16 2 1 20 120" "tiny-rn 16 2 1 20 120" "tiny-coca 16 2 1 20 120")
  OPENCLIP_ROW=(tiny 16 1 1)
  E2E=(tiny 16 4 1 2 32)
  E2E_SHARDS=2 E2E_PER_SHARD=48 E2E_IMAGE=64 E2E_MAX_WAIT=0.5 # the dry run checks the path, not the speed
  E2E_WORKERS=2
  COMPILE=${COMPILE:-0}
fi

# --- reporting and the budget ------------------------------------------------------------------
npass=0 nfail=0 nskip=0 LAST_T=0
say() { echo "$*" | tee -a "$SUMMARY"; }
pass() { say "PASS $*"; npass=$((npass + 1)); }
fail() { say "FAIL $*"; nfail=$((nfail + 1)); }
skip() { say "SKIP $*"; nskip=$((nskip + 1)); }
left() { echo $((BUDGET - SECONDS)); }
# part NAME NEED: announces a part with the budget left; returns 1 after a SKIP line when fewer
# than NEED seconds (plus the reserve) are left.
part() {
  local l
  l=$(left)
  say "== $1 [budget: ${l}s of ${BUDGET}s left]"
  if ((l - RESERVE < $2)); then
    skip "(budget) $1: needs ~$2s, ${l}s left"
    return 1
  fi
}
# tmo CAP: a command's timeout: CAP seconds, or what is left of the budget if less.
tmo() {
  local l=$(($(left) - RESERVE))
  ((l < 1)) && l=1
  if (($1 < l)); then echo "$1"; else echo "$l"; fi
}
# run CAP CMD...: CMD under a timeout (the whole process group is stopped when it expires).
run() {
  LAST_T=$(tmo "$1")
  shift
  timeout -k 5 "$LAST_T" "$@"
}
# why RC LOG: one line on why a command failed.
why() {
  if [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; then
    echo "timed out after ${LAST_T}s; $("$PY" "$UTIL" tail "$2" 2 | cut -c1-300)"
  else
    echo "exit $1: $("$PY" "$UTIL" tail "$2" 3 | cut -c1-500)"
  fi
}
die() {
  say "FAIL prerequisite: $*"
  say "== stopped after ${SECONDS}s, before the checks: fix the prerequisite above and run again"
  exit 2
}
note() { say "     $*"; }

# --- 0. prerequisites ----------------------------------------------------------------------------
say "== prerequisites ($MODE mode, budget ${BUDGET}s, output in $OUT)"
for b in "$BIN" "$CORE" "$CHECK"; do
  [ -x "$b" ] || die "$b is missing or not executable: build on the CPU machine (cargo build --release, then strip target/release/clipfleet-core target/release/clipfleet-dist-check) and carry target/release/{clipfleet,clipfleet-core,clipfleet-dist-check}"
done
command -v timeout >/dev/null || die "timeout (coreutils) is not installed"
command -v "$PY" >/dev/null 2>&1 || die "python '$PY' not found (set PYTHON=...)"

# OpenCLIP as wheels (scripts/gpu-wheels.sh): pure Python, so unpacking them is installing them.
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=$WORK/site
  mkdir -p "$SITE"
  for w in .whl/*.whl; do
    "$PY" -m zipfile -e "$w" "$SITE" 2>"$OUT/wheels.log" || die "cannot unpack $w: $(tail -1 "$OUT/wheels.log")"
  done
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  note "wheels from .whl/ on PYTHONPATH: $(cd .whl && echo *.whl)"
elif [ "$MODE" = gpu ]; then
  note "no .whl/: OpenCLIP must already be importable with $PY"
fi

probe=$(timeout 120 "$PY" "$UTIL" probe "$MODE" 2>"$OUT/probe.err")
rc=$?
echo "$probe" >"$OUT/probe.txt"
get() { sed -n "s/^$1=//p" <<<"$probe" | head -1; }
if [ $rc -ne 0 ]; then
  die "$(get error) $(tail -2 "$OUT/probe.err" | tr '\n' ' ')"
fi
TORCH_LIB=$(get torch_lib)
NCCL_LIB=$(get nccl_lib)
note "python: $PY, torch $(get torch_version), CUDA available: $(get cuda_available) $(get cuda_device)"
[ -f "$TORCH_LIB/libtorch_cpu.so" ] || die "no libtorch_cpu.so in $TORCH_LIB (torch from $PY)"
if [ "$MODE" = gpu ]; then
  [ "$(get cuda_available)" = 1 ] || die "torch $(get torch_version) in $PY sees no CUDA device (torch.cuda.is_available() is False)"
  [ -n "$NCCL_LIB" ] || die "NCCL: $PY has no nvidia.nccl package with lib/libnccl.so.2 (pip package nvidia-nccl-cu13)"
fi
[ -n "$(get open_clip_version)" ] ||
  die "open_clip is not importable with $PY ($(get open_clip_error)): run scripts/gpu-wheels.sh on the CPU machine and carry .whl/"
[ "$(get open_clip_version)" = 3.3.0 ] || note "warning: open_clip $(get open_clip_version), the figures were planned against 3.3.0"

VOCAB=
for v in "${CLIPFLEET_BPE_VOCAB:-}" "$ROOT/.cache/bpe_simple_vocab_16e6.txt.gz" "$(get open_clip_dir)/bpe_simple_vocab_16e6.txt.gz"; do
  if [ -n "$v" ] && [ -f "$v" ]; then
    VOCAB=$v
    break
  fi
done
[ -n "$VOCAB" ] || die "the BPE vocabulary bpe_simple_vocab_16e6.txt.gz is not in CLIPFLEET_BPE_VOCAB, .cache/ or the open_clip package: carry .whl/ (scripts/gpu-wheels.sh)"
export CLIPFLEET_BPE_VOCAB=$VOCAB
note "BPE vocabulary: $VOCAB"

if [ "$MODE" = gpu ]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found"
  smi=$(timeout 30 nvidia-smi -i 0 --query-gpu=name,memory.total,memory.free,driver_version --format=csv,noheader,nounits 2>&1) ||
    die "nvidia-smi failed: $smi"
  IFS=, read -r gname gtotal gfree gdriver <<<"$smi"
  gfree=${gfree// /} gtotal=${gtotal// /}
  echo "$smi" >"$OUT/gpu.txt"
  note "GPU: $gname, ${gtotal} MiB, ${gfree} MiB free, driver ${gdriver# }"
  [[ "$gfree" =~ ^[0-9]+$ ]] || die "cannot read the free GPU memory from nvidia-smi: $smi"
  ((gfree / 1024 >= MIN_FREE_GIB)) ||
    die "only $((gfree / 1024)) GiB of GPU memory free (need >= ${MIN_FREE_GIB} GiB): other processes hold it (nvidia-smi)"
  ((gfree / 1024 >= 60)) || note "warning: $((gfree / 1024)) GiB free; ViT-L-14 at batch 128 may not fit"
fi

LINK_DIR=$WORK/lib
mkdir -p "$LINK_DIR"
# cudarc opens libnccl.so; the wheel ships libnccl.so.2 only.
[ -n "$NCCL_LIB" ] && ln -sf "$NCCL_LIB/libnccl.so.2" "$LINK_DIR/libnccl.so"
LIBS=$TORCH_LIB${NCCL_LIB:+:$NCCL_LIB}:$LINK_DIR
[ -d .gpu-libs ] && LIBS=$LIBS:$ROOT/.gpu-libs
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if command -v ldd >/dev/null; then
  ldd_missing() { ldd "$CORE" "$CHECK" 2>&1 | grep -i 'not found' | sed 's/^[[:space:]]*//' | sort -u; }
  missing=$(ldd_missing)
  if [ -n "$missing" ] && [ -d .gpu-libs/fallback ]; then
    # Carried system libraries, used only where this machine has none.
    while read -r lib arrow what _; do
      if [ "$arrow" = "=>" ] && [ "$what" = not ] && [ -f ".gpu-libs/fallback/$lib" ]; then
        ln -sf "$ROOT/.gpu-libs/fallback/$lib" "$LINK_DIR/$lib"
      fi
    done <<<"$missing"
    missing=$(ldd_missing)
  fi
  if [ -n "$missing" ]; then
    hint=
    grep -q 'libmpi\|libopen-\|libhwloc\|libevent\|libpmix' <<<"$missing" &&
      hint=" -- this machine lacks OpenMPI 4 (Debian's libopenmpi3), which clipfleet links: on the CPU machine run scripts/gpu/carry-libs.sh and carry .gpu-libs/ with the binaries"
    die "the binaries cannot load: $(tr '\n' ';' <<<"$missing")$hint"
  fi
else
  note "warning: no ldd here, the libraries are not checked"
fi
ver=$(timeout 30 "$BIN" --version 2>&1) || die "$BIN --version failed: $ver"
note "$ver, LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
echo "$ver" >>"$OUT/gpu.txt"
say "PASS prerequisites (${SECONDS}s)"

# --- 1. correctness ------------------------------------------------------------------------------
if part "$COLLECTIVES_NAME" 15; then
  f=$OUT/collectives.txt
  MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + RANDOM % 20000)) run 60 "$CHECK" "${COLLECTIVES[@]}" >"$f" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q "13 checks ok" "$f"; then
    pass "$COLLECTIVES_NAME: $(tail -1 "$f")"
  else
    fail "$COLLECTIVES_NAME: $(why $rc "$f")"
  fi
fi

if part "$DEV against the CPU, one step of the tiny model per loss and precision" $((8 * ${#DEVICE_SPECS[@]})); then
  for spec in "${DEVICE_SPECS[@]}"; do
    read -r loss b dev prec gtol ltol <<<"$spec"
    name="$dev vs cpu, $loss $prec b=$b"
    if (($(left) - RESERVE < 8)); then
      skip "(budget) $name"
      continue
    fi
    f=$OUT/devices-$loss-$prec.txt
    run 60 "$CHECK" devices "$loss" "$b" "$dev" "$prec" >"$f" 2>&1
    rc=$?
    msg=
    if [ $rc -eq 0 ] && msg=$("$PY" "$UTIL" devices "$(tail -1 "$f")" "$gtol" "$ltol"); then
      pass "$name: $msg"
    else
      fail "$name: ${msg:-$(why $rc "$f")}"
    fi
  done
fi

if part "$RT_NAME" 45; then
  run_dir=$WORK/roundtrip
  # Like for like: training's own final evaluation runs in fp32 without TF32, and the evaluation
  # after loading runs on the CPU (no TF32 there), so the two differ by summation order only.
  printf 'precision = "fp32"\ntf32 = false\n' >"$WORK/roundtrip.toml"
  run 120 "$BIN" launch --nproc-per-node 1 "${RT_LAUNCH[@]}" --master-port $((20000 + RANDOM % 20000)) \
    --grace-period 5 -- train --config "$WORK/roundtrip.toml" --model tiny "${RT_TRAIN[@]}" \
    --output "$run_dir" --log-format json >"$OUT/roundtrip-train.out" 2>"$OUT/roundtrip-train.log"
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "$RT_NAME: training: $(why $rc "$OUT/roundtrip-train.log")"
  elif ! cp "$run_dir/eval.json" "$OUT/roundtrip-train-eval.json" 2>/dev/null; then
    fail "$RT_NAME: the run wrote no eval.json: $("$PY" "$UTIL" tail "$OUT/roundtrip-train.log" 2 | cut -c1-300)"
  else
    run 60 "$BIN" eval --checkpoint "$run_dir" --device cpu --json >"$OUT/roundtrip-eval.json" 2>"$OUT/roundtrip-eval.log"
    rc=$?
    msg=
    if [ $rc -ne 0 ]; then
      fail "$RT_NAME: clipfleet eval: $(why $rc "$OUT/roundtrip-eval.log")"
    elif msg=$("$PY" "$UTIL" roundtrip "$OUT/roundtrip-train-eval.json" "$OUT/roundtrip-eval.json"); then
      pass "$RT_NAME: checkpoints $(find "$run_dir/checkpoints" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort | tr '\n' ' '); $msg"
    else
      fail "$RT_NAME: $msg"
    fi
  fi
fi

# --- 2. throughput ---------------------------------------------------------------------------------
for row in "${BENCH_ROWS[@]}"; do
  read -r model bs steps warm need cap <<<"$row"
  name="bench train $model bs=$bs $BENCH_PRECISION ($steps timed steps), then OpenCLIP's step"
  part "$name" "$need" || continue
  "$PY" "$UTIL" model-config "$model" >"$WORK/$model.json" || {
    fail "$name: no model config for $model"
    continue
  }
  cf=$OUT/bench-$model.json
  ref=$OUT/openclip-$model.json
  run "$cap" "$BIN" bench train --model "$model" --batch-size "$bs" --steps "$steps" --warmup "$warm" \
    --device "$DEV" --precision "$BENCH_PRECISION" --json >"$cf" 2>"$OUT/bench-$model.log"
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "$name: clipfleet: $(why $rc "$OUT/bench-$model.log")"
    continue
  fi
  # OpenCLIP in a process of its own, started once clipfleet's has exited and freed the device.
  if (($(left) - RESERVE < need / 2)); then
    skip "(budget) $name: OpenCLIP's side; clipfleet: $(tr -d '\n' <"$cf" | cut -c1-300)"
    continue
  fi
  run "$cap" "$PY" scripts/bench_openclip_train.py --config "$WORK/$model.json" --device "$DEV" \
    --batch-size "$bs" --steps "$steps" --warmup "$warm" --precision "$BENCH_PRECISION" \
    >"$ref" 2>"$OUT/openclip-$model.log"
  rc=$?
  if msg=$("$PY" "$UTIL" bench "$cf" "$ref") && [ $rc -eq 0 ]; then
    pass "$msg"
  else
    fail "$msg; OpenCLIP: $(why $rc "$OUT/openclip-$model.log")"
  fi
done

read -r o_model o_bs o_steps o_warm <<<"${OPENCLIP_ROW[*]}"
o_spec=$o_model:$o_bs:$o_steps:$o_warm
if [ "$o_model" = tiny ]; then
  # Not an open_clip model: the script registers a config file under its name.
  "$PY" "$UTIL" model-config tiny >"$WORK/clipfleet-tiny.json"
  o_spec=$WORK/clipfleet-tiny.json:$o_bs:$o_steps:$o_warm
fi
oname="OpenCLIP's own script (scripts/gpu/bench_openclip.py), $o_model bs=$o_bs eager"
if part "$oname" 30; then
  run 90 "$PY" scripts/gpu/bench_openclip.py "$o_spec:0" >"$OUT/openclip-own.txt" 2>"$OUT/openclip-own.log"
  rc=$?
  msg=
  if [ $rc -eq 0 ] && msg=$("$PY" "$UTIL" openclip "$OUT/openclip-own.txt"); then
    pass "$msg"
  else
    fail "$oname: ${msg:-$(why $rc "$OUT/openclip-own.log")}"
  fi
fi

# --- 3. end to end from JPEG shards ---------------------------------------------------------------
read -r e_model e_bs e_steps e_warm e_log e_eval <<<"${E2E[*]}"
ename="end to end: $e_model bs=$e_bs, $e_steps steps from $((E2E_SHARDS * E2E_PER_SHARD)) JPEG samples (${E2E_IMAGE} px) in $E2E_SHARDS WebDataset shards, $E2E_WORKERS decode workers"
if part "$ename" 60; then
  shards=$WORK/shards
  # One `shards make` per shard, side by side (it writes on one core), then one folder.
  t=$(tmo 60)
  pids=()
  for ((k = 0; k < E2E_SHARDS; k++)); do
    timeout -k 5 "$t" "$BIN" shards make --synthetic "$E2E_PER_SHARD" --samples-per-shard "$E2E_PER_SHARD" \
      --image-size "$E2E_IMAGE" --seed "$k" --output "$shards/$k" >"$OUT/shards-$k.log" 2>&1 &
    pids+=($!)
  done
  made=0
  for p in "${pids[@]}"; do wait "$p" && made=$((made + 1)); done
  counts=
  if [ "$made" -eq "$E2E_SHARDS" ]; then counts=$("$PY" "$UTIL" merge-shards "$shards" 2>&1) || counts=; fi
  if [ -z "$counts" ]; then
    fail "$ename: shards make: $made of $E2E_SHARDS finished; $(tail -2 "$OUT"/shards-*.log | tr '\n' ' ' | cut -c1-300)"
  else
    note "shards and samples made: $counts, at ${SECONDS}s"
    last=$(printf '%06d' $((E2E_SHARDS - 1)))
    vocab=()
    [ "$e_model" != tiny ] && vocab=(--vocab "$VOCAB") # tiny: its own word tokenizer
    run 150 "$BIN" train --model "$e_model" --device "$DEV" --batch-size "$e_bs" --steps "$e_steps" --warmup "$e_warm" \
      --checkpoint-every 0 --eval-samples "$e_eval" --log-every "$e_log" --workers "$E2E_WORKERS" \
      --output "$WORK/e2e" --train-data "$shards/shard-{000000..$last}.tar" "${vocab[@]}" --log-format json \
      >"$OUT/e2e.out" 2>"$OUT/e2e.log"
    rc=$?
    msg=
    if [ $rc -ne 0 ]; then
      fail "$ename: $(why $rc "$OUT/e2e.log")"
    elif msg=$("$PY" "$UTIL" train-log "$OUT/e2e.log" "$E2E_MAX_WAIT"); then
      pass "$ename: $msg"
    else
      fail "$ename: $msg"
    fi
  fi
  rm -rf "$shards" "$WORK/e2e"
fi

# --- 4. optional: torch.compile ----------------------------------------------------------------
if [ "$COMPILE" = 1 ]; then
  cname="OpenCLIP's own script, $o_model bs=$o_bs with torch.compile (optional)"
  if (($(left) - RESERVE < 150)); then
    say "== $cname [budget: $(left)s of ${BUDGET}s left]"
    say "SKIP (budget) $cname: needs ~150s (optional)"
  else
    say "== $cname [budget: $(left)s of ${BUDGET}s left]"
    run 400 "$PY" scripts/gpu/bench_openclip.py "$o_spec:1" >"$OUT/openclip-compile.txt" 2>"$OUT/openclip-compile.log"
    rc=$?
    if [ $rc -eq 0 ] && msg=$("$PY" "$UTIL" openclip "$OUT/openclip-compile.txt"); then
      pass "$msg"
    else
      say "WARN (optional, not counted) $cname: $(why $rc "$OUT/openclip-compile.log")"
    fi
  fi
else
  say "SKIP torch.compile row: COMPILE=$COMPILE (optional; the dry run leaves it out)"
fi

# --- summary -----------------------------------------------------------------------------------------
echo "== summary"
grep -E '^(PASS|FAIL|SKIP|WARN)' "$SUMMARY"
say "== $MODE check: $npass passed, $nfail failed, $nskip skipped in ${SECONDS}s of a ${BUDGET}s budget; files in $OUT"
exit $((nfail > 0 ? 1 : 0))
