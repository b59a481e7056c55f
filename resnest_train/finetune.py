"""Transfer learning: freeze the first stages, freeze BatchNorm, per-stage learning rates.

A ResNeSt (classifier or ``features_only`` body) is counted in stages by its module names:
stage 0 is the stem (``conv1``, ``bn1``), stages 1-4 are ``layer1``-``layer4``, and stage 5
is everything else: the classifier ``fc``, or a detector's or segmenter's new layers.

* ``freeze_stages(model, n)``: stages ``0..n-1`` stop training: their parameters get
  ``requires_grad=False`` and their BatchNorms become ``FrozenBatchNorm2d`` (the stats stay
  the pretrained ones in ``model.train()`` too). This is what Detectron2's
  ``FREEZE_AT`` / mmdetection's ``frozen_stages`` do, counting the stem as a stage.
* ``freeze_batch_norm(model)``: every BatchNorm normalises with its pretrained statistics and
  keeps its affine parameters: for batches too small to estimate statistics (detection,
  segmentation, a small fine-tuning set), as Detectron2's ``FrozenBN`` and torchvision's
  detection backbones do.
* ``lr_multiplier(name, ...)``: stage ``s < 5`` learns at ``body_lr_mult * layer_decay ** (5 - s)``
  times the scheduled LR, the new head at 1x: a smaller LR for the pretrained body, or a
  layer-wise decay (BEiT; timm's ``param_groups_layer_decay``) that changes the early
  stages least.

The trainer applies ``apply(model, cfg.finetune)`` in ``engine.build_model`` after loading
``model.weights``, and passes ``lr_mult_fn(cfg.finetune)`` to the optimizer's parameter groups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

HEAD_STAGE = 5
STEM = ("conv1", "bn1")


class FrozenBatchNorm2d(nn.Module):
    """A BatchNorm2d fixed at its statistics and affine parameters, in train() as in eval().

    Computes what an ``nn.BatchNorm2d`` in eval mode computes (the same ``F.batch_norm``
    call, bit for bit). ``weight`` and ``bias`` are parameters with ``requires_grad=False``
    and ``num_batches_tracked`` stays, so the state_dict keys are those of ``BatchNorm2d``:
    a checkpoint of a frozen model loads strictly into an unfrozen one and back (torchvision's
    and timm's FrozenBatchNorm2d drop ``num_batches_tracked`` and hold buffers). Not a
    ``_BatchNorm`` subclass, so ``SyncBatchNorm.convert_sync_batchnorm`` leaves it frozen.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=False)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn`` (its statistics, affine parameters, device and dtype)."""
        frozen = cls(bn.num_features, bn.eps).to(device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        frozen.load_state_dict(bn.state_dict())
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a ``FrozenBatchNorm2d`` copy, in place.

    Returns ``module`` (or the frozen copy when ``module`` itself is a BatchNorm2d).
    """
    if type(module) is nn.BatchNorm2d:
        return FrozenBatchNorm2d.from_batch_norm(module)
    for name, child in module.named_children():
        frozen = freeze_batch_norm(child)
        if frozen is not child:
            setattr(module, name, frozen)
    return module


def stage_of(name: str) -> int:
    """The stage of a parameter or module name: 0 stem, 1-4 layer1-layer4, 5 anything else (the head)."""
    first = name.split(".", 1)[0]
    if first in STEM:
        return 0
    if first.startswith("layer") and first[5:].isdigit() and 1 <= int(first[5:]) <= 4:
        return int(first[5:])
    return HEAD_STAGE


def freeze_stages(model: nn.Module, n: int) -> nn.Module:
    """Freeze stages ``0..n-1`` of ``model`` in place (parameters and BatchNorm statistics); returns it.

    ``n`` = 0 freezes nothing, 1 the stem, 2 the stem and layer1, ..., 5 the whole body.
    """
    if not 0 <= n <= HEAD_STAGE:
        raise ValueError(f"freeze_stages takes 0..{HEAD_STAGE}, got {n}")
    for name, child in list(model.named_children()):
        if stage_of(name) < n:
            for p in child.parameters():
                p.requires_grad_(False)
            frozen = freeze_batch_norm(child)
            if frozen is not child:
                setattr(model, name, frozen)
    return model


def lr_multiplier(name: str, body_lr_mult: float = 1.0, layer_decay: float = 1.0) -> float:
    """The LR multiplier of parameter ``name``: 1 for the head (stage 5), else
    ``body_lr_mult * layer_decay ** (5 - stage)``."""
    stage = stage_of(name)
    if stage == HEAD_STAGE:
        return 1.0
    return body_lr_mult * layer_decay ** (HEAD_STAGE - stage)


def lr_mult_fn(finetune_cfg) -> Callable[[str], float] | None:
    """``name -> multiplier`` for ``optim.param_groups`` from a FinetuneConfig; None when every
    multiplier is 1 (the optimizer groups are then exactly those of a plain run)."""
    body, decay = finetune_cfg.body_lr_mult, finetune_cfg.layer_decay
    if body == 1.0 and decay == 1.0:
        return None
    return lambda name: lr_multiplier(name, body, decay)


def apply(model: nn.Module, finetune_cfg) -> nn.Module:
    """Freeze what a FinetuneConfig asks (``freeze_stages``, ``freeze_bn``) in ``model``, in place."""
    freeze_stages(model, finetune_cfg.freeze_stages)
    if finetune_cfg.freeze_bn:
        freeze_batch_norm(model)
    return model
