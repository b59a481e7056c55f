"""ResNeSt and its ResNet-D baseline: the bottleneck, the network and the named variants.

Module names follow the official release (github.com/zhanghang1989/ResNeSt), which timm's
`resnest*` models share, so published weights load with strict=True.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .common import dropblock_at, init_conv_bn
from .dropblock import parse_dropblock
from .families import FAMILY_OVERRIDE_KEYS, FAMILY_ROWS, create_family_model, family_spec
from .features import ResNeStFeatures, check_out_indices
from .splat import SplitAttention


class ModelError(UserError, ValueError):
    """An unknown model name or a bad override; the message lists what is valid."""


# ---------------------------------------------------------------------------------------
# The named variants: one row each. Keys a row leaves out take _DEFAULTS.
# default_crop is the train/eval crop of the recipe (recipe.md, model table).
# ---------------------------------------------------------------------------------------

_DEFAULTS = dict(
    layers=(3, 4, 6, 3),
    radix=2,
    cardinality=1,
    bottleneck_width=64,
    stem_width=32,
    deep_stem=True,
    avg_down=True,
    avd=True,
    avd_first=False,
    final_drop=0.0,
    default_crop=224,
)

_ROWS = {
    # The ResNet-D baseline (the paper's 0s1x64d): stride in the 3x3 conv, no avd.
    "resnet50d": dict(radix=0, avd=False),
    "resnest14": dict(layers=(1, 1, 1, 1)),
    "resnest26": dict(layers=(2, 2, 2, 2)),
    "resnest50": dict(),
    "resnest101": dict(layers=(3, 4, 23, 3), stem_width=64, default_crop=256),
    "resnest200": dict(layers=(3, 24, 36, 3), stem_width=64, final_drop=0.2, default_crop=320),
    "resnest269": dict(layers=(3, 30, 48, 8), stem_width=64, final_drop=0.2, default_crop=416),
    # The paper's ablation ("fast": avd before the 3x3 conv): {radix}s{cardinality}x{width}d.
    "resnest50_fast_1s1x64d": dict(radix=1, cardinality=1, bottleneck_width=64, avd_first=True),
    "resnest50_fast_2s1x64d": dict(radix=2, cardinality=1, bottleneck_width=64, avd_first=True),
    "resnest50_fast_4s1x64d": dict(radix=4, cardinality=1, bottleneck_width=64, avd_first=True),
    "resnest50_fast_1s2x40d": dict(radix=1, cardinality=2, bottleneck_width=40, avd_first=True),
    "resnest50_fast_2s2x40d": dict(radix=2, cardinality=2, bottleneck_width=40, avd_first=True),
    "resnest50_fast_4s2x40d": dict(radix=4, cardinality=2, bottleneck_width=40, avd_first=True),
    "resnest50_fast_1s4x24d": dict(radix=1, cardinality=4, bottleneck_width=24, avd_first=True),
}

ARCH_KEYS = (
    "layers",
    "radix",
    "cardinality",
    "bottleneck_width",
    "stem_width",
    "deep_stem",
    "avg_down",
    "avd",
    "avd_first",
    "final_drop",
)
BUILD_KEYS = ("num_classes", "in_chans", "zero_init_last", "dropblock")
OVERRIDE_KEYS = ARCH_KEYS + BUILD_KEYS


def arch_overrides(model_cfg) -> dict:
    """The architecture keys a ``config.ModelConfig`` sets (those not None), as ``create_model``
    keywords; ``layers`` has no config key, so a config never overrides it."""
    return {k: getattr(model_cfg, k) for k in ARCH_KEYS if getattr(model_cfg, k, None) is not None}


def list_models() -> list[str]:
    """Names `create_model` accepts, in table order: the ResNeSt family, then the other
    families with and without split attention (``families.py``)."""
    return list(_ROWS) + list(FAMILY_ROWS)


def get_model_spec(name: str) -> dict[str, Any]:
    """The variant's row (a fresh dict). ResNeSt: every key of ARCH_KEYS plus `default_crop`;
    another family: ``families.family_spec`` (layers, radix, cardinality, bottleneck_width,
    final_drop, default_crop)."""
    if name in FAMILY_ROWS:
        return family_spec(name)
    if name not in _ROWS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return {**_DEFAULTS, **_ROWS[name]}


# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """conv1 1x1 -> bn1 -> ReLU -> [avd] -> SplAt 3x3 (radix 0: conv2, bn2, ReLU) -> [avd]
    -> conv3 1x1 -> bn3 -> + shortcut -> ReLU, with DropBlock after bn1, the 3x3 output
    and bn3 where configured (Identity elsewhere)."""

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        avd: bool = True,
        avd_first: bool = False,
        stage: int = 1,
        dropblock: dict | None = None,
    ):
        super().__init__()
        width = int(planes * bottleneck_width / 64) * cardinality
        out_chs = planes * self.expansion
        # avd: a 3x3 average pool does the block's downsampling instead of the 3x3 conv.
        pool_stride = stride if avd and stride > 1 else 0
        conv_stride = 1 if pool_stride else stride

        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.drop1 = dropblock_at("bn1", stage, dropblock)
        self.act1 = nn.ReLU(inplace=True)
        self.avd_first = nn.AvgPool2d(3, pool_stride, padding=1) if pool_stride and avd_first else nn.Identity()
        if radix > 0:
            self.conv2 = SplitAttention(width, width, 3, conv_stride, cardinality, radix)
            self.bn2 = nn.Identity()
            self.act2 = nn.Identity()
        else:
            self.conv2 = nn.Conv2d(width, width, 3, conv_stride, padding=1, groups=cardinality, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.act2 = nn.ReLU(inplace=True)
        self.drop2 = dropblock_at("splat", stage, dropblock)
        self.avd_last = nn.AvgPool2d(3, pool_stride, padding=1) if pool_stride and not avd_first else nn.Identity()
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.drop3 = dropblock_at("bn3", stage, dropblock)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.drop1(self.bn1(self.conv1(x))))
        out = self.avd_first(out)
        # radix 0 drops after bn2, before its ReLU (Gluon); radix > 0 after the SplAt output.
        out = self.act2(self.drop2(self.bn2(self.conv2(out))))
        out = self.avd_last(out)
        out = self.drop3(self.bn3(self.conv3(out)))
        out += self.downsample(x)  # in place: neither bn3 nor DropBlock needs its output for backward
        return self.act3(out)


def _downsample(in_chs: int, out_chs: int, stride: int, avg_down: bool) -> nn.Sequential:
    if avg_down:  # ResNet-D: average-pool, then a stride-1 1x1 conv (keys downsample.1/.2)
        pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


class ResNeSt(nn.Module):
    """Stem -> layer1..layer4 of Bottlenecks -> global average pool -> [dropout] -> fc."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        stem_width: int = 32,
        deep_stem: bool = True,
        avg_down: bool = True,
        avd: bool = True,
        avd_first: bool = False,
        final_drop: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_last: bool = True,
        dropblock: dict | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        # As in the official code: the plain 7x7 stem is 64 wide whatever stem_width says.
        chs = stem_width * 2 if deep_stem else 64
        if deep_stem:
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_chans, stem_width, 3, 2, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, 1, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, chs, 3, 1, padding=1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(in_chans, chs, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)

        block_args = dict(
            radix=radix,
            cardinality=cardinality,
            bottleneck_width=bottleneck_width,
            avd=avd,
            avd_first=avd_first,
            dropblock=dropblock,
        )
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            out_chs = planes * Bottleneck.expansion
            downsample = None
            if stride != 1 or chs != out_chs:
                downsample = _downsample(chs, out_chs, stride, avg_down)
            blocks = [Bottleneck(chs, planes, stride, downsample, stage=i + 1, **block_args)]
            blocks += [Bottleneck(out_chs, planes, stage=i + 1, **block_args) for _ in range(depth - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            chs = out_chs

        self.num_features = chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(final_drop) if final_drop > 0 else nn.Identity()
        self.fc = nn.Linear(chs, num_classes)
        self.init_weights(zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """Conv: kaiming normal (fan_out, relu), bias 0. BN: weight 1, bias 0. Linear: torch's
        default (as official and timm). zero_init_last sets every bn3 weight to 0 *after* the
        BN loop (the official code's `last_gamma` was undone by its own BN loop)."""
        init_conv_bn(self)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and the four stages: images ``[B, 3, H, W]`` -> features ``[B, 2048, H/32, W/32]``."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool, dropout (``final_drop``) and the classifier: features -> logits ``[B, classes]``."""
        return self.fc(self.drop(torch.flatten(self.global_pool(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------


def _create_family(name: str, features_only: bool, overrides: dict[str, Any]) -> nn.Module:
    """create_model for a RegNetY / MobileNetV2 model: its overrides checked as ResNeSt's are."""
    if features_only:
        raise ModelError(f"create_model({name!r}): features_only is available for the ResNeSt models only.")
    valid = FAMILY_OVERRIDE_KEYS + BUILD_KEYS
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ModelError(
            f"create_model({name!r}): override(s) {unknown} do not apply to this model; it takes {', '.join(valid)}"
        )
    spec = family_spec(name)
    args = dict(radix=spec["radix"], final_drop=spec["final_drop"], num_classes=1000, in_chans=3)
    args.update(zero_init_last=True, dropblock=None)
    args.update(given)
    _check_family(args)
    try:
        args["dropblock"] = parse_dropblock(args["dropblock"])
    except ValueError as e:
        raise ModelError(str(e)) from None
    args["final_drop"] = float(args["final_drop"])
    try:
        return create_family_model(name, **args)
    except ValueError as e:  # the radix does not divide a group width
        raise ModelError(f"create_model({name!r}) with radix {args['radix']} builds no valid network ({e})") from None


_BOOL_KEYS = ("deep_stem", "avg_down", "avd", "avd_first", "zero_init_last")
_POSITIVE_INT_KEYS = ("cardinality", "bottleneck_width", "stem_width", "num_classes", "in_chans")


def _check_family(args: dict[str, Any]) -> None:
    if not isinstance(args["zero_init_last"], bool):
        raise ModelError(f"zero_init_last must be true or false, got {args['zero_init_last']!r}")
    for k, low in (("radix", 0), ("num_classes", 1), ("in_chans", 1)):
        v = args[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ModelError(f"{k} must be an int >= {low}, got {v!r}")
    fd = args["final_drop"]
    if isinstance(fd, bool) or not isinstance(fd, (int, float)) or not 0.0 <= fd < 1.0:
        raise ModelError(f"final_drop must be a number in [0, 1), got {fd!r}")


def _check(args: dict[str, Any]) -> None:
    for k in _BOOL_KEYS:
        if not isinstance(args[k], bool):
            raise ModelError(f"{k} must be true or false, got {args[k]!r}")
    for k in _POSITIVE_INT_KEYS + ("radix",):
        v = args[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "radix" else 1):
            raise ModelError(f"{k} must be an int >= {0 if k == 'radix' else 1}, got {v!r}")
    layers = args["layers"]
    if (
        not isinstance(layers, (list, tuple))
        or len(layers) != 4
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in layers)
    ):
        raise ModelError(f"layers must be 4 positive ints (blocks per stage), got {layers!r}")
    fd = args["final_drop"]
    if isinstance(fd, bool) or not isinstance(fd, (int, float)) or not 0.0 <= fd < 1.0:
        raise ModelError(f"final_drop must be a number in [0, 1), got {fd!r}")
    groups = args["cardinality"] * max(args["radix"], 1)
    for planes in (64, 128, 256, 512):
        width = int(planes * args["bottleneck_width"] / 64) * args["cardinality"]
        if width % groups:
            raise ModelError(
                f"bottleneck width {width} (planes {planes} x bottleneck_width "
                f"{args['bottleneck_width']}/64 x cardinality {args['cardinality']}) is not "
                f"divisible by cardinality x radix = {groups}"
            )


def create_model(
    name: str, features_only: bool = False, out_indices: Sequence[int] = (1, 2, 3, 4), **overrides: Any
) -> nn.Module:
    """Build the named variant, with any of OVERRIDE_KEYS replacing its table values.

    A None override keeps the table value, so a config's unset fields can be passed as is.
    `dropblock` takes {stages, sites, block_size, prob[, schedule]} (see dropblock.py);
    `prob` is what the layers start with: a trainer sets the scheduled value each epoch
    with set_dropblock_prob(model, dropblock_prob(epoch, epochs, final_prob, schedule)).
    With `features_only`, a `ResNeStFeatures` backbone returning the maps of the stages in
    `out_indices` (0: stem, stride 2; 1-4: layer1-layer4, strides 4-32; see features.py).
    The RegNetY and MobileNetV2 models (``families.py``) take the overrides radix (0: the
    family's own block), final_drop and BUILD_KEYS, and no `features_only`.
    """
    if name in FAMILY_ROWS:
        return _create_family(name, features_only, overrides)
    if features_only:
        try:
            check_out_indices(out_indices)
        except ValueError as e:
            raise ModelError(f"create_model({name!r}, features_only=True): {e}") from None
    spec = get_model_spec(name)
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise ModelError(
            f"create_model({name!r}): unknown override(s) {unknown}; valid keys: {', '.join(OVERRIDE_KEYS)}"
        )
    args = {k: spec[k] for k in ARCH_KEYS}
    args.update(num_classes=1000, in_chans=3, zero_init_last=True, dropblock=None)
    args.update({k: v for k, v in overrides.items() if v is not None})
    _check(args)
    try:
        args["dropblock"] = parse_dropblock(args["dropblock"])
    except ValueError as e:
        raise ModelError(str(e)) from None
    args["layers"] = tuple(args["layers"])
    args["final_drop"] = float(args["final_drop"])
    try:
        model = ResNeSt(**args)
    except ValueError as e:  # e.g. split-attention's inner width not divisible by the cardinality
        raise ModelError(
            f"create_model({name!r}) with radix {args['radix']}, cardinality {args['cardinality']}, "
            f"bottleneck_width {args['bottleneck_width']} builds no valid network ({e}); "
            "pick a cardinality that divides the layer widths, as the model table does."
        ) from None
    return ResNeStFeatures(model, out_indices) if features_only else model
