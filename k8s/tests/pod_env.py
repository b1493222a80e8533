#!/usr/bin/env python3
"""What one pod of a rendered clipfleet job definition would see: its DNS names, its command
line and its environment, resolved the way Kubernetes and the operators would resolve them.

    pod_env.py RENDERED.yaml --kind Job --index 1
    pod_env.py RENDERED.yaml --kind JobSet --replica workers --job-index 0 --index 1
    pod_env.py RENDERED.yaml --kind PyTorchJob --replica Worker --index 0 --pod-ip 10.0.0.7

RENDERED.yaml is the output of `kubectl kustomize` (several YAML documents). The result is one
JSON object on stdout:

    pod_name, hostname, subdomain, namespace   as the pod would have them
    fqdn             the name other pods resolve it by, without the cluster suffix:
                     <hostname>.<subdomain> (Indexed Job, JobSet), the per-replica Service
                     <job>-master-0 (PyTorchJob master), or null (no DNS name)
    fqdn_namespaced  the same, fully qualified: …<namespace>.svc.<cluster domain>
    labels, annotations   the template's, plus those the controllers add
    container        the container's name
    command          command + args, with $(VAR) expanded against the final environment
    env              the container's environment: envFrom, then env (which wins), then what the
                     operator injects (which wins over both), plus HOSTNAME
    notes            what was left out (unresolvable references, optional sources not found)

It is also a module: `resolve_pod(docs, kind, …)` returns the same dict; k8s/tests/check.py
uses it, and so can a test that starts real workers with this environment.

Sources, and what follows each (checked against these, not guessed):
- Kubernetes, kubelet `makeEnvironmentVariables` (pkg/kubelet/kubelet_pods.go) and the docs
  "Define Dependent Environment Variables": envFrom first, then env in order; a later name
  replaces an earlier one; `$(VAR)` in an env value expands against the variables defined
  before it (`$$` is a literal `$`; an unknown reference stays as written); command and args
  expand against the final environment. Service-link variables (FOO_SERVICE_HOST, …) are not
  produced here. HOSTNAME is set by the container runtime to the pod's hostname.
- Kubernetes, downward API (docs "Expose Pod Information to Containers Through Environment
  Variables"): fieldRef metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'],
  metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.hostIP,
  status.podIP, status.podIPs. resourceFieldRef is not supported here (an error says so).
- Kubernetes, Indexed Job (docs "Jobs", completion mode; pkg/controller/job/indexed_job_utils.go):
  pods are named <job>-<index>-<random>, their hostname is <job>-<index>, the controller adds the
  labels batch.kubernetes.io/job-name (1.27+), job-name, batch.kubernetes.io/controller-uid,
  controller-uid and batch.kubernetes.io/job-completion-index (1.28+), the annotation
  batch.kubernetes.io/job-completion-index, and the variable JOB_COMPLETION_INDEX to every
  container (docs "Job with Pod-to-Pod Communication" for <hostname>.<subdomain>).
- JobSet (kubernetes-sigs/jobset, api/jobset/v1alpha2/jobset_types.go and
  examples/pytorch/cnn-mnist/mnist.yaml): Job names <jobset>-<replicatedJob>-<jobIndex>;
  pods <jobset>-<replicatedJob>-<jobIndex>-<podIndex> in the subdomain network.subdomain,
  default the JobSet's name, resolvable when network.enableDNSHostnames is not false (default
  true); labels and annotations jobset.sigs.k8s.io/jobset-name, replicatedjob-name,
  replicatedjob-replicas, job-index, job-global-index, restart-attempt on the pods.
- Kubeflow training operator v1 (kubeflow/training-operator, pkg/controller.v1/pytorch/envvar.go,
  master.go; pkg/apis/kubeflow.org/v1/pytorch_types.go, pytorch_defaults.go, common_types.go):
  pods <job>-<replica type, lower case>-<index>; labels training.kubeflow.org/job-name,
  operator-name, replica-type, replica-index, and job-role=master on the master; the master is
  reachable through the headless Service <job>-master-0. Appended to every container's env, in
  this order: PYTHONUNBUFFERED=0, MASTER_PORT (the master's container `pytorch`, port
  `pytorchjob-port`, defaulted to 23456), MASTER_ADDR=<job>-master-0, WORLD_SIZE = (sum of all
  replicas) × nprocPerNode (1 when nprocPerNode is not a number, e.g. the default "auto"),
  RANK = the pod index (master 0, worker i → i + 1), PET_NPROC_PER_NODE = nprocPerNode,
  PET_NODE_RANK = RANK, and PET_NNODES = the sum of all replicas (without an elasticPolicy).
  No LOCAL_RANK. The pod's hostname is its name (no subdomain unless the template sets one).
The random pod-name suffix, UIDs, node name and IPs are placeholders given by the options.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
from typing import Any

import yaml

WORKLOAD_KINDS = ("Job", "JobSet", "PyTorchJob")
PYTORCHJOB_DEFAULT_PORT = 23456


class PodEnvError(Exception):
    """A manifest that does not give a pod (no such workload, replica or index)."""


def load_docs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find_one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        what = f"{kind} {name}" if name else kind
        raise PodEnvError(f"expected exactly one {what} in the manifest, found {len(found)}")
    return found[0]


def fake_uid(*parts: str) -> str:
    h = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# ---- Environment resolution, as the kubelet does it.

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, `$$` becomes `$`, unknown
    references stay as written."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, value)


_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_ref(path: str, pod: dict) -> str | None:
    m = _FIELD.match(path)
    if m:
        return pod[m.group(1)].get(m.group(2))
    simple = {
        "metadata.name": pod["pod_name"],
        "metadata.namespace": pod["namespace"],
        "metadata.uid": pod["uid"],
        "spec.nodeName": pod["node_name"],
        "spec.serviceAccountName": pod["service_account"],
        "status.hostIP": pod["host_ip"],
        "status.podIP": pod["pod_ip"],
        "status.podIPs": pod["pod_ip"],
        "status.hostIPs": pod["host_ip"],
    }
    if path not in simple:
        raise PodEnvError(f"fieldRef {path!r} is not one the downward API offers for env")
    return simple[path]


def config_data(docs: list[dict], kind: str, name: str) -> dict[str, str] | None:
    for d in docs:
        if d.get("kind") == kind and d["metadata"]["name"] == name:
            if kind == "Secret":
                out = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
                out.update(d.get("stringData") or {})
                return out
            return dict(d.get("data") or {})
    return None


def resolve_env(container: dict, pod: dict, docs: list[dict], injected: list[tuple[str, str]], notes: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key not in source:
                continue
            ref = source[key]
            data = config_data(docs, kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    notes.append(f"envFrom {kind} {ref['name']} (optional) is not in the manifest: no variables from it")
                    continue
                raise PodEnvError(f"envFrom {kind} {ref['name']} is not in the manifest and not optional: the pod would not start")
            for k, v in data.items():
                env[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom")
        if not source:
            env[name] = ""
            continue
        if "fieldRef" in source:
            value = field_ref(source["fieldRef"]["fieldPath"], pod)
            if value is None:
                # The kubelet sets an empty string for a label or annotation the pod lacks.
                notes.append(f"{name}: {source['fieldRef']['fieldPath']} is not set on the pod: empty")
                value = ""
            env[name] = value
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind, key = ("ConfigMap", "configMapKeyRef") if "configMapKeyRef" in source else ("Secret", "secretKeyRef")
            ref = source[key]
            data = config_data(docs, kind, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    notes.append(f"{name}: {kind} {ref['name']} key {ref['key']} (optional) is not in the manifest: unset")
                    continue
                raise PodEnvError(f"{name}: {kind} {ref['name']} key {ref['key']} is not in the manifest and not optional")
            env[name] = data[ref["key"]]
        elif "resourceFieldRef" in source:
            raise PodEnvError(f"{name}: resourceFieldRef is not supported by pod_env.py")
        else:
            raise PodEnvError(f"{name}: unknown valueFrom {sorted(source)}")
    for name, value in injected:
        env[name] = value
    env["HOSTNAME"] = pod["hostname"]
    return env


# ---- The pod each controller would make.


def pod_template_and_names(docs: list[dict], kind: str, name: str | None, replica: str | None, index: int, job_index: int, opts: dict) -> tuple[dict, dict, list[tuple[str, str]]]:
    """(pod template, pod facts, injected env) for one pod of the workload."""
    workload = find_one(docs, kind, name)
    wname = workload["metadata"]["name"]
    namespace = workload["metadata"].get("namespace") or opts["namespace"]
    suffix = opts["pod_suffix"]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    injected: list[tuple[str, str]] = []

    def indexed_job(job_name: str, job_spec: dict) -> dict:
        if job_spec.get("completionMode") != "Indexed":
            raise PodEnvError(f"Job {job_name} is not an Indexed Job (completionMode: Indexed)")
        completions = int(job_spec.get("completions", 1))
        if not 0 <= index < completions:
            raise PodEnvError(f"index {index} is outside the Job's completions 0..{completions - 1}")
        uid = fake_uid(namespace, "Job", job_name)
        labels.update({
            "batch.kubernetes.io/controller-uid": uid,
            "controller-uid": uid,
            "batch.kubernetes.io/job-name": job_name,
            "job-name": job_name,
            "batch.kubernetes.io/job-completion-index": str(index),
        })
        annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        injected.append(("JOB_COMPLETION_INDEX", str(index)))
        return job_spec["template"]

    if kind == "Job":
        template = indexed_job(wname, workload["spec"])
        tspec = template.get("spec", {})
        hostname = tspec.get("hostname") or f"{wname}-{index}"
        subdomain = tspec.get("subdomain", "")
        pod_name = f"{wname}-{index}-{suffix}"
    elif kind == "JobSet":
        rjobs = workload["spec"]["replicatedJobs"]
        if replica is None:
            replica = rjobs[0]["name"]
        rjob = next((r for r in rjobs if r["name"] == replica), None)
        if rjob is None:
            raise PodEnvError(f"JobSet {wname} has no replicated Job {replica!r} (it has {[r['name'] for r in rjobs]})")
        replicas = int(rjob.get("replicas", 1))
        if not 0 <= job_index < replicas:
            raise PodEnvError(f"job index {job_index} is outside replicas 0..{replicas - 1} of {replica}")
        job_name = f"{wname}-{replica}-{job_index}"
        global_index = sum(int(r.get("replicas", 1)) for r in rjobs[: rjobs.index(rjob)]) + job_index
        jobset_keys = {
            "jobset.sigs.k8s.io/jobset-name": wname,
            "jobset.sigs.k8s.io/replicatedjob-name": replica,
            "jobset.sigs.k8s.io/replicatedjob-replicas": str(replicas),
            "jobset.sigs.k8s.io/job-index": str(job_index),
            "jobset.sigs.k8s.io/job-global-index": str(global_index),
            "jobset.sigs.k8s.io/restart-attempt": "0",
            "jobset.sigs.k8s.io/job-key": hashlib.sha256(f"{namespace}/{job_name}".encode()).hexdigest(),
        }
        labels.update(jobset_keys)
        annotations.update(jobset_keys)
        template = indexed_job(job_name, rjob["template"]["spec"])
        network = workload["spec"].get("network") or {}
        dns = network.get("enableDNSHostnames", True)
        hostname = f"{job_name}-{index}"
        subdomain = (network.get("subdomain") or wname) if dns else template.get("spec", {}).get("subdomain", "")
        pod_name = f"{job_name}-{index}-{suffix}"
    elif kind == "PyTorchJob":
        specs = workload["spec"]["pytorchReplicaSpecs"]
        if replica not in specs:
            raise PodEnvError(f"PyTorchJob {wname} has no replica type {replica!r} (it has {sorted(specs)}); pass --replica")
        count = int(specs[replica].get("replicas", 1))
        if not 0 <= index < count:
            raise PodEnvError(f"index {index} is outside {replica} replicas 0..{count - 1}")
        rtype = replica.lower()
        template = specs[replica]["template"]
        pod_name = f"{wname}-{rtype}-{index}"
        hostname = template.get("spec", {}).get("hostname") or pod_name
        subdomain = template.get("spec", {}).get("subdomain", "")
        labels.update({
            "training.kubeflow.org/job-name": wname,
            "training.kubeflow.org/operator-name": "pytorchjob-controller",
            "training.kubeflow.org/replica-type": rtype,
            "training.kubeflow.org/replica-index": str(index),
        })
        if replica == "Master":
            labels["training.kubeflow.org/job-role"] = "master"
        if "Master" in specs:
            total = sum(int(s.get("replicas", 1)) for s in specs.values())
            nproc = str(workload["spec"].get("nprocPerNode", "auto"))
            nproc_int = int(nproc) if nproc.isdigit() else 1
            rank = index + 1 if replica == "Worker" else index
            injected += [
                ("PYTHONUNBUFFERED", "0"),
                ("MASTER_PORT", str(pytorchjob_master_port(specs["Master"]))),
                ("MASTER_ADDR", f"{wname}-master-0"),
                ("WORLD_SIZE", str(total * nproc_int)),
                ("RANK", str(rank)),
                ("PET_NPROC_PER_NODE", nproc),
                ("PET_NODE_RANK", str(rank)),
            ]
            if workload["spec"].get("elasticPolicy") is None:
                injected.append(("PET_NNODES", str(total)))
        else:
            injected.append(("PYTHONUNBUFFERED", "0"))
    else:
        raise PodEnvError(f"--kind must be one of {', '.join(WORKLOAD_KINDS)}, not {kind!r}")

    meta = template.get("metadata") or {}
    pod = {
        "pod_name": pod_name,
        "hostname": hostname,
        "subdomain": subdomain,
        "namespace": namespace,
        "uid": fake_uid(namespace, "Pod", pod_name),
        "node_name": opts["node_name"],
        "service_account": template.get("spec", {}).get("serviceAccountName", "default"),
        "pod_ip": opts["pod_ip"],
        "host_ip": opts["host_ip"],
        "labels": {**(meta.get("labels") or {}), **labels},
        "annotations": {**(meta.get("annotations") or {}), **annotations},
        "workload": wname,
    }
    return template, pod, injected


def pytorchjob_master_port(master_spec: dict) -> int:
    for c in master_spec["template"]["spec"].get("containers", []):
        if c.get("name") == "pytorch":
            for p in c.get("ports") or []:
                if p.get("name") == "pytorchjob-port":
                    return int(p["containerPort"])
    return PYTORCHJOB_DEFAULT_PORT


def resolve_pod(
    docs: list[dict],
    kind: str,
    *,
    name: str | None = None,
    replica: str | None = None,
    index: int = 0,
    job_index: int = 0,
    container: str | None = None,
    pod_ip: str = "10.0.0.10",
    host_ip: str = "192.168.0.10",
    node_name: str = "node-0",
    namespace: str = "default",
    pod_suffix: str = "x7k2p",
    cluster_domain: str = "cluster.local",
) -> dict[str, Any]:
    opts = {"pod_ip": pod_ip, "host_ip": host_ip, "node_name": node_name, "namespace": namespace, "pod_suffix": pod_suffix}
    template, pod, injected = pod_template_and_names(docs, kind, name, replica, index, job_index, opts)
    containers = template["spec"]["containers"]
    if container is None:
        chosen = containers[0]
    else:
        chosen = next((c for c in containers if c["name"] == container), None)
        if chosen is None:
            raise PodEnvError(f"no container {container!r} (there are {[c['name'] for c in containers]})")
    notes: list[str] = []
    env = resolve_env(chosen, pod, docs, injected, notes)
    command = [expand(str(x), env) for x in (chosen.get("command") or []) + (chosen.get("args") or [])]
    for part in command:
        for m in _REF.finditer(part):
            if m.group(1):
                notes.append(f"command: $({m.group(1)}) is not defined and stays as written")
    if kind == "PyTorchJob":
        fqdn = pod["pod_name"] if replica == "Master" and index == 0 else None
        fqdn = f"{pod['hostname']}.{pod['subdomain']}" if pod["subdomain"] else fqdn
    else:
        fqdn = f"{pod['hostname']}.{pod['subdomain']}" if pod["subdomain"] else None
    return {
        "kind": kind,
        "workload": pod["workload"],
        "pod_name": pod["pod_name"],
        "hostname": pod["hostname"],
        "subdomain": pod["subdomain"] or None,
        "namespace": pod["namespace"],
        "fqdn": fqdn,
        "fqdn_namespaced": f"{fqdn}.{pod['namespace']}.svc.{cluster_domain}" if fqdn else None,
        "labels": pod["labels"],
        "annotations": pod["annotations"],
        "container": chosen["name"],
        "command": command,
        "env": env,
        "notes": notes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", help="rendered multi-document YAML (kubectl kustomize output)")
    ap.add_argument("--kind", required=True, choices=WORKLOAD_KINDS)
    ap.add_argument("--name", help="the workload's name, when the manifest has several of that kind")
    ap.add_argument("--replica", help="PyTorchJob: Master or Worker; JobSet: the replicated Job (default: the first)")
    ap.add_argument("--index", type=int, default=0, help="completion index (Job, JobSet) or replica index (PyTorchJob)")
    ap.add_argument("--job-index", type=int, default=0, help="JobSet: which Job of the replicated Job")
    ap.add_argument("--container", help="default: the first container")
    ap.add_argument("--pod-ip", default="10.0.0.10", help="status.podIP")
    ap.add_argument("--host-ip", default="192.168.0.10", help="status.hostIP")
    ap.add_argument("--node-name", default="node-0", help="spec.nodeName")
    ap.add_argument("--namespace", default="default", help="when the workload sets none")
    ap.add_argument("--cluster-domain", default="cluster.local")
    a = ap.parse_args()
    try:
        out = resolve_pod(
            load_docs(a.manifest), a.kind, name=a.name, replica=a.replica, index=a.index, job_index=a.job_index,
            container=a.container, pod_ip=a.pod_ip, host_ip=a.host_ip, node_name=a.node_name,
            namespace=a.namespace, cluster_domain=a.cluster_domain,
        )
    except (PodEnvError, KeyError, OSError, yaml.YAMLError) as e:
        print(f"pod_env.py: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=2, sort_keys=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
