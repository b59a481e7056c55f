"""Checkpoints: written atomically, loaded with weights_only=True, rotated.

Layout under ``output.dir/checkpoints/``: ``last.pth`` (the resume point, refreshed every
epoch and every ``output.save_every_steps`` steps), ``best.pth`` (best val top-1) and
``epoch_NNNN.pth`` every ``output.save_every_epochs`` epochs, the newest ``output.keep_last`` kept.
"""
from __future__ import annotations

import glob
import os
import tempfile

import torch

from .errors import UserError


def atomic_save(obj: dict, path: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    A process killed at any moment leaves either the old file or the new one, never half of one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
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


def load(path: str, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"Checkpoint {path} does not exist. Check the 'resume' key "
                        "(auto, none, or the path of a .pth file).") from None
    except Exception as e:  # a file that is not a checkpoint, or one from an untrusted source
        raise UserError(f"Checkpoint {path} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]}). "
                        "It is damaged or not a resnest-train checkpoint: point 'resume' at another file, "
                        "or set resume=none to start afresh in a new output.dir.") from None


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def last_path(output_dir: str) -> str:
    return os.path.join(checkpoint_dir(output_dir), "last.pth")


def save_periodic(state: dict, output_dir: str, epoch: int, keep_last: int) -> None:
    """Keep epoch_NNNN.pth (1-based epochs done) and delete all but the newest `keep_last`."""
    folder = checkpoint_dir(output_dir)
    atomic_save(state, os.path.join(folder, f"epoch_{epoch:04d}.pth"))
    numbered = sorted(glob.glob(os.path.join(folder, "epoch_*.pth")))
    for old in numbered[:-keep_last] if keep_last > 0 else numbered:
        os.remove(old)


def resume_path(resume: str, output_dir: str) -> str | None:
    """The checkpoint to resume from: auto finds last.pth in the run directory; none starts afresh."""
    if resume == "none":
        return None
    if resume == "auto":
        path = last_path(output_dir)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise UserError(f"Config key 'resume' points to {resume}, which does not exist. "
                        "Use resume=auto to continue the run in output.dir, or give an existing .pth file.")
    return resume


def model_differences(saved: dict, current: dict, prefix: str = "model") -> list[str]:
    """Keys of the model config that differ between a checkpoint and the current config."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += model_differences(a, b, f"{prefix}.{key}")
        elif a != b:
            diffs.append(f"{prefix}.{key}: checkpoint {a!r}, config {b!r}")
    return diffs
