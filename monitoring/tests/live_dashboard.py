#!/usr/bin/env python3
"""Every dashboard query against a real Prometheus scraping a real 2-worker CPU run.

`clipfleet launch --nproc-per-node 2 --backend mpi -- train --model tiny --device cpu …` serves
/metrics on PORT and PORT+1 (base port + local rank); a Prometheus started here scrapes both
every second with honor_labels. Once every clipfleet metric the dashboard uses has series for
both ranks, an evaluation and a checkpoint have happened and the rate windows hold several
scrapes, the run is stopped (SIGTERM: a stop request) and then:
  - the job and rank variables' label_values queries return the run's job and ranks 0 and 1;
  - each clipfleet selector in the dashboard returns series for ranks 0 and 1;
  - each query (DCGM ones excepted: dcgm_join.py), its variables substituted, runs through the
    HTTP API over the run's time range without error and returns finite data; the DCGM ones run
    without error (no DCGM exporter here, so without data);
  - with rank=~"1", each query runs without error and the per-rank ones return rank 1 only.

    live_dashboard.py DASHBOARD.json [CLIPFLEET_BINARY]
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard_lint  # noqa: E402
from prometheus_server import Prometheus, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOB = "monitoring-live-test"
RANKS = {"0", "1"}
READY_TIMEOUT = float(os.environ.get("CLIPFLEET_LIVE_TIMEOUT", "180"))
# $__rate_interval is at least 4 scrape intervals in Grafana; the scrape interval here is 1 s.
VALUES = {"$job": JOB, "$rank": ".*", "$__rate_interval": "10s", "$__interval": "1s", "$__range": "5m"}


def say(msg: str) -> None:
    print(f"live_dashboard: {msg}", file=sys.stderr, flush=True)


def free_port_pair() -> int:
    for _ in range(50):
        p = free_port()
        if p < 65000:
            try:
                import socket
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def metric_names(board: dict) -> set[str]:
    names = set()
    for _, t in dashboard_lint.targets(board):
        names |= {n for n, _ in dashboard_lint.SELECTOR.findall(t["expr"])}
    return names


def finite_points(result: list[dict]) -> int:
    return sum(1 for r in result for _, v in r.get("values", [r.get("value")]) if math.isfinite(float(v)))


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        board = json.load(f)
    binary = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target", "release", "clipfleet")
    names = metric_names(board)
    targets = [(p, t) for p, t in dashboard_lint.targets(board) if "DCGM_" not in t["expr"]]
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clipfleet-monitoring-live-") as tmp:
        port = free_port_pair()
        prom = Prometheus(tmp, scrape_targets=[f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"])
        run_log = open(os.path.join(tmp, "run.log"), "w", encoding="utf-8")
        cmd = [binary, "launch", "--nproc-per-node", "2", "--backend", "mpi", "--grace-period", "30", "--",
               "train", "--model", "tiny", "--device", "cpu", "--steps", "100000", "--warmup", "2", "--batch-size", "8",
               "--log-every", "1", "--eval-every", "5", "--eval-samples", "16", "--checkpoint-every", "5",
               "--keep-checkpoints", "2", "--metrics-port", str(port), "--job-name", JOB,
               "--output", os.path.join(tmp, "run"), "--log-format", "json"]
        say(" ".join(cmd))
        run = subprocess.Popen(cmd, stdout=run_log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        started = time.time()
        try:
            # Wait for every series the dashboard needs, an evaluation and a checkpoint.
            missing: list[str] = sorted(names)
            while time.time() - started < READY_TIMEOUT:
                if run.poll() is not None:
                    break
                missing = []
                for n in sorted(names):
                    got = {r["metric"].get("rank") for r in prom.query(f'{n}{{job="{JOB}"}}')}
                    if not RANKS <= got:
                        missing.append(f"{n} (ranks {sorted(got)})")
                for cond, what in ((f'clipfleet_checkpoint_seconds_count{{job="{JOB}"}} > 0', "a checkpoint"),
                                   (f'clipfleet_eval_loss{{job="{JOB}"}} > 0', "an evaluation"),
                                   (f'changes(clipfleet_step{{job="{JOB}"}}[10s]) > 1', "steps within the rate window")):
                    if not prom.query(cond):
                        missing.append(what)
                if not missing:
                    break
                time.sleep(1)
            if missing:
                failures.append(f"after {time.time() - started:.0f} s (run exit {run.poll()}), still missing: {', '.join(missing)}")
            else:
                say(f"every series present after {time.time() - started:.0f} s; 12 s more of scrapes")
                time.sleep(12)
        finally:
            if run.poll() is None:
                os.kill(run.pid, signal.SIGTERM)  # the launcher turns it into a stop request: checkpoint, exit 75
                try:
                    run.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(run.pid, signal.SIGKILL)
                    run.wait()
            run_log.close()
        end = time.time()
        say(f"run stopped with exit status {run.returncode} after {end - started:.0f} s")
        try:  # every check runs, also after a missing series, to name every problem
            # The variables.
            jobs = prom.api("label/job/values", **{"match[]": "clipfleet_step"})
            ranks = prom.api("label/rank/values", **{"match[]": f'clipfleet_step{{job=~"{JOB}"}}'})
            if JOB not in jobs or set(ranks) != RANKS:
                failures.append(f"variables: job values {jobs}, rank values {ranks}")
            # Each metric, for both ranks.
            for n in sorted(names):
                got = {r["metric"].get("rank") for r in prom.query_range(f'{n}{{job=~"{JOB}", rank=~".*"}}', started, end)}
                if not RANKS <= got:
                    failures.append(f"{n}: ranks {sorted(got)}, want {sorted(RANKS)}")
            # Each query, as Grafana runs it.
            for p, t in targets:
                where = f"panel {p['title']!r} {t['refId']}"
                for ranks, want in ((".*", None), ("1", {"1"})):
                    expr = dashboard_lint.substitute(t["expr"], {**VALUES, "$rank": ranks})
                    try:
                        result = prom.query_range(expr, started, end, 1)
                    except ValueError as e:
                        failures.append(f"{where}: {e}\n    {expr}")
                        break
                    # With all ranks every query has finite data; rank 1 alone may have none
                    # where only rank 0 acts (checkpoints: their duration is 0/0 on rank 1).
                    if want is None and not finite_points(result):
                        failures.append(f"{where} (rank=~{ranks!r}): no finite data\n    {expr}")
                        continue
                    got = {r["metric"].get("rank") for r in result if "rank" in r["metric"]}
                    if want is not None and got and got != want:
                        failures.append(f"{where}: rank=~\"1\" returned ranks {sorted(got)}")
            # The DCGM queries (no DCGM exporter here): they must still run without error on
            # the CPU workers' clipfleet_worker_info (empty gpu_uuid); dcgm_join.py checks their data.
            for p, t in dashboard_lint.targets(board):
                if "DCGM_" in t["expr"]:
                    try:
                        prom.query_range(dashboard_lint.substitute(t["expr"], VALUES), started, end, 1)
                    except ValueError as e:
                        failures.append(f"panel {p['title']!r} {t['refId']}: {e}")
            say(f"{len(targets)} queries x 2 rank selections, {len(names)} clipfleet metrics checked")
        finally:
            prom.stop()
        if failures:
            with open(os.path.join(tmp, "run.log"), encoding="utf-8", errors="replace") as f:
                tail = f.read()[-3000:]
            say("run log (tail):\n" + tail)
    for f in failures:
        say("FAILED " + f)
    say("ok" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
