"""ResNeSt as the backbone of torchvision's detection and segmentation models.

The paper's transfer results put ResNeSt under Faster/Cascade R-CNN (with an FPN) and
DeepLabV3. This module plugs a ``features_only`` ResNeSt (``models/features.py``) into
torchvision's models:

* ``ResNeStFPN``: the stages' maps through torchvision's ``FeaturePyramidNetwork`` (plus the
  max-pooled level "pool"), with the ``out_channels`` attribute torchvision's detectors read;
  the same thing ``torchvision.models.detection.backbone_utils.BackboneWithFPN`` builds
  around a torchvision ResNet.
* ``resnest_fpn_backbone`` / ``resnest_faster_rcnn``: build one from a model name and
  pretrained weights (a resnest-train checkpoint, its EMA weights, or an official state_dict),
  with the fine-tuning controls of ``finetune.py`` (frozen stages, frozen BatchNorm).
* ``NamedFeatures``: the maps as a dict with the names a torchvision segmentation model
  reads (``DeepLabV3(NamedFeatures(body, ("out",)), DeepLabHead(2048, classes))``).

docs/after_training.md shows both in use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from . import checkpoint, finetune
from .errors import UserError
from .models import create_model
from .models.features import ResNeStFeatures


def load_body_weights(body: ResNeStFeatures, path: str, use_ema: bool = False) -> None:
    """Load a classifier's weights from the file ``path`` into ``body``, strictly on the body.

    ``path`` holds what ``model.weights`` takes (``checkpoint.weights_state_dict``): an
    official state_dict, one with wrapper prefixes, or a resnest-train checkpoint (its model
    or, with ``use_ema``, its EMA weights). ``fc.*`` and the stages the body does not build
    are left out; every other key must match. Raises UserError listing the mismatch.
    """
    state = checkpoint.weights_state_dict(checkpoint.load(path, key="model.weights"), path, use_ema)
    wanted = body.body_state_dict(state)
    mismatch = checkpoint.state_dict_mismatch(wanted, body.state_dict())
    if mismatch:
        raise UserError(
            f"The weights in {path} do not fit this backbone ({mismatch}). Build it with the model "
            "name and architecture overrides of the run (or official model) that saved the file."
        )
    body.load_state_dict(wanted, strict=True)


class NamedFeatures(nn.Module):
    """``body``'s maps as an OrderedDict ``{names[i]: map i}``, the form torchvision's
    ``IntermediateLayerGetter`` gives its segmentation models (DeepLabV3, FCN read "out"
    and, with an auxiliary head, "aux")."""

    def __init__(self, body: ResNeStFeatures, names: Sequence[str]):
        super().__init__()
        if len(names) != len(body.out_indices):
            raise ValueError(
                f"{len(body.out_indices)} feature maps (out_indices {body.out_indices}) need as many "
                f"names, got {list(names)}"
            )
        self.body, self.names = body, tuple(names)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(self.names, self.body(x)))


class ResNeStFPN(nn.Module):
    """ResNeSt stages -> torchvision FeaturePyramidNetwork: a backbone for torchvision's detectors.

    ``forward(x)`` returns an OrderedDict of ``out_channels``-wide maps "0", "1", ... (one per
    chosen stage, strides as in ``body.reductions``) and "pool" (the last one max-pooled by
    2), the names and strides torchvision's default anchor generator and RoI pooler expect
    for four stages.
    """

    def __init__(self, body: ResNeStFeatures, out_channels: int = 256):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def resnest_backbone(
    name: str,
    weights: str = "",
    use_ema: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    freeze_stages: int = 0,
    freeze_bn: bool = False,
    **overrides,
) -> ResNeStFeatures:
    """``create_model(name, features_only=True, out_indices=...)`` with ``weights`` loaded
    (``load_body_weights``) and then ``finetune.freeze_stages`` / ``finetune.freeze_batch_norm``.

    torchvision's pretrained detection backbones freeze the stem and the first stage and every
    BatchNorm: ``freeze_stages=2, freeze_bn=True`` here. Freezing needs ``weights``.
    """
    if (freeze_stages or freeze_bn) and not weights:
        raise UserError(
            "Freezing a backbone (freeze_stages, freeze_bn) keeps its initial weights: give pretrained "
            "weights, or train every layer (freeze_stages=0, freeze_bn=False)."
        )
    body = create_model(name, features_only=True, out_indices=out_indices, **overrides)
    if weights:
        load_body_weights(body, weights, use_ema)
    finetune.freeze_stages(body, freeze_stages)
    if freeze_bn:
        finetune.freeze_batch_norm(body)
    return body


def resnest_fpn_backbone(
    name: str,
    weights: str = "",
    use_ema: bool = False,
    freeze_stages: int = 0,
    freeze_bn: bool = False,
    out_channels: int = 256,
    **overrides,
) -> ResNeStFPN:
    """A ``ResNeStFPN`` over layer1-layer4 of ``resnest_backbone(name, ...)``."""
    body = resnest_backbone(name, weights, use_ema, (1, 2, 3, 4), freeze_stages, freeze_bn, **overrides)
    return ResNeStFPN(body, out_channels)


def resnest_faster_rcnn(
    name: str,
    num_classes: int,
    weights: str = "",
    use_ema: bool = False,
    freeze_stages: int = 0,
    freeze_bn: bool = False,
    **detector_kwargs,
) -> nn.Module:
    """torchvision's ``FasterRCNN`` (RPN + RoI heads, ``num_classes`` including the background)
    on ``resnest_fpn_backbone(name, weights, ...)``. ``detector_kwargs`` go to FasterRCNN
    (e.g. ``min_size``/``max_size``, the resize of its input transform: 800/1333 by default)."""
    from torchvision.models.detection import FasterRCNN

    backbone = resnest_fpn_backbone(name, weights, use_ema, freeze_stages, freeze_bn)
    return FasterRCNN(backbone, num_classes=num_classes, **detector_kwargs)
