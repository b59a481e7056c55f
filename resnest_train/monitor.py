"""What a run reports: console progress, TensorBoard, metrics.jsonl and run_state.json.

Only rank 0 builds a real Monitor; the other ranks get one whose methods do nothing.
"""

from __future__ import annotations

import math
import os
import sys

import torch

from .progress import Progress, is_terminal
from .rundir import RunDir
from .trackers import open_trackers

# The HParams tab's metric columns: each run's latest epoch values, and the best top-1 of a finished run
HPARAM_METRICS = ("epoch/val_top1", "epoch/val_top5", "epoch/val_loss", "epoch/train_loss", "hparam/best_val_top1")


def format_seconds(seconds: float) -> str:
    """``seconds`` as ``M:SS``, or ``H:MM:SS`` from an hour on."""
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Monitor:
    """What a run reports on rank 0: progress on the console, TensorBoard, metrics.jsonl, run_state.json.

    With ``enabled=False`` (the other ranks) every method does nothing.
    """

    def __init__(self, output_cfg, enabled: bool = True):
        self.enabled = enabled
        self.dir = output_cfg.dir
        self.run = RunDir(output_cfg.dir)
        self.log_every = output_cfg.log_every
        mode = output_cfg.progress
        self.bar = mode == "bar" or (mode == "auto" and is_terminal(sys.stderr))
        self._bar: Progress | None = None  # the epoch's bar while it is on screen
        self.writer = None
        self.trackers = []  # MLflow / W&B (trackers.py)
        self._state = ""  # the last run_state written: how the trackers' runs end
        if enabled:
            os.makedirs(self.dir, exist_ok=True)
            if "tensorboard" in output_cfg.loggers:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(self.run.tensorboard)
            self.trackers = open_trackers(output_cfg)

    # console -------------------------------------------------------------------------
    def print(self, message: str) -> None:
        """One line on stdout (rank 0), above the progress bar when one is on screen."""
        if self.enabled:
            self._write(message, sys.stdout)

    def error(self, message: str) -> None:
        """One paragraph on stderr, as train.py prints a user error: 'error: ...'."""
        if self.enabled:
            self._write(f"error: {message}", sys.stderr)

    def _write(self, message: str, file) -> None:
        if self._bar is not None:
            self._bar.write(message, file=file)
        else:
            print(message, file=file, flush=True)

    def progress(
        self,
        epoch: int,
        epochs: int,
        step: int,
        steps: int,
        loss: float,
        lr: float,
        images_per_sec: float,
        eta_s: float,
    ) -> None:
        """Training progress after ``step`` of ``steps`` optimizer steps of ``epoch`` (0-based).

        On a bar (``output.progress: bar``, or ``auto`` on a terminal): tqdm's bar for the epoch
        with its rate and ETA, and loss, LR and images/s after them. Otherwise a plain line
        ``epoch 1/2 step 3/8 loss ... lr ... img/s eta M:SS`` every ``output.log_every`` steps and
        at the epoch's end, ``eta_s`` (seconds) being the loop's estimate.
        """
        if not self.enabled:
            return
        values = f"loss {loss:.4f} lr {lr:.4g} {images_per_sec:.1f} img/s"
        if self.bar:
            if self._bar is None:  # the epoch's first report: steps before it were done earlier or by a resume
                self._bar = Progress(
                    steps, f"epoch {epoch + 1}/{epochs}", unit="step", bar=True, initial=step, stream=sys.stderr
                )
            self._bar.update(step - self._bar.n, postfix=values)
        elif step % self.log_every == 0 or step == steps:
            print(f"epoch {epoch + 1}/{epochs} step {step}/{steps} {values} eta {format_seconds(eta_s)}", flush=True)

    def end_bar(self) -> None:
        """The epoch's training is over: close its bar (a later print goes below it)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # TensorBoard ---------------------------------------------------------------------
    def scalars(self, values: dict, step: int) -> None:
        """TensorBoard scalars ``{tag: value}`` at global ``step``."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def images(self, name: str, batch: torch.Tensor, mean, std, step: int = 0, count: int = 32) -> None:
        """A grid of the first ``count`` images of ``batch`` (``[B, 3, H, W]``, un-normalised with ``mean``/``std``)."""
        if self.writer is None:
            return
        import torchvision

        x = batch[:count].detach().float().cpu()
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        grid = torchvision.utils.make_grid(x.clamp(0, 1), nrow=int(math.ceil(math.sqrt(len(x)))))
        self.writer.add_image(name, grid, step)

    def hparams(self, hparams: dict, metrics: tuple = HPARAM_METRICS) -> None:
        """The run's hyperparameters as a session of TensorBoard's HParams tab, written as the run
        starts: every run of a sweep (finished, pruned, stopped or diverged) is a row there, with
        the latest value of each scalar tag of ``metrics``. ``hparams_end`` closes the session."""
        if self.writer is not None:
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            experiment, session_start, _ = hparams_summary(hparams, dict.fromkeys(metrics, 0.0))
            self.writer.file_writer.add_summary(experiment)
            self.writer.file_writer.add_summary(session_start)

    def hparams_end(self, metrics: dict, step: int) -> None:
        """The run finished: its final ``metrics`` ({tag: value}) as scalars and the session's end."""
        if self.writer is not None:
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            self.scalars(metrics, step)
            self.writer.file_writer.add_summary(hparams_summary({}, {})[2])

    # files ---------------------------------------------------------------------------
    def epoch_metrics(self, record: dict) -> None:
        """One epoch's record as a line of metrics.jsonl (rank 0), and its numbers to the trackers at step = epoch."""
        if self.enabled:
            self.run.append_metrics(record)
            numbers = {k: v for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))}
            for tracker in self.trackers:
                tracker.log_metrics(numbers, step=record["epoch"])

    def config(self, config: dict) -> None:
        """The run's config (nested dicts) as the trackers' parameters (``hparam_values`` keys)."""
        for tracker in self.trackers:
            tracker.log_params(hparam_values(config))

    def run_state(self, **state) -> None:
        """run_state.json: state (running, finished, preempted, failed, diverged), epoch, epochs, best_top1."""
        if self.enabled:
            self.run.write_run_state(**state)
            self._state = state.get("state", "")

    def close(self) -> None:
        """Flush and close the TensorBoard writer; end the trackers' runs with the run's last state."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        for tracker in self.trackers:
            tracker.finish(self._state)
        self.trackers = []


def hparam_values(d: dict, prefix: str = "") -> dict:
    """Nested config dict -> {'train.epochs': 270, ...} with TensorBoard-friendly values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(hparam_values(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out
