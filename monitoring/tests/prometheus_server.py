"""A real Prometheus (Debian's `prometheus`, or $CLIPFLEET_PROMETHEUS) started for one test on
a free loopback port with its own storage folder, and its HTTP query API."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    env = "CLIPFLEET_PROMETHEUS" if name == "prometheus" else "CLIPFLEET_PROMTOOL"
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        raise SystemExit(f"`{name}` is not installed: run scripts/setup.sh --test (Debian's prometheus package) or set {env}")
    return path


class Prometheus:
    def __init__(self, folder: str, scrape_targets: list[str] | None = None, data: str | None = None):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(folder, "prometheus.yml")
        lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "  evaluation_interval: 1s"]
        if scrape_targets:
            # honor_labels keeps clipfleet's own `job` (else it becomes exported_job).
            lines += ["scrape_configs:", "  - job_name: clipfleet-scrape", "    honor_labels: true",
                      "    static_configs:", "      - targets: [" + ", ".join(f"'{t}'" for t in scrape_targets) + "]"]
        with open(config, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        self.log_path = os.path.join(folder, "prometheus.log")
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data or os.path.join(folder, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=30d"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}):\n{self.read_log()}")
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=2).read()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"prometheus did not become ready in 60 s:\n{self.read_log()}")

    def read_log(self) -> str:
        self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/PATH; returns `data`, or raises ValueError with Prometheus' error
        (a parse error included)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            body = urllib.request.urlopen(url, timeout=30).read()
        except urllib.error.HTTPError as e:
            body = e.read()
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise ValueError(f"{answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        return self.api("query", query=expr, **({"time": at} if at else {}))["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
