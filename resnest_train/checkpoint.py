"""Checkpoints: written atomically, loaded with weights_only=True, rotated.

Layout under ``output.dir/checkpoints/`` (named by ``rundir.RunDir``): ``last.pth`` (the resume
point, refreshed every epoch and every ``output.save_every_steps`` steps), ``best.pth`` (best val
top-1) and ``epoch_NNNN.pth`` every ``output.save_every_epochs`` epochs, the newest
``output.keep_last`` kept.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import UserError
from .rundir import RunDir, atomic_write


def atomic_save(obj: dict, path: str) -> None:
    """``torch.save(obj)`` to ``path`` through ``rundir.atomic_write``: the old file or the new, never half."""
    atomic_write(path, lambda f: torch.save(obj, f))


def host_copy(obj):
    """`obj` with every tensor copied to the CPU: a new tensor even for one already there, so the
    training step that goes on cannot change what a background writer is saving. Containers are
    rebuilt (dict, list, tuple); other values are shared, being immutable or not touched by training."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


@dataclass
class SaveReport:
    """A finished background save: its files, their total size in bytes, and the seconds it took."""

    paths: list
    bytes: int
    seconds: float
    step: int


class AsyncSaver:
    """Writes checkpoints in one background thread, one save at a time, each file atomically.

    `save(obj, writes, step)` copies `obj` to host memory first (`host_copy`), in the caller's
    thread, then returns while a thread runs `writes(obj)`, a function that writes the files
    (with `atomic_save`, `save_periodic`) and returns their paths. A second `save` first waits
    for the previous one, and so does `wait`: call it before exiting, so the newest checkpoint
    is complete on disk. A write that fails raises UserError in the caller's thread at the
    next `save`, `wait` or `done` (the file it was replacing is intact: atomic_save).
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._result = None  # a SaveReport, or the exception the writer raised
        self._reports: list = []

    def save(self, obj: dict, writes: Callable[[dict], list], step: int) -> None:
        self.wait()
        copy = host_copy(obj)
        self._thread = threading.Thread(
            target=self._write, args=(copy, writes, step), name="checkpoint-writer", daemon=False
        )
        self._thread.start()

    def _write(self, obj, writes, step):
        t0 = time.perf_counter()
        try:
            paths = writes(obj)
            size = sum(os.path.getsize(p) for p in paths if os.path.exists(p))  # keep_last=0 removes its file
            self._result = SaveReport(paths=paths, bytes=size, seconds=time.perf_counter() - t0, step=step)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread by wait()
            self._result = e

    def wait(self) -> None:
        """Block until the save in flight (if any) is on disk; raise UserError if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._collect()

    def done(self) -> list:
        """The reports of saves finished since the last call, without blocking (UserError if one failed)."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()
        reports, self._reports = self._reports, []
        return reports

    def _collect(self):
        result, self._result = self._result, None
        if isinstance(result, BaseException):
            raise UserError(
                f"Writing a checkpoint failed ({exception_text(result)}); training stopped, and "
                "the checkpoint files it was replacing are intact. Free disk space or fix the "
                "permissions of output.dir/checkpoints, then run the same command to resume."
            ) from result
        if result is not None:
            self._reports.append(result)


# What a checkpoint written by `loop.checkpoint_state` holds besides the EMA, scaler and best top-1.
TRAINING_KEYS = ("model", "optimizer", "epoch", "step_in_epoch", "step", "loss_sum", "loss_count", "config")

# CSI sequences (colour, cursor) such as torch's bold "do those steps only if you trust the source".
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def exception_text(e: BaseException) -> str:
    """`e` as one plain line for a UserError: type, then the first sentence of its telling line.

    Terminal escape codes are removed (torch's weights-only refusal carries bold text) and so
    are other control characters, so the message reads the same in a log file. The telling
    line is the first, except for that refusal, whose cause follows 'WeightsUnpickler error:'.
    """
    text = _ANSI.sub("", str(e))
    text = text.split("WeightsUnpickler error:", 1)[-1]
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = "".join(ch for ch in text if ch.isprintable())
    text = text.split(". ", 1)[0].rstrip(".")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load(path: str, map_location="cpu", key: str = "resume"):
    """`torch.load(path, weights_only=True)` (a `.safetensors` file: `safetensors.torch.load_file`);
    `key` is the config key that named the file.

    Raises UserError naming `key` and the file when it is missing, damaged, or holds Python
    objects other than tensors and plain containers (weights_only runs no code from the file).
    """
    fix = {
        "resume": "point 'resume' at another file, or set resume=none to start afresh in a new output.dir",
        "model.weights": "point 'model.weights' at a file of tensors only: a state_dict or a resnest-train "
        "checkpoint (a foreign checkpoint holding other objects can be loaded once in a "
        "trusted session and its state_dict saved alone with torch.save)",
    }[key]
    try:
        if str(path).endswith(".safetensors"):  # weights from scripts/export.py or another library
            from safetensors.torch import load_file

            return load_file(path, device=str(torch.device(map_location)))
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(
            f"Config key '{key}' points to {path}, which does not exist. "
            f"Check the path{', or use resume=auto or none' if key == 'resume' else ''}."
        ) from None
    except Exception as e:  # a file that is not a checkpoint, or one from an untrusted source
        raise UserError(
            f"Config key '{key}': {path} cannot be loaded ({exception_text(e)}). It is damaged, or "
            f"not a checkpoint that loads with torch.load(weights_only=True): {fix}."
        ) from None


def training_state_problem(saved) -> str:
    """Why `saved` is not a resnest-train checkpoint to resume from ("" when it is one)."""
    if not isinstance(saved, dict):
        return f"it holds a {type(saved).__name__}, not a checkpoint dict"
    missing = [k for k in TRAINING_KEYS if k not in saved]
    return f"it lacks {', '.join(missing[:4])}: a bare state_dict, not a resnest-train checkpoint" if missing else ""


def load_training_state(path: str, map_location="cpu") -> dict:
    """A resnest-train checkpoint to resume from; UserError (naming 'resume') for anything else."""
    saved = load(path, map_location, key="resume")
    problem = training_state_problem(saved)
    if problem:
        raise UserError(
            f"Config key 'resume': {path} cannot be resumed from ({problem}). To start from bare "
            "weights use model.weights=<file> with resume=none; to resume, point 'resume' at a file "
            "from output.dir/checkpoints."
        )
    return saved


def save_periodic(state: dict, output_dir: str, epoch: int, keep_last: int) -> str:
    """Keep epoch_NNNN.pth (1-based epochs done) and delete all but the newest `keep_last`; returns its path."""
    run = RunDir(output_dir)
    path = run.epoch_checkpoint(epoch)
    atomic_save(state, path)
    numbered = run.epoch_checkpoints()
    for old in numbered[:-keep_last] if keep_last > 0 else numbered:
        os.remove(old)
    return path


def resume_candidates(output_dir: str) -> list[str]:
    """Checkpoint files of a run: last.pth, then epoch_NNNN.pth newest first, then best.pth (existing ones)."""
    run = RunDir(output_dir)
    candidates = [run.last_checkpoint, *reversed(run.epoch_checkpoints()), run.best_checkpoint]
    return [p for p in candidates if os.path.isfile(p)]


def position(saved: dict) -> tuple[int, int, int]:
    """(epoch, step_in_epoch, step) of a checkpoint: where in the run it was written; larger is newer."""
    return saved["epoch"], saved["step_in_epoch"], saved["step"]


def find_resume(resume: str, output_dir: str, log=print, map_location="cpu") -> tuple[str | None, dict | None]:
    """The checkpoint to resume from and its content, or (None, None) to start afresh.

    `resume` is the config key: none; a path (which must load); or auto, which takes last.pth
    in the run directory and, when that is missing or does not load (a truncated or damaged
    copy), the newest by `position` of the other checkpoints that load. Each file passed over
    is reported through `log`, one line with the reason. Raises UserError when an explicit path
    does not load, or when auto finds checkpoint files but none loads.
    """
    if resume == "none":
        return None, None
    if resume != "auto":
        if not os.path.isfile(resume):
            raise UserError(
                f"Config key 'resume' points to {resume}, which does not exist. "
                "Use resume=auto to continue the run in output.dir, or give an existing .pth file."
            )
        return resume, load_training_state(resume, map_location)
    files = resume_candidates(output_dir)
    if not files:
        return None, None
    last = RunDir(output_dir).last_checkpoint
    failures = []
    if files[0] != last:
        failures.append((last, "missing"))
        log(f"warning: resume=auto finds no {last}; looking at the other checkpoints")
    best_path, best = None, None
    for path in files:
        try:
            saved = torch.load(path, map_location=map_location, weights_only=True)
            problem = training_state_problem(saved)
        except Exception as e:  # truncated, damaged, not a torch file, or refused by weights_only
            saved, problem = None, exception_text(e)
        if problem:
            failures.append((path, problem))
            log(f"warning: resume=auto skips {path}: {problem}")
            continue
        if path == last:
            return path, saved
        if best is None or position(saved) > position(best):
            best_path, best = path, saved
    if best is None:
        listed = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in failures)
        raise UserError(
            f"Config key 'resume' is auto, but no checkpoint in {RunDir(output_dir).checkpoints} loads "
            f"({listed}). Point 'resume' at a good copy of a checkpoint, or set resume=none with a "
            "new output.dir to start afresh."
        )
    return best_path, best


# Prefixes that wrappers put before every state_dict key: DistributedDataParallel/DataParallel and
# timm's ModelEmaV3 ("module."), torch.compile ("_orig_mod."); nested in either order.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state: dict) -> dict:
    """`state` without the wrapper prefixes that every one of its keys carries, e.g. `_orig_mod.module.`.

    A prefix is removed only when all keys have it, so a model with its own submodule named
    `module` keeps its keys. (timm's `clean_state_dict` strips key by key, hence not used.)
    """
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def weights_state_dict(loaded, path: str, use_ema: bool = False) -> dict:
    """The model weights in a file given as `model.weights`, keys free of wrapper prefixes.

    `loaded` is what `load` returned: a bare state_dict (the official release's layout, or one
    saved from a DDP-wrapped or compiled model), or a resnest-train checkpoint, whose `model`
    entry is taken, or with `use_ema` (config key `model.weights_ema`) its `ema` entry.
    Raises UserError when the file holds no such weights.
    """
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):  # a resnest-train checkpoint
        if use_ema and not loaded.get("ema"):
            raise UserError(
                f"Config key 'model.weights_ema' is true, but {path} holds no EMA weights (it was "
                "trained with train.ema=false). Set model.weights_ema=false to start from its model "
                "weights."
            )
        loaded = loaded["ema"] if use_ema else loaded["model"]
    elif use_ema:
        raise UserError(
            f"Config key 'model.weights_ema' is true, but {path} is not a resnest-train checkpoint "
            "(those hold 'model' and 'ema' weights). Set model.weights_ema=false to load it as it is."
        )
    if not (
        isinstance(loaded, dict)
        and loaded
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        raise UserError(
            f"Config key 'model.weights': {path} holds no state_dict (a dict of names to tensors, or "
            "a resnest-train checkpoint). Point model.weights at such a file."
        )
    return strip_wrapper_prefixes(loaded)


def state_dict_mismatch(state: dict, expected: dict, show: int = 5) -> str:
    """What keeps `state` from loading strictly into a model whose state_dict is `expected`.

    "" when it loads; otherwise the missing keys, the unexpected keys and the shape
    mismatches (name: checkpoint shape vs model shape), the first `show` of each, in one line.
    """
    groups = {
        "missing keys": [k for k in expected if k not in state],
        "unexpected keys": [k for k in state if k not in expected],
        "different shapes": [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state and state[k].shape != expected[k].shape
        ],
    }
    return "; ".join(
        f"{len(items)} {name}: {', '.join(items[:show])}{', ...' if len(items) > show else ''}"
        for name, items in groups.items()
        if items
    )


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
