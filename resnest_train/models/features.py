"""ResNeSt as a backbone: the feature maps of its stages, for detection and segmentation.

``create_model(name, features_only=True, out_indices=(1, 2, 3, 4))`` returns a
``ResNeStFeatures``: the classifier's stem and stages under their own names (so the body's
state_dict keys are the classifier's, minus ``fc``), whose forward returns the maps of the
chosen stages, as timm's ``features_only`` models do:

======  ============  ===========================  ======
index   module        channels                     stride
======  ============  ===========================  ======
0       ``act1``      stem width (64 or 128)       2
1       ``layer1``    256                          4
2       ``layer2``    512                          8
3       ``layer3``    1024                         16
4       ``layer4``    2048                         32
======  ============  ===========================  ======

``feature_info`` is timm's ``FeatureInfo`` (``.channels()``, ``.reduction()``,
``.module_name()``); ``channels`` and ``reductions`` are the same lists for the chosen
indices. Stages after the last chosen one are not built.
"""

from collections.abc import Sequence

import torch
from timm.models import FeatureInfo
from torch import nn

STAGE_NAMES = ("act1", "layer1", "layer2", "layer3", "layer4")


def check_out_indices(out_indices: Sequence[int]) -> tuple:
    """``out_indices`` as a sorted tuple of distinct stage indices in 0..4; ValueError otherwise."""
    indices = tuple(out_indices) if isinstance(out_indices, (list, tuple)) else None
    if (
        not indices
        or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= 4 for i in indices)
        or len(set(indices)) != len(indices)
        or list(indices) != sorted(indices)
    ):
        raise ValueError(
            f"out_indices must be increasing distinct stage indices in 0..4 (0: stem, stride 2; "
            f"1-4: layer1-layer4, strides 4-32), got {out_indices!r}"
        )
    return indices


class ResNeStFeatures(nn.Module):
    """The stem and stages 1..max(out_indices) of a ResNeSt; forward returns a list of maps.

    ``forward(x)``: x (B, in_chans, H, W) -> one tensor per index in ``out_indices``, of shape
    (B, channels[i], ceil(H / reductions[i]), ceil(W / reductions[i])) for H, W multiples
    of 32.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] = (1, 2, 3, 4)):
        super().__init__()
        self.out_indices = check_out_indices(out_indices)
        self.conv1, self.bn1, self.act1 = model.conv1, model.bn1, model.act1
        self.last_stage = self.out_indices[-1]
        if self.last_stage >= 1:
            self.maxpool = model.maxpool
        for i in range(1, self.last_stage + 1):
            self.add_module(f"layer{i}", getattr(model, f"layer{i}"))
        stem_chs = model.bn1.num_features
        info = [dict(num_chs=stem_chs, reduction=2, module="act1")]
        info += [dict(num_chs=64 * 2**i * 4, reduction=4 * 2**i, module=f"layer{i + 1}") for i in range(4)]
        self.feature_info = FeatureInfo(info, self.out_indices)
        self.channels: list[int] = self.feature_info.channels()
        self.reductions: list[int] = self.feature_info.reduction()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        features = [x] if 0 in self.out_indices else []
        if self.last_stage >= 1:
            x = self.maxpool(x)
            for i in range(1, self.last_stage + 1):
                x = getattr(self, f"layer{i}")(x)
                if i in self.out_indices:
                    features.append(x)
        return features

    def body_state_dict(self, state: dict) -> dict:
        """The entries of a classifier's state_dict that this body holds: ``fc.*`` and the
        keys of stages it does not build left out, everything else kept as it is (so a key
        that fits no module still fails a strict load)."""
        unused = ("fc.",) + tuple(f"layer{i}." for i in range(self.last_stage + 1, 5))
        return {k: v for k, v in state.items() if not k.startswith(unused)}

    def load_classifier_state_dict(self, state: dict, strict: bool = True):
        """Load a classification model's state_dict (the official release's or ours) into the
        body: ``body_state_dict(state)`` with ``load_state_dict(strict=strict)``."""
        return self.load_state_dict(self.body_state_dict(state), strict=strict)
