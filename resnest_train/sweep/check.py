"""Checking a sweep before it runs: every run's config through train.py's pre-flight check."""

from __future__ import annotations

from ..config_loader import load_config
from ..errors import ConfigError
from .plan import Sweep, SweepError, override_args


def check(sweep: Sweep) -> dict[str, int]:
    """Load every run's config the way train.py will, through the same pre-flight check
    (``load_config`` runs ``preflight.preflight``: types, ranges, cross-key rules, model
    construction): a config train.py would refuse fails here, before any run starts.
    Returns each run's train.epochs."""
    epochs = {}
    for i, run in enumerate(sweep.runs):
        try:
            cfg = load_config(sweep.config, override_args(run))
        except ConfigError as e:
            raise SweepError(f"Run {i + 1} '{run.name}' of sweep {sweep.file} has a bad config: {e}") from None
        epochs[run.name] = cfg.train.epochs
    return epochs
