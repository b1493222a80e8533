"""Checks a Prometheus file_sd target list written by slurm/train.sbatch, and optionally that
every target serves its worker's metrics.

    python3 slurm/tests/check_file_sd.py FILE JOB_ID JOB_NAME HOST:PORT[,HOST:PORT…] [--scrape [HOST=IP]]

The expected targets are given in rank order. With --scrape, each target's /metrics must hold
clipfleet series labelled with that job and rank; HOST=IP scrapes HOST at IP (a test host whose
name does not resolve).
"""
import json
import sys
import urllib.request


def main() -> int:
    path, job_id, job_name, expected = sys.argv[1:5]
    scrape = "--scrape" in sys.argv[5:]
    resolve = dict(a.split("=", 1) for a in sys.argv[5:] if "=" in a)
    groups = json.load(open(path))
    want = expected.split(",")
    got = [(g["targets"], g["labels"]) for g in groups]
    errors = []
    if len(got) != len(want):
        errors.append(f"{len(got)} target groups, expected {len(want)}")
    for rank, (target, (targets, labels)) in enumerate(zip(want, got)):
        if targets != [target]:
            errors.append(f"rank {rank}: targets {targets}, expected [{target!r}]")
        if labels != {"job": job_name, "rank": str(rank), "slurm_job_id": job_id}:
            errors.append(f"rank {rank}: labels {labels}")
        if scrape:
            host, port = target.rsplit(":", 1)
            url = f"http://{resolve.get(host, host)}:{port}/metrics"
            try:
                # No proxy: the targets are this cluster's own hosts.
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                body = opener.open(url, timeout=5).read().decode()
            except OSError as e:
                errors.append(f"rank {rank}: {url}: {e}")
                continue
            if f'clipfleet_step{{job="{job_name}",rank="{rank}"}}' not in body:
                errors.append(f"rank {rank}: {url} has no clipfleet_step{{job=\"{job_name}\",rank=\"{rank}\"}}")
    for e in errors:
        print(f"file_sd {path}: {e}")
    if not errors:
        print(f"file_sd {path}: {len(got)} targets {', '.join(want)} with job/rank/slurm_job_id labels" + ("; each serves its rank's metrics" if scrape else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
