"""Parameter and multiply-add counts, the way the ResNeSt paper reports them."""

import torch
from torch import nn


def count_macs(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of one image through the Conv2d and Linear layers (the paper's
    "FLOPs"; BN, activations, pooling and bias adds are not counted).

    Runs one eval-mode forward on the model's device; a model built under
    `torch.device("meta")` is counted without computing anything.
    """
    macs = 0

    def conv_hook(m: nn.Conv2d, inputs, out):
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs += out[0].numel() * k  # out[0]: one image

    def linear_hook(m: nn.Linear, inputs, out):
        nonlocal macs
        macs += out[0].numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, img_size, img_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return macs


def model_info(model: nn.Module, img_size: int = 224) -> dict[str, float]:
    """{"params": parameter count, "gmacs": 1e-9 * multiply-adds per image at img_size}."""
    in_chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": count_macs(model, img_size, in_chans) / 1e9,
    }
