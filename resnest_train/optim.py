"""Parameter groups, the optimizer and the per-iteration learning rate."""
from __future__ import annotations

import math

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def peak_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: base_lr is the LR for 256 images."""
    return base_lr * global_batch / 256


def lr_at(step: int, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, peak: float,
          warmup_start: float = 0.0, final: float = 0.0) -> float:
    """LR at optimizer step `step` (0-based): linear warm-up from `warmup_start`, then cosine to `final`."""
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return warmup_start + (peak - warmup_start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True) -> list[dict]:
    """Two groups: weights that decay, and every norm parameter and every bias, which do not.

    Norm layers are found by type, not by name: the official code matched names containing
    'bn', which missed the deep stem's and the shortcuts' BatchNorms.
    """
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    no_decay_ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, NORM_TYPES) or name == "bias":
                no_decay_ids.add(id(p))
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, optim_cfg, lr: float) -> torch.optim.Optimizer:
    """SGD with ``optim.momentum`` (Nesterov by default) over ``param_groups`` at learning rate ``lr``."""
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.no_decay_norm_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (the loop sets each step's, ``lr_at``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
