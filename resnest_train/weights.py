"""Trained weights for evaluation and export: which file, which config, the model they fill.

    path = weights_file("runs/r50")                      # a run directory -> its checkpoints/last.pth
    found = inspect_weights(path, use_ema=False)       # class count, the run's config if it has one
    cfg = weights_config(found, overrides=["data.root=/data/imagenet"])
    model = engine.build_model(cfg, found.num_classes)  # the trainer's builder loads them, strictly

A file is a resnest-train checkpoint (it carries its run's config: model and data settings
come from there, command-line overrides on top) or a bare state_dict in the official layout
(the config then comes from ``--config`` and the overrides, e.g. ``model.name=resnest101``).
Loading goes through the trainer's own ``model.weights`` path (``engine.build_model`` ->
``engine.load_weights``: wrapper prefixes stripped, EMA weights with ``use_ema``, strict).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from . import checkpoint
from .config import Config
from .config_loader import config_from_dict, load_config
from .errors import UserError
from .rundir import RunDir


def weights_file(path: str, best: bool = False) -> str:
    """The checkpoint file ``path`` names: a run directory's ``checkpoints/last.pth`` (with
    ``best``, ``best.pth``: the best val top-1), or ``path`` itself. Raises UserError."""
    if os.path.isdir(path):
        run = RunDir(path)
        found = run.best_checkpoint if best else run.last_checkpoint
        name = os.path.basename(found)
        if not os.path.isfile(found):
            raise UserError(
                f"{path} is a folder without checkpoints/{name}: give a run directory (a run's "
                "output.dir) or a checkpoint file."
            )
        return found
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: give a checkpoint file (.pth), a bare state_dict, or a run directory.")
    if best:
        raise UserError(
            f"--best picks a run directory's checkpoints/best.pth, but {path} is a file: drop --best, "
            "or give the run directory."
        )
    return path


@dataclass
class FoundWeights:
    """What a weights file holds, as far as building a model for it goes."""

    path: str
    num_classes: int  # rows of its classifier, fc.weight
    use_ema: bool
    config: dict | None  # the run's config, for a resnest-train checkpoint

    @property
    def kind(self) -> str:
        if self.config is None:
            return "state_dict"
        return "checkpoint (EMA weights)" if self.use_ema else "checkpoint"


def inspect_weights(path: str, use_ema: bool = False) -> FoundWeights:
    """Read ``path`` (``torch.load(weights_only=True)``) and describe it. Raises UserError for
    a file that does not load, holds no classifier weights, or lacks the EMA weights asked for."""
    loaded = checkpoint.load(path, key="model.weights")
    is_checkpoint = isinstance(loaded, dict) and isinstance(loaded.get("model"), dict)
    if use_ema and not is_checkpoint:
        raise UserError(
            f"--ema takes a resnest-train checkpoint's EMA weights, but {path} is not one (those hold "
            "'model' and 'ema'): drop --ema to use the weights as they are."
        )
    if use_ema and not loaded.get("ema"):
        raise UserError(f"--ema: {path} holds no EMA weights (its run had train.ema=false): drop --ema.")
    state = checkpoint.weights_state_dict(loaded, path, use_ema)
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2:
        raise UserError(
            f"{path} holds no classifier (no 'fc.weight' among its keys, e.g. "
            f"{', '.join(list(state)[:3])}): give the weights of a ResNeSt classifier."
        )
    config = loaded.get("config") if is_checkpoint and isinstance(loaded.get("config"), dict) else None
    return FoundWeights(path=path, num_classes=int(fc.shape[0]), use_ema=use_ema, config=config)


def weights_config(found: FoundWeights, overrides: Sequence[str] = (), config_file: str = "") -> Config:
    """The config to build and feed the model of ``found``: the checkpoint's own config (or,
    for a bare state_dict, ``config_file`` / the schema defaults) with ``overrides`` on top,
    and ``model.weights`` / ``model.weights_ema`` pointing at the file. Raises ConfigError."""
    if found.config is not None:
        if config_file:
            raise UserError(
                f"--config is for bare state_dicts; {found.path} is a resnest-train checkpoint and "
                "carries its run's config: change keys with section.key=value overrides instead."
            )
        cfg = config_from_dict(found.config, where=f"the config saved in {found.path}", overrides=overrides)
    else:
        cfg = load_config(config_file or None, overrides)
    cfg.model.weights, cfg.model.weights_ema = found.path, found.use_ema
    return cfg
