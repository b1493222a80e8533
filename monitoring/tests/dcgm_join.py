#!/usr/bin/env python3
"""The dashboard's DCGM panels and their join to ranks, on synthetic series: DCGM exporter
series (labels Hostname, UUID, gpu, modelName, and the exporter's own scrape job) and
clipfleet_worker_info series (job, rank, local_rank, node, device, gpu_uuid) are written as
OpenMetrics, backfilled with `promtool tsdb create-blocks-from openmetrics`, and served by a
real Prometheus. Every DCGM panel query, its variables substituted, must return one series per
rank of the selected job with that rank's own GPU's value, and only the selected ranks.

    dcgm_join.py DASHBOARD.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard_lint  # noqa: E402
from prometheus_server import Prometheus, binary  # noqa: E402

JOB = "synthetic"
MODEL = "NVIDIA H100 80GB HBM3"
# (node, gpu index, uuid, clipfleet job or None, rank)
GPUS = [
    ("gpu-node-a", 0, "GPU-0a1b2c3d-0000-1111-2222-333344445555", JOB, 0),
    ("gpu-node-a", 1, "GPU-0a1b2c3d-0000-1111-2222-333344445556", JOB, 1),
    ("gpu-node-b", 0, "GPU-9f8e7d6c-0000-1111-2222-333344445555", JOB, 2),
    ("gpu-node-b", 1, "GPU-9f8e7d6c-0000-1111-2222-333344445556", JOB, 3),
    # Same GPU index on a third node, used by another job: must not join to JOB's ranks.
    ("gpu-node-c", 0, "GPU-11111111-0000-1111-2222-333344445555", "other-job", 0),
    # An idle GPU: no clipfleet worker, so no rank.
    ("gpu-node-c", 1, "GPU-11111111-0000-1111-2222-333344445556", None, None),
]
FIELDS = {"DCGM_FI_DEV_GPU_UTIL": lambda i: 90 + i, "DCGM_FI_DEV_FB_USED": lambda i: 70000 + 100 * i,
          "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": lambda i: 0.5 + 0.05 * i}


def openmetrics(start: int, end: int, step: int) -> str:
    out = []
    times = range(start, end + 1, step)
    for name, value in FIELDS.items():
        out.append(f"# TYPE {name} gauge")
        for i, (node, gpu, uuid, _, _) in enumerate(GPUS):
            labels = (f'Hostname="{node}",UUID="{uuid}",gpu="{gpu}",modelName="{MODEL}",'
                      f'job="dcgm-exporter",instance="{node}:9400",pci_bus_id="00000000:{18 + gpu:02X}:00.0"')
            out += [f"{name}{{{labels}}} {value(i)} {t}" for t in times]
    out.append("# TYPE clipfleet_worker_info gauge")
    for node, gpu, uuid, job, rank in GPUS:
        if job is None:
            continue
        # On Kubernetes `node` is the pod name, not DCGM's Hostname: the join must not need it.
        pod = {"gpu-node-b": "clipfleet-1"}.get(node, node)
        labels = (f'job="{job}",rank="{rank}",local_rank="{gpu}",node="{pod}",device="cuda:{gpu}",'
                  f'gpu_uuid="{uuid}",instance="{node}:{9400 + 100 + gpu}"')
        out += [f"clipfleet_worker_info{{{labels}}} 1 {t}" for t in times]
    # Two CPU workers of the job: empty gpu_uuid, no GPU, so no rank in the GPU panels (and no
    # duplicate match group from their equal empty UUIDs).
    for rank in (4, 5):
        labels = f'job="{JOB}",rank="{rank}",local_rank="{rank - 4}",node="cpu-node",device="cpu",gpu_uuid="",instance="cpu-node:{9396 + rank}"'
        out += [f"clipfleet_worker_info{{{labels}}} 1 {t}" for t in times]
    out.append("# EOF")
    return "\n".join(out) + "\n"


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        board = json.load(f)
    dcgm = [(p, t) for p, t in dashboard_lint.targets(board) if "DCGM_" in t["expr"]]
    if len(dcgm) < 3:
        print(f"dcgm_join: expected the GPU utilisation, memory and tensor panels, found {len(dcgm)} DCGM queries", file=sys.stderr)
        return 1
    failures = 0
    with tempfile.TemporaryDirectory(prefix="clipfleet-dcgm-") as tmp:
        end = int(time.time()) - 3600
        start = end - 1800
        src = os.path.join(tmp, "dcgm.om")
        with open(src, "w", encoding="utf-8") as f:
            f.write(openmetrics(start, end, 15))
        data = os.path.join(tmp, "data")
        out = subprocess.run([binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", src, data],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"dcgm_join: promtool backfill failed:\n{out.stdout}{out.stderr}", file=sys.stderr)
            return 1
        prom = Prometheus(tmp, data=data)
        try:
            for ranks in (".*", "1|2"):
                want_ranks = {"0", "1", "2", "3"} if ranks == ".*" else {"1", "2"}
                values = {"$job": JOB, "$rank": ranks, "$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
                for p, t in dcgm:
                    expr = dashboard_lint.substitute(t["expr"], values)
                    field = next(n for n in FIELDS if n in expr)
                    where = f"{p['title']!r} (rank=~{ranks!r})"
                    try:
                        result = prom.query(expr, at=end)
                    except ValueError as e:
                        failures += 1
                        print(f"dcgm_join: FAILED {where}: {e}", file=sys.stderr)
                        continue
                    got = {r["metric"].get("rank"): r for r in result}
                    problems = []
                    if set(got) != want_ranks or len(result) != len(want_ranks):
                        problems.append(f"ranks {sorted(map(str, got))}, want {sorted(want_ranks)}")
                    for rank, r in got.items():
                        i = next((i for i, g in enumerate(GPUS) if g[3] == JOB and str(g[4]) == rank), None)
                        if i is None:
                            continue
                        node, gpu, uuid = GPUS[i][:3]
                        m = r["metric"]
                        if m.get("job") != JOB:
                            problems.append(f"rank {rank}: job {m.get('job')!r}, want {JOB!r} (clipfleet's, not the exporter's)")
                        if (m.get("Hostname"), m.get("UUID"), m.get("gpu")) != (node, uuid, str(gpu)):
                            problems.append(f"rank {rank} joined to {m.get('Hostname')} {m.get('UUID')}, want {node} {uuid}")
                        if abs(float(r["value"][1]) - FIELDS[field](i)) > 1e-9:
                            problems.append(f"rank {rank}: value {r['value'][1]}, want {FIELDS[field](i)} (its own GPU's)")
                    # The same query over a range, as Grafana runs it.
                    if not prom.query_range(expr, start + 600, end, 60):
                        problems.append("no data over the range")
                    if problems:
                        failures += 1
                        print(f"dcgm_join: FAILED {where}: " + "; ".join(problems), file=sys.stderr)
                    else:
                        print(f"dcgm_join: ok {where}: {len(result)} ranks, each with its own GPU", file=sys.stderr)
        finally:
            prom.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
