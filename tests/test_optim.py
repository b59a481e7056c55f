import math

import pytest
from torch import nn

from resnest_train.optim import lr_at, param_groups, peak_lr


def test_peak_lr_is_linear_in_global_batch():
    assert peak_lr(0.1, 8192) == pytest.approx(3.2)
    assert peak_lr(0.1, 256) == pytest.approx(0.1)


def test_lr_curve_warmup_then_cosine():
    kw = dict(steps_per_epoch=100, epochs=10, warmup_epochs=2, peak=3.2)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(50, **kw) == pytest.approx(0.8)  # a quarter of the way through warm-up
    assert lr_at(199, **kw) == pytest.approx(3.2 * 199 / 200)
    assert lr_at(200, **kw) == pytest.approx(3.2)  # warm-up ends at the peak
    assert lr_at(600, **kw) == pytest.approx(1.6)  # half-way through the cosine
    assert lr_at(200 + 200, **kw) == pytest.approx(1.6 * (1 + math.cos(math.pi / 4)))
    assert lr_at(1000, **kw) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, **kw) for s in range(200, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))  # named without "bn"
        self.conv = nn.Conv2d(8, 8, 3, bias=True)
        self.gn = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 4)


def test_no_decay_group_is_exactly_norm_and_bias():
    model = Tiny()
    decay, no_decay = param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv.weight", "fc.weight", "stem.0.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "conv.bias",
        "fc.bias",
        "gn.bias",
        "gn.weight",
        "stem.1.bias",
        "stem.1.weight",
    ]
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    (everything,) = param_groups(model, 1e-4, no_decay_norm_bias=False)
    assert len(everything["params"]) == len(list(model.parameters()))
