"""Mean and standard deviation over the seeds of each configuration of a sweep (``seeds:``).

A sweep with ``seeds: [0, 1, 2]`` runs every configuration (grid point x ``runs`` entry) once per
seed; ``Run.group`` names the configuration. ``seed_rows`` folds the summary rows of one
configuration into one row; the standard deviation is the sample one (``statistics.stdev``,
n - 1 in the denominator), the spread a new seed's result is expected to have. Only finished
runs count, so a configuration whose seeds are still running shows how many it has (``n``).
"""

from __future__ import annotations

import statistics
from typing import Any

from .plan import Sweep

STAT_METRICS = ("best_val_top1", "final_val_top1", "final_train_loss")


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of ``values``; std None below 2 values, both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def has_seeds(sweep: Sweep) -> bool:
    """Whether the sweep file has ``seeds:`` (its runs carry a seed)."""
    return any(run.seed is not None for run in sweep.runs)


def seed_rows(sweep: Sweep, rows: list[dict]) -> list[dict]:
    """One row per configuration, in sweep order: its varying values, ``seeds`` (the seeds
    planned), ``n`` (finished runs) and ``<metric>_mean`` / ``<metric>_std`` for each of
    STAT_METRICS over its finished runs. ``rows`` are ``report.summary_rows(sweep)``."""
    by_run = {r["run"]: r for r in rows}
    groups: dict[str, list] = {}
    for run in sweep.runs:
        groups.setdefault(run.group, []).append(run)
    out = []
    for group, runs in groups.items():
        done = [by_run[run.name] for run in runs if by_run[run.name]["state"] == "finished"]
        row: dict[str, Any] = {"config": group}
        row.update({k: by_run[runs[0].name][k] for k in sweep.varying_keys})
        row.update(seeds=len(runs), n=len(done))
        for metric in STAT_METRICS:
            values = [r[metric] for r in done if isinstance(r.get(metric), (int, float))]
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(values)
        out.append(row)
    return out


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def seed_markdown(sweep: Sweep, rows: list[dict]) -> str:
    """The markdown table of ``seed_rows``: mean ± std over seeds of best and final top-1 (%) and
    final train loss, headed by ``runs: C configurations x S seeds``."""
    stats = seed_rows(sweep, rows)
    n_seeds = max((s["seeds"] for s in stats), default=0)
    head = ["config", *sweep.varying_keys, "n", "best val top-1 (%)", "final val top-1 (%)", "final train loss"]
    lines = [
        f"runs: {len(stats)} configurations x seeds: {n_seeds} (mean ± sample std over the finished seeds, n)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i <= len(sweep.varying_keys) else "---:" for i in range(len(head))) + "|",
    ]
    for s in stats:
        cells = [
            s["config"],
            *(s[k] or "-" for k in sweep.varying_keys),
            f"{s['n']}/{s['seeds']}",
            _pm(s["best_val_top1_mean"], s["best_val_top1_std"], 2),
            _pm(s["final_val_top1_mean"], s["final_val_top1_std"], 2),
            _pm(s["final_train_loss_mean"], s["final_train_loss_std"], 4),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
