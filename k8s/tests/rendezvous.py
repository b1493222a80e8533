#!/usr/bin/env python3
"""Runs the rendered manifests' own pods, as far as one machine can: two workers, each with the
command line, environment, hostname and DNS names that Kubernetes (and Kubeflow's operator)
would give it, in a network namespace of its own, rendezvous over TCP, train, and must end with
the weights of one process that trains on the whole batch.

    k8s/tests/rendezvous.py [--steps N] [SCENARIO ...]   (as root; cpu-smoke, pytorchjob-cpu, renamed-cpu-smoke)

For each scenario:
1. `kubectl kustomize` renders the overlay; k8s/tests/pod_env.py resolves each pod: its command
   and arguments, its environment (downward API fields, JOB_COMPLETION_INDEX, Kubeflow's
   MASTER_ADDR/RANK/WORLD_SIZE/PET_* …), its hostname and the names other pods resolve it by.
2. Each pod gets a network namespace on a bridge (10.251.0.0/24, nothing leaves the machine), a
   UTS namespace with its hostname, and a mount namespace whose /etc/hosts maps every pod's DNS
   names to its address, as the cluster DNS would (the headless Service's `<host>.<subdomain>`,
   or Kubeflow's `<job>-master-0` Service).
3. Volumes become folders: a ConfigMap's keys are written as files, and the shared run volume is
   one folder both pods see. Paths in the arguments under a volume's mountPath are rewritten to
   that folder; nothing else of the command line changes, except `--steps N` appended to keep the
   test short.
4. The workers run with exactly the pod's environment (plus PATH and HOME), then one process
   trains with the same config, `--batch-size` × 2 and `--dist-backend single`, and the final
   weights must agree within 1e-4 (slurm/tests/compare_weights.py, as the distributed tests).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from pod_env import resolve_pod  # noqa: E402

BRIDGE = "cfk8s0"
SUBNET = "10.251.0"
SCENARIOS = {
    # name: (kustomize folder, kind, [(replica, index), …])
    "cpu-smoke": ("k8s/overlays/cpu-smoke", "Job", [(None, 0), (None, 1)]),
    "pytorchjob-cpu": ("k8s/variants/pytorchjob/cpu", "PyTorchJob", [("Master", 0), ("Worker", 0)]),
    # cpu-smoke under a user's namePrefix, nameSuffix and namespace: the rendezvous must follow.
    "renamed-cpu-smoke": ("k8s/tests/renamed/cpu-smoke", "Job", [(None, 0), (None, 1)]),
}
TOLERANCE = 1e-4


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] k8s rendezvous: {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def workload(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d and d.get("kind") == kind]
    if len(found) != 1:
        raise SystemExit(f"expected one {kind} in the rendered manifest, found {len(found)}")
    return found[0]


def pod_template(obj: dict, kind: str, replica: str | None) -> dict:
    if kind == "Job":
        return obj["spec"]["template"]
    if kind == "PyTorchJob":
        return obj["spec"]["pytorchReplicaSpecs"][replica]["template"]
    raise SystemExit(f"no pod template rule for {kind}")


def volume_folders(docs: list[dict], template: dict, container: dict, root: Path) -> dict[str, Path]:
    """mountPath -> host folder: ConfigMaps written out, claims and emptyDirs as shared folders."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    config_maps = {d["metadata"]["name"]: d for d in docs if d and d.get("kind") == "ConfigMap"}
    folders = {}
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == "/dev/shm":
            continue  # the host's own /dev/shm stands in for the memory-backed emptyDir
        volume = volumes[mount["name"]]
        folder = root / "volumes" / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            cm = config_maps[volume["configMap"]["name"]]
            for key, text in cm.get("data", {}).items():
                (folder / key).write_text(text)
        folders[mount["mountPath"].rstrip("/")] = folder
    return folders


def host_path(arg: str, folders: dict[str, Path]) -> str:
    for mount, folder in folders.items():
        if arg == mount or arg.startswith(mount + "/"):
            return str(folder) + arg[len(mount):]
    return arg


def setup_network(n: int) -> list[str]:
    teardown_network(n)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    names = []
    for i in range(n):
        ns, veth = f"cfk8s{i}", f"cfk8sv{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{11 + i}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        names.append(ns)
    return names


def teardown_network(n: int) -> None:
    for i in range(n):
        sh("ip", "netns", "del", f"cfk8s{i}", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def run_scenario(name: str, clipfleet: Path, steps: int, root: Path) -> None:
    folder, kind, pods = SCENARIOS[name]
    rendered = sh(os.environ.get("KUBECTL", "kubectl"), "kustomize", str(ROOT / folder)).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    (root / "rendered.yaml").write_text(rendered)
    obj = workload(docs, kind)
    resolved = []
    for i, (replica, index) in enumerate(pods):
        pod = resolve_pod(docs, kind, replica=replica, index=index, pod_ip=f"{SUBNET}.{11 + i}")
        resolved.append(pod)
    hosts = ["127.0.0.1 localhost"]
    for i, pod in enumerate(resolved):
        names = [pod["hostname"]] + [n for n in (pod.get("fqdn"), pod.get("fqdn_namespaced")) if n]
        hosts.append(f"{SUBNET}.{11 + i} " + " ".join(dict.fromkeys(names)))
    (root / "hosts").write_text("\n".join(hosts) + "\n")
    say(f"{name}: pods " + ", ".join(f"{p['hostname']} ({p.get('fqdn') or 'no DNS name'})" for p in resolved))

    namespaces = setup_network(len(pods))
    procs = []
    try:
        for i, ((replica, _), pod, ns) in enumerate(zip(pods, resolved, namespaces)):
            template = pod_template(obj, kind, replica)
            container = next(c for c in template["spec"]["containers"] if c["name"] == pod["container"])
            folders = volume_folders(docs, template, container, root)
            argv = [host_path(a, folders) for a in pod["command"]]
            if argv[0] != "clipfleet":
                raise SystemExit(f"{name}: the container runs {argv[0]!r}, not clipfleet")
            argv = [str(clipfleet)] + argv[1:] + ["--steps", str(steps)]
            env = dict(pod["env"], PATH="/usr/local/bin:/usr/bin:/bin", HOME=str(root))
            log = open(root / f"pod{i}.log", "w")
            inner = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'
            cmd = ["nsenter", f"--net=/var/run/netns/{ns}", "unshare", "--uts", "--mount", "--propagation", "private",
                   "sh", "-c", inner, "sh", pod["hostname"], str(root / "hosts"),
                   "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv]
            procs.append((pod, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), root / f"pod{i}.log"))
        deadline = time.time() + 600
        for pod, proc, log in procs:
            try:
                rc = proc.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                for _, other, _ in procs:
                    other.kill()
                tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
                raise SystemExit(f"{name}: pod {pod['hostname']} ended with {rc}:\n{tail}")
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        teardown_network(len(pods))

    logs = [log.read_text() for _, _, log in procs]
    for pod, text in zip(resolved, logs):
        modes = [json.loads(l)["fields"] for l in text.splitlines() if l.startswith("{") and '"mode"' in l]
        if not any(f.get("mode") in ("kubernetes", "kubeflow") for f in modes):
            raise SystemExit(f"{name}: {pod['hostname']} did not detect its place from the pod's environment")
    master = next((json.loads(l)["fields"].get("master") for l in logs[1].splitlines()
                   if l.startswith("{") and '"master"' in l), None)
    say(f"{name}: both pods trained {steps} steps (rank 1's master: {master})")

    # One process, the same config, the whole batch.
    pod0 = resolved[0]
    template = pod_template(obj, kind, pods[0][0])
    container = next(c for c in template["spec"]["containers"] if c["name"] == pod0["container"])
    folders = volume_folders(docs, template, container, root)
    argv = [host_path(a, folders) for a in pod0["command"]][1:]
    config = Path(argv[argv.index("--config") + 1])
    batch = tomllib.loads(config.read_text())["batch_size"]
    output = argv[argv.index("--output") + 1]
    one = root / "one"
    argv[argv.index("--output") + 1] = str(one)
    argv[argv.index("--dist-backend") + 1] = "single"
    argv += ["--steps", str(steps), "--batch-size", str(2 * batch)]
    out = subprocess.run([str(clipfleet), *argv], capture_output=True, text=True,
                         env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root)})
    if out.returncode != 0:
        raise SystemExit(f"{name}: the one-process run failed:\n{out.stderr[-3000:]}")
    weights = f"checkpoints/step_{steps}/model.safetensors"
    cmp = subprocess.run([sys.executable, str(ROOT / "slurm/tests/compare_weights.py"), str(Path(output) / weights),
                          str(one / weights), str(TOLERANCE)], capture_output=True, text=True)
    say(f"{name}: 2 pods × {batch} vs 1 process × {2 * batch}: {cmp.stdout.strip()}")
    if cmp.returncode != 0:
        raise SystemExit(f"{name}: the weights differ from one process: {cmp.stdout}{cmp.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--clipfleet", default=str(ROOT / "target/release/clipfleet"))
    args = ap.parse_args()
    args.scenarios = args.scenarios or list(SCENARIOS)
    for name in args.scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the test creates network namespaces and a bridge")
    for tool in (os.environ.get("KUBECTL", "kubectl"), "ip", "nsenter", "unshare"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/setup.sh --test")
    clipfleet = Path(args.clipfleet)
    if not clipfleet.is_file():
        raise SystemExit(f"{clipfleet} is missing: run scripts/setup.sh (release build)")
    started = time.time()
    for name in args.scenarios:
        with tempfile.TemporaryDirectory(prefix=f"clipfleet-k8s-{name}.") as tmp:
            root = Path(tmp)
            os.chmod(root, 0o755)
            run_scenario(name, clipfleet, args.steps, root)
    say(f"passed in {time.time() - started:.0f} s: {', '.join(args.scenarios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
