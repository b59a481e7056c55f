"""Split attention beyond ResNet: RegNetY and MobileNetV2, each with and without it.

Both families are built here from the same parts as ResNeSt (``SplitAttention``, ``DropBlock``,
the init of ``common.init_conv_bn``), so a baseline and its split-attention twin differ in the
3x3 stage of each block only. ``radix`` chooses it: 0 is the family's own block, >= 1 the
split-attention one (``regnety_800mf`` is ``splat_regnety_800mf`` with ``radix=0``).

Every model has ResNeSt's layout: a stem (``conv1``, ``bn1``, ``act1``), ``layer1``..``layer4``
at output strides 4, 8, 16 and 32, and a head (``global_pool``, ``drop``, ``fc``; MobileNetV2
also ``conv_head``, ``bn_head``, ``act_head`` before it), so DropBlock's ``stages``, fine-tuning's
stages and the no-decay rule for norm parameters and biases (``optim.param_groups``, by type)
work unchanged. DropBlock's sites in every block: ``bn1`` after the first 1x1 conv's BN (a
MobileNetV2 block without expansion has none), ``splat`` on the 3x3 stage's output (after the
split attention; in a baseline after the SE gate or the ReLU6), ``bn3`` after the last BN,
before the residual add.

**RegNetY** (Radosavovic et al. 2020; the widths, depths and group widths of timm's / pycls's
``regnety_008`` and ``regnety_040``, whose parameter counts and logits ours match,
``tests/test_models_families.py``): stem 3x3/2 conv to 32, then blocks of 1x1 conv -> 3x3 group
conv (group width ``group_width``, stride in it) -> SE (timm's ``SEModule``, width round(0.25 x
the block's input channels)) -> 1x1 conv, with a 1x1/stride conv + BN shortcut where the shape
changes. **SplAt-RegNetY** replaces the group conv + BN + ReLU + SE by ``SplitAttention`` with
cardinality = the block's groups (width / group width) and radix 2: the conv keeps the same
weights count (groups x radix groups of half the group width each, the ResNeSt rule) and each
cardinal group gets its own attention, as in ResNeSt.

**MobileNetV2** (Sandler et al. 2018; torchvision's ``mobilenet_v2``, whose parameter count and
logits ours match): inverted residuals of 1x1 expansion (x6) -> 3x3 depthwise conv -> linear 1x1
projection, ReLU6, an identity shortcut where stride is 1 and the width stays.
**SplAt-MobileNetV2** replaces the depthwise conv + BN + ReLU6 by a depthwise ``SplitAttention``
(``depthwise=True``): channel multiplier radix (2), so each hidden channel has its own radix
splits, fused by a softmax per channel. The attention MLP is shaped unlike ResNeSt's, for two
reasons. It is not grouped: grouped per channel (cardinality = the hidden width, the depthwise
conv's groups) each group's MLP would see a single pooled value and could only rescale its own
channel by a function of itself: no channel would attend to any other, which is what the
attention is for. And its width is read off the block's input (narrow) channels, not off the
6x expanded width the conv sees: ``attention_width(in_chs, radix)``, ResNeSt's rule
``max(in_chs x radix / 4, 32)``. A dense MLP over the hidden width C = 6 x in_chs with ResNeSt's
rule (C x radix / 4 hidden units) would hold about 1.5 C^2 weights per block, four to five times
the block's two 1x1 convs (about C^2 / 3); from the input width it holds about 1.5 times the
expansion conv, and the whole model 4.78M parameters instead of 3.50M.
EfficientNet's SE is sized from the block's input for the same reason (timm's
``se_from_exp=False``).

Zero-gamma (``zero_init_last``): the last BN of each block with a residual shortcut starts at 0
(every RegNetY block has one; in MobileNetV2 only the blocks with an identity shortcut: a block
without a shortcut would output zeros).
"""

from collections.abc import Sequence

import torch
from timm.layers import SEModule
from torch import nn

from .common import dropblock_at, init_conv_bn
from .splat import SplitAttention, attention_width

# Stage widths, depths and group width: the per-block widths timm's generate_regnet derives from
# RegNetCfg(w0, wa, wm, depth, group_size) of regnety_008 and regnety_040, grouped into stages.
REGNETY = {
    "800mf": dict(widths=(64, 128, 320, 768), depths=(1, 3, 8, 2), group_width=16),
    "4gf": dict(widths=(128, 192, 512, 1088), depths=(2, 6, 12, 2), group_width=64),
}
SE_RATIO = 0.25  # RegNetY's SE width, of the block's input channels

# torchvision's MobileNetV2 (expansion t, output channels c, blocks n, first stride s) and the
# stage (layer1..layer4, output strides 4..32) each row's blocks belong to.
MOBILENETV2 = (
    # t, c, n, s, stage
    (1, 16, 1, 1, 1),
    (6, 24, 2, 2, 1),
    (6, 32, 3, 2, 2),
    (6, 64, 4, 2, 3),
    (6, 96, 3, 1, 3),
    (6, 160, 3, 2, 4),
    (6, 320, 1, 1, 4),
)
MOBILENETV2_STEM = 32
MOBILENETV2_HEAD = 1280


class RegNetYBlock(nn.Module):
    """conv1 1x1 -> bn1 -> ReLU -> 3x3 stage -> conv3 1x1 -> bn3 -> + shortcut -> ReLU, DropBlock after
    bn1, the 3x3 stage and bn3 where configured. 3x3 stage: radix 0: group conv (conv2) -> bn2 -> ReLU
    -> SE; radix >= 1: ``SplitAttention`` (conv2) with cardinality ``out_chs // group_width``.
    (B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        group_width: int,
        radix: int,
        stage: int,
        dropblock: dict | None = None,
    ):
        super().__init__()
        width = out_chs  # RegNet's bottleneck ratio is 1
        groups = width // group_width
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.drop1 = dropblock_at("bn1", stage, dropblock)
        self.act1 = nn.ReLU(inplace=True)
        if radix > 0:
            self.conv2 = SplitAttention(width, width, 3, stride, cardinality=groups, radix=radix)
            self.bn2, self.act2, self.se = nn.Identity(), nn.Identity(), nn.Identity()
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.act2 = nn.ReLU(inplace=True)
            self.se = SEModule(width, rd_channels=int(round(in_chs * SE_RATIO)))
        self.drop2 = dropblock_at("splat", stage, dropblock)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.drop3 = dropblock_at("bn3", stage, dropblock)
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))
        else:
            self.downsample = nn.Identity()
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.drop1(self.bn1(self.conv1(x))))
        out = self.drop2(self.se(self.act2(self.bn2(self.conv2(out)))))
        out = self.drop3(self.bn3(self.conv3(out)))
        out += self.downsample(x)
        return self.act3(out)


class InvertedResidual(nn.Module):
    """[conv1 1x1 expansion -> bn1 -> ReLU6] -> 3x3 depthwise stage -> conv3 1x1 projection -> bn3
    [-> + x], DropBlock after bn1, the 3x3 stage and bn3 where configured. 3x3 stage: radix 0:
    depthwise conv (conv2) -> bn2 -> ReLU6; radix >= 1: depthwise ``SplitAttention`` (conv2), its
    attention MLP dense and ``attention_width(in_chs, radix)`` wide (module docstring).
    (B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride); the shortcut where stride is 1
    and in_chs == out_chs (``use_res``)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        expand_ratio: int,
        radix: int,
        stage: int,
        dropblock: dict | None = None,
    ):
        super().__init__()
        hidden = in_chs * expand_ratio
        self.use_res = stride == 1 and in_chs == out_chs
        if expand_ratio != 1:
            self.conv1 = nn.Conv2d(in_chs, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
            self.drop1 = dropblock_at("bn1", stage, dropblock)
            self.act1 = nn.ReLU6(inplace=True)
        else:
            self.conv1, self.bn1, self.drop1, self.act1 = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
        if radix > 0:
            attn = attention_width(in_chs, radix)
            self.conv2 = SplitAttention(
                hidden, hidden, 3, stride, radix=radix, attn_chs=attn, depthwise=True, act_layer=nn.ReLU6
            )
            self.bn2, self.act2 = nn.Identity(), nn.Identity()
        else:
            self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False)
            self.bn2 = nn.BatchNorm2d(hidden)
            self.act2 = nn.ReLU6(inplace=True)
        self.drop2 = dropblock_at("splat", stage, dropblock)
        self.conv3 = nn.Conv2d(hidden, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.drop3 = dropblock_at("bn3", stage, dropblock)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.drop1(self.bn1(self.conv1(x))))
        out = self.drop2(self.act2(self.bn2(self.conv2(out))))
        out = self.drop3(self.bn3(self.conv3(out)))
        return out + x if self.use_res else out


class _Classifier(nn.Module):
    """The shared stem/stages/head forward of the families: conv1 -> bn1 -> act1 -> layer1..4 -> head."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, in_chans, H, W]`` -> the last stage's map ``[B, C, H/32, W/32]``."""
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """[conv_head], global average pool, dropout (``final_drop``) and the classifier -> logits ``[B, classes]``."""
        x = self.head_conv(x)
        return self.fc(self.drop(torch.flatten(self.global_pool(x), 1)))

    def head_conv(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _zero_init_last(self) -> None:
        for m in self.modules():
            if isinstance(m, RegNetYBlock) or (isinstance(m, InvertedResidual) and m.use_res):
                nn.init.zeros_(m.bn3.weight)


class RegNetY(_Classifier):
    """RegNetY (radix 0) or SplAt-RegNetY (radix >= 1): stem, four stages of ``RegNetYBlock``, head."""

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        group_width: int,
        radix: int = 2,
        final_drop: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_last: bool = True,
        dropblock: dict | None = None,
        stem_width: int = 32,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        chs = stem_width
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [
                RegNetYBlock(chs if j == 0 else width, width, 2 if j == 0 else 1, group_width, radix, i + 1, dropblock)
                for j in range(depth)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            chs = width
        self.num_features = chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(final_drop) if final_drop > 0 else nn.Identity()
        self.fc = nn.Linear(chs, num_classes)
        init_conv_bn(self)
        if zero_init_last:
            self._zero_init_last()


class MobileNetV2(_Classifier):
    """MobileNetV2-1.0 (radix 0) or SplAt-MobileNetV2 (radix >= 1): stem, ``InvertedResidual`` stages
    by output stride (``MOBILENETV2``), 1x1 conv to 1280, head."""

    def __init__(
        self,
        radix: int = 2,
        final_drop: float = 0.2,
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_last: bool = True,
        dropblock: dict | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, MOBILENETV2_STEM, 3, 2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(MOBILENETV2_STEM)
        self.act1 = nn.ReLU6(inplace=True)
        chs = MOBILENETV2_STEM
        stages: dict[int, list] = {1: [], 2: [], 3: [], 4: []}
        for t, c, n, s, stage in MOBILENETV2:
            for j in range(n):
                stages[stage].append(InvertedResidual(chs, c, s if j == 0 else 1, t, radix, stage, dropblock))
                chs = c
        for stage, blocks in stages.items():
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.conv_head = nn.Conv2d(chs, MOBILENETV2_HEAD, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(MOBILENETV2_HEAD)
        self.act_head = nn.ReLU6(inplace=True)
        self.num_features = MOBILENETV2_HEAD
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(final_drop) if final_drop > 0 else nn.Identity()
        self.fc = nn.Linear(MOBILENETV2_HEAD, num_classes)
        init_conv_bn(self)
        if zero_init_last:
            self._zero_init_last()

    def head_conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_head(self.bn_head(self.conv_head(x)))


# ---------------------------------------------------------------------------------------
# The named models: (family, its arguments, the table's columns)
# ---------------------------------------------------------------------------------------

FAMILY_ROWS = {
    "regnety_800mf": dict(family="regnety", size="800mf", radix=0),
    "splat_regnety_800mf": dict(family="regnety", size="800mf", radix=2),
    "regnety_4gf": dict(family="regnety", size="4gf", radix=0),
    "splat_regnety_4gf": dict(family="regnety", size="4gf", radix=2),
    "mobilenetv2_100": dict(family="mobilenetv2", radix=0, final_drop=0.2),
    "splat_mobilenetv2_100": dict(family="mobilenetv2", radix=2, final_drop=0.2),
}
FAMILY_OVERRIDE_KEYS = ("radix", "final_drop")  # the architecture keys these families take


def family_spec(name: str) -> dict:
    """The table row of a family model: layers (blocks per stage), radix, cardinality and width
    as the model table shows them (RegNetY: ``w/16`` = width / group width; MobileNetV2: ``dw``,
    depthwise), final_drop, default_crop (224)."""
    row = FAMILY_ROWS[name]
    if row["family"] == "regnety":
        size = REGNETY[row["size"]]
        layers = tuple(size["depths"])
        cardinality, width = f"w/{size['group_width']}", "/".join(map(str, size["widths"]))
    else:
        layers = tuple(sum(n for _, _, n, _, st in MOBILENETV2 if st == s) for s in (1, 2, 3, 4))
        cardinality, width = "dw", "x1.0"
    return dict(
        layers=layers,
        radix=row["radix"],
        cardinality=cardinality,
        bottleneck_width=width,
        final_drop=row.get("final_drop", 0.0),
        default_crop=224,
    )


def create_family_model(name: str, radix: int, final_drop: float, **build) -> nn.Module:
    """Build family model ``name`` with ``radix`` and ``final_drop``; ``build``: num_classes,
    in_chans, zero_init_last, dropblock (parsed). Raises ValueError when the radix does not
    divide the group width (RegNetY)."""
    row = FAMILY_ROWS[name]
    if row["family"] == "regnety":
        return RegNetY(**REGNETY[row["size"]], radix=radix, final_drop=final_drop, **build)
    return MobileNetV2(radix=radix, final_drop=final_drop, **build)
