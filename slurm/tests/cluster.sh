#!/usr/bin/env bash
# Starts and stops a real Slurm for the tests in this folder, as root, in a scratch folder T.
#
#   slurm/tests/cluster.sh up one T    munge + slurmctld + one slurmd on this host (SLURM_CONF=T/slurm.conf)
#   slurm/tests/cluster.sh up two T    two emulated nodes cfn1, cfn2 (SLURM_CONF=T/slurm2.conf): one
#                                      network + UTS + mount namespace per slurmd, joined by a bridge
#   slurm/tests/cluster.sh down T      cancels the jobs, stops every daemon and job process started
#                                      from T, deletes the namespaces and the bridge
#
# The two clusters use their own ports (16817/16818 and 16827/16828) and may run side by side;
# they share one munged. T must be an absolute path; the emulated nodes see a private /tmp, with T
# (and this checkout, when it lives under /tmp) bind-mounted back in, so T is the filesystem that
# both nodes share. Nothing leaves the machine: the addresses 10.250.0.0/24 exist only on the
# bridge cfbr0 and inside the namespaces cfn1 and cfn2.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*" >&2; }

# poll SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.2 s until it succeeds.
poll() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || { say "timed out after ${limit}s waiting for $what"; return 1; }
    sleep 0.2
  done
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# render TEMPLATE OUT: the slurm.conf with @T@ and @HOST@ filled in.
render() {
  sed -e "s|@T@|$T|g" -e "s|@HOST@|$HOST|g" "$1" > "$2.tmp" && mv "$2.tmp" "$2"
}

start_munge() {
  pid_alive "$T/run/munged.pid" && return 0
  if [ ! -f "$T/munge.key" ]; then
    dd if=/dev/urandom bs=1 count=1024 of="$T/munge.key" 2>/dev/null
    chmod 400 "$T/munge.key"
  fi
  munged --force --socket="$T/run/munge.sock" --key-file="$T/munge.key" --pid-file="$T/run/munged.pid" \
         --log-file="$T/log/munged.log" --seed-file="$T/run/munged.seed"
  poll 10 "munged" test -S "$T/run/munge.sock"
}

# all_idle: every node of $SLURM_CONF's cluster is idle.
all_idle() {
  local states
  states=$(sinfo -h -N -o '%t') || return 1
  [ -n "$states" ] && ! grep -qv '^idle$' <<<"$states"
}

up_one() {
  mkdir -p "$T"/{run,log,state,spool}
  render "$HERE/slurm-one-host.conf.in" "$T/slurm.conf"
  start_munge
  export SLURM_CONF=$T/slurm.conf
  pid_alive "$T/run/slurmctld.pid" || slurmctld -i
  pid_alive "$T/run/slurmd.pid" || slurmd
  poll 60 "the one-host node to be idle (logs: $T/log/slurmctld.log, slurmd.log)" all_idle
  say "one-host Slurm up: SLURM_CONF=$T/slurm.conf"
}

# The folders a node must see although its /tmp is private: T and this checkout (binaries,
# .venv), when they live under /tmp.
shared_under_tmp() {
  local p
  for p in "$T" "$ROOT"; do
    case $p in /tmp/*) echo "$p" ;; esac
  done
}

up_two() {
  [ "$(id -u)" -eq 0 ] || die "the two-node cluster needs root (network namespaces, mounts)"
  command -v ip >/dev/null || die "the two-node cluster needs iproute2 (ip netns)"
  command -v nsenter >/dev/null && command -v unshare >/dev/null || die "the two-node cluster needs nsenter and unshare (util-linux)"
  mkdir -p "$T"/{run,log,state2,spool2/cfn1,spool2/cfn2}
  render "$HERE/slurm-two-nodes.conf.in" "$T/slurm2.conf"
  printf '127.0.0.1 localhost\n10.250.0.1 %s\n10.250.0.11 cfn1\n10.250.0.12 cfn2\n' "$HOST" > "$T/hosts"
  start_munge
  if ! ip link show cfbr0 >/dev/null 2>&1; then
    ip link add cfbr0 type bridge
    ip addr add 10.250.0.1/24 dev cfbr0
    ip link set cfbr0 up
  fi
  local n
  for n in 1 2; do
    if ! ip netns list | grep -qw "cfn$n"; then
      ip netns add "cfn$n"
      ip link add "cfv$n" type veth peer name eth0 netns "cfn$n"
      ip link set "cfv$n" master cfbr0 up
      ip -n "cfn$n" addr add "10.250.0.1$n/24" dev eth0
      ip -n "cfn$n" link set eth0 up
      ip -n "cfn$n" link set lo up
      ip -n "cfn$n" route add default via 10.250.0.1
    fi
  done
  export SLURM_CONF=$T/slurm2.conf
  pid_alive "$T/run/slurmctld2.pid" || slurmctld -i
  local binds="" p orig
  for n in 1 2; do
    pid_alive "$T/run/slurmd-cfn$n.pid" && continue
    orig=/run/clipfleet-slurm-test-$$-cfn$n
    binds=""
    for p in $(shared_under_tmp); do
      binds+="mkdir -p $p; mount --bind $orig/${p#/tmp/} $p; "
    done
    # Not `ip netns exec`: it remounts /sys, and slurmd then dies with "No filesystem mounted on
    # /sys/fs/cgroup"; nsenter --net keeps the host's /sys. Each node gets a private /tmp
    # (srun --mpi=pmix collides on /tmp/spmix_appdir_* otherwise) and the hosts file.
    nsenter --net="/var/run/netns/cfn$n" unshare --uts --mount --propagation private bash -c "
      set -e
      hostname cfn$n
      mount --bind $T/hosts /etc/hosts
      mkdir -p $orig; mount --bind /tmp $orig; mount -t tmpfs tmpfs /tmp
      $binds
      umount $orig
      SLURM_CONF=$T/slurm2.conf slurmd"
    rmdir "$orig" 2>/dev/null || true
  done
  poll 60 "cfn1 and cfn2 to be idle (logs: $T/log/slurmctld2.log, slurmd-cfn*.log)" all_idle
  say "two-node Slurm up: SLURM_CONF=$T/slurm2.conf (nodes cfn1, cfn2)"
}

# Processes of the cluster in T: its daemons (slurmctld, slurmd, slurmstepd) and the jobs' processes
# (SLURM_JOB_ID set), all with SLURM_CONF=T/…; not the test itself, which has SLURM_CONF too.
processes_of_T() {
  local e pid env comm
  for e in /proc/[0-9]*/environ; do
    pid=${e#/proc/}; pid=${pid%/environ}
    env=$({ tr '\0' '\n' < "$e"; } 2>/dev/null) || continue
    grep -qxE "SLURM_CONF=$T/slurm2?\.conf" <<<"$env" || continue
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    case $comm in
      slurmctld | slurmd | slurmstepd) echo "$pid" ;;
      *) grep -q '^SLURM_JOB_ID=' <<<"$env" && echo "$pid" ;;
    esac
  done
}

no_jobs() { [ -z "$(squeue -h -o %i 2>/dev/null)" ]; }

down() {
  local conf pidf p
  for conf in "$T/slurm.conf" "$T/slurm2.conf"; do
    [ -f "$conf" ] || continue
    export SLURM_CONF=$conf
    if squeue -h >/dev/null 2>&1; then
      scancel --full --quiet $(squeue -h -o %i) 2>/dev/null || true
      poll 20 "the jobs of $conf to end" no_jobs || true
      scontrol shutdown >/dev/null 2>&1 || true
    fi
  done
  for pidf in "$T"/run/slurmd*.pid "$T"/run/slurmctld*.pid; do
    p=$(cat "$pidf" 2>/dev/null) || continue
    poll 15 "$(basename "$pidf" .pid) to exit" bash -c "! kill -0 $p 2>/dev/null" || kill -9 "$p" 2>/dev/null || true
  done
  # Job processes and step daemons that outlived their daemons.
  for p in $(processes_of_T); do kill -9 "$p" 2>/dev/null || true; done
  local n
  for n in 1 2; do
    if ip netns list 2>/dev/null | grep -qw "cfn$n"; then
      for p in $(ip netns pids "cfn$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
      ip netns del "cfn$n" 2>/dev/null || true
    fi
  done
  ip link del cfbr0 2>/dev/null || true
  if pid_alive "$T/run/munged.pid"; then
    p=$(cat "$T/run/munged.pid")
    kill "$p" 2>/dev/null || true
    poll 10 "munged to exit" bash -c "! kill -0 $p 2>/dev/null" || kill -9 "$p" 2>/dev/null || true
  fi
}

[ $# -ge 2 ] || die "usage: cluster.sh up one|two T | cluster.sh down T"
HOST=$(hostname -s)
case $1 in
  up)
    [ $# -eq 3 ] || die "usage: cluster.sh up one|two T"
    T=$3
    case $T in /*) ;; *) die "T must be an absolute path: $T" ;; esac
    for c in munged slurmctld slurmd sbatch; do
      command -v "$c" >/dev/null || die "$c is missing: run scripts/setup.sh --test (Debian: slurmctld slurmd slurm-client munge)"
    done
    case $2 in one) up_one ;; two) up_two ;; *) die "up one|two, not $2" ;; esac
    ;;
  down) T=$2; down ;;
  *) die "usage: cluster.sh up one|two T | cluster.sh down T" ;;
esac
