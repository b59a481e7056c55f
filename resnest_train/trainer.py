"""The training step and its state, in one home (the shape of NVIDIA's ConvNets Executor/Trainer).

A ``Trainer`` holds the bare model (what checkpoints hold), ``net`` (the same model wrapped by
DDP and/or ``torch.compile``: what runs the forward pass), the optimizer, the grad scaler, the
EMA, the loss, where the run stands (``epoch``, ``step_in_epoch``, ``step``, ``best_top1``) and
the epoch's running loss. ``train_step`` trains on one micro-batch and, after the last one of
an optimizer step, steps; ``state_dict`` / ``load_state_dict`` are what a checkpoint holds.

The grad scaler is ``torch.amp.GradScaler(enabled=amp == "fp16")``: disabled, each of its
methods passes through (nanoGPT's ``train.py`` does the same), so the step has one code path.
The loss is cross-entropy with ``train.label_smoothing`` (the paper's 0.1), or the soft-target
cross-entropy of timm's ``Mixup`` (mixup/CutMix, whose targets carry the smoothing) until
``train.mixup_off_epoch``.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import DistConfig, TrainConfig
from .distributed import DistInfo, all_reduce_sum


def autocast(amp: str, device: torch.device):
    """``torch.autocast`` to bf16 or fp16 on ``device.type`` for ``train.amp``; a null context for "none"."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def step_seed(seed: int, rank: int, step: int) -> None:
    """Seed every RNG the loop uses (torch, numpy, random) from (seed, rank, optimizer step)."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[1]))


def build_mixup(train: TrainConfig, num_classes: int):
    """timm's ``Mixup`` for ``train.mixup_alpha`` / ``cutmix_alpha`` (with label smoothing), or None when both are 0."""
    if train.mixup_alpha <= 0 and train.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=train.mixup_alpha,
        cutmix_alpha=train.cutmix_alpha,
        prob=train.mixup_prob,
        label_smoothing=train.label_smoothing,
        num_classes=num_classes,
    )


def soft_target_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets: logits ``[B, C]``, target ``[B, C]`` rows summing to 1; mean over B."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def build_ema(model: nn.Module, decay: float, saved_ema: dict | None = None):
    """timm's ModelEmaV3 of `model`, then the checkpoint's EMA state `saved_ema` if there is one.

    ModelEmaV3 copies the model's current weights, so it is built after they are final (loaded
    from model.weights or restored): an EMA switched on at resume starts at the restored weights.
    """
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay)
    if saved_ema:
        ema.load_state_dict(saved_ema)
    return ema


class RunningLoss:
    """The epoch's training loss so far, over every rank: a sum of per-micro-batch losses and their count.

    ``add`` accumulates on the device (no host sync). ``sync`` (collective: every rank calls it at
    the same point) folds every rank's part into ``total`` with one all-reduce; ``reset`` starts an
    epoch, or a resumed one at a checkpoint's (sum, count).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self, total_sum: float = 0.0, total_count: int = 0) -> None:
        """Start over at (``total_sum``, ``total_count``), the totals over every rank."""
        self.total_sum, self.total_count = float(total_sum), int(total_count)
        self.local_sum = torch.zeros((), device=self.device, dtype=torch.float64)  # this rank's, since the last sync
        self.local_count = 0

    def add(self, loss: torch.Tensor) -> None:
        """Add one micro-batch's loss (0-dim tensor on the device)."""
        self.local_sum += loss.detach()
        self.local_count += 1

    def sync(self) -> None:
        """Fold every rank's part into the totals: one all-reduce. Collective."""
        t = torch.stack(
            [self.local_sum, torch.full((), float(self.local_count), device=self.device, dtype=torch.float64)]
        )
        total, n = all_reduce_sum(t).tolist()
        self.reset(self.total_sum + total, self.total_count + int(n))

    def mean(self) -> float:
        """The mean loss over what was synced (0 before the first loss)."""
        return self.total_sum / max(self.total_count, 1)


class Trainer:
    """The model, its optimizer, grad scaler and EMA, the loss, and where the run stands.

    ``model`` is the bare module on ``device`` (checkpoints hold its state_dict); ``wrap`` puts
    DDP and/or ``torch.compile`` around it as ``net``; ``enable_ema`` adds the EMA after the
    weights are final. ``accum_steps`` micro-batches make one optimizer step.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train: TrainConfig,
        clip_grad_norm: float | None,
        device: torch.device,
        num_classes: int,
        distributed: bool = False,
    ):
        self.model = model
        self.net = model
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.amp == "fp16")
        self.ema = None
        self.mixup = build_mixup(train, num_classes)
        self.train_cfg, self.clip_grad_norm, self.device, self.distributed = train, clip_grad_norm, device, distributed
        self.epoch = 0  # epoch in progress (0-based)
        self.step_in_epoch = 0  # optimizer steps done in that epoch
        self.step = 0  # optimizer steps done in the run
        self.best_top1: float | None = None  # best val top-1 so far, in percent
        self.running_loss = RunningLoss(device)

    def wrap(self, dist: DistInfo, dist_cfg: DistConfig) -> None:
        """``net`` = DDP (under torchrun) and then ``torch.compile`` (``train.compile``) around ``model``.

        Call after the weights are final: DDP broadcasts rank 0's once, when it is built.
        """
        if dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                bucket_cap_mb=dist_cfg.bucket_cap_mb,
                find_unused_parameters=dist_cfg.find_unused_parameters,
            )
        if self.train_cfg.compile:
            self.net = torch.compile(self.net)

    def enable_ema(self, decay: float, saved_ema: dict | None = None) -> None:
        """The EMA of the current weights (``build_ema``), or of a checkpoint's EMA state."""
        self.ema = build_ema(self.model, decay, saved_ema)

    def uses_mixup(self) -> bool:
        """Mixup/CutMix in this epoch: configured, and before ``train.mixup_off_epoch`` (0: always)."""
        off = self.train_cfg.mixup_off_epoch
        return self.mixup is not None and (off == 0 or self.epoch < off)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, accumulate: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; then, unless ``accumulate``, the optimizer step.

        ``images`` float ``[B, 3, H, W]``, ``labels`` int64 ``[B]`` on the device. The gradient of
        ``loss / accum_steps`` is added up; with ``accumulate`` (more micro-batches of this step
        follow) DDP skips its all-reduce. The optimizer step unscales (fp16), clips to
        ``optim.clip_grad_norm``, steps, updates the EMA and counts the step. Returns the
        micro-batch's loss (0-dim, detached, not read back: no host sync).
        """
        mixup = self.uses_mixup()
        if mixup:
            images, targets = self.mixup(images, labels)
        no_sync = self.net.no_sync() if accumulate and self.distributed else contextlib.nullcontext()
        with no_sync:
            with autocast(self.train_cfg.amp, self.device):
                logits = self.net(images)
            if mixup:
                loss = soft_target_loss(logits, targets)
            else:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.train_cfg.label_smoothing)
            self.scaler.scale(loss / self.train_cfg.accum_steps).backward()
        loss = loss.detach()
        self.running_loss.add(loss)
        if not accumulate:
            self._optimizer_step()
        return loss

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        self.step += 1
        self.step_in_epoch += 1

    def set_position(self, epoch: int, step_in_epoch: int, step: int, loss_sum: float, loss_count: int) -> None:
        """Stand at (epoch, step_in_epoch, step) with the epoch's running loss so far (over all ranks)."""
        self.epoch, self.step_in_epoch, self.step = epoch, step_in_epoch, step
        self.running_loss.reset(loss_sum, loss_count)

    def state_dict(self) -> dict:
        """What a checkpoint holds of the trainer; the running loss as last synced (``RunningLoss.sync``)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "step": self.step,
            "best_top1": self.best_top1,
            "loss_sum": self.running_loss.total_sum,
            "loss_count": self.running_loss.total_count,
        }

    def load_state_dict(self, saved: dict) -> None:
        """Restore model, optimizer, scaler (fp16), position and running loss from a checkpoint.

        The EMA is not touched: ``enable_ema`` builds it afterwards from the restored weights and
        the checkpoint's EMA state.
        """
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler.is_enabled() and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.best_top1 = saved["best_top1"]
        self.set_position(saved["epoch"], saved["step_in_epoch"], saved["step"], saved["loss_sum"], saved["loss_count"])
