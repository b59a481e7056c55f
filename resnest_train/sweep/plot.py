"""PNG plots of a sweep from what its runs wrote (``metrics.jsonl``), with matplotlib.

``plot_sweep`` draws into ``<root>/plots/``:

* ``curves.png``: validation top-1 (%) and training loss per epoch, one line per run, one colour
  per configuration (its seeds share it);
* ``final_top1.png``: the final validation top-1 of each configuration, the bar at the mean over
  its seeds, the error bar one sample standard deviation, each seed's value a dot.

Runs that wrote no metrics yet are left out; a sweep without any metrics draws nothing.
"""

from __future__ import annotations

import os

from ..rundir import RunDir
from .plan import Sweep
from .seeds import mean_std

PLOT_DIR = "plots"


def run_curves(sweep: Sweep) -> dict[str, list[tuple[str, list[int], list[float], list[float]]]]:
    """{configuration: [(run name, epochs, val top-1 per epoch, train loss per epoch), ...]}, in
    sweep order; only runs with metrics, epochs with a val top-1 (``train.eval_every``) for top-1."""
    curves: dict[str, list] = {}
    for run in sweep.runs:
        rows = RunDir(run.output_dir).read_metrics()
        if rows:
            curves.setdefault(run.group, []).append(
                (
                    run.name,
                    [r["epoch"] for r in rows],
                    [r.get("val_top1") for r in rows],
                    [r.get("train_loss") for r in rows],
                )
            )
    return curves


def plot_sweep(sweep: Sweep, out_dir: str | None = None) -> list[str]:
    """Draw ``curves.png`` and ``final_top1.png`` (module docstring) into ``out_dir`` (default
    ``<root>/plots``); return the paths written ([] when no run has metrics)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curves = run_curves(sweep)
    if not curves:
        return []
    out_dir = out_dir or os.path.join(sweep.root, PLOT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    colours = {group: plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")(i) for i, group in enumerate(curves)}

    fig, (ax_top1, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for group, runs in curves.items():
        for i, (_, epochs, top1, loss) in enumerate(runs):
            label = group if i == 0 else None
            ax_top1.plot(*_defined(epochs, top1), marker="o", ms=3, color=colours[group], label=label, alpha=0.8)
            ax_loss.plot(*_defined(epochs, loss), marker="o", ms=3, color=colours[group], alpha=0.8)
    ax_top1.set(xlabel="epoch", ylabel="val top-1 (%)", title=f"{sweep.name}: val top-1")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title=f"{sweep.name}: train loss")
    for ax in (ax_top1, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(curves)), fontsize=8, frameon=False)
    fig.tight_layout()
    paths = [os.path.join(out_dir, "curves.png")]
    fig.savefig(paths[0], dpi=90, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(curves) + 1.5), 3.8))
    for x, (group, runs) in enumerate(curves.items()):
        finals = [top1[-1] for _, _, top1, _ in runs if top1 and isinstance(top1[-1], (int, float))]
        mean, std = mean_std(finals)
        if mean is None:
            continue
        ax.bar(x, mean, yerr=std or 0.0, capsize=4, color=colours[group], alpha=0.75)
        ax.plot([x] * len(finals), finals, "k.", ms=5)
    ax.set_xticks(range(len(curves)), list(curves), rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="final val top-1 (%)", title=f"{sweep.name}: mean ± std over seeds (dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    lows = [v for runs in curves.values() for _, _, top1, _ in runs for v in top1[-1:] if isinstance(v, (int, float))]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 10.0), min(100.0, max(lows) + 5.0))
    paths.append(os.path.join(out_dir, "final_top1.png"))
    fig.savefig(paths[1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    return paths


def _defined(xs: list, ys: list) -> tuple[list, list]:
    """The (x, y) pairs whose y is a number."""
    pairs = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float))]
    return [x for x, _ in pairs], [y for _, y in pairs]
