"""ResNeSt model zoo: named variants, their specs, DropBlock control, size/cost info."""

from .dropblock import DropBlock, dropblock_prob, set_dropblock_prob
from .info import count_macs, model_info
from .resnest import (
    OVERRIDE_KEYS,
    Bottleneck,
    ModelError,
    ResNeSt,
    create_model,
    get_model_spec,
    list_models,
)
from .splat import SplitAttention

__all__ = [
    "create_model",
    "list_models",
    "get_model_spec",
    "model_info",
    "count_macs",
    "set_dropblock_prob",
    "dropblock_prob",
    "DropBlock",
    "ResNeSt",
    "Bottleneck",
    "SplitAttention",
    "ModelError",
    "OVERRIDE_KEYS",
]
