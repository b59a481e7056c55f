import copy
import math

import pytest
import torch
from torch import nn

from resnest_train.optim import build_optimizer, lr_at, param_groups, peak_lr


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


# ---------------------------------------------------------------------------------------
# Schedules: the values at chosen steps against the formula written out
# ---------------------------------------------------------------------------------------


def test_step_decay_after_warmup():
    # 10 steps per epoch, 2 warm-up epochs, LR x 0.1 from epoch 5 and again from epoch 9
    kw = dict(steps_per_epoch=10, epochs=12, warmup_epochs=2, peak=0.8, schedule="step", step_epochs=[5, 9])
    assert lr_at(0, **kw) == 0.0
    assert lr_at(10, **kw) == pytest.approx(0.4)  # warm-up applies as to the cosine
    assert [lr_at(s, **kw) for s in (20, 49, 50, 89, 90, 119, 500)] == pytest.approx(
        [0.8, 0.8, 0.08, 0.08, 0.008, 0.008, 0.008]
    )
    assert lr_at(50, **{**kw, "step_epochs": [9, 5]}) == pytest.approx(0.08)  # order does not matter
    assert lr_at(90, **{**kw, "step_gamma": 0.5}) == pytest.approx(0.2)
    # with a floor: never below final_lr
    assert [lr_at(s, **kw, final=0.05) for s in (20, 50, 90)] == pytest.approx([0.8, 0.08, 0.05])
    with pytest.raises(ValueError, match="unknown LR schedule 'linear'"):
        lr_at(30, **{**kw, "schedule": "linear"})


def test_cosine_with_a_floor():
    kw = dict(steps_per_epoch=10, epochs=10, warmup_epochs=2, peak=1.0, final=0.2, warmup_start=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(10, **kw) == pytest.approx(0.55)
    assert lr_at(20, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.6)  # half-way: final + (peak - final) / 2
    assert lr_at(40, **kw) == pytest.approx(0.2 + 0.4 * (1 + math.cos(math.pi / 4)))
    assert lr_at(99, **kw) == pytest.approx(0.2 + 0.4 * (1 + math.cos(math.pi * 79 / 80)))
    assert lr_at(100, **kw) == pytest.approx(0.2) and lr_at(150, **kw) == pytest.approx(0.2)
    after_warmup = [lr_at(s, **kw) for s in range(20, 151)]
    assert min(after_warmup) == pytest.approx(0.2) and all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))


def test_schedule_lr_passes_the_configs_schedule():
    from resnest_train.config_loader import load_config
    from resnest_train.loop import make_plan, schedule_lr

    cfg = load_config(None, ["optim.schedule=step", "optim.step_epochs=[6, 8]", "optim.step_gamma=0.5"])
    plan = make_plan(cfg, world_size=2, batches_per_epoch=10)  # peak 0.1 x 256 / 256
    assert plan.peak_lr == pytest.approx(0.1)
    assert [schedule_lr(s, plan, cfg.optim) for s in (25, 50, 59, 60, 80)] == pytest.approx(
        [0.05, 0.1, 0.1, 0.05, 0.025]
    )


# ---------------------------------------------------------------------------------------
# Optimizers: timm's LAMB and LARS over our groups
# ---------------------------------------------------------------------------------------


def optim_cfg(**values):
    from resnest_train.config import OptimConfig

    return OptimConfig(**values)


def twin_models():
    """Two copies of Tiny with the same random weights (norm weights not all 1) and 2 sets of grads."""
    torch.manual_seed(0)
    a = Tiny()
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(torch.randn_like(p))
    b = copy.deepcopy(a)
    grads = [[torch.randn_like(p) for p in a.parameters()] for _ in range(2)]
    return a, b, grads


def step_both(a, opt_a, b, opt_b, grads):
    for g in grads:
        for model, opt in ((a, opt_a), (b, opt_b)):
            for p, gp in zip(model.parameters(), g):
                p.grad = gp.clone()
            opt.step()


@pytest.mark.parametrize(
    "cfg,timm_kw",
    [
        (
            dict(name="lamb", weight_decay=0.02, betas=[0.8, 0.99]),
            dict(opt="lamb", weight_decay=0.02, betas=(0.8, 0.99), max_grad_norm=None),
        ),
        (
            dict(name="lars", weight_decay=1e-4, momentum=0.8, nesterov=True, trust_coeff=0.002),
            dict(opt="lars", weight_decay=1e-4, momentum=0.8, nesterov=True, trust_coeff=0.002),
        ),
        (
            dict(name="lars", weight_decay=1e-4, momentum=0.9, nesterov=False),
            dict(opt="lars", weight_decay=1e-4, momentum=0.9),
        ),
    ],
    ids=["lamb", "lars-nesterov", "lars"],
)
def test_two_steps_equal_timms_own_optimizer(cfg, timm_kw):
    from timm.optim import create_optimizer_v2

    a, b, grads = twin_models()
    ours = build_optimizer(a, optim_cfg(**cfg), lr=0.5)
    theirs = create_optimizer_v2(b, lr=0.5, **timm_kw)  # timm's own no-decay groups (ndim <= 1 and biases)
    assert type(ours) is type(theirs)
    step_both(a, ours, b, theirs, grads)
    before = twin_models()[0]
    for (name, p), q, p0 in zip(a.named_parameters(), b.parameters(), before.parameters()):
        assert torch.equal(p, q), name
        assert not torch.equal(p, p0), name  # every parameter moved


def test_lars_leaves_norm_and_bias_unadapted_even_without_weight_decay():
    names = [n for n, _ in Tiny().named_parameters()]
    norm_bias = {"conv.bias", "fc.bias", "gn.bias", "gn.weight", "stem.1.bias", "stem.1.weight"}
    for weight_decay in (1e-4, 0.0):
        a, b, grads = twin_models()
        start = copy.deepcopy(a)
        lars = build_optimizer(a, optim_cfg(name="lars", weight_decay=weight_decay, trust_coeff=0.001), lr=0.5)
        assert [g["always_adapt"] for g in lars.param_groups] == [True, False]
        sgd = torch.optim.SGD(b.parameters(), lr=0.5, momentum=0.9, nesterov=True)  # no weight decay at all
        step_both(a, lars, b, sgd, grads[:1])
        for name, p, q, p0, g in zip(names, a.parameters(), b.parameters(), start.parameters(), grads[0]):
            if name in norm_bias:  # plain momentum SGD's update, bit for bit
                assert torch.equal(p, q), name
                continue
            # conv / linear weights: the trust ratio scales the first Nesterov step 1.9 x (g + wd w)
            d = g + weight_decay * p0
            trust = 0.001 * p0.norm() / (g.norm() + weight_decay * p0.norm())
            assert torch.allclose(p, p0 - 0.5 * 1.9 * trust * d, rtol=0, atol=1e-6), name
            assert (p - p0).norm() < 0.01 * (q - p0).norm(), name  # far from SGD's step


def test_every_optimizer_keeps_the_groups_and_their_lr_multipliers():
    from resnest_train.optim import set_lr

    model = Tiny()

    def mult(name):
        return 1.0 if name.startswith("fc.") else 0.1

    per_param = {}
    for name in ("sgd", "lamb", "lars"):
        opt = build_optimizer(model, optim_cfg(name=name, weight_decay=1e-4), lr=0.0, lr_mult=mult)
        set_lr(opt, 0.2)
        per_param[name] = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
        if name != "sgd":
            assert [g["always_adapt"] for g in opt.param_groups] == [not g["norm_bias"] for g in opt.param_groups]
    assert per_param["lamb"] == per_param["sgd"] == per_param["lars"]
    assert per_param["sgd"][id(model.fc.weight)] == (0.2, 1e-4)
    assert per_param["sgd"][id(model.gn.weight)] == pytest.approx((0.02, 0.0))
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'"):
        build_optimizer(model, optim_cfg(name="adamw"), lr=0.0)
