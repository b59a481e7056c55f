"""What every model family here shares: DropBlock at a (site, stage) and the weight init."""

from torch import nn

from .dropblock import DropBlock


def dropblock_at(site: str, stage: int, dropblock: dict | None) -> nn.Module:
    """A DropBlock where ``dropblock`` (``parse_dropblock``'s dict) places one: ``site`` of ``stage``; else Identity."""
    if dropblock is not None and stage in dropblock["stages"] and site in dropblock["sites"]:
        return DropBlock(dropblock["prob"], dropblock["block_size"])
    return nn.Identity()


def init_conv_bn(model: nn.Module) -> None:
    """Conv: kaiming normal (fan_out, relu), bias 0. BN: weight 1, bias 0. Linear: torch's default
    (the official ResNeSt code, timm's resnest and torchvision's ResNet and MobileNetV2 convs)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
