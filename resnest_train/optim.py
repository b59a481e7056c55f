"""Parameter groups, the optimizer (SGD, or timm's LAMB / LARS) and the per-iteration learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from timm.optim import Lamb, Lars
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
    schedule: str = "cosine",
    step_epochs: Sequence[int] = (),
    step_gamma: float = 0.1,
) -> float:
    """LR at optimizer step `step` (0-based): linear warm-up from `warmup_start` to `peak`, then the schedule.

    ``cosine`` (the paper's, timm's ``CosineLRScheduler`` with ``lr_min = final``): from `peak` down
    to `final` at the last step. ``step`` (step decay: torchvision's ``MultiStepLR``; Goyal et al.):
    `peak` times `step_gamma` for each epoch of `step_epochs` already begun, counted from the start
    of the run (a milestone at epoch 30 cuts the LR from step ``30 x steps_per_epoch`` on), never
    below `final`. After warm-up `final` is a floor of both when ``final <= peak``
    (``preflight.check_final_lr``). Raises ValueError for another schedule.
    """
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return warmup_start + (peak - warmup_start) * step / warmup
    if schedule == "step":
        drops = sum(step >= milestone * steps_per_epoch for milestone in step_epochs)
        return max(final, peak * step_gamma**drops)
    if schedule != "cosine":
        raise ValueError(f"unknown LR schedule {schedule!r}: cosine or step")
    total = epochs * steps_per_epoch
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

    Each group also records ``norm_bias``: True for the group of norm parameters and biases that
    ``no_decay_norm_bias`` splits off (LAMB and LARS leave those out of their trust ratio).

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
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_mult": mult, "norm_bias": not decays}
        for (mult, decays), params in ordered
    ]


def build_optimizer(
    model: nn.Module, optim_cfg, lr: float, lr_mult: Callable[[str], float] | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``optim_cfg.name`` over ``param_groups(model, ...)``; ``lr_mult`` as there.

    ``sgd``: torch's SGD (momentum, Nesterov), the paper's. ``lamb``: timm's ``Lamb`` with
    ``betas``; its own global gradient-norm clipping (``max_grad_norm``) is off and
    ``optim.clip_grad_norm`` clips instead (NVLAMB's clipping at 1.0 is ``optim.clip_grad_norm=1.0``,
    up to torch's 1e-6 in the clip factor). ``lars``: timm's
    ``Lars`` (momentum, Nesterov, ``trust_coeff``). Both scale each parameter's update by a trust
    ratio (layer-wise adaptation) except in the ``norm_bias`` groups, which step as plain SGD with
    momentum (``lars``) or Adam (``lamb``), as MLPerf's LARS leaves BatchNorm parameters and biases
    out of both weight decay and adaptation. timm decides adaptation per group by
    ``weight_decay != 0 or always_adapt``; each group's ``always_adapt`` is set to
    ``not norm_bias``, so the rule holds at ``optim.weight_decay=0`` too. Raises ValueError for
    another name (``preflight.CHOICES`` refuses it first).
    """
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.no_decay_norm_bias, lr_mult)
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)
    for group in groups:
        group["always_adapt"] = not group["norm_bias"]
    if optim_cfg.name == "lamb":
        return Lamb(
            groups, lr=lr, betas=tuple(optim_cfg.betas), weight_decay=optim_cfg.weight_decay, max_grad_norm=None
        )
    if optim_cfg.name == "lars":
        return Lars(
            groups,
            lr=lr,
            momentum=optim_cfg.momentum,
            nesterov=optim_cfg.nesterov,
            weight_decay=optim_cfg.weight_decay,
            trust_coeff=optim_cfg.trust_coeff,
        )
    raise ValueError(f"unknown optimizer {optim_cfg.name!r}: sgd, lamb or lars")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr`` times its ``lr_mult`` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
