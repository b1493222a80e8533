#!/usr/bin/env python3
"""Checks the rendered clipfleet job definitions (the output of `kubectl kustomize` for every
overlay, variant and renamed test overlay) for what a schema cannot see: that every pod finds
the same master and that the master is pod 0's DNS name, that the names still agree after a
namePrefix/nameSuffix, that the custom resources have their required fields, and that the
PodMonitor scrapes every worker.

    check.py RENDERED_DIR OUT_DIR

RENDERED_DIR holds one TARGET.yaml per rendered kustomization (k8s/tests/run.sh writes them);
`renamed-*.yaml` come from k8s/tests/renamed/, which add the prefix `alice-`, the suffix `-v2`
and the namespace `ml-team`. Every pod is resolved with pod_env.py, then placed the way
clipfleet places a worker (docs/distributed.md#launch-modes; trainer/src/dist/env.rs and
launcher/src/commands/launch/topology.rs, mirrored in `place`).

OUT_DIR receives, per target, the built-in objects as they are (OUT_DIR/builtin/TARGET.yaml)
and the pod templates inside the custom resources as a Job or a PodTemplate
(OUT_DIR/embedded/TARGET.yaml), for kubernetes-validate --strict.

Prints one line per problem, naming the target, and exits 1 if there is any.
"""
from __future__ import annotations

import os
import sys
import tomllib

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from custom_resources import DNS_LABEL, check_jobset, check_podmonitor, check_pytorchjob  # noqa: E402
from pod_env import PodEnvError, resolve_pod  # noqa: E402

PREFIX, SUFFIX, NAMESPACE = "alice-", "-v2", "ml-team"
RENAMED_IMAGE = "registry.example.com/ml/clipfleet:0.1.1"
CUSTOM_GROUPS = ("jobset.x-k8s.io", "kubeflow.org", "monitoring.coreos.com")
DEFAULT_MASTER_PORT = 29500
DEFAULT_STOP_GRACE = 120
# podFailurePolicy FailJob: malformed command line, worker binary cannot start, libtorch missing
# (docs/operations.md "Exit statuses"). 75 = checkpointed stop request.
FAIL_AT_ONCE = {2, 126, 127}
EXIT_CHECKPOINTED = 75


class Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.target = ""

    def __call__(self, message: str) -> None:
        self.lines.append(f"{self.target}: {message}")


def is_custom(doc: dict) -> bool:
    return doc.get("apiVersion", "").split("/")[0] in CUSTOM_GROUPS


# ---- Where clipfleet puts a pod: a mirror of its launch-mode rules.


def flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def split_command(command: list[str]) -> tuple[list[str] | None, list[str]]:
    """(launch options or None, the worker's arguments) of `clipfleet [launch … --] train …`."""
    if len(command) < 2 or os.path.basename(command[0]) != "clipfleet":
        raise ValueError(f"the command is not clipfleet: {command[:2]}")
    if command[1] == "launch":
        if "--" not in command:
            raise ValueError("`clipfleet launch` without `--` before the worker's command line")
        cut = command.index("--")
        return command[2:cut], command[cut + 1:]
    return None, command[1:]


def kubernetes_master(env: dict[str, str], index: int) -> str:
    if "CLIPFLEET_MASTER_ADDR" in env:
        return env["CLIPFLEET_MASTER_ADDR"]
    service = env.get("CLIPFLEET_SERVICE", "").strip()
    if not service:
        raise ValueError("CLIPFLEET_SERVICE is not set (nor CLIPFLEET_MASTER_ADDR)")
    job = env.get("CLIPFLEET_JOB_NAME")
    if job is None:
        host = env["HOSTNAME"]
        if not host.endswith(f"-{index}"):
            raise ValueError(f"HOSTNAME {host!r} does not end in -{index}; set CLIPFLEET_JOB_NAME")
        job = host[: -len(f"-{index}")]
    return f"{job}-0.{service}"


def place(env: dict[str, str], command: list[str], gpus: int) -> dict:
    """node_rank, nnodes, nproc, master: what `clipfleet launch` (topology.rs) or a bare worker
    (env.rs, rules 0 and 5) derives from this pod's environment and command line."""
    has = lambda k: env.get(k, "").strip() != ""  # noqa: E731
    launch, _worker = split_command(command)
    if launch is not None:
        pet = env.get("PET_NPROC_PER_NODE", "").strip()
        nproc = int(flag(launch, "--nproc-per-node") or env.get("CLIPFLEET_NPROC_PER_NODE") or (pet if pet.isdigit() else 0) or max(gpus, 1))
        if has("JOB_COMPLETION_INDEX"):
            node_rank, nnodes = int(env["JOB_COMPLETION_INDEX"]), int(env["CLIPFLEET_NNODES"])
            derived = kubernetes_master(env, node_rank) if nnodes > 1 else None
        elif has("PET_NNODES"):
            nnodes = int(env["PET_NNODES"])
            node_rank = int(env["PET_NODE_RANK"] if has("PET_NODE_RANK") else env["RANK"])
            derived = env.get("PET_MASTER_ADDR") or None
        else:
            node_rank, nnodes, derived = 0, 1, None
        master = flag(launch, "--master-addr") or (env["MASTER_ADDR"].strip() if has("MASTER_ADDR") else None) or derived or "127.0.0.1"
        port = int(flag(launch, "--master-port") or env.get("MASTER_PORT") or env.get("PET_MASTER_PORT") or DEFAULT_MASTER_PORT)
        return {"node_rank": node_rank, "nnodes": nnodes, "nproc": nproc, "master": master, "port": port, "mode": "launch"}
    if (has("PET_NNODES") or has("PET_NPROC_PER_NODE")) and not has("LOCAL_RANK"):
        nproc = env.get("PET_NPROC_PER_NODE", "1").strip() or "1"
        if nproc != "1":
            raise ValueError(f"PET_NPROC_PER_NODE={nproc} with a bare `clipfleet train`: it needs `clipfleet launch`")
        rank = int(env["PET_NODE_RANK"] if has("PET_NODE_RANK") else env["RANK"])
        world = int(env["PET_NNODES"] if has("PET_NNODES") else env["WORLD_SIZE"])
        master = (env.get("MASTER_ADDR") or env.get("PET_MASTER_ADDR") or "").strip() or None
        if master is None and world > 1:
            raise ValueError("MASTER_ADDR is not set")
        port = int(env.get("MASTER_PORT") or env.get("PET_MASTER_PORT") or DEFAULT_MASTER_PORT)
        return {"node_rank": rank, "nnodes": world, "nproc": 1, "master": master or "127.0.0.1", "port": port, "mode": "kubeflow"}
    if has("RANK") or has("WORLD_SIZE"):
        raise ValueError("RANK/WORLD_SIZE without PET_*: the torchrun rule would apply, which these pods do not mean")
    if has("JOB_COMPLETION_INDEX"):
        rank, world = int(env["JOB_COMPLETION_INDEX"]), int(env["CLIPFLEET_NNODES"])
        if int(env.get("CLIPFLEET_NPROC_PER_NODE", "1")) != 1:
            raise ValueError("CLIPFLEET_NPROC_PER_NODE > 1 needs `clipfleet launch`")
        master = env["MASTER_ADDR"].strip() if has("MASTER_ADDR") else kubernetes_master(env, rank)
        port = int(env.get("MASTER_PORT") or DEFAULT_MASTER_PORT)
        return {"node_rank": rank, "nnodes": world, "nproc": 1, "master": master, "port": port, "mode": "kubernetes"}
    raise ValueError("no launch mode matches: the worker would train alone")


# ---- The pods of each workload kind.


def pods_of(docs: list[dict], workload: dict) -> list[dict]:
    kind = workload["kind"]
    pods = []
    if kind == "Job":
        for i in range(int(workload["spec"].get("completions", 1))):
            pods.append(resolve_pod(docs, kind, index=i))
    elif kind == "JobSet":
        for rjob in workload["spec"]["replicatedJobs"]:
            for j in range(int(rjob.get("replicas", 1))):
                for i in range(int(rjob["template"]["spec"].get("completions", 1))):
                    pods.append(resolve_pod(docs, kind, replica=rjob["name"], job_index=j, index=i))
    elif kind == "PyTorchJob":
        for rtype, spec in workload["spec"]["pytorchReplicaSpecs"].items():
            for i in range(int(spec.get("replicas", 1))):
                pods.append(resolve_pod(docs, kind, replica=rtype, index=i))
    return pods


def pod_templates(workload: dict) -> list[tuple[str, dict]]:
    kind, spec = workload["kind"], workload["spec"]
    if kind == "Job":
        return [("Job", spec["template"])]
    if kind == "JobSet":
        return [(f"replicatedJob {r['name']}", r["template"]["spec"]["template"]) for r in spec["replicatedJobs"]]
    return [(f"replica {t}", s["template"]) for t, s in spec["pytorchReplicaSpecs"].items()]


def job_specs(workload: dict) -> list[tuple[str, dict]]:
    if workload["kind"] == "Job":
        return [("Job", workload["spec"])]
    if workload["kind"] == "JobSet":
        return [(f"replicatedJob {r['name']}", r["template"]["spec"]) for r in workload["spec"]["replicatedJobs"]]
    return []


# ---- Checks.


def check_dns(problem: Problems, pod: dict) -> None:
    for what, value in (("hostname", pod["hostname"]), ("subdomain", pod["subdomain"])):
        if value and (len(value) > 63 or not DNS_LABEL.match(value)):
            problem(f"pod {pod['pod_name']}: {what} {value!r} is not a DNS label (≤ 63 characters, a-z0-9-): the rendezvous cannot resolve it")


def check_placement(problem: Problems, pods: list[dict], gpus_of) -> int:
    """Checks where clipfleet puts every pod; returns the workers per pod (0: unknown)."""
    places = []
    for pod in pods:
        try:
            places.append(place(pod["env"], pod["command"], gpus_of(pod)))
        except (ValueError, KeyError) as e:
            problem(f"pod {pod['pod_name']}: clipfleet would not start: {e}")
            return 0
    n = len(pods)
    ranks = sorted(p["node_rank"] for p in places)
    if ranks != list(range(n)):
        problem(f"node ranks {ranks} are not 0..{n - 1}, one per pod")
    for pod, p in zip(pods, places):
        if p["nnodes"] != n:
            problem(f"pod {pod['pod_name']}: the node count is {p['nnodes']}, but the workload has {n} pods (completions, parallelism, CLIPFLEET_NNODES / replicas disagree)")
    nprocs = {p["nproc"] for p in places}
    if len(nprocs) != 1:
        problem(f"the pods start different numbers of workers: {sorted(nprocs)}")
    masters = {(p["master"], p["port"]) for p in places}
    if len(masters) != 1:
        problem(f"the pods disagree on the master: {sorted(masters)}")
        return 0
    master, port = masters.pop()
    first = next((pod for pod, p in zip(pods, places) if p["node_rank"] == 0), None)
    if first is None:
        return 0
    names = {first["fqdn"], first["fqdn_namespaced"]} - {None}
    if n == 1 and master == "127.0.0.1":
        names.add(master)  # one node: the launcher's rendezvous stays on loopback
    if master not in names:
        problem(f"the master is {master!r}, but node rank 0 ({first['pod_name']}) resolves as {sorted(names) or 'nothing'}")
    ports = {p.get("containerPort") for p in first["_container"].get("ports") or []}
    if port not in ports:
        problem(f"the master port {port} is not a container port of node rank 0 ({sorted(ports)})")
    for pod, p in zip(pods, places):
        gpus = gpus_of(pod)
        worker = split_command(pod["command"])[1]
        if gpus and gpus != p["nproc"]:
            problem(f"pod {pod['pod_name']}: {p['nproc']} workers but {gpus} GPUs (nvidia.com/gpu)")
        if not gpus:
            if p["nproc"] != 1:
                problem(f"pod {pod['pod_name']}: {p['nproc']} CPU workers in one pod; the CPU job definitions run one")
            if n > 1 and flag(worker, "--dist-backend") != "tcp":
                problem(f"pod {pod['pod_name']}: CPU workers across pods need `--dist-backend tcp` (no MPI launcher starts them)")
        if gpus and flag(worker, "--device") == "cpu":
            problem(f"pod {pod['pod_name']}: GPUs requested but `--device cpu`")
        check_metrics_ports(problem, pod, worker, p["nproc"])
    return max(nprocs)


def check_metrics_ports(problem: Problems, pod: dict, worker: list[str], nproc: int) -> None:
    base = flag(worker, "--metrics-port")
    ports = {p["name"]: p["containerPort"] for p in pod["_container"].get("ports") or [] if p.get("name", "").startswith("metrics-")}
    if base is None:
        problem(f"pod {pod['pod_name']}: no --metrics-port")
        return
    want = {f"metrics-{i}": int(base) + i for i in range(nproc)}
    if ports != want:
        problem(f"pod {pod['pod_name']}: metrics ports {ports}, but {nproc} workers serve {want} (base + local rank)")


def check_pod_template(problem: Problems, where: str, template: dict, docs: list[dict], kind: str) -> None:
    spec = template["spec"]
    containers = spec["containers"]
    c = containers[0]
    command = (c.get("command") or []) + (c.get("args") or [])
    try:
        _launch, worker = split_command(command)
    except ValueError as e:
        problem(f"{where}: {e}")
        return
    if not worker or worker[0] != "train":
        problem(f"{where}: the worker's command is {worker[:1]}, not train")
    if flag(worker, "--resume") != "latest":
        problem(f"{where}: `--resume latest` is missing: a restarted pod would start from scratch")
    grace = int(flag(worker, "--stop-grace") or DEFAULT_STOP_GRACE)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    if tgps <= grace:
        problem(f"{where}: terminationGracePeriodSeconds {tgps} is not longer than --stop-grace {grace}: SIGKILL would cut the checkpoint")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    shm = volumes.get(mounts.get("/dev/shm", ""), {}).get("emptyDir")
    if not shm or shm.get("medium") != "Memory" or not shm.get("sizeLimit"):
        problem(f"{where}: /dev/shm must be a memory emptyDir with a sizeLimit (the default is 64 MiB)")
    config = flag(worker, "--config")
    folder = os.path.dirname(config or "")
    cm_name = volumes.get(mounts.get(folder, ""), {}).get("configMap", {}).get("name")
    cm = next((d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == cm_name), None)
    if cm is None:
        problem(f"{where}: --config {config} is not in a mounted ConfigMap of the manifest (volume names {cm_name!r})")
    else:
        key = os.path.basename(config)
        try:
            tomllib.loads(cm.get("data", {})[key])
        except (KeyError, tomllib.TOMLDecodeError) as e:
            problem(f"{where}: ConfigMap {cm_name} key {key}: {e}")
    output = flag(worker, "--output") or ""
    if not any(output.startswith(p.rstrip("/") + "/") for p in mounts if volumes.get(mounts[p], {}).get("persistentVolumeClaim")):
        problem(f"{where}: --output {output} is not on a mounted PersistentVolumeClaim: checkpoints must be shared")
    if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
        problem(f"{where}: securityContext.runAsNonRoot is not set")
    image = c.get("image", "")
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    if not tag or tag == "latest":
        problem(f"{where}: image {image!r} has no pinned tag")
    for src in c.get("envFrom") or []:
        ref = src.get("secretRef") or src.get("configMapRef")
        kind_ = "Secret" if "secretRef" in src else "ConfigMap"
        if not ref.get("optional") and not any(d.get("kind") == kind_ and d["metadata"]["name"] == ref["name"] for d in docs):
            problem(f"{where}: envFrom {kind_} {ref['name']} is neither in the manifest nor optional")
    if kind == "PyTorchJob" and c["name"] != "pytorch":
        problem(f"{where}: the training operator looks for the container named `pytorch`, not {c['name']!r}")


def check_failure_policy(problem: Problems, where: str, spec: dict, container_names: set[str]) -> None:
    if spec.get("completionMode") != "Indexed":
        problem(f"{where}: completionMode must be Indexed (the completion index is the node rank)")
    if spec.get("completions") != spec.get("parallelism"):
        problem(f"{where}: completions {spec.get('completions')} != parallelism {spec.get('parallelism')}: every rank must run at once")
    if "backoffLimit" not in spec:
        problem(f"{where}: no backoffLimit (the default, 6, is rarely what a run of N pods wants)")
    if spec.get("backoffLimitPerIndex") is not None:
        problem(f"{where}: backoffLimitPerIndex restarts one rank alone, which cannot rejoin the others' collectives")
    if spec["template"]["spec"].get("restartPolicy") != "Never":
        problem(f"{where}: restartPolicy must be Never (podFailurePolicy requires it)")
    rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
    ignores_disruption = any(
        r["action"] == "Ignore" and any(c.get("type") == "DisruptionTarget" and c.get("status", "True") == "True" for c in r.get("onPodConditions") or [])
        for r in rules)
    if not ignores_disruption:
        problem(f"{where}: podFailurePolicy does not Ignore the DisruptionTarget condition: a preemption would count as a failure")
    codes: dict[int, str] = {}
    for r in rules:
        ec = r.get("onExitCodes")
        if not ec:
            continue
        values = ec.get("values") or []
        if values != sorted(set(values)) or (ec.get("operator") == "In" and 0 in values):
            problem(f"{where}: onExitCodes values {values} must be sorted, unique and (with In) without 0")
        if ec.get("containerName") and ec["containerName"] not in container_names:
            problem(f"{where}: onExitCodes names container {ec['containerName']!r}, which does not exist")
        if ec.get("operator") == "In":
            for v in values:
                codes.setdefault(v, r["action"])
    if codes.get(EXIT_CHECKPOINTED) != "Ignore":
        problem(f"{where}: exit {EXIT_CHECKPOINTED} (checkpointed stop) is not Ignored: every preemption would use up backoffLimit")
    missing = sorted(c for c in FAIL_AT_ONCE if codes.get(c) != "FailJob")
    if missing:
        problem(f"{where}: exit codes {missing} do not FailJob (a retry cannot fix them)")


def gpus_of_pod(pod: dict) -> int:
    limits = (pod["_container"].get("resources") or {}).get("limits") or {}
    return int(limits.get("nvidia.com/gpu", 0))


def check_target(problem: Problems, target: str, docs: list[dict]) -> None:
    workloads = [d for d in docs if d.get("kind") in ("Job", "JobSet", "PyTorchJob")]
    if len(workloads) != 1:
        problem(f"expected one Job, JobSet or PyTorchJob, found {[d.get('kind') for d in workloads]}")
        return
    w = workloads[0]
    kind, name = w["kind"], w["metadata"]["name"]
    renamed = target.startswith("renamed-")
    if renamed and (not name.startswith(PREFIX) or not name.endswith(SUFFIX) or w["metadata"].get("namespace") != NAMESPACE):
        problem(f"{kind} {name}: the test's namePrefix {PREFIX!r}, nameSuffix {SUFFIX!r} or namespace {NAMESPACE!r} did not apply")
    for where, template in pod_templates(w):
        check_pod_template(problem, f"{kind} {name} {where}", template, docs, kind)
        images = {c.get("image") for c in template["spec"]["containers"]}
        if renamed and images != {RENAMED_IMAGE}:
            problem(f"{kind} {name} {where}: images {sorted(images)}: the test's `images:` override to {RENAMED_IMAGE} did not apply")
    for where, spec in job_specs(w):
        check_failure_policy(problem, f"{kind} {name} {where}", spec, {c["name"] for c in spec["template"]["spec"]["containers"]})
    if kind == "JobSet":
        check_jobset(problem, w)
    if kind == "PyTorchJob":
        check_pytorchjob(problem, w)
    try:
        pods = pods_of(docs, w)
    except (PodEnvError, KeyError) as e:
        problem(f"cannot resolve the pods: {e}")
        return
    templates = dict(pod_templates(w))
    for pod in pods:
        # The container that pod_env resolved, for its ports and resources.
        tmpl = templates["Job"] if kind == "Job" else templates[
            f"replicatedJob {pod['labels'].get('jobset.sigs.k8s.io/replicatedjob-name')}" if kind == "JobSet"
            else f"replica {pod['labels']['training.kubeflow.org/replica-type'].capitalize()}"]
        pod["_container"] = next(c for c in tmpl["spec"]["containers"] if c["name"] == pod["container"])
        check_dns(problem, pod)
    if kind == "Job":
        services = [d for d in docs if d.get("kind") == "Service"]
        if len(services) != 1:
            problem(f"expected one headless Service, found {len(services)}")
        else:
            svc = services[0]
            if svc["spec"].get("clusterIP") != "None" or svc["spec"].get("publishNotReadyAddresses") is not True:
                problem(f"Service {svc['metadata']['name']}: needs clusterIP: None and publishNotReadyAddresses: true")
            if svc["spec"].get("selector") != {"batch.kubernetes.io/job-name": name}:
                problem(f"Service {svc['metadata']['name']}: selector {svc['spec'].get('selector')} is not the Job's name {name!r}")
            for pod in pods:
                if not (svc["metadata"]["name"] == pod["subdomain"] == pod["env"].get("CLIPFLEET_SERVICE")):
                    problem(f"pod {pod['pod_name']}: Service {svc['metadata']['name']!r}, subdomain {pod['subdomain']!r} and CLIPFLEET_SERVICE {pod['env'].get('CLIPFLEET_SERVICE')!r} must be equal")
        completions = w["spec"].get("completions")
        for pod in pods:
            if pod["env"].get("CLIPFLEET_NNODES") != str(completions) or w["spec"].get("parallelism") != completions:
                problem(f"pod {pod['pod_name']}: CLIPFLEET_NNODES {pod['env'].get('CLIPFLEET_NNODES')}, completions {completions} and parallelism {w['spec'].get('parallelism')} must be equal")
    nproc = check_placement(problem, pods, gpus_of_pod)
    if nproc:
        check_podmonitor(problem, docs, pods, nproc)


def embedded_templates(docs: list[dict]) -> list[dict]:
    """The core-API parts inside the custom resources, as objects kubernetes-validate knows."""
    out = []
    for d in docs:
        name = d["metadata"]["name"]
        if d.get("kind") == "JobSet":
            for r in d["spec"]["replicatedJobs"]:
                out.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{name}-{r['name']}-0"}, "spec": r["template"]["spec"]})
        elif d.get("kind") == "PyTorchJob":
            for t, r in d["spec"]["pytorchReplicaSpecs"].items():
                out.append({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{name}-{t.lower()}"}, "template": r["template"]})
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    rendered, out = sys.argv[1], sys.argv[2]
    for sub in ("builtin", "embedded"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    problem = Problems()
    targets = sorted(f[:-5] for f in os.listdir(rendered) if f.endswith(".yaml"))
    if not targets:
        print(f"check.py: no rendered manifests in {rendered}", file=sys.stderr)
        return 1
    for target in targets:
        problem.target = target
        with open(os.path.join(rendered, f"{target}.yaml"), encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        check_target(problem, target, docs)
        with open(os.path.join(out, "builtin", f"{target}.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump_all([d for d in docs if not is_custom(d)], f, sort_keys=False)
        embedded = embedded_templates(docs)
        if embedded:
            with open(os.path.join(out, "embedded", f"{target}.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump_all(embedded, f, sort_keys=False)
    for line in problem.lines:
        print(line)
    print(f"check.py: {len(targets)} rendered targets, {len(problem.lines)} problems", file=sys.stderr)
    return 1 if problem.lines else 0


if __name__ == "__main__":
    sys.exit(main())
