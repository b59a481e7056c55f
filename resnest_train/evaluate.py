"""Evaluate trained weights: top-1/top-5/loss exactly as the trainer measures them, and more.

``scripts/evaluate.py`` is the command; this module is what it runs. The numbers come from
the trainer's own pieces: ``data.build_loaders`` (the same val loader: every image once over
all ranks, the eval resize and crop of the config), ``engine.build_model`` (the same weight
loading) and ``loop.evaluate`` (the same reduction), with the run's ``train.batch_size``,
``train.amp`` and ``train.channels_last``. So a run's checkpoint evaluated here gives the
``val_top1`` / ``val_top5`` / ``val_loss`` of its ``metrics.jsonl`` to the last digit, on the
same kind of machine with the same number of processes (other batch sizes, world sizes or
thread counts change the loss in its last digits: float sums in another order).
Only the val split is read (``build_loaders(..., val_only=True)``): ``data.root`` needs a
``val/`` folder only, list files ``data.val_list`` only, shards their val shards only.

On top of that:

* a resolution sweep: one row per eval crop (``--crops``), the resize keeping the config's
  ratio: the train/test resolution effect of FixRes (Touvron et al. 2019);
* per-class top-1 and the most confused (true, predicted) pairs, from every image's
  predictions gathered from all ranks in val order;
* ReaL accuracy (Beyer et al. 2020, "Are we done with ImageNet?") from a relabel file: one
  label list per image; top-k is right when one of the k predictions is in the image's
  list, over the images whose list is not empty (timm's ``RealLabelsImagenet`` rule).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import engine, loop
from .config import Config
from .data import build_loaders
from .data.common import eval_sizes
from .distributed import DistInfo, all_gather_object, cleanup, init_distributed
from .errors import DataError, UserError
from .weights import FoundWeights, inspect_weights, weights_config, weights_file

TOP_K = 5
CONFUSED_PAIRS = 10


@dataclass
class Request:
    """What to evaluate and what to report (the command line of scripts/evaluate.py)."""

    path: str  # checkpoint, state_dict or run directory
    overrides: Sequence[str] = ()
    config_file: str = ""  # for a bare state_dict
    use_ema: bool = False
    best: bool = False  # a run directory's best.pth instead of last.pth
    crops: Sequence[int] = ()  # eval crops to sweep; empty: the config's
    per_class: bool = False
    relabel: str = ""  # ReaL-style label lists
    json_path: str = ""


@dataclass
class Predictions:
    """Every val image's top-k predicted classes and its label, in val order."""

    top: torch.Tensor  # (N, k) int64
    labels: torch.Tensor  # (N,) int64


# ---------------------------------------------------------------------------------------
# Per-image predictions, through the trainer's own evaluate()
# ---------------------------------------------------------------------------------------


class _Recorder(nn.Module):
    """Runs ``model`` and keeps each batch's top-k classes (of the float logits the trainer ranks)."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k, self.top = model, k, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        self.top.append(logits.float().topk(self.k, dim=1).indices.cpu())
        return logits


def _keeping_labels(loader, labels: list):
    for images, y in loader:
        labels.append(y.cpu())
        yield images, y


def evaluate_with_predictions(
    model: nn.Module, loader, device: torch.device, amp: str, num_classes: int
) -> tuple[dict, Predictions]:
    """``loop.evaluate`` (its metrics, unchanged) plus every image's top-k (k = min(5,
    num_classes), as the trainer's top-5) and label.

    Rank r's val shard is a contiguous run of the val list (``data.common.val_shard``), so the
    shards gathered in rank order are the val list: each image once, in order.
    """
    k = min(TOP_K, num_classes)
    recorder, labels = _Recorder(model, k), []
    metrics = loop.evaluate(recorder, _keeping_labels(loader, labels), device, amp)
    mine = (
        torch.cat(recorder.top) if recorder.top else torch.zeros(0, k, dtype=torch.long),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
    )
    shards = all_gather_object(mine)
    return metrics, Predictions(torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards]))


# ---------------------------------------------------------------------------------------
# Reports from predictions
# ---------------------------------------------------------------------------------------


def per_class_report(pred: Predictions, classes: Sequence[str], pairs: int = CONFUSED_PAIRS) -> dict:
    """Per-class top-1 and the ``pairs`` most frequent confusions.

    Returns ``{"per_class": [{"class", "images", "correct", "top1"}], "confused": [{"true",
    "predicted", "count"}]}``; top-1 in percent (None for a class without val images); pairs
    by falling count, then by (true, predicted) index.
    """
    k = len(classes)
    top1 = pred.top[:, 0]
    confusion = torch.bincount(pred.labels * k + top1, minlength=k * k).reshape(k, k)
    images, correct = confusion.sum(1), confusion.diagonal()
    per_class = [
        {
            "class": classes[c],
            "images": int(images[c]),
            "correct": int(correct[c]),
            "top1": 100.0 * int(correct[c]) / int(images[c]) if images[c] else None,
        }
        for c in range(k)
    ]
    off = confusion.clone()
    off.fill_diagonal_(0)
    flat = off.flatten()
    order = sorted(range(k * k), key=lambda i: (-int(flat[i]), i))[:pairs]
    confused = [
        {"true": classes[i // k], "predicted": classes[i % k], "count": int(flat[i])} for i in order if flat[i] > 0
    ]
    return {"per_class": per_class, "confused": confused}


def read_relabels(path: str) -> object:
    """A relabel file: a JSON list of label lists in ImageNet val order (ImageNet-ReaL's
    ``real.json``: entry i is ``ILSVRC2012_val_<i+1:08d>``) or a JSON object ``{file: labels}``
    keyed by the val file's path as listed (``<class>/<file>``) or by its file name."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except OSError as e:
        raise UserError(
            f"--real {path} cannot be read ({e.strerror or e}). Give ImageNet-ReaL's real.json or a "
            "JSON file of label lists."
        ) from None
    except ValueError as e:
        raise UserError(
            f"--real {path} is not valid JSON ({e}). Give ImageNet-ReaL's real.json or a JSON file of label lists."
        ) from None
    lists = data if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else None
    if lists is None or not all(
        isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v) for v in lists
    ):
        raise UserError(
            f"--real {path} must hold a list of label lists (ImageNet-ReaL's real.json) or an "
            "object mapping file names to label lists, every label an integer class index."
        )
    return data


def relabels_for(files: Sequence[str], data: object, path: str) -> list[list[int]]:
    """The label list of each val file (``files`` as the val split lists them), by the rules of
    ``read_relabels``. Raises UserError naming the first file the relabel file does not cover."""
    out = []
    for rel in files:
        name = os.path.basename(rel)
        if isinstance(data, list):
            stem = os.path.splitext(name)[0]
            number = stem[len("ILSVRC2012_val_") :] if stem.startswith("ILSVRC2012_val_") else ""
            index = int(number) - 1 if number.isdigit() else -1
            labels = data[index] if 0 <= index < len(data) else None
        else:
            labels = data.get(rel, data.get(name))
        if labels is None:
            how = (
                "a list is matched by the ImageNet val file names ILSVRC2012_val_NNNNNNNN"
                if isinstance(data, list)
                else "its keys are val file paths (<class>/<file>) or file names"
            )
            raise UserError(
                f"--real {path} has no labels for the val image {rel} ({how}). Use the relabel file of this val set."
            )
        out.append(labels)
    return out


def real_accuracy(pred: Predictions, relabels: Sequence[Sequence[int]]) -> dict:
    """ReaL top-1/top-5 (percent) over the images whose label list is not empty, and their count."""
    hits, counted = torch.zeros(2, dtype=torch.long), 0
    for top, labels in zip(pred.top.tolist(), relabels):
        if labels:
            counted += 1
            hits[0] += top[0] in labels
            hits[1] += any(t in labels for t in top[:TOP_K])
    n = max(counted, 1)
    return {"real_top1": 100.0 * int(hits[0]) / n, "real_top5": 100.0 * int(hits[1]) / n, "real_images": counted}


def val_files(data_cfg, loaders) -> list[str]:
    """The val files in the loader's order (``data.layout.load_splits``, less the unreadable
    files ``data.skip_bad_images`` removed). Raises DataError for the synthetic backend."""
    if loaders.backend == "synthetic":
        raise DataError(
            "--real needs a val set of image files; data.backend=synthetic has none. Set data.backend "
            "and data.root (or data.val_list)."
        )
    from .data.layout import load_splits
    from .data.scan import find_bad_images

    _, _, val = load_splits(data_cfg, val_only=True)
    files = list(val.files)
    if data_cfg.skip_bad_images:
        bad, _ = find_bad_images(val, workers=0, backend=loaders.backend)
        files = [f for f in files if f not in bad]
    if len(files) != loaders.val_images:
        raise DataError(
            f"The val list changed while evaluating ({len(files)} files now, {loaders.val_images} "
            "read): run again on a val folder that is not being written to."
        )
    return files


def markdown(rows: list[dict], model: str, weights: str) -> str:
    """A markdown table, one row per crop: model, weights, crop, top-1, top-5 (and ReaL)."""
    real = "real_top1" in rows[0]
    head = "| Model | Weights | Crop | Top-1 (%) | Top-5 (%) |" + (" ReaL top-1 (%) |" if real else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = f"| {model} | {weights} | {r['crop']} | {r['top1']:.2f} | {r['top5']:.2f} |"
        lines.append(line + (f" {r['real_top1']:.2f} |" if real else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The files, configs and options one evaluation runs with."""

    found: FoundWeights
    configs: list[Config]  # one per crop, the first the reference
    request: Request
    relabels: object = None


def plan(request: Request) -> Plan:
    """Resolve the file, its config (one per crop) and the relabel file; raises UserError."""
    path = weights_file(request.path, request.best)
    found = inspect_weights(path, request.use_ema)
    crops = list(request.crops) or [None]
    configs = [
        weights_config(found, list(request.overrides) + ([f"data.eval_crop={c}"] if c else []), request.config_file)
        for c in crops
    ]
    relabels = read_relabels(request.relabel) if request.relabel else None
    return Plan(found=found, configs=configs, request=request, relabels=relabels)


def evaluate_config(cfg: Config, found: FoundWeights, dist: DistInfo, model: nn.Module | None, need_predictions: bool):
    """One row: build this crop's loaders (and the model, the first time) and evaluate.

    Returns (row, model, loaders, predictions or None). Raises DataError when the weights'
    class count is not the dataset's.
    """
    loaders = build_loaders(
        cfg.data,
        batch_size=cfg.train.batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        device=dist.device,
        seed=cfg.train.seed,
        channels_last=cfg.train.channels_last,
        val_only=True,
    )
    # A list file gives labels, not a class count (max label + 1): a val list may lack the last classes.
    fewer_ok = bool(cfg.data.val_list) and loaders.num_classes < found.num_classes
    if loaders.num_classes != found.num_classes and not fewer_ok:
        raise DataError(
            f"The weights in {found.path} classify {found.num_classes} classes, but the dataset has "
            f"{loaders.num_classes} ({describe_data(cfg)}). Point data.root (or data.val_list) at the "
            "dataset the model was trained for."
        )
    if model is None:
        model = engine.build_model(cfg, found.num_classes).to(dist.device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
    if need_predictions:
        metrics, pred = evaluate_with_predictions(model, loaders.val, dist.device, cfg.train.amp, found.num_classes)
    else:
        metrics, pred = loop.evaluate(model, loaders.val, dist.device, cfg.train.amp), None
    resize, crop = eval_sizes(cfg.data.train_crop, cfg.data.eval_crop, cfg.data.eval_ratio)
    row = {
        "crop": crop,
        "resize": resize,
        "ratio": cfg.data.eval_ratio,
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "loss": metrics["loss"],
        "images": metrics["images"],
    }
    return row, model, loaders, pred


def describe_data(cfg: Config) -> str:
    d = cfg.data
    if d.backend == "synthetic":
        return "data.backend=synthetic"
    return f"data.val_list={d.val_list}" if d.val_list else f"data.root={d.root}"


def run(request: Request, emit=print) -> dict:
    """Evaluate as ``request`` says (under torchrun: this rank's part) and return the report;
    rank 0 also ``emit``s the text report and writes ``request.json_path``. Raises UserError."""
    p = plan(request)
    cfg0 = p.configs[0]
    dist = init_distributed(cfg0.dist, cfg0.device)
    try:
        engine.configure_backends(cfg0.train, dist.device)
        report = _evaluate(p, dist)
    finally:
        cleanup()
    if dist.is_main:
        emit(text_report(report))
        if request.json_path:
            write_json(report, request.json_path)
            emit(f"JSON: {request.json_path}")
    return report


def _evaluate(p: Plan, dist: DistInfo) -> dict:
    request, found, cfg0 = p.request, p.found, p.configs[0]
    need_predictions = request.per_class or p.relabels is not None
    rows, model, report, backend = [], None, {}, ""
    for i, cfg in enumerate(p.configs):
        row, model, loaders, pred = evaluate_config(cfg, found, dist, model, need_predictions)
        if p.relabels is not None:
            relabels = relabels_for(val_files(cfg.data, loaders), p.relabels, request.relabel)
            row.update(real_accuracy(pred, relabels))
        if i == 0 and request.per_class:
            report.update(per_class_report(pred, loaders.classes))
        rows.append(row)
        backend = loaders.backend
    weights = f"{os.path.basename(found.path)}{' (EMA)' if found.use_ema else ''}"
    head = {
        "checkpoint": found.path,
        "kind": found.kind,
        "ema": found.use_ema,
        "model": cfg0.model.name,
        "num_classes": found.num_classes,
        "data": describe_data(cfg0),
        "backend": backend,
        "world_size": dist.world_size,
        "batch_size": cfg0.train.batch_size,
        "amp": cfg0.train.amp,
        **{k: rows[0][k] for k in ("top1", "top5", "loss", "images")},
    }
    return {**head, "rows": rows, **report, "markdown": markdown(rows, cfg0.model.name, weights)}


def text_report(report: dict) -> str:
    """What scripts/evaluate.py prints: a header, one line per crop, the markdown table, and
    with --per-class the weakest classes and the most confused pairs."""
    lines = [
        f"{report['model']}: {report['checkpoint']} ({report['kind']}), {report['data']} "
        f"({report['backend']}), {report['images']} images, {report['world_size']} process(es), "
        f"batch {report['batch_size']}"
    ]
    real = "real_top1" in report["rows"][0]
    lines.append(
        f"{'crop':>5} {'resize':>6} {'top-1':>7} {'top-5':>7} {'loss':>8}" + ("  ReaL top-1  top-5" if real else "")
    )
    for r in report["rows"]:
        line = f"{r['crop']:>5} {r['resize']:>6} {r['top1']:>7.3f} {r['top5']:>7.3f} {r['loss']:>8.5f}"
        lines.append(line + (f"  {r['real_top1']:>10.3f} {r['real_top5']:>6.3f}" if real else ""))
    if "per_class" in report:
        weakest = sorted((c for c in report["per_class"] if c["images"]), key=lambda c: (c["top1"], c["class"]))[:5]
        lines.append("weakest classes: " + ", ".join(f"{c['class']} {c['top1']:.1f}% ({c['images']})" for c in weakest))
        lines.append(
            "most confused (true -> predicted: images): "
            + (", ".join(f"{c['true']} -> {c['predicted']}: {c['count']}" for c in report["confused"]) or "none")
        )
    lines += ["", report["markdown"]]
    return "\n".join(lines)


def write_json(report: dict, path: str) -> None:
    """The report as JSON (floats as Python writes them: they read back equal)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
