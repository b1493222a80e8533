#!/usr/bin/env python3
"""Proves that k8s/tests/check.py catches what it claims to: each case breaks one rendered
manifest in memory, the way a real mistake would, and expects check.py to name the problem.
A check that passes everything would fail here.

    check_selftest.py RENDERED_DIR      (the folder k8s/tests/run.sh renders into)
"""
from __future__ import annotations

import copy
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402


def first(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d.get("kind") == kind)


def job_container(docs: list[dict]) -> dict:
    return first(docs, "Job")["spec"]["template"]["spec"]["containers"][0]


def env_entry(container: dict, name: str) -> dict:
    return next(e for e in container["env"] if e["name"] == name)


def rename_service_only(docs: list[dict]) -> None:
    # What a namePrefix does without k8s/common/namereference.yaml: the Service is renamed, the
    # pods' subdomain and the annotation behind CLIPFLEET_SERVICE are not.
    first(docs, "Service")["metadata"]["name"] = "alice-clipfleet"


def rename_job_only(docs: list[dict]) -> None:
    first(docs, "Job")["metadata"]["name"] = "alice-clipfleet"


def nodes_disagree(docs: list[dict]) -> None:
    env_entry(job_container(docs), "CLIPFLEET_NNODES")["value"] = "3"


def short_grace(docs: list[dict]) -> None:
    first(docs, "Job")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 60


def no_disruption_rule(docs: list[dict]) -> None:
    rules = first(docs, "Job")["spec"]["podFailurePolicy"]["rules"]
    rules[:] = [r for r in rules if "onPodConditions" not in r]


def no_75_rule(docs: list[dict]) -> None:
    rules = first(docs, "Job")["spec"]["podFailurePolicy"]["rules"]
    rules[:] = [r for r in rules if 75 not in (r.get("onExitCodes") or {}).get("values", [])]


def fewer_gpus(docs: list[dict]) -> None:
    job_container(docs)["resources"]["limits"]["nvidia.com/gpu"] = 4


def missing_metrics_endpoint(docs: list[dict]) -> None:
    first(docs, "PodMonitor")["spec"]["podMetricsEndpoints"].pop()


def podmonitor_wrong_selector(docs: list[dict]) -> None:
    first(docs, "PodMonitor")["spec"]["selector"]["matchLabels"] = {"batch.kubernetes.io/job-name": "other"}


def podmonitor_no_release(docs: list[dict]) -> None:
    del first(docs, "PodMonitor")["metadata"]["labels"]["release"]


def shm_default(docs: list[dict]) -> None:
    spec = first(docs, "Job")["spec"]["template"]["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "dshm"]


def no_resume(docs: list[dict]) -> None:
    args = job_container(docs)["args"]
    i = args.index("--resume")
    del args[i:i + 2]


def cpu_without_tcp(docs: list[dict]) -> None:
    args = job_container(docs)["args"]
    i = args.index("--dist-backend")
    del args[i:i + 2]


def jobset_wrong_master(docs: list[dict]) -> None:
    c = first(docs, "JobSet")["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    env_entry(c, "CLIPFLEET_MASTER_ADDR")["value"] = "$(JOBSET_NAME)-worker-0-0.$(JOBSET_NAME)"


def jobset_no_max_restarts(docs: list[dict]) -> None:
    del first(docs, "JobSet")["spec"]["failurePolicy"]["maxRestarts"]


def pytorchjob_container_name(docs: list[dict]) -> None:
    first(docs, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "worker"


def pytorchjob_auto_nproc(docs: list[dict]) -> None:
    first(docs, "PyTorchJob")["spec"]["nprocPerNode"] = "auto"


CASES = [
    ("renamed-cpu-smoke", rename_service_only, "must be equal"),
    ("renamed-gpu-4x8", rename_job_only, "is not the Job's name"),
    ("gpu-4x8", nodes_disagree, "node count"),
    ("gpu-4x8", short_grace, "not longer than --stop-grace"),
    ("gpu-4x8", no_disruption_rule, "DisruptionTarget"),
    ("gpu-4x8", no_75_rule, "exit 75"),
    ("gpu-4x8", fewer_gpus, "4 GPUs"),
    ("gpu-4x8", missing_metrics_endpoint, "want one per worker"),
    ("gpu-4x8", podmonitor_wrong_selector, "does not match pod"),
    ("gpu-4x8", podmonitor_no_release, "release"),
    ("gpu-1x8", shm_default, "/dev/shm"),
    ("cpu-smoke", no_resume, "--resume latest"),
    ("cpu-smoke", cpu_without_tcp, "--dist-backend tcp"),
    ("jobset", jobset_wrong_master, "the master is"),
    ("jobset", jobset_no_max_restarts, "maxRestarts"),
    ("pytorchjob-cpu", pytorchjob_container_name, "`pytorch`"),
    ("pytorchjob-gpu", pytorchjob_auto_nproc, "nprocPerNode"),
]


def main() -> int:
    rendered = sys.argv[1]
    failures = 0
    for target, mutate, expected in CASES:
        with open(os.path.join(rendered, f"{target}.yaml"), encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        clean = check.Problems()
        clean.target = target
        check.check_target(clean, target, copy.deepcopy(docs))
        broken = check.Problems()
        broken.target = target
        mutate(docs)
        check.check_target(broken, target, docs)
        if clean.lines:
            print(f"selftest {mutate.__name__}: {target} is not clean to begin with: {clean.lines}")
            failures += 1
        elif not any(expected in line for line in broken.lines):
            print(f"selftest {mutate.__name__}: check.py did not report {expected!r} for {target}; it said {broken.lines or 'nothing'}")
            failures += 1
    print(f"check_selftest.py: {len(CASES) - failures} passed, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
