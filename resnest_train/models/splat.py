"""Split attention (SplAt), the ResNeSt block's 3x3 conv.

Module names and shapes follow the official release (conv, bn0, fc1, bn1, fc2), so its
weights load unchanged. The computation is the paper's, rearranged to touch the big
(B, R*C, H, W) tensor fewer times:

* the radix sum is taken after global pooling: mean_hw(sum_r x_r) == sum_r mean_hw(x_r),
  so the summed feature map U_hat is never materialised;
* radix splits are views of one tensor (no torch.split: it made ONNX export fail for
  users of the official model), and the r-softmax runs on a view.
"""
from typing import Optional

import torch
from torch import nn


class SplitAttention(nn.Module):
    """k x k grouped conv with `radix` splits per cardinal group, fused by attention.

    radix 1 is an SE-style sigmoid gate; radix > 1 is a softmax across the splits.
    `drop` is applied after bn0 (None: nothing); the ResNeSt recipe leaves it empty and
    drops after the block's SplAt output instead (see resnest.Bottleneck).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        cardinality: int = 1,
        radix: int = 2,
        reduction: int = 4,
        min_attn_chs: int = 32,
        drop: Optional[nn.Module] = None,
    ):
        super().__init__()
        if radix < 1:
            raise ValueError(f"SplitAttention needs radix >= 1, got {radix}")
        self.radix = radix
        self.cardinality = cardinality
        attn_chs = max(in_chs * radix // reduction, min_attn_chs)
        self.conv = nn.Conv2d(in_chs, out_chs * radix, kernel_size, stride,
                              padding=kernel_size // 2, groups=cardinality * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(out_chs * radix)
        self.drop = drop if drop is not None else nn.Identity()
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(out_chs, attn_chs, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(attn_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, out_chs * radix, 1, groups=cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.drop(self.bn0(self.conv(x))))
        B, RC, H, W = x.shape
        R = self.radix
        C = RC // R

        gap = x.mean((2, 3), keepdim=True)  # (B, R*C, 1, 1), radix-major
        if R > 1:
            gap = gap.view(B, R, C, 1, 1).sum(1)
        attn = self.fc2(self.act1(self.bn1(self.fc1(gap))))  # (B, R*C, 1, 1), cardinal-major

        if R == 1:
            return x * attn.sigmoid()
        # fc2 orders its outputs (cardinal group, radix, channel); the splits are
        # (radix, cardinal group, channel): softmax over radix, then reorder to match.
        attn = attn.view(B, self.cardinality, R, -1).softmax(2).transpose(1, 2)
        attn = attn.reshape(B, R, C, 1, 1)
        return (x.view(B, R, C, H, W) * attn).sum(1)
