"""Split attention (SplAt), the ResNeSt block's 3x3 conv.

Module names and shapes follow the official release (conv, bn0, fc1, bn1, fc2), so its
weights load unchanged. Two things differ from the official/timm forward, both for speed
and neither for the result:

* Radix splits are views of the conv output in the memory layout it is stored in
  (NCHW or channels_last), so nothing is copied and the output keeps the input's layout.
  No torch.split either: it made ONNX export fail for users of the official model.
* Global pooling is a sum over H, W, scaled on the small (B, C) result. A mean's backward
  writes a full-size gradient (expand, then divide); a sum's backward is an expanded view
  folded into the gradient accumulation the feature map needs anyway. (Pooling before the
  radix sum, sum_r mean(x_r), is faster in inference but slower in training: not used.)

Beyond ResNeSt (``families.py``): ``depthwise=True`` makes the conv depthwise with channel
multiplier ``radix`` (MobileNetV2's inverted residual): each input channel gives its own
``radix`` splits. A grouped conv orders its outputs group by group, so those splits come out
channel-major, (channel, radix), instead of ResNeSt's radix-major (radix, channel); no weight
order can change that, so the forward reads them in that order (a view, as for ResNeSt).
``attn_chs`` sets the attention MLP's width where the official rule does not fit, and
``act_layer`` the activation after the conv (ReLU6 in MobileNetV2).

Under AMP the block stays in its input's dtype. CUDA autocast runs sum and softmax in
float32 unless they are given a dtype (its "fp32_set_opt_dtype" ops), and float32 attention
times bf16 splits promotes to float32: without the explicit ``dtype=`` below the radix sum
and the block output would be full-size float32 tensors in a bf16 network. Reductions
accumulate in float32 inside the kernel whatever their output dtype.
"""

import torch
from torch import nn


def attention_width(in_chs: int, radix: int, reduction: int = 4, min_attn_chs: int = 32) -> int:
    """The attention MLP's hidden width: max(in_chs * radix // reduction, min_attn_chs), the official code's rule."""
    return max(in_chs * radix // reduction, min_attn_chs)


class SplitAttention(nn.Module):
    """k x k grouped conv with `radix` splits per cardinal group, fused by attention.

    radix 1 is an SE-style sigmoid gate; radix > 1 is a softmax across the splits.
    Attention width: ``attn_chs``, by default ``attention_width(in_chs, radix, reduction,
    min_attn_chs)`` (the official code's). The attention MLP (fc1, fc2) is grouped by
    ``cardinality``: each cardinal group attends over its own channels.
    ``depthwise``: the conv has groups = in_chs (= out_chs) and channel multiplier radix, its
    splits stored (channel, radix); see the module docstring. Input (B, in_chs, H, W) ->
    output (B, out_chs, H / stride, W / stride), in the input's memory format.
    Raises ValueError when in_chs / out_chs do not divide by the groups.
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
        attn_chs: int | None = None,
        depthwise: bool = False,
        act_layer: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if radix < 1:
            raise ValueError(f"SplitAttention needs radix >= 1, got {radix}")
        if depthwise and in_chs != out_chs:
            raise ValueError(f"a depthwise SplitAttention needs in_chs == out_chs, got {in_chs} and {out_chs}")
        self.radix = radix
        self.cardinality = cardinality
        self.depthwise = depthwise
        attn_chs = attn_chs or attention_width(in_chs, radix, reduction, min_attn_chs)
        self.conv = nn.Conv2d(
            in_chs,
            out_chs * radix,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=in_chs if depthwise else cardinality * radix,
            bias=False,
        )
        self.bn0 = nn.BatchNorm2d(out_chs * radix)
        self.act0 = act_layer(inplace=True)
        self.fc1 = nn.Conv2d(out_chs, attn_chs, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(attn_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, out_chs * radix, 1, groups=cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        B, RC, H, W = x.shape
        R = self.radix
        C = RC // R
        scale = 1.0 / (H * W)
        if R == 1:
            gap = x.sum((2, 3), keepdim=True, dtype=x.dtype) * scale
            return x * self.fc2(self.act1(self.bn1(self.fc1(gap)))).sigmoid()

        # Split the channels radix-major as a view of x in the layout it is stored in, so
        # the output keeps that layout: an NCHW output in a channels_last network (timm's,
        # whose splat ends in .contiguous()) costs a layout conversion at every next conv.
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        split = (C, R) if self.depthwise else (R, C)  # the conv's channel order
        radix_at = 1 if self.depthwise else 0  # where radix is in `split`
        if nhwc:
            splits = x.permute(0, 2, 3, 1).view(B, H, W, *split)
            radix_dim = 3 + radix_at
            pool_dims = [1, 2, radix_dim]
            attn_shape = [B, 1, 1, *split]
        else:
            splits = x.view(B, *split, H, W)
            radix_dim = 1 + radix_at
            pool_dims = [radix_dim, 3, 4]
            attn_shape = [B, *split, 1, 1]

        gap = splits.sum(pool_dims, dtype=x.dtype) * scale  # (B, C)
        attn = self.fc2(self.act1(self.bn1(self.fc1(gap.view(B, C, 1, 1)))))
        # fc2 orders its outputs (cardinal group, radix, channel); the splits are
        # (radix, cardinal group, channel): softmax over radix, then reorder to match.
        attn = attn.view(B, self.cardinality, R, -1).softmax(2, dtype=x.dtype).transpose(1, 2)
        if self.depthwise:  # (radix, channel) -> the splits' (channel, radix)
            attn = attn.reshape(B, R, C).transpose(1, 2)
        out = (splits * attn.reshape(attn_shape)).sum(radix_dim, dtype=x.dtype)
        return out.permute(0, 3, 1, 2) if nhwc else out
