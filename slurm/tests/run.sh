#!/usr/bin/env bash
# Tests slurm/ against a real Slurm that this script starts (slurm/tests/cluster.sh) in a scratch
# folder, and stops again on exit, whatever happens. Needs root, the Debian packages slurmctld,
# slurmd, slurm-client and munge (scripts/setup.sh --test), and the release binaries.
#
#   slurm/tests/run.sh                 every scenario
#   slurm/tests/run.sh train eval      some of them: train, eval, preempt, hup, partition, timelimit, twonode
#
# Scenarios (tiny model on the synthetic data, CPU workers with MPI through srun --mpi=pmix):
#   train      sbatch with 2 tasks on one node trains to the last step and commits checkpoints
#   eval       slurm/eval.sbatch evaluates each committed checkpoint of that run, one array task each
#   preempt    scancel --batch --signal=USR1 mid-run: checkpoint, exit 75, scontrol requeue, resume;
#              the final weights equal the uninterrupted run's (train) bit for bit
#   hup        STOP_SIGNAL=HUP, REQUEUE=0: the trap sends SIGHUP with scancel --signal (srun would
#              terminate the step on it); checkpoint, exit 75, no requeue
#   partition  a job of the higher-priority partition preempts the run (PreemptMode=REQUEUE,
#              preempt_send_user_signal): the same checkpoint, requeue and resume, the same weights
#   timelimit  a chain of jobs (slurm/chain.sh, --time=1, afterany, no requeue): the lead signal
#              stops the first with a checkpoint, and a later job of the chain finishes the run
#   twonode    two emulated nodes (network namespaces): 2 ranks across them train like one process
#              with the whole batch (max |Δw| <= 1e-4, as launcher/tests/distributed.rs)
#
# KEEP_SCRATCH=1 keeps the scratch folder (kept anyway when a scenario fails). CLIPFLEET_BIN
# tests another build of the front end.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ALL=(train eval preempt hup partition timelimit twonode)
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=("${ALL[@]}")

say() { echo "[$(date '+%H:%M:%S')] slurm tests: $*" >&2; }
fail() { echo "[$(date '+%H:%M:%S')] slurm tests: FAILED: $*" >&2; exit 1; }
for s in "${SCENARIOS[@]}"; do
  [[ " ${ALL[*]} " == *" $s "* ]] || fail "unknown scenario $s (known: ${ALL[*]})"
done

# ---- Preconditions, each with what to do about it.
[ "$(id -u)" -eq 0 ] || fail "run as root: the test cluster's daemons run as root (SlurmUser=root), and the two-node scenario creates network namespaces"
for c in munged slurmctld slurmd sbatch srun scontrol; do
  command -v "$c" >/dev/null || fail "$c is missing: run scripts/setup.sh --test (Debian packages slurmctld slurmd slurm-client munge)"
done
CLIPFLEET_BIN=${CLIPFLEET_BIN:-$ROOT/target/release/clipfleet}
[ -x "$CLIPFLEET_BIN" ] && [ -x "$(dirname "$CLIPFLEET_BIN")/clipfleet-core" ] ||
  fail "$CLIPFLEET_BIN or clipfleet-core beside it is missing: run scripts/setup.sh (release build)"
PY=$ROOT/.venv/bin/python
"$PY" -c 'import safetensors, numpy' 2>/dev/null || fail "$PY lacks safetensors/numpy: run scripts/setup.sh --test"
for port in 16817 16818 16827 16828; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port is in use: another Slurm (or this test) is running; stop it first"
  fi
done

# ---- The scratch folder and the cluster; everything goes on exit.
T=$(mktemp -d /tmp/clipfleet-slurm.XXXXXX)
chmod 755 "$T"
STARTED=$SECONDS
FAILED=1
cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM   # a second Ctrl-C must not cut the teardown short
  "$HERE/cluster.sh" down "$T" 2>&1 | sed 's/^/  /' >&2
  if [ "$FAILED" = 0 ] && [ "${KEEP_SCRATCH:-0}" != 1 ]; then
    rm -rf "$T"
  else
    say "scratch folder kept: $T (logs in $T/*/logs, daemons in $T/log)"
  fi
  say "$([ "$rc" = 0 ] && echo "passed" || echo "FAILED") in $((SECONDS - STARTED)) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Jobs inherit this environment (sbatch --export=ALL).
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep -E '^(SLURM_|SBATCH_|SRUN_|MASTER_ADDR=|MASTER_PORT=)')
export CLIPFLEET=$CLIPFLEET_BIN
# The emulated nodes share this machine's cores: OpenMPI must not busy-poll, and each worker
# runs one libtorch thread (docs: slurm/README.md, "Oversubscribed CPU nodes").
export OMPI_MCA_mpi_yield_when_idle=1 OMP_NUM_THREADS=1
export SLURM_CONF=$T/slurm.conf

# The training of every scenario: tiny CLIP, 2 × 8 pairs per step (16 for one process).
COMMON=(--model tiny --warmup 2 --keep-checkpoints 0 --eval-samples 32 --seed 7 --device cpu --log-format json)
TRAIN=("${COMMON[@]}" --batch-size 8)
STEPS=200
ONE_NODE=(--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0)

# ---- Helpers.
# poll SECONDS WHAT COMMAND…: runs COMMAND every 0.2 s until it succeeds; fails the test after SECONDS.
poll() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}
# job_field JOB FIELD: a field of `scontrol show job` (JobState, Restarts, ExitCode, …).
job_field() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }
job_state_is() { [[ " ${*:2} " == *" $(job_field "$1" JobState) "* ]]; }
job_done() { job_state_is "$1" COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL PREEMPTED OUT_OF_MEMORY BOOT_FAIL DEADLINE; }
# last_step LOG: the highest step of rank 0's `train` lines so far.
last_step() { grep -ho '"message":"train","step":[0-9]*' "$@" 2>/dev/null | grep -o '[0-9]*$' | sort -n | tail -n1; }
step_at_least() { local s; s=$(last_step "$1"); [ -n "$s" ] && [ "$s" -ge "$2" ]; }
expect_in() { grep -qF -- "$2" "$1" || { tail -n 40 "$1" >&2; fail "$3: '$2' is not in $1"; }; }
event() { echo "[$(date '+%Y-%m-%dT%H:%M:%S.%3N%z')] test: $*" >> "$EVENTS"; }
latest_of() { cat "$1/checkpoints/latest" 2>/dev/null; }
expect_committed() {
  [ "$(latest_of "$1")" = "step_$2" ] || fail "$1: checkpoints/latest is '$(latest_of "$1")', expected step_$2"
  [ -f "$1/checkpoints/step_$2/manifest.json" ] || fail "$1/checkpoints/step_$2 has no manifest.json (not committed)"
}
# start_requeued_now JOB: waits for JOB to be requeued (PENDING, Restarts=1), then skips the
# requeue delay (about 120 s) with StartTime=now; not within the second of the requeue: slurmd
# refuses a launch whose credential is no newer than the requeue's kill, in whole seconds ("Job N
# already killed, do not launch batch job"; the job then fails with "Job credential revoked").
start_requeued_now() {
  poll 60 "job $1 to be requeued (PENDING, Restarts=1)" \
    bash -c "[ \"\$(scontrol show job -o $1 | grep -o 'JobState=[A-Z]*')\" = JobState=PENDING ] && scontrol show job -o $1 | grep -q 'Restarts=1'"
  local requeued_at; requeued_at=$(date +%s)
  poll 30 "the second after the requeue, with the node idle" \
    bash -c "[ \$(date +%s) -gt $requeued_at ] && [ \"\$(sinfo -h -N -o %t | sort -u)\" = idle ]"
  event "state: job $1 is PENDING after requeue ($(job_field "$1" Reason)); scontrol update StartTime=now"
  scontrol update jobid="$1" StartTime=now
}
# expect_same_weights RUN WHAT: RUN's final weights equal the train scenario's, bit for bit.
expect_same_weights() {
  local a b
  a=$(sha256sum < "$T/train/run/checkpoints/step_$STEPS/model.safetensors" | cut -d' ' -f1)
  b=$(sha256sum < "$1/checkpoints/step_$STEPS/model.safetensors" | cut -d' ' -f1)
  [ "$a" = "$b" ] || fail "$2: the final weights differ from the uninterrupted run's ($b vs $a)"
  SHA=$a
}
# note_rate LOG: RATE becomes the highest training throughput (samples/s) seen so far.
RATE=0
note_rate() {
  local r
  for r in $(sed -n 's/^throughput: \([0-9.]*\) samples\/s/\1/p' "$1"); do
    RATE=$(awk -v a="$RATE" -v b="$r" 'BEGIN { print (b > a) ? b : a }')
  done
}
# resumed_step LOG: the step of the first `resumed` line in LOG.
resumed_step() { grep -o '"message":"resumed"[^}]*"step":[0-9]*' "$1" | grep -o '[0-9]*$' | head -n1; }
expect_completed() {
  job_state_is "$1" COMPLETED ||
    { tail -n 40 "$2" >&2; fail "$3: job $1 ended $(job_field "$1" JobState) with exit code $(job_field "$1" ExitCode)"; }
}
submit() { local id; id=$(sbatch --parsable "$@") || fail "sbatch $* failed"; echo "${id%%;*}"; }

# ---- Scenarios.
scenario_train() {
  say "train: sbatch, 2 tasks on one node, $STEPS steps"
  mkdir -p "$T/train/logs" && cd "$T/train"
  local job log
  # Not sbatch -W: it polls the job after 2, 8 and 32 s, so waits up to 30 s past the end.
  job=$(submit "${ONE_NODE[@]}" --export=ALL,METRICS_PORT=19500,FILE_SD_DIR="$T/train/file_sd" "$ROOT/slurm/train.sbatch" \
    "${TRAIN[@]}" --steps "$STEPS" --checkpoint-every 50 --log-every 10 --output "$T/train/run")
  log=$T/train/logs/clipfleet_$job.out
  poll 180 "job $job to end" job_done "$job"
  expect_completed "$job" "$log" train
  expect_committed "$T/train/run" "$STEPS"
  local s
  for s in 50 100 150; do [ -f "$T/train/run/checkpoints/step_$s/manifest.json" ] || fail "train: step_$s is not committed"; done
  expect_in "$log" "SLURM_RESTART_COUNT=0" train
  expect_in "$log" '"mode":"mpi"' train
  expect_in "$log" '"world_size":2' train
  expect_in "$log" "master: $(hostname -s):$((10000 + job % 50000))" train
  expect_in "$log" "prometheus targets: $(hostname -s):19500 (rank 0), $(hostname -s):19501 (rank 1)" train
  expect_in "$log" "training finished" train
  [ -z "$(ls "$T/train/file_sd")" ] || fail "train: the file_sd target list was not removed at the end"
  note_rate "$log"
  say "train: ok (job $job, $RATE samples/s)"
}

scenario_eval() {
  [ -f "$T/train/run/checkpoints/latest" ] || scenario_train
  say "eval: slurm/eval.sbatch over the committed checkpoints of the train run"
  cd "$T/train"
  local job n
  job=$(EVAL_ARGS="--device cpu" bash "$ROOT/slurm/eval.sbatch" "$T/train/run" --gpus-per-node=0) || fail "eval: submission failed"
  n=$(ls -d "$T"/train/run/checkpoints/step_*/manifest.json | wc -l)
  poll 120 "eval array job $job" bash -c "[ -z \"\$(squeue -h -j $job 2>/dev/null)\" ]"
  local s
  for s in 50 100 150 "$STEPS"; do
    [ -s "$T/train/run/eval/step_$s.json" ] || { tail -n 20 "$T"/train/logs/clipfleet-eval_"${job}"_*.out >&2; fail "eval: no $T/train/run/eval/step_$s.json"; }
  done
  [ "$(ls "$T"/train/logs/clipfleet-eval_"${job}"_*.out | wc -l)" = "$n" ] || fail "eval: expected $n array tasks"
  # The final checkpoint's report is the run's own eval.json (same data, batch and device).
  "$PY" - "$T/train/run/eval/step_$STEPS.json" "$T/train/run/eval.json" <<'EOF' || fail "eval: the final checkpoint's report differs from the run's eval.json"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
keys = ("image_to_text_r1", "text_to_image_r1", "val_loss", "step")
bad = [k for k in keys if abs(a[k] - b[k]) > 1e-6]
print("eval: step_N.json vs eval.json:", ", ".join(f"{k} {a[k]} / {b[k]}" for k in keys))
sys.exit(1 if bad else 0)
EOF
  say "eval: ok (array job $job, $n tasks)"
}

scenario_preempt() {
  [ -f "$T/train/run/checkpoints/latest" ] || scenario_train
  say "preempt: scancel --batch --signal=USR1 mid-run, requeue, resume; $STEPS steps as in train"
  mkdir -p "$T/preempt/logs" && cd "$T/preempt"
  EVENTS=$T/preempt/events.log
  local job log stop_step
  job=$(submit "${ONE_NODE[@]}" --export=ALL,METRICS_PORT=19510,FILE_SD_DIR="$T/preempt/file_sd" "$ROOT/slurm/train.sbatch" \
    "${TRAIN[@]}" --steps "$STEPS" --checkpoint-every 50 --log-every 5 --output "$T/preempt/run")
  log=$T/preempt/logs/clipfleet_$job.out
  event "submitted job $job"
  poll 120 "job $job to log step 20" step_at_least "$log" 20
  # While it runs: the file_sd list names both workers, and each serves its rank's metrics.
  local host; host=$(hostname -s)
  local resolve=(); getent hosts "$host" >/dev/null || resolve=("$host=127.0.0.1")
  "$PY" "$HERE/check_file_sd.py" "$T/preempt/file_sd/clipfleet-$job.json" "$job" clipfleet "$host:19510,$host:19511" --scrape "${resolve[@]}" ||
    fail "preempt: the Prometheus file_sd targets are wrong"
  event "signal: scancel --batch --signal=USR1 $job (rank 0 at step $(last_step "$log"))"
  scancel --batch --signal=USR1 "$job"
  start_requeued_now "$job"
  poll 120 "job $job to finish after the requeue" job_done "$job"
  event "state: job $job $(job_field "$job" JobState), exit code $(job_field "$job" ExitCode)"
  expect_completed "$job" "$log" preempt
  echo "preempt timeline (job $job):" >&2
  "$PY" "$HERE/timeline.py" "$log" "$EVENTS" >&2
  expect_in "$log" "SIGUSR1: stop requested" preempt
  expect_in "$log" "srun exited with status 75" preempt
  expect_in "$log" "requeueing job $job" preempt
  expect_in "$log" "SLURM_RESTART_COUNT=1" preempt
  expect_in "$log" '"slurm_restart_count":1' preempt
  expect_in "$log" "training finished" preempt
  # The stop checkpoint is off the checkpoint_every grid (or on it), before the last step, and the
  # restart resumed from it.
  stop_step=$(resumed_step "$log")
  [ -n "$stop_step" ] || fail "preempt: the restarted job did not log a resumed line"
  [ "$stop_step" -lt "$STEPS" ] || fail "preempt: the run had finished before the stop (resumed at $stop_step); make it longer"
  [ -f "$T/preempt/run/checkpoints/step_$stop_step/manifest.json" ] || fail "preempt: step_$stop_step was not committed"
  expect_committed "$T/preempt/run" "$STEPS"
  expect_same_weights "$T/preempt/run" preempt
  note_rate "$log"
  say "preempt: ok (stopped and checkpointed at step $stop_step, resumed, finished; sha256 of step_$STEPS/model.safetensors equal: ${SHA:0:16}…)"
}

scenario_hup() {
  say "hup: STOP_SIGNAL=HUP (srun would take SIGHUP as terminate: the trap sends it by scancel --signal), REQUEUE=0"
  mkdir -p "$T/hup/logs" && cd "$T/hup"
  local job log stop_step
  job=$(submit "${ONE_NODE[@]}" --export=ALL,STOP_SIGNAL=HUP,REQUEUE=0 "$ROOT/slurm/train.sbatch" \
    "${TRAIN[@]}" --steps "$STEPS" --checkpoint-every 0 --log-every 5 --output "$T/hup/run")
  log=$T/hup/logs/clipfleet_$job.out
  poll 120 "job $job to log step 10" step_at_least "$log" 10
  scancel --batch --signal=USR1 "$job"
  poll 60 "job $job to end" job_done "$job"
  expect_in "$log" "--stop-signal HUP" hup
  expect_in "$log" "asking the workers to checkpoint and stop (SIGHUP)" hup
  expect_in "$log" '"message":"received SIGHUP' hup
  expect_in "$log" "srun exited with status 75" hup
  expect_in "$log" "not requeued (REQUEUE=0)" hup
  [ "$(job_field "$job" ExitCode)" = 75:0 ] || fail "hup: job $job ended with exit code $(job_field "$job" ExitCode), expected 75:0"
  [ "$(job_field "$job" Restarts)" = 0 ] || fail "hup: job $job was requeued with REQUEUE=0"
  stop_step=$(grep -o '"message":"stop requested[^}]*"step":[0-9]*' "$log" | grep -o '[0-9]*$' | head -n1)
  [ -n "$stop_step" ] && [ "$stop_step" -lt "$STEPS" ] || fail "hup: no stop before the last step (step '$stop_step')"
  expect_committed "$T/hup/run" "$stop_step"
  say "hup: ok (SIGHUP reached both workers through scancel; checkpoint step_$stop_step, exit 75, not requeued)"
}

scenario_partition() {
  [ -f "$T/train/run/checkpoints/latest" ] || scenario_train
  say "partition: a job of the higher-priority partition preempts the run (PreemptMode=REQUEUE, preempt_send_user_signal)"
  mkdir -p "$T/partition/logs" && cd "$T/partition"
  EVENTS=$T/partition/events.log
  local job urgent log stop_step
  job=$(submit "${ONE_NODE[@]}" --partition=debug "$ROOT/slurm/train.sbatch" \
    "${TRAIN[@]}" --steps "$STEPS" --checkpoint-every 50 --log-every 5 --output "$T/partition/run")
  log=$T/partition/logs/clipfleet_$job.out
  poll 120 "job $job to log step 20" step_at_least "$log" 20
  event "signal: submitting a 2-CPU job to the urgent partition (rank 0 at step $(last_step "$log"))"
  urgent=$(submit --partition=urgent --ntasks=2 --output=/dev/null --wrap true)
  poll 60 "the urgent job $urgent to run and end" job_done "$urgent"
  event "state: urgent job $urgent $(job_field "$urgent" JobState)"
  start_requeued_now "$job"
  poll 120 "job $job to finish after the requeue" job_done "$job"
  event "state: job $job $(job_field "$job" JobState), exit code $(job_field "$job" ExitCode)"
  echo "partition preemption timeline (job $job):" >&2
  "$PY" "$HERE/timeline.py" "$log" "$EVENTS" >&2
  expect_completed "$job" "$log" partition
  expect_in "$log" "SIGUSR1: stop requested" partition
  expect_in "$log" "srun exited with status 75" partition
  expect_in "$log" "SLURM_RESTART_COUNT=1" partition
  stop_step=$(resumed_step "$log")
  [ -n "$stop_step" ] && [ "$stop_step" -lt "$STEPS" ] || fail "partition: the restarted job did not resume mid-run (resumed: '$stop_step')"
  [ -f "$T/partition/run/checkpoints/step_$stop_step/manifest.json" ] || fail "partition: step_$stop_step was not committed"
  expect_committed "$T/partition/run" "$STEPS"
  expect_same_weights "$T/partition/run" partition
  note_rate "$log"
  say "partition: ok (preempted, checkpointed at step $stop_step, requeued, resumed, finished with the uninterrupted run's weights)"
}

scenario_timelimit() {
  # Slurm checks time limits every 30 s and sends the --signal lead up to 60 s early: with
  # --time=1 and a lead of 20 s, the first job gets the signal 10 to 40 s after its start, and each
  # later job, which starts a few seconds after such a check, about 25 s after its start. So the run
  # lasts about 60 s: longer than the first job can train (at most about 36 s), and half the worst-case
  # capacity of a chain of 5 jobs (about 10 + 4 x 20 s);
  # its length follows this machine's speed (the highest throughput of the scenarios before, or of
  # a short run now). Jobs that start after the run has finished find it at its last step and only
  # evaluate again.
  if [ "$RATE" = 0 ]; then
    "$CLIPFLEET_BIN" launch --nproc-per-node 2 --backend mpi -- train "${TRAIN[@]}" --steps 100 --output "$T/rate" > "$T/rate.log" 2>&1 ||
      { tail -n 20 "$T/rate.log" >&2; fail "timelimit: the run that measures this machine's speed failed"; }
    note_rate "$T/rate.log"
  fi
  local steps
  steps=$("$PY" -c "import math; print(max(400, math.ceil(60 * float('$RATE') / 16 / 50) * 50))")
  say "timelimit: slurm/chain.sh 5 --time=1 --signal=B:USR1@20, $steps steps (about 60 s of training at $RATE samples/s)"
  mkdir -p "$T/timelimit" && cd "$T/timelimit"
  EVENTS=$T/timelimit/events.log
  local chain job logs=() first log1 finisher="" resumed
  mapfile -t chain < <("$ROOT/slurm/chain.sh" 5 --time=1 --signal=B:USR1@20 "${ONE_NODE[@]}" -- \
    "${TRAIN[@]}" --steps "$steps" --checkpoint-every 0 --log-every 50 --output "$T/timelimit/run")
  [ ${#chain[@]} = 5 ] || fail "timelimit: chain.sh did not submit 5 jobs (${chain[*]})"
  event "submitted the chain ${chain[*]} (afterany)"
  for job in "${chain[@]}"; do
    poll 150 "job $job to end" job_done "$job"
    event "state: job $job $(job_field "$job" JobState), exit code $(job_field "$job" ExitCode)"
    logs+=("$T/timelimit/logs/clipfleet_$job.out")
  done
  echo "timelimit timeline (jobs ${chain[*]}):" >&2
  "$PY" "$HERE/timeline.py" "${logs[@]}" "$EVENTS" >&2
  first=${chain[0]}; log1=${logs[0]}
  [ "$(job_field "$first" JobState)" != TIMEOUT ] || { tail -n 30 "$log1" >&2; fail "timelimit: job $first ran into its time limit instead of stopping on the lead signal"; }
  grep -qF "training finished" "$log1" && fail "timelimit: job $first finished the run before its lead signal; the run is too short for this machine"
  expect_in "$log1" "SIGUSR1: stop requested" timelimit
  expect_in "$log1" "srun exited with status 75" timelimit
  expect_in "$log1" "not requeued" timelimit
  resumed=$(grep -o '"message":"resumed"[^}]*"step":[0-9]*' "${logs[1]}" | grep -o '[0-9]*$' | head -n1)
  [ -n "$resumed" ] && [ "$resumed" -gt 0 ] && [ "$resumed" -lt "$steps" ] ||
    fail "timelimit: job ${chain[1]} did not resume from job $first's stop checkpoint (resumed: '${resumed}')"
  for job in "${chain[@]:1}"; do
    if grep -qF "training finished" "$T/timelimit/logs/clipfleet_$job.out"; then finisher=$job; break; fi
  done
  [ -n "$finisher" ] || fail "timelimit: no job of the chain finished the run"
  expect_completed "$finisher" "$T/timelimit/logs/clipfleet_$finisher.out" timelimit
  expect_committed "$T/timelimit/run" "$steps"
  say "timelimit: ok (job $first stopped at step $resumed on the lead signal with a checkpoint; job $finisher finished step $steps)"
}

scenario_twonode() {
  say "twonode: two emulated nodes (cfn1, cfn2), sbatch -N 2 --ntasks-per-node=1, vs one process"
  "$HERE/cluster.sh" up two "$T"
  mkdir -p "$T/twonode/logs" && cd "$T/twonode"
  local steps=20 job log
  export SLURM_CONF=$T/slurm2.conf
  job=$(submit -N 2 --ntasks-per-node=1 --gpus-per-node=0 \
    --export=ALL,METRICS_PORT=19520,FILE_SD_DIR="$T/twonode/file_sd" "$ROOT/slurm/train.sbatch" \
    "${TRAIN[@]}" --steps "$steps" --checkpoint-every 0 --log-every 5 --output "$T/twonode/run")
  log=$T/twonode/logs/clipfleet_$job.out
  poll 180 "job $job to end" job_done "$job"
  expect_completed "$job" "$log" twonode
  export SLURM_CONF=$T/slurm.conf
  expect_in "$log" "nodes: cfn[1-2] (2), tasks per node: 1" twonode
  expect_in "$log" "master: cfn1:$((10000 + job % 50000))" twonode
  expect_in "$log" '"master":"cfn1:' twonode
  expect_in "$log" '"world_size":2' twonode
  expect_in "$log" "prometheus targets: cfn1:19520 (rank 0), cfn2:19520 (rank 1)" twonode
  expect_committed "$T/twonode/run" "$steps"
  # One process with the whole global batch (2 × 8), outside Slurm.
  env -u SLURM_CONF "$CLIPFLEET_BIN" train "${COMMON[@]}" --batch-size 16 --steps "$steps" --checkpoint-every 0 \
    --output "$T/twonode/one" > "$T/twonode/one.log" 2>&1 || { tail -n 20 "$T/twonode/one.log" >&2; fail "twonode: the one-process run failed"; }
  local cmp
  cmp=$("$PY" "$HERE/compare_weights.py" "$T/twonode/run/checkpoints/step_$steps/model.safetensors" \
    "$T/twonode/one/checkpoints/step_$steps/model.safetensors" 1e-4) || fail "twonode: $cmp"
  say "twonode: ok (job $job across cfn1 and cfn2 vs one process: $cmp)"
}

say "scratch folder $T; starting the one-host Slurm"
"$HERE/cluster.sh" up one "$T"
for scenario in "${ALL[@]}"; do
  [[ " ${SCENARIOS[*]} " == *" $scenario "* ]] || continue
  "scenario_$scenario"
done
FAILED=0
say "all scenarios passed: ${SCENARIOS[*]}"
