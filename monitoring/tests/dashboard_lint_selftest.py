#!/usr/bin/env python3
"""Proves that dashboard_lint.py catches what it claims to: each case breaks a copy of the
dashboard in memory, the way a real edit would, and expects the lint to name the rule. A lint
that passes everything fails here.

    dashboard_lint_selftest.py DASHBOARD.json
"""
from __future__ import annotations

import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard_lint  # noqa: E402


def panel(board: dict, title: str) -> dict:
    return next(p for p in board["panels"] if p.get("title") == title)


def var(board: dict, name: str) -> dict:
    return next(v for v in board["templating"]["list"] if v["name"] == name)


def drop_var(name: str):
    def f(b: dict) -> None:
        b["templating"]["list"] = [v for v in b["templating"]["list"] if v["name"] != name]
    return f


def set_in(path: list, value):
    def f(b: dict) -> None:
        obj = b
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return f


def target(title: str, i: int = 0):
    return lambda b: panel(b, title)["targets"][i]


def edit_expr(title: str, old: str, new: str, i: int = 0):
    def f(b: dict) -> None:
        t = panel(b, title)["targets"][i]
        assert old in t["expr"], (title, old)
        t["expr"] = t["expr"].replace(old, new, 1)
    return f


CASES = [
    ("no datasource variable", drop_var("datasource"), "template-datasource"),
    ("no job variable", drop_var("job"), "template-job"),
    ("rank not multi-select", lambda b: var(b, "rank").update(multi=False), "template-job"),
    ("panel with a fixed datasource", lambda b: panel(b, "Loss").update(datasource={"type": "prometheus", "uid": "prod"}), "panel-datasource"),
    ("target with a fixed datasource", lambda b: target("Loss")(b).update(datasource={"type": "prometheus", "uid": "prod"}), "panel-datasource"),
    ("panel without description", lambda b: panel(b, "Loss").pop("description"), "panel-title-description"),
    ("panel without title", lambda b: panel(b, "Loss").update(title=""), "panel-title-description"),
    ("panel without unit", lambda b: panel(b, "Loss")["fieldConfig"]["defaults"].pop("unit"), "panel-units"),
    ("panel with an unknown unit", lambda b: panel(b, "Loss")["fieldConfig"]["defaults"].update(unit="seconds"), "panel-units"),
    ("unparsable expression", edit_expr("Loss", "clipfleet_loss{", "clipfleet_loss{{"), "target-promql"),
    ("unbalanced parenthesis", edit_expr("Global throughput", "sum by (job) (", "sum by (job) (("), "target-promql"),
    ("rate over a fixed window", edit_expr("Global throughput", "[$__rate_interval]", "[5m]"), "target-rate-interval"),
    ("increase over $__interval", edit_expr("Stop requests", "[$__rate_interval]", "[$__interval]"), "target-rate-interval"),
    ("selector without job", edit_expr("Loss", 'job=~"$job", ', ""), "target-job"),
    ("selector without rank", edit_expr("Loss", ', rank=~"$rank"', ""), "target-required-matchers"),
    ("bare clipfleet selector", edit_expr("Gradient norm", 'clipfleet_grad_norm{job=~"$job", rank=~"$rank"}', "clipfleet_grad_norm"), "target-job"),
    ("join without rank on clipfleet_worker_info", edit_expr("GPU utilisation (DCGM)", 'rank=~"$rank", gpu_uuid', 'gpu_uuid'), "target-required-matchers"),
    ("duplicate panel id", lambda b: panel(b, "Loss").update(id=panel(b, "Learning rate")["id"]), "uid"),
    ("dashboard id set", set_in(["id"], 42), "uid"),
    ("no dashboard uid", set_in(["uid"], ""), "uid"),
    ("duplicate refId", lambda b: target("Zero-shot accuracy", 1)(b).update(refId="A"), "uid"),
]


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        board = json.load(f)
    clean = dashboard_lint.lint(board)
    if clean:
        print("dashboard_lint_selftest: the dashboard itself has problems:\n  " + "\n  ".join(clean), file=sys.stderr)
        return 1
    missed = 0
    for name, breakage, rule in CASES:
        broken = copy.deepcopy(board)
        breakage(broken)
        found = dashboard_lint.lint(broken)
        if not any(p.startswith(rule + ":") for p in found):
            print(f"dashboard_lint_selftest: MISSED {name}: expected a {rule} problem, got {found}", file=sys.stderr)
            missed += 1
    print(f"dashboard_lint_selftest: {len(CASES) - missed}/{len(CASES)} broken copies caught", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
