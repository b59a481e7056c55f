"""Parameter groups, the optimizer and the per-iteration learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def peak_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: base_lr is the LR for 256 images."""
    return base_lr * global_batch / 256


def lr_at(
    step: int,
    *,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float,
    peak: float,
    warmup_start: float = 0.0,
    final: float = 0.0,
) -> float:
    """LR at optimizer step `step` (0-based): linear warm-up from `warmup_start`, then cosine to `final`."""
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return warmup_start + (peak - warmup_start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_norm_bias: bool = True,
    lr_mult: Callable[[str], float] | None = None,
) -> list[dict]:
    """The trainable parameters (``requires_grad``) in groups of one weight decay and one LR multiplier.

    Without ``no_decay_norm_bias`` every parameter decays; with it (the default) every norm
    parameter and every bias does not. Norm layers are found by type, not by name: the
    official code matched names containing 'bn', which missed the deep stem's and the
    shortcuts' BatchNorms. ``lr_mult(name)`` gives a parameter's LR multiplier (fine-tuning,
    ``finetune.lr_mult``); each group records it as ``lr_mult`` and ``set_lr`` applies it.

    Order: the multiplier-1 groups first (so ``param_groups[0]`` runs at the scheduled LR),
    then by falling multiplier; within one multiplier the decaying group before the other.
    Without multipliers that is ``[decay, no_decay]`` (or one group), as before they existed.
    Empty groups are left out.
    """
    no_decay_ids = set()
    if no_decay_norm_bias:
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, NORM_TYPES) or name == "bias":
                    no_decay_ids.add(id(p))
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            mult = float(lr_mult(name)) if lr_mult is not None else 1.0
            groups.setdefault((mult, id(p) not in no_decay_ids), []).append(p)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0] != 1.0, -item[0][0], not item[0][1]))
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_mult": mult}
        for (mult, decays), params in ordered
    ]


def build_optimizer(
    model: nn.Module, optim_cfg, lr: float, lr_mult: Callable[[str], float] | None = None
) -> torch.optim.Optimizer:
    """SGD over ``param_groups(model, ...)``; ``lr_mult`` as there."""
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.no_decay_norm_bias, lr_mult)
    return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr`` times its ``lr_mult`` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
