#!/usr/bin/env python3
"""A structural lint of the Grafana dashboard, implementing grafana/dashboard-linter's rules
(no Grafana server can run here, monitoring/README.md#what-is-tested):

  template-datasource        a `datasource` variable of type datasource for Prometheus
  template-job               a `job` query variable (and `rank`: multi-select, with All)
  panel-datasource           every panel and target uses {"type": "prometheus", "uid": "${datasource}"}
  panel-title-description    every panel has a title and a description
  panel-units                every panel sets a Grafana unit
  target-promql              every expression parses (promtool check rules, variables substituted)
  target-rate-interval       rate(), irate() and increase() use [$__rate_interval]
  target-job                 every clipfleet_ selector has job=~"$job"
  target-required-matchers   every clipfleet_ selector has rank=~"$rank"
  uid / ids                  "id": null, a stable dashboard uid, unique panel ids and refIds

    dashboard_lint.py DASHBOARD.json    prints the problems, exit 1 if any
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

DS = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's unit ids (packages/grafana-data/src/valueFormats/categories.ts), the ones a
# training dashboard can use; "suffix:" and "prefix:" custom units are valid too.
UNITS = {
    "none", "short", "percent", "percentunit", "s", "ms", "µs", "ns", "m", "h", "d", "dtdurations",
    "bytes", "decbytes", "bits", "kbytes", "mbytes", "gbytes", "deckbytes", "decmbytes", "decgbytes",
    "Bps", "binBps", "bps", "KBs", "MBs", "GBs", "ops", "reqps", "rps", "wps", "iops", "opm", "hertz",
    "watt", "kwatt", "celsius", "dateTimeAsIso", "dateTimeFromNow", "locale", "sci",
}
# What Grafana puts in place of its variables, for parsing and for the live queries.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$job": "clipfleet", "$rank": ".*"}
RATE = re.compile(r"\b(rate|irate|increase)\s*\(([^\[\]]*)\[([^\]]+)\]")
SELECTOR = re.compile(r"\b(clipfleet_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?")


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    values = values or SUBSTITUTIONS
    for k in sorted(values, key=len, reverse=True):
        expr = expr.replace(k, values[k])
    return expr


def targets(board: dict) -> list[tuple[dict, dict]]:
    return [(p, t) for p in board.get("panels", []) if p.get("type") != "row" for t in p.get("targets", [])]


def lint(board: dict, promtool: str = "promtool") -> list[str]:
    problems: list[str] = []
    add = problems.append
    if board.get("id") is not None:
        add('uid: the dashboard "id" must be null (Grafana assigns it)')
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(board.get("uid") or "")):
        add("uid: the dashboard needs a stable uid of 1-40 letters, digits, - or _")
    if int(board.get("schemaVersion", 0)) < 36:
        add(f"schemaVersion {board.get('schemaVersion')}: use a current one (36 or later)")
    variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        add("template-datasource: no `datasource` variable of type datasource with query prometheus")
    for name, need in (("job", "label_values(clipfleet_step, job)"), ("rank", "rank)")):
        v = variables.get(name)
        query = v and (v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query"))
        if not v or v.get("type") != "query" or need not in (query or ""):
            add(f"template-job: no `{name}` query variable with label_values(…{need})")
        elif v.get("datasource") != DS:
            add(f"template-job: the `{name}` variable does not use ${{datasource}}")
    rank = variables.get("rank") or {}
    if not (rank.get("multi") and rank.get("includeAll")):
        add("template-job: the `rank` variable must be multi-select with All")
    ids = [p.get("id") for p in board.get("panels", [])]
    for i in sorted({i for i in ids if ids.count(i) > 1 or i is None}, key=str):
        add(f"uid: panel id {i} is missing or not unique")
    exprs: list[tuple[str, str]] = []
    for p in board.get("panels", []):
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("datasource") != DS:
            add(f"panel-datasource: {where} does not use ${{datasource}}: {p.get('datasource')}")
        if not str(p.get("title") or "").strip():
            add(f"panel-title-description: {where} has no title")
        if not str(p.get("description") or "").strip():
            add(f"panel-title-description: {where} has no description")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit or not (unit in UNITS or unit.startswith(("suffix:", "prefix:"))):
            add(f"panel-units: {where} has no valid unit: {unit!r}")
        if not p.get("targets"):
            add(f"target-promql: {where} has no query")
        refs = [t.get("refId") for t in p.get("targets", [])]
        if len(set(refs)) != len(refs):
            add(f"uid: {where} repeats a refId: {refs}")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            tw = f"{where} target {t.get('refId')}"
            if t.get("datasource", DS) != DS:
                add(f"panel-datasource: {tw} does not use ${{datasource}}")
            exprs.append((tw, expr))
            for fn, _, window in RATE.findall(expr):
                if window.strip() != "$__rate_interval":
                    add(f"target-rate-interval: {tw}: {fn}() over [{window}], not [$__rate_interval]")
            for name, matchers in SELECTOR.findall(expr):
                if 'job=~"$job"' not in (matchers or ""):
                    add(f'target-job: {tw}: {name} without job=~"$job"')
                if 'rank=~"$rank"' not in (matchers or ""):
                    add(f'target-required-matchers: {tw}: {name} without rank=~"$rank"')
    problems += parse_errors(exprs, promtool)
    return problems


def parse_errors(exprs: list[tuple[str, str]], promtool: str) -> list[str]:
    """target-promql: each expression, its variables substituted, as a recording rule that
    `promtool check rules` parses (Prometheus 2.42's promtool has no parse command)."""
    if not exprs:
        return []
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:target_{i}", "expr": substitute(e)}
                                                        for i, (_, e) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(rules, f)
        path = f.name
    try:
        out = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if out.returncode == 0:
        return []
    found = []
    for m in re.finditer(r'rule (\d+), "dashboard:target_\d+": (.*)', out.stderr + out.stdout):
        found.append(f"target-promql: {exprs[int(m.group(1)) - 1][0]}: {m.group(2)}")
    return found or [f"target-promql: promtool check rules failed: {out.stderr or out.stdout}"]


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        board = json.load(f)
    problems = lint(board)
    for p in problems:
        print(p, file=sys.stderr)
    n = len(targets(board))
    print(f"dashboard lint: {len(board['panels'])} panels, {n} queries, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
