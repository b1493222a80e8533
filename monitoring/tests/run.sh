#!/usr/bin/env bash
# Tests the Grafana dashboard and the Prometheus alert rules in monitoring/ (monitoring/README.md#
# what-is-tested). No Grafana server can run here, so the dashboard is proven by a structural
# lint and by running every query against a real Prometheus:
#   1. generate.py --check: the dashboard JSON, its Kubernetes copy and the PrometheusRule are
#      current with their sources (monitoring/grafana/dashboard.py, monitoring/prometheus/alerts.yaml);
#   2. the provisioning YAML parses, and the k8s ConfigMap / PrometheusRule hold the same content;
#   3. promtool check rules, and promtool test rules (every alert, firing and not firing);
#   4. dashboard_lint.py (grafana/dashboard-linter's rules) and its self-test on broken copies;
#   5. dcgm_join.py: the DCGM panels and their join to ranks on backfilled synthetic series;
#   6. live_dashboard.py: every other query against Prometheus scraping a 2-worker CPU run
#      (target/release/clipfleet, about 30-60 s).
# Needs Debian's prometheus (prometheus and promtool), kubectl with kustomize v5 and .venv with
# PyYAML (scripts/setup.sh --test), and a release build. SKIP_LIVE=1 skips step 6.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MON=$ROOT/monitoring
PY=$ROOT/.venv/bin/python
BOARD=$MON/grafana/clipfleet.json

say() { echo "monitoring tests: $*" >&2; }
fail() { echo "monitoring tests: FAILED: $*" >&2; exit 1; }
[ -x "$PY" ] && "$PY" -c 'import yaml' 2>/dev/null || fail "$PY with PyYAML is missing: run scripts/setup.sh --test"
command -v promtool >/dev/null && command -v prometheus >/dev/null \
  || fail "prometheus/promtool are not installed: run scripts/setup.sh --test (Debian's prometheus package)"
passed=0

# 1, 2. Generated files and provisioning.
"$PY" "$MON/generate.py" --check || fail "generated files are stale (above)"
"$PY" - "$ROOT" <<'PYEOF' || fail "provisioning or Kubernetes copies (above)"
import json, subprocess, sys, yaml, os
root = sys.argv[1]
ds = yaml.safe_load(open(f"{root}/monitoring/grafana/provisioning/datasources/prometheus.yaml"))
assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus" and ds["datasources"][0]["uid"], ds
dp = yaml.safe_load(open(f"{root}/monitoring/grafana/provisioning/dashboards/clipfleet.yaml"))
assert dp["apiVersion"] == 1 and dp["providers"][0]["type"] == "file" and dp["providers"][0]["options"]["path"], dp
kubectl = os.environ.get("KUBECTL") or "kubectl"
board = json.load(open(f"{root}/monitoring/grafana/clipfleet.json"))
alerts = yaml.safe_load(open(f"{root}/monitoring/prometheus/alerts.yaml"))
for overlay in ("cpu-smoke", "gpu-1x8", "gpu-4x8"):
    docs = list(yaml.safe_load_all(subprocess.run([kubectl, "kustomize", f"{root}/k8s/overlays/{overlay}"],
                                                  check=True, capture_output=True, text=True).stdout))
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert len(cms) == 1 and cms[0]["metadata"]["name"] == "clipfleet-grafana-dashboard", f"{overlay}: dashboard ConfigMap {cms}"
    assert json.loads(cms[0]["data"]["clipfleet.json"]) == board, f"{overlay}: the ConfigMap's dashboard differs"
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1 and rules[0]["spec"]["groups"] == alerts["groups"], f"{overlay}: PrometheusRule groups differ"
print("monitoring tests: provisioning parses; cpu-smoke, gpu-1x8, gpu-4x8 render the dashboard ConfigMap and the PrometheusRule equal to monitoring/", file=sys.stderr)
PYEOF
passed=$((passed + 1))

# 3. Alert rules.
promtool check rules "$MON/prometheus/alerts.yaml" >&2 || fail "promtool check rules"
promtool test rules "$HERE/alerts_test.yaml" >&2 || fail "promtool test rules"
"$PY" - "$MON/prometheus/alerts.yaml" "$HERE/alerts_test.yaml" <<'PYEOF' || fail "an alert without a firing and a not-firing test (above)"
import sys, yaml
alerts = {r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"] if "alert" in r}
fire, quiet = set(), set()
for t in yaml.safe_load(open(sys.argv[2]))["tests"]:
    for a in t.get("alert_rule_test", []):
        (fire if a.get("exp_alerts") else quiet).add(a["alertname"])
bad = sorted(a for a in alerts if a not in fire or a not in quiet)
for a in bad:
    print(f"monitoring tests: {a} lacks a {'firing' if a not in fire else 'not-firing'} test", file=sys.stderr)
sys.exit(1 if bad else 0)
PYEOF
passed=$((passed + 1))

# 4. Dashboard lint.
"$PY" "$HERE/dashboard_lint.py" "$BOARD" || fail "dashboard_lint.py (above)"
"$PY" "$HERE/dashboard_lint_selftest.py" "$BOARD" || fail "dashboard_lint_selftest.py: the lint misses a problem (above)"
passed=$((passed + 1))

# 5. DCGM joins on backfilled series.
"$PY" "$HERE/dcgm_join.py" "$BOARD" || fail "dcgm_join.py (above)"
passed=$((passed + 1))

# 6. Every other query against a live 2-worker run.
if [ "${SKIP_LIVE:-0}" = 1 ]; then
  say "SKIPPED live_dashboard.py (SKIP_LIVE=1)"
else
  [ -x "$ROOT/target/release/clipfleet" ] || fail "target/release/clipfleet is missing: cargo build --release"
  "$PY" "$HERE/live_dashboard.py" "$BOARD" "$ROOT/target/release/clipfleet" || fail "live_dashboard.py (above)"
  passed=$((passed + 1))
fi
echo "monitoring: $passed passed, 0 failed"
