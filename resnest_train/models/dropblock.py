"""DropBlock as the released ResNeSt recipe uses it: where it sits, and its schedule.

The released weights were trained with the Gluon code, which drops blocks in layer3 and
layer4 at three sites per bottleneck: after bn1, after the split-attention output
(`splat`; radix 0: after bn2) and after bn3 (before the residual add), block size 3, with
the probability ramped linearly from 0 to 0.1 over training.

The op: not timm's `DropBlock2d` as is. Its gamma is the Gluon one
(`p * H*W / bs^2 / ((H-bs+1) * (W-bs+1))`), but it keeps the probability as a Python
float, so under torch.compile every new value is a guard failure and a recompile: a
270-epoch ramp hits dynamo's recompile limit after 8 epochs and the model silently falls
back to eager. `DropBlock` below keeps timm's algorithm (same gamma, max-pool expansion,
keep-mask renormalisation) with the probability in a tensor buffer, which compiled graphs
read at run time, and a Python `active` flag that changes at most once (0 -> >0).
The mask is drawn per sample and per channel: Gluon draws one (1, C, H, W) mask shared by
the whole per-GPU batch; a per-sample mask is the DropBlock paper's, with the same
expected drop rate.
"""

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SITES = ("bn1", "splat", "bn3")
SCHEDULES = ("linear", "constant")
_KEYS = ("stages", "sites", "block_size", "prob", "schedule")


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018) with the drop probability in a buffer."""

    def __init__(self, prob: float = 0.0, block_size: int = 3):
        super().__init__()
        self.block_size = block_size
        # Not persistent: official state_dicts have no such key and must load strict.
        self.register_buffer("drop_prob", torch.tensor(float(prob)), persistent=False)
        self.active = prob > 0

    def set_prob(self, prob: float) -> None:
        """Set the drop probability (the loop ramps it per epoch, ``dropblock_prob``)."""
        self.drop_prob.fill_(float(prob))
        self.active = prob > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.active:
            return x
        return x * self.keep_mask(x).to(x.dtype)

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The float32 (B, C, H, W) multiplier for ``x``: 0 in dropped blocks, elsewhere
        numel / kept so the mean is kept; in ``x``'s memory format (NCHW or channels_last),
        so the product reads both tensors in the same order."""
        B, C, H, W = x.shape
        kh, kw = min(self.block_size, H), min(self.block_size, W)
        gamma = self.drop_prob * (H * W / (kh * kw) / ((H - kh + 1) * (W - kw + 1)))
        # The mask in float32 whatever x is (AMP): a bf16 sum of keep cannot count units.
        # Nothing here requires grad (rand, a buffer), so no no_grad() block is needed.
        seeds = (torch.rand_like(x, dtype=torch.float32) < gamma).float()
        dropped = F.max_pool2d(seeds, (kh, kw), stride=1, padding=(kh // 2, kw // 2))
        if kh % 2 == 0 or kw % 2 == 0:  # even blocks pool one row/column too many
            dropped = dropped[..., (kh + 1) % 2 :, (kw + 1) % 2 :]
        keep = 1.0 - dropped
        return keep * (keep.sum().clamp(min=1.0).reciprocal() * keep.numel())

    def extra_repr(self) -> str:
        """``drop_prob`` and ``block_size`` for ``print(model)``."""
        return f"prob={float(self.drop_prob):.4f}, block_size={self.block_size}"


def parse_dropblock(cfg: Any | None) -> dict | None:
    """Validate a `dropblock=` override; return {stages, sites, block_size, prob} or None.

    Accepts a mapping or a dataclass with the keys stages (1..4), sites (of bn1, splat,
    bn3), block_size, prob (the initial probability) and schedule (read by the trainer
    through `dropblock_prob`; accepted so a config section can be passed whole).
    """
    if cfg is None:
        return None
    if hasattr(cfg, "__dataclass_fields__"):
        cfg = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    if not isinstance(cfg, Mapping):
        raise ValueError(f"dropblock must be a dict with keys {list(_KEYS)}, got {cfg!r}")
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise ValueError(f"dropblock: unknown key(s) {unknown}; valid keys: {list(_KEYS)}")
    stages = [int(s) for s in cfg.get("stages", (3, 4))]
    sites = [str(s) for s in cfg.get("sites", SITES)]
    block_size = cfg.get("block_size", 3)
    prob = float(cfg.get("prob", 0.0))
    schedule = cfg.get("schedule", "linear")
    if any(s not in (1, 2, 3, 4) for s in stages):
        raise ValueError(f"dropblock.stages must be within 1..4 (layer1..layer4), got {stages}")
    if any(s not in SITES for s in sites):
        raise ValueError(f"dropblock.sites must be among {list(SITES)}, got {sites}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"dropblock.block_size must be a positive int, got {block_size!r}")
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"dropblock.prob must be in [0, 1), got {prob}")
    if schedule not in SCHEDULES:
        raise ValueError(f"dropblock.schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    return dict(stages=sorted(set(stages)), sites=[s for s in SITES if s in sites], block_size=block_size, prob=prob)


def set_dropblock_prob(model: nn.Module, prob: float) -> int:
    """Set every DropBlock in `model` (also inside DDP / torch.compile wrappers) to `prob`.

    Returns how many DropBlock layers were set (0 for a model built without DropBlock).
    """
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"DropBlock probability must be in [0, 1), got {prob}")
    n = 0
    for m in model.modules():
        if isinstance(m, DropBlock):
            m.set_prob(prob)
            n += 1
    return n


def dropblock_prob(epoch: int, epochs: int, final_prob: float, schedule: str = "linear") -> float:
    """The DropBlock probability for 0-based `epoch` of `epochs`.

    linear (the recipe, Gluon's DropBlockScheduler from 0): final_prob * (epoch + 1) / epochs,
    so the last epoch trains at final_prob. constant: final_prob throughout.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"DropBlock schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if schedule == "constant":
        return float(final_prob)
    return float(final_prob) * min(epoch + 1, epochs) / epochs
