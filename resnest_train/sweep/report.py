"""Reporting on a sweep: each run's state from what it wrote, the summary files, the dry-run plan.

Pure functions of the files the runs (``run_state.json``, ``metrics.jsonl``) and the sweep
(``sweep_status.json``) wrote.
"""

from __future__ import annotations

import csv
import io
import os
import shlex
import statistics
from typing import Any

from ..rundir import RunDir, atomic_write, read_json
from .plan import Run, Sweep, format_value, launch_argv
from .seeds import STAT_METRICS, has_seeds, seed_markdown, seed_rows

STATES = ("finished", "diverged", "pruned", "failed", "preempted", "running", "pending")
SETTLED = ("diverged", "pruned")  # ended for good without finishing: launching them again would not help
STOPPED_CODES = (143, 130, 129, -15, -2, -1)  # exit after SIGTERM / SIGINT / SIGHUP
STATUS_FILE = "sweep_status.json"  # the sweep's own record: each run's last launch exit code


def read_status(root: str) -> dict:
    """``sweep_status.json`` of the sweep root: {run name: {exit_code, seconds, ended[, pruned]}}."""
    return (read_json(os.path.join(root, STATUS_FILE)) or {}).get("runs", {})


def run_state(run: Run, status: dict | None = None) -> str:
    """finished | diverged | pruned | failed | preempted | running | pending.

    The trainer's run_state.json says finished, diverged, failed, preempted or running. A run
    the sweep stopped because its search's pruner said so is "pruned" (``pruned`` in
    sweep_status.json; the trainer saw an ordinary SIGTERM). "running" with a non-zero exit
    of its last launch by this sweep means the run died (killed, or a crash before it could
    say so): failed. No run_state.json: pending, or failed when its launch failed. (train.py
    writes "diverged" before its exit 3, which torchrun turns into 1.)"""
    state = RunDir(run.output_dir).read_run_state().get("state")
    entry = (status or {}).get(run.name, {})
    exit_code = entry.get("exit_code")
    if entry.get("pruned") and state != "finished":
        return "pruned"
    if state in ("finished", "diverged", "failed", "preempted"):
        return state
    if exit_code not in (None, 0):
        return "preempted" if exit_code in STOPPED_CODES else "failed"
    return "running" if state == "running" else "pending"


def is_done(run: Run, status: dict | None = None, epochs: int | None = None) -> bool:
    """Whether the sweep leaves the run alone: finished with at least the ``epochs`` its config
    asks for now (when given: a sweep whose train.epochs went up launches its runs again and
    they train on), or diverged or pruned (``SETTLED``: resumed, a diverged run would diverge
    again from its last good checkpoint, and a pruned one trails the others)."""
    state = run_state(run, status)
    if state in SETTLED:
        return True
    if state != "finished":
        return False
    done = RunDir(run.output_dir).read_run_state().get("epoch")
    return epochs is None or not isinstance(done, int) or done >= epochs


def summary_rows(sweep: Sweep) -> list[dict]:
    """One row per run: its varying values, state, epochs, best val top-1, final train loss,
    images/s (median over epochs: the first epoch's warm-up does not skew it)."""
    status = read_status(sweep.root)
    rows = []
    for run in sweep.runs:
        saved = RunDir(run.output_dir).read_run_state()
        metrics = RunDir(run.output_dir).read_metrics()
        top1 = [m["val_top1"] for m in metrics if isinstance(m.get("val_top1"), (int, float))]
        best = saved.get("best_top1")
        if not isinstance(best, (int, float)):
            best = max(top1) if top1 else None
        speeds = [m["images_per_sec"] for m in metrics if isinstance(m.get("images_per_sec"), (int, float))]
        last = metrics[-1] if metrics else {}
        row = {"run": run.name}
        row.update({k: format_value(run.varying[k]) if k in run.varying else "" for k in sweep.varying_keys})
        if run.seed is not None:
            row["seed"] = run.seed
        row.update(
            {
                "state": run_state(run, status),
                "epoch": saved.get("epoch", last.get("epoch")),
                "epochs": saved.get("epochs"),
                "best_val_top1": best,
                "final_val_top1": last.get("val_top1"),
                "final_train_loss": last.get("train_loss"),
                "images_per_sec": statistics.median(speeds) if speeds else None,
                "output_dir": run.output_dir,
            }
        )
        if sweep.metric != "val_top1":
            row[metric_column(sweep)] = best_value(metrics, sweep.metric, sweep.mode)
        rows.append(row)
    return best_first(rows, metric_column(sweep), sweep.mode)


def metric_column(sweep: Sweep) -> str:
    """The summary column the runs are ranked by: ``best_<metric>`` (``best_val_top1`` by default)."""
    return f"best_{sweep.metric}"


def best_value(metrics: list[dict], metric: str, mode: str) -> float | None:
    """The best (``mode`` max or min) value of ``metric`` over a run's metrics.jsonl records; None without one."""
    values = [m[metric] for m in metrics if isinstance(m.get(metric), (int, float)) and m[metric] == m[metric]]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def best_first(rows: list[dict], column: str, mode: str) -> list[dict]:
    """``rows`` ordered by ``column``, best first (highest for ``mode`` max); rows without a value
    keep their order after them."""
    scored = [r for r in rows if isinstance(r.get(column), (int, float))]
    scored.sort(key=lambda r: -r[column] if mode == "max" else r[column])
    return scored + [r for r in rows if not isinstance(r.get(column), (int, float))]


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(sweep: Sweep, rows: list[dict]) -> str:
    """summary.md: the sweep's runs with their varying values (and seed), state, epochs, best top-1 (%),
    loss, images/s; with ``seeds:`` first the table of mean ± std over seeds (``seeds.seed_markdown``)."""
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    extra = [metric_column(sweep)] if sweep.metric != "val_top1" else []
    keys = [*sweep.varying_keys, *(["seed"] if has_seeds(sweep) else [])]
    head = [
        "run",
        *keys,
        "state",
        "epochs",
        "best val top-1 (%)",
        *(f"best {sweep.metric}" for _ in extra),
        "final train loss",
        "images/s",
    ]
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"Base config `{sweep.config}`, {len(rows)} runs under `{sweep.root}`: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + ".",
        f"Best {sweep.metric} ({sweep.mode}) first. Compare them with `tensorboard --logdir "
        f"{shlex.quote(sweep.root)}`. images/s is the median over epochs.",
        "",
        *([seed_markdown(sweep, rows), "Every run:", ""] if has_seeds(sweep) else []),
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 1 + len(keys) + 1 else "---:" for i in range(len(head))) + "|",
    ]
    for r in rows:
        done = f"{r['epoch']}/{r['epochs']}" if r["epochs"] is not None else _fmt(r["epoch"], 0)
        cells = [
            r["run"],
            *(_fmt(r[k], 0) if k == "seed" else r[k] or "-" for k in keys),
            r["state"],
            done,
            _fmt(r["best_val_top1"], 2),
            *(_fmt(r[k], 4) for k in extra),
            _fmt(r["final_train_loss"], 4),
            _fmt(r["images_per_sec"], 1),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep: Sweep) -> tuple[str, str, list[dict]]:
    """Write <root>/summary.csv and <root>/summary.md (with ``seeds:`` also <root>/summary_seeds.csv,
    one row per configuration); return the paths of the first two and the rows."""
    rows = summary_rows(sweep)
    columns = [
        "run",
        *sweep.varying_keys,
        *(["seed"] if has_seeds(sweep) else []),
        "state",
        "epoch",
        "epochs",
        "best_val_top1",
        *([metric_column(sweep)] if sweep.metric != "val_top1" else []),
        "final_val_top1",
        "final_train_loss",
        "images_per_sec",
        "output_dir",
    ]
    os.makedirs(sweep.root, exist_ok=True)
    csv_path = os.path.join(sweep.root, "summary.csv")
    md_path = os.path.join(sweep.root, "summary.md")
    atomic_write(csv_path, _csv_text(rows, columns))
    atomic_write(md_path, markdown(sweep, rows))
    if has_seeds(sweep):
        stat_columns = ["config", *sweep.varying_keys, "seeds", "n"]
        stat_columns += [f"{m}_{s}" for m in STAT_METRICS for s in ("mean", "std")]
        atomic_write(os.path.join(sweep.root, "summary_seeds.csv"), _csv_text(seed_rows(sweep, rows), stat_columns))
    return csv_path, md_path, rows


def plan_text(sweep: Sweep, launch_sh: str | None = None, epochs: dict | None = None) -> str:
    """What --dry-run prints: each run, its state and its command."""
    status = read_status(sweep.root)
    lines = [f"Sweep {sweep.name}: {len(sweep.runs)} run(s) of {sweep.config} under {sweep.root}"]
    for i, run in enumerate(sweep.runs, 1):
        state = run_state(run, status)
        if is_done(run, status, (epochs or {}).get(run.name)):
            action = "skip (finished)"
        else:
            action = "start" if state == "pending" else "resume"
        lines.append(f"[{i}/{len(sweep.runs)}] {run.name}: {state}, would {action}")
        lines.append("    " + shlex.join(launch_argv(sweep, run, launch_sh)))
    return "\n".join(lines) + "\n"
