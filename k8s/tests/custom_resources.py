"""The custom resources of the clipfleet job definitions, checked for what their operators
require and what the rendezvous needs: the Prometheus Operator's PodMonitor
(monitoring.coreos.com/v1), JobSet (jobset.x-k8s.io/v1alpha2) and Kubeflow's PyTorchJob
(kubeflow.org/v1). kubernetes-validate has no schemas for them; the fields and enums here follow
the operators' API types (prometheus-operator's PodMonitorSpec; kubernetes-sigs/jobset
api/jobset/v1alpha2/jobset_types.go; kubeflow/training-operator pkg/apis/kubeflow.org/v1
pytorch_types.go and common_types.go). Used by check.py.
"""
from __future__ import annotations

import re
from typing import Callable

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
JOBSET_RULE_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
JOBSET_ACTIONS = {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts", "RestartJob", "RestartJobAndIgnoreMaxRestarts"}
JOB_FAILURE_REASONS = {"BackoffLimitExceeded", "DeadlineExceeded", "PodFailurePolicy", "MaxFailedIndexesExceeded", "FailedIndexes"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}

Problem = Callable[[str], None]


def check_podmonitor(problem: Problem, docs: list[dict], pods: list[dict], nproc: int) -> None:
    monitors = [d for d in docs if d.get("kind") == "PodMonitor"]
    if len(monitors) != 1:
        problem(f"expected one PodMonitor, found {len(monitors)}")
        return
    pm = monitors[0]
    if pm.get("apiVersion") != "monitoring.coreos.com/v1":
        problem(f"PodMonitor apiVersion {pm.get('apiVersion')!r} is not monitoring.coreos.com/v1")
    if not (pm["metadata"].get("labels") or {}).get("release"):
        problem("PodMonitor has no `release` label: kube-prometheus-stack would not select it")
    spec = pm.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if not selector or (spec.get("selector") or {}).get("matchExpressions"):
        problem("PodMonitor spec.selector.matchLabels is required here (and must not be empty)")
    for pod in pods:
        unmatched = {k: v for k, v in selector.items() if pod["labels"].get(k) != v}
        if unmatched:
            problem(f"PodMonitor selector {unmatched} does not match pod {pod['pod_name']} (labels {pod['labels']})")
    endpoints = spec.get("podMetricsEndpoints") or []
    names = [e.get("port") for e in endpoints]
    if sorted(names) != sorted(f"metrics-{i}" for i in range(nproc)):
        problem(f"PodMonitor endpoints {names}: want one per worker, metrics-0..metrics-{nproc - 1}")
    for e in endpoints:
        if not e.get("honorLabels"):
            problem(f"PodMonitor endpoint {e.get('port')}: honorLabels must be true (the workers' job and rank labels)")
        for pod in pods:
            if e.get("port") not in {p.get("name") for p in pod["_container"].get("ports") or []}:
                problem(f"PodMonitor endpoint port {e.get('port')!r} is not a container port of pod {pod['pod_name']}")


def check_jobset(problem: Problem, js: dict) -> None:
    spec = js.get("spec") or {}
    if js.get("apiVersion") != "jobset.x-k8s.io/v1alpha2":
        problem(f"JobSet apiVersion {js.get('apiVersion')!r} is not jobset.x-k8s.io/v1alpha2")
    rjobs = spec.get("replicatedJobs") or []
    if not rjobs:
        problem("JobSet spec.replicatedJobs is empty")
    for r in rjobs:
        if not r.get("name") or not DNS_LABEL.match(r["name"]):
            problem(f"JobSet replicatedJob name {r.get('name')!r} is required and must be a DNS label")
        if not (((r.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers"):
            problem(f"JobSet replicatedJob {r.get('name')}: template.spec.template.spec.containers is required")
        if r["template"]["spec"].get("backoffLimit", 6) != 0:
            problem(f"JobSet replicatedJob {r.get('name')}: backoffLimit should be 0, so that a failure restarts the whole JobSet")
    fp = spec.get("failurePolicy") or {}
    if not isinstance(fp.get("maxRestarts"), int) or fp["maxRestarts"] < 1:
        problem("JobSet failurePolicy.maxRestarts must be a positive integer (restarts of every pod together)")
    for r in fp.get("rules") or []:
        if not JOBSET_RULE_NAME.match(r.get("name", "")):
            problem(f"JobSet failurePolicy rule name {r.get('name')!r} is required and must match {JOBSET_RULE_NAME.pattern}")
        if r.get("action") not in JOBSET_ACTIONS:
            problem(f"JobSet failurePolicy rule {r.get('name')}: action {r.get('action')!r} is not one of {sorted(JOBSET_ACTIONS)}")
        bad = set(r.get("onJobFailureReasons") or []) - JOB_FAILURE_REASONS
        if bad:
            problem(f"JobSet failurePolicy rule {r.get('name')}: unknown Job failure reasons {sorted(bad)}")
    network = spec.get("network") or {}
    if network.get("enableDNSHostnames") is False or network.get("publishNotReadyAddresses") is False:
        problem("JobSet network: enableDNSHostnames and publishNotReadyAddresses must not be false (the rendezvous needs the pods' DNS names at start)")


def check_pytorchjob(problem: Problem, pj: dict) -> None:
    spec = pj.get("spec") or {}
    if pj.get("apiVersion") != "kubeflow.org/v1":
        problem(f"PyTorchJob apiVersion {pj.get('apiVersion')!r} is not kubeflow.org/v1")
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if set(replicas) - {"Master", "Worker"} or "Master" not in replicas:
        problem(f"PyTorchJob pytorchReplicaSpecs {sorted(replicas)}: want Master (and Worker)")
        return
    if int(replicas["Master"].get("replicas", 1)) != 1:
        problem("PyTorchJob Master must have 1 replica (MASTER_ADDR is <job>-master-0)")
    for t, r in replicas.items():
        if r.get("restartPolicy") not in RESTART_POLICIES:
            problem(f"PyTorchJob {t}: restartPolicy {r.get('restartPolicy')!r} is not one of {sorted(RESTART_POLICIES)}")
        if r.get("restartPolicy") == "ExitCode":
            problem(f"PyTorchJob {t}: restartPolicy ExitCode treats 1-127 as permanent, so exit 75 (checkpointed stop) would end the job")
        if not r.get("template", {}).get("spec", {}).get("containers"):
            problem(f"PyTorchJob {t}: template.spec.containers is required")
        if "restartPolicy" in r.get("template", {}).get("spec", {}):
            problem(f"PyTorchJob {t}: set restartPolicy on the replica spec, not in the pod template (the operator overrides it)")
    nproc = spec.get("nprocPerNode")
    if not isinstance(nproc, str) or not nproc.isdigit():
        problem(f"PyTorchJob spec.nprocPerNode must be a number as a string, not {nproc!r} (\"auto\" would make WORLD_SIZE wrong)")
    if "backoffLimit" not in (spec.get("runPolicy") or {}):
        problem("PyTorchJob runPolicy.backoffLimit is not set")
