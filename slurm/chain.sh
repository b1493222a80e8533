#!/usr/bin/env bash
# Submits a chain of time-limited training jobs of slurm/train.sbatch. Each job starts when the one
# before it has ended (--dependency=afterany) and continues the run from its checkpoint
# (--resume latest); a job stopped by the time limit's lead signal checkpoints and exits, and the
# next one takes over. Requeueing is off in the chain (REQUEUE=0): the chain continues the run.
#
#   slurm/chain.sh JOBS [sbatch options…] -- [training flags…]
#   slurm/chain.sh 4 --time=4:00:00 --nodes=2 -- --config run.toml --output /shared/runs/b32
#
# Prints the job ids, one per line. DEPENDENCY=afternotok makes the chain stop by itself once the
# run has finished: each job then waits for every earlier one to end "not ok" (a stop exits 75),
# so after the job that finishes the run (exit 0) Slurm cancels the rest (--kill-on-invalid-dep=yes).
# With the default afterany the later jobs start, find the run at its last step, and only rerun
# the final evaluation.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DEPENDENCY=${DEPENDENCY:-afterany}

usage() { echo "usage: slurm/chain.sh JOBS [sbatch options…] -- [training flags…]" >&2; exit 2; }
[ $# -ge 1 ] && [[ $1 =~ ^[1-9][0-9]*$ ]] || usage
jobs=$1; shift
sbatch_opts=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do sbatch_opts+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
case $DEPENDENCY in afterany | afternotok) ;; *) echo "chain.sh: DEPENDENCY must be afterany or afternotok" >&2; exit 2 ;; esac

mkdir -p logs   # train.sbatch writes logs/%x_%j.out relative to the submit folder
prev="" earlier=""
for ((k = 1; k <= jobs; k++)); do
  dep=()
  if [ "$DEPENDENCY" = afterany ] && [ -n "$prev" ]; then
    dep=(--dependency="afterany:$prev")
  elif [ -n "$earlier" ]; then
    # Every earlier job, not only the previous one: a job cancelled because its dependency can
    # never be met counts as "not ok" too, and would start the one after it.
    dep=(--dependency="afternotok$earlier" --kill-on-invalid-dep=yes)
  fi
  id=$(sbatch --parsable --export=ALL,REQUEUE=0 "${dep[@]}" "${sbatch_opts[@]}" "$HERE/train.sbatch" "$@")
  id=${id%%;*}
  echo "chain.sh: job $k of $jobs: $id${dep:+ (${dep[0]#--dependency=})}" >&2
  echo "$id"
  prev=$id earlier+=":$id"
done
