#!/usr/bin/env python3
"""Builds the clipfleet Grafana dashboard (classic JSON model) from the panel list below, so
that every query is written once, with the same job and rank matchers.

    dashboard.py            print the dashboard JSON
    (monitoring/generate.py writes it to monitoring/grafana/clipfleet.json and the Kubernetes
    component, and checks that the committed copies are current.)

Every clipfleet selector carries {job=~"$job", rank=~"$rank"}; every rate() and increase()
uses $__rate_interval. The DCGM exporter's series are joined to ranks through
clipfleet_worker_info (see gpu_join).
"""
from __future__ import annotations

import json

UID = "clipfleet-training"
SEL = 'job=~"$job", rank=~"$rank"'
RI = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}


def m(name: str, extra: str = "") -> str:
    """A clipfleet selector with the job and rank matchers."""
    return f"{name}{{{SEL}{', ' + extra if extra else ''}}}"


def rate(name: str, by: str = "job, rank", window: str = RI) -> str:
    return f"sum by ({by}) (rate({m(name)}[{window}]))"


def quantile(q: float, hist: str) -> str:
    return f"histogram_quantile({q}, sum by (le, job, rank) (rate({m(hist + '_bucket')}[{RI}])))"


def or_zero(expr: str, like: str) -> str:
    """expr, or 0 for the (job, rank) series of `like` where expr has none (e.g. no
    collectives in a one-process run)."""
    return f"({expr} or on (job, rank) (0 * {like}))"


def mean_compute(window: str = RI) -> str:
    """Mean compute seconds per step: step − data wait − all-gather − all-reduce − optimizer,
    from the histograms' _sum, per (job, rank). Exact for means (a difference of quantiles is
    not a quantile)."""
    step = rate("clipfleet_step_seconds_sum", window=window)
    parts = [rate(f"clipfleet_{p}_seconds_sum", window=window) for p in ("data_wait", "all_gather", "all_reduce", "optimizer")]
    minus = " - ".join(or_zero(p, step) for p in parts)
    return f"({step} - {minus}) / {rate('clipfleet_step_seconds_count', window=window)}"


def gpu_join(dcgm: str) -> str:
    """A DCGM exporter series with the clipfleet job and rank of the worker on that GPU. DCGM
    labels a GPU `UUID` (and `Hostname`), clipfleet_worker_info `gpu_uuid` (and `node`);
    label_replace copies gpu_uuid into UUID so that `on (UUID)` matches. GPU UUIDs are unique
    across machines, so the join needs no host name: on Kubernetes clipfleet's `node` is the pod
    name while DCGM's `Hostname` is the node's. `gpu_uuid!=""` leaves out CPU workers (their
    empty UUIDs would collide). group_left (job, rank) replaces the exporter's own scrape `job`
    with clipfleet's."""
    info = f'label_replace({m("clipfleet_worker_info", EMPTY_UUID)}, "UUID", "$1", "gpu_uuid", "(.+)")'
    return f"{dcgm} * on (UUID) group_left (job, rank) {info}"


EMPTY_UUID = 'gpu_uuid!=""'


_next_id = [0]


def panel(title: str, description: str, unit: str, targets: list[tuple[str, str]], w: int = 12, h: int = 8,
          kind: str = "timeseries", **defaults) -> dict:
    _next_id[0] += 1
    return {
        "id": _next_id[0],
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else
                   {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [
            {"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "range": True}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def row(title: str) -> dict:
    _next_id[0] += 1
    return {"id": _next_id[0], "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}}


def hist_panel(title: str, hist: str, what: str) -> dict:
    return panel(title, f"{what} per step, p50 and p99 per rank, from the {hist} histogram (rate over "
                        "$__rate_interval). Buckets bound the precision of the quantiles.", "s",
                 [(quantile(0.5, hist), "{{job}} rank {{rank}} p50"), (quantile(0.99, hist), "{{job}} rank {{rank}} p99")])


def panels() -> list[dict]:
    step = "clipfleet_step_seconds"
    eta = (f"max by (job) (({m('clipfleet_target_steps')} - {m('clipfleet_step')}) / "
           f"deriv({m('clipfleet_step')}[5m]))")
    compute = mean_compute()
    p = [
        row("Progress and throughput"),
        panel("Global throughput", "Samples per second of the whole job: the sum over the selected ranks of "
              "the rate of clipfleet_samples_total, and of each rank's own last-window gauge "
              "clipfleet_samples_per_second.", "suffix: samples/s",
              [(f"sum by (job) (rate({m('clipfleet_samples_total')}[{RI}]))", "{{job}} (rate of samples_total)"),
               (f"sum by (job) ({m('clipfleet_samples_per_second')})", "{{job}} (sum of samples_per_second)")]),
        panel("Throughput per rank", "Each rank's samples per second: rate of clipfleet_samples_total, and "
              "the rank's last-logging-window gauge.", "suffix: samples/s",
              [(rate("clipfleet_samples_total"), "rank {{rank}} (rate)"),
               (m("clipfleet_samples_per_second"), "rank {{rank}} (gauge)")]),
        panel("Step and progress", "Optimizer steps completed (clipfleet_step) and the share of the run done "
              "(clipfleet_step / clipfleet_target_steps), slowest rank.", "percentunit",
              [(f"min by (job) ({m('clipfleet_step')} / {m('clipfleet_target_steps')})", "{{job}} done")],
              kind="stat", min=0, max=1),
        panel("ETA", "Time left: (clipfleet_target_steps − clipfleet_step) divided by the step rate. "
              "clipfleet_step is a gauge, so the rate is deriv() (least-squares slope over 5 min), not "
              "rate(), which would read a resume from an earlier checkpoint as a counter reset. Right after "
              "a restart the slope is off for up to 5 min; +Inf means no progress.", "s",
              [(eta, "{{job}}")], kind="stat"),
        row("Step time"),
        panel("Step-time breakdown (mean per step)", "Mean seconds per step of each phase, per rank, from "
              "the histograms' _sum / _count over $__rate_interval. Compute = step − data wait − "
              "all-gather − all-reduce − optimizer (forward, loss and backward); the collectives count 0 "
              "in a one-process run.", "s",
              [(f"{rate(f'clipfleet_{x}_seconds_sum')} / {rate('clipfleet_step_seconds_count')}", f"rank {{{{rank}}}} {x}")
               for x in ("data_wait", "all_gather", "all_reduce", "optimizer")] + [(compute, "rank {{rank}} compute")],
              w=24, custom={"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30}),
        hist_panel("Step time p50 / p99", step, "Wall time"),
        hist_panel("Data wait p50 / p99", "clipfleet_data_wait_seconds", "Time waiting for the batch"),
        panel("Compute p50 / p99 (approximate)", "Approximate compute quantiles: the step quantile minus "
              "the data-wait, all-gather, all-reduce and optimizer quantiles. Quantiles do not subtract "
              "exactly; the mean breakdown above is exact. A phase with no observations (NaN quantile, e.g. the "
              "collectives of a one-process run) counts 0.", "s",
              [(f"{quantile(q, step)} - " + " - ".join(
                  or_zero(f"({quantile(q, f'clipfleet_{x}_seconds')} >= 0)", quantile(q, step))
                  for x in ('data_wait', 'all_gather', 'all_reduce', 'optimizer')), f"rank {{{{rank}}}} p{int(q * 100)}")
               for q in (0.5, 0.99)]),
        hist_panel("All-gather p50 / p99", "clipfleet_all_gather_seconds", "Time gathering features (multi-process runs)"),
        hist_panel("All-reduce p50 / p99", "clipfleet_all_reduce_seconds", "Time all-reducing gradients (multi-process runs)"),
        hist_panel("Optimizer p50 / p99", "clipfleet_optimizer_seconds", "AdamW update time"),
        panel("Straggler: slowest rank vs median", "Mean compute seconds per step (step − data wait − "
              "collectives − optimizer) of the slowest rank against the median over ranks. A slow rank "
              "makes the others wait in the collectives, so the straggler is the rank with the highest "
              "compute time, not the highest step time (NVIDIA's straggler detection scores ranks the same "
              "way, against the median).", "s",
              [(f"topk by (job) (1, {compute})", "{{job}} slowest: rank {{rank}}"),
               (f"quantile by (job) (0.5, {compute})", "{{job}} median over ranks")]),
        panel("Straggler ratio", "Slowest rank's mean compute time over the median rank's (1 = balanced). "
              "The ClipfleetStraggler alert fires above 1.2.", "none",
              [(f"max by (job) ({compute}) / quantile by (job) (0.5, {compute})", "{{job}}")], min=1),
        panel("Data-wait fraction", "Share of step wall time spent waiting for the batch, per rank: "
              "rate(clipfleet_data_wait_seconds_sum) / rate(clipfleet_step_seconds_sum). Near 0 means the "
              "loader keeps up; the ClipfleetDataStarved alert fires above 0.2.", "percentunit",
              [(f"{rate('clipfleet_data_wait_seconds_sum')} / {rate('clipfleet_step_seconds_sum')}", "rank {{rank}}")],
              min=0, max=1),
        row("Optimisation"),
        panel("Loss", "Training loss at the last logged step (averaged over the ranks, read back every log_every steps).",
              "none", [(m("clipfleet_loss"), "rank {{rank}}")]),
        panel("Logit scale", "exp(learned log scale) of the contrastive loss (OpenCLIP caps it at 100).", "none",
              [(m("clipfleet_logit_scale"), "rank {{rank}}")]),
        panel("Learning rate", "Learning rate of the last logged step (warm-up, then the schedule).", "none",
              [(m("clipfleet_learning_rate"), "rank {{rank}}")]),
        panel("Gradient norm", "Global gradient norm before clipping, at the last logged step.", "none",
              [(m("clipfleet_grad_norm"), "rank {{rank}}")]),
        panel("Non-finite steps", "Steps whose update every rank skipped because some rank's loss or "
              "gradient norm was NaN or infinite, and rollbacks to the last checkpoint after too many in a "
              "row (on_nonfinite = rollback), per window. Every rank counts each, so the max over the ranks "
              "is the job's count. The ClipfleetNonFiniteSteps alert fires on any skip in 15m "
              "(docs/operations.md#non-finite-losses).", "none",
              [(f"max by (job) (increase({m('clipfleet_nonfinite_steps_skipped_total')}[{RI}]))", "{{job}} skipped steps"),
               (f"max by (job) (increase({m('clipfleet_nonfinite_rollbacks_total')}[{RI}]))", "{{job}} rollbacks")]),
        row("Data"),
        panel("Skipped samples by reason", "Samples (or shards) the data pipeline skipped per second, by "
              "reason (docs/data.md#bad-input), summed over the selected ranks.", "suffix: samples/s",
              [(f"sum by (job, reason) (rate({m('clipfleet_data_samples_skipped_total')}[{RI}]))", "{{reason}}")]),
        panel("Shard bytes read", "Bytes per second read from shard storage, per rank (0 on synthetic data).",
              "Bps", [(rate("clipfleet_shard_bytes_read_total"), "rank {{rank}}")]),
        row("Checkpoints, restarts and stops"),
        panel("Checkpoint duration", "Mean time to write and commit a checkpoint, per rank, over the "
              "checkpoints that ended in the window (no point where none did).", "s",
              [(f"{rate('clipfleet_checkpoint_seconds_sum')} / {rate('clipfleet_checkpoint_seconds_count')}", "rank {{rank}}")],
              custom={"drawStyle": "points", "pointSize": 6}),
        panel("Checkpoints written", "Checkpoints committed by each process since it started "
              "(clipfleet_checkpoint_seconds_count).", "none",
              [(f"sum by (job, rank) ({m('clipfleet_checkpoint_seconds_count')})", "rank {{rank}}")]),
        panel("Restarts", "Resumes from a checkpoint (clipfleet_restarts_total increases, per rank), "
              "and Slurm requeues (clipfleet_slurm_restart_count, SLURM_RESTART_COUNT).", "none",
              [(f"sum by (job) (increase({m('clipfleet_restarts_total')}[{RI}]))", "{{job}} resumes"),
               (f"max by (job) ({m('clipfleet_slurm_restart_count')})", "{{job}} Slurm requeues")]),
        panel("Stop requests", "Stop requests (preemption, time limits) received per window, by signal "
              "(SIGTERM, SIGINT, SIGUSR1, …), summed over ranks.", "none",
              [(f"sum by (job, signal) (increase({m('clipfleet_stop_requests_total')}[{RI}]))", "{{signal}}")]),
        row("Evaluation"),
        panel("Zero-shot accuracy", "Held-out zero-shot top-1 and top-5 accuracy at the last evaluation.",
              "percentunit", [(m("clipfleet_eval_zero_shot_top1"), "rank {{rank}} top-1"),
                              (m("clipfleet_eval_zero_shot_top5"), "rank {{rank}} top-5")], min=0, max=1),
        panel("Retrieval recall", "Held-out retrieval recall@k at the last evaluation, by direction "
              "(image_to_text, text_to_image) and k (1, 5, 10).", "percentunit",
              [(m("clipfleet_eval_retrieval_recall"), "rank {{rank}} {{direction}} R@{{k}}")], min=0, max=1),
        panel("Validation loss", "Held-out contrastive loss at the last evaluation.", "none",
              [(m("clipfleet_eval_loss"), "rank {{rank}}")]),
        row("GPU"),
        panel("GPU memory (clipfleet)", "CUDA memory of each worker from libtorch's caching allocator: "
              "allocated to tensors, and reserved (allocated plus cached). 0 on CPU runs.", "bytes",
              [(m("clipfleet_gpu_memory_allocated_bytes"), "rank {{rank}} allocated"),
               (m("clipfleet_gpu_memory_reserved_bytes"), "rank {{rank}} reserved")]),
        panel("GPU utilisation (DCGM)", "DCGM_FI_DEV_GPU_UTIL of each rank's GPU, joined to the rank "
              "through clipfleet_worker_info (its gpu_uuid is DCGM's UUID). Needs the DCGM exporter.",
              "percent", [(gpu_join("DCGM_FI_DEV_GPU_UTIL"), "rank {{rank}} ({{Hostname}} GPU {{gpu}})")], min=0, max=100),
        panel("GPU framebuffer used (DCGM)", "DCGM_FI_DEV_FB_USED (MiB) of each rank's GPU, joined through "
              "clipfleet_worker_info. Includes memory of other processes and the CUDA context.", "mbytes",
              [(gpu_join("DCGM_FI_DEV_FB_USED"), "rank {{rank}} ({{Hostname}} GPU {{gpu}})")]),
        panel("Tensor-core activity (DCGM)", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE (share of cycles the tensor "
              "pipes are active) of each rank's GPU, joined through clipfleet_worker_info. Needs DCGM "
              "profiling metrics enabled.", "percentunit",
              [(gpu_join("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), "rank {{rank}} ({{Hostname}} GPU {{gpu}})")], min=0, max=1),
    ]
    # Lay the panels out left to right; a row, or a panel that does not fit, starts a new line.
    x = y = line_h = 0
    for q in p:
        g = q["gridPos"]
        if q["type"] == "row" or x + g["w"] > 24:
            x, y, line_h = 0, y + line_h, 0
        g["x"], g["y"] = x, y
        x, line_h = x + g["w"], max(line_h, g["h"])
    return p


def dashboard() -> dict:
    var_ds = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
              "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}
    var_job = {"name": "job", "label": "Job", "type": "query", "datasource": DS,
               "query": {"query": "label_values(clipfleet_step, job)", "refId": "job"},
               "definition": "label_values(clipfleet_step, job)", "refresh": 2, "sort": 1,
               "multi": False, "includeAll": False, "current": {}, "hide": 0, "options": [], "regex": ""}
    var_rank = {"name": "rank", "label": "Rank", "type": "query", "datasource": DS,
                "query": {"query": 'label_values(clipfleet_step{job=~"$job"}, rank)', "refId": "rank"},
                "definition": 'label_values(clipfleet_step{job=~"$job"}, rank)', "refresh": 2, "sort": 3,
                "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0, "options": [], "regex": ""}
    return {
        "id": None,
        "uid": UID,
        "title": "clipfleet training",
        "description": "A clipfleet run: throughput, ETA, step-time breakdown, stragglers, data wait, "
                       "optimisation, data, checkpoints, evaluation and GPUs (DCGM). monitoring/README.md.",
        "tags": ["clipfleet", "training"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [var_ds, var_job, var_rank]},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
