"""The run directory (``output.dir``): the one module that names its files, reads and writes them.

    <output.dir>/
      config.yaml          the resolved config of the run (written when training starts)
      metrics.jsonl        one JSON object per finished epoch (appended; trimmed on resume)
      run_state.json       {"state": running | finished | preempted | failed | diverged, "epoch",
                           "epochs", "best_top1", "updated"}: what a sweep or a scheduler reads
      tb/                  TensorBoard event files
      checkpoints/         last.pth (the resume point), best.pth (best val top-1),
                           epoch_NNNN.pth (1-based epochs done, the newest output.keep_last kept)

Every file but metrics.jsonl is replaced whole by ``atomic_write``, the project's one atomic
write (also used by the image-scan cache and the sweep's own files): a process killed at any
moment leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import IO

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RUN_STATE = "run_state.json"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"


def atomic_write(path: str, data: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8, bytes, or a function writing to a binary file).

    Writes a temp file in the same folder (created if missing), fsyncs it, renames it over
    ``path`` (``os.replace``, atomic on POSIX) and fsyncs the folder so the rename survives a
    power cut. On any error the temp file is removed and ``path`` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: str) -> dict | None:
    """The JSON object in ``path``; None when the file is missing, unreadable or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str, data: dict, indent: int | None = None) -> None:
    """``data`` as JSON in ``path``, written atomically."""
    atomic_write(path, json.dumps(data, indent=indent) + "\n")


class RunDir:
    """The files of one run under ``root`` (``output.dir``); see the module docstring for the layout."""

    def __init__(self, root: str):
        self.root = root

    # paths ---------------------------------------------------------------------------
    @property
    def config(self) -> str:
        """``config.yaml``: the resolved config."""
        return os.path.join(self.root, CONFIG)

    @property
    def metrics(self) -> str:
        """``metrics.jsonl``: one JSON line per epoch."""
        return os.path.join(self.root, METRICS)

    @property
    def run_state(self) -> str:
        """``run_state.json``: the run's state for sweeps and schedulers."""
        return os.path.join(self.root, RUN_STATE)

    @property
    def trackers(self) -> str:
        """``trackers.json``: the MLflow / W&B run ids, so a resumed run logs to the same tracker run."""
        return os.path.join(self.root, "trackers.json")

    @property
    def tensorboard(self) -> str:
        """``tb/``: the TensorBoard event files."""
        return os.path.join(self.root, TENSORBOARD)

    @property
    def checkpoints(self) -> str:
        """``checkpoints/``."""
        return os.path.join(self.root, CHECKPOINTS)

    @property
    def last_checkpoint(self) -> str:
        """``checkpoints/last.pth``: the resume point."""
        return os.path.join(self.checkpoints, "last.pth")

    @property
    def best_checkpoint(self) -> str:
        """``checkpoints/best.pth``: the best val top-1 so far."""
        return os.path.join(self.checkpoints, "best.pth")

    def epoch_checkpoint(self, epoch: int) -> str:
        """``checkpoints/epoch_NNNN.pth`` for ``epoch`` epochs done (1-based)."""
        return os.path.join(self.checkpoints, f"epoch_{epoch:04d}.pth")

    def epoch_checkpoints(self) -> list[str]:
        """The existing ``epoch_NNNN.pth`` files, oldest first."""
        return sorted(glob.glob(os.path.join(self.checkpoints, "epoch_*.pth")))

    # writers -------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        """The resolved config (YAML text) as ``config.yaml``."""
        atomic_write(self.config, text)

    def append_metrics(self, record: dict) -> None:
        """One epoch's record as a line of ``metrics.jsonl``."""
        os.makedirs(self.root, exist_ok=True)
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def trim_metrics(self, epochs_done: int) -> None:
        """Drop ``metrics.jsonl`` lines of epochs past ``epochs_done`` (written just before a crash)."""
        if not os.path.exists(self.metrics):
            return
        kept = [json.dumps(r) + "\n" for r in self.read_metrics() if r.get("epoch", 0) <= epochs_done]
        atomic_write(self.metrics, "".join(kept))

    def write_run_state(self, **state) -> None:
        """``run_state.json``: ``state`` plus the time written (``updated``, seconds since the epoch)."""
        write_json(self.run_state, {**state, "updated": time.time()})

    # readers -------------------------------------------------------------------------
    def read_metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` in order; [] without the file; a line cut short by a crash is skipped."""
        rows = []
        try:
            with open(self.metrics) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        rows.append(row)
        except OSError:
            pass
        return rows

    def read_run_state(self) -> dict:
        """``run_state.json`` as a dict; {} when the run has not written one (or it is unreadable)."""
        return read_json(self.run_state) or {}
