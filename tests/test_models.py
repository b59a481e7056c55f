"""The model zoo: names, overrides, official weight layout (against timm), the paper's
table, the CLI, and DropBlock placement/schedule."""

import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

from helpers import slow_except
from resnest_train.models import (
    DropBlock,
    ModelError,
    create_model,
    dropblock_prob,
    get_model_spec,
    list_models,
    model_info,
    set_dropblock_prob,
)
from resnest_train.models.__main__ import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAST = ["1s1x64d", "2s1x64d", "4s1x64d", "1s2x40d", "2s2x40d", "4s2x40d", "1s4x24d"]
NAMES = ["resnet50d", "resnest14", "resnest26", "resnest50", "resnest101", "resnest200", "resnest269"] + [
    f"resnest50_fast_{f}" for f in FAST
]


def meta_model(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


# --------------------------------------------------------------------------------------
# Names, specs, overrides
# --------------------------------------------------------------------------------------


def test_list_models_is_the_zoo():
    families = ["regnety_800mf", "splat_regnety_800mf", "regnety_4gf", "splat_regnety_4gf"]
    families += ["mobilenetv2_100", "splat_mobilenetv2_100"]  # tests/test_models_families.py
    assert list_models() == NAMES + families


@pytest.mark.parametrize(
    "name,crop",
    [
        ("resnet50d", 224),
        ("resnest14", 224),
        ("resnest50", 224),
        ("resnest50_fast_2s2x40d", 224),
        ("resnest101", 256),
        ("resnest200", 320),
        ("resnest269", 416),
    ],
)
def test_default_crop(name, crop):
    assert get_model_spec(name)["default_crop"] == crop


def test_spec_rows():
    assert get_model_spec("resnest14")["layers"] == (1, 1, 1, 1)
    assert get_model_spec("resnest26")["layers"] == (2, 2, 2, 2)
    assert get_model_spec("resnest269")["layers"] == (3, 30, 48, 8)
    assert get_model_spec("resnest101")["stem_width"] == 64
    assert get_model_spec("resnest50")["stem_width"] == 32
    fast = get_model_spec("resnest50_fast_4s2x40d")
    assert (fast["radix"], fast["cardinality"], fast["bottleneck_width"], fast["avd_first"]) == (4, 2, 40, True)
    assert get_model_spec("resnet50d")["radix"] == 0
    assert get_model_spec("resnest200")["final_drop"] == 0.2
    # A copy: callers cannot edit the table.
    get_model_spec("resnest50")["radix"] = 7
    assert get_model_spec("resnest50")["radix"] == 2


def test_unknown_name_and_override_are_clear_value_errors():
    with pytest.raises(ValueError, match="available: resnet50d, resnest14"):
        create_model("resnest51")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['radx'\].*radix, cardinality"):
        create_model("resnest14", radx=2)


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(radix=-1), "radix must be an int >= 0"),
        (dict(cardinality=0), "cardinality must be an int >= 1"),
        (dict(deep_stem="yes"), "deep_stem must be true or false"),
        (dict(layers=(1, 2)), "layers must be 4 positive ints"),
        (dict(final_drop=1.0), r"final_drop must be a number in \[0, 1\)"),
        (dict(radix=3), "not divisible by cardinality x radix = 3"),
        (dict(dropblock=dict(sites=["bn2"])), "dropblock.sites must be among"),
        (dict(dropblock=dict(stages=[5])), "dropblock.stages must be within 1..4"),
        (dict(dropblock=dict(size=3)), r"dropblock: unknown key\(s\) \['size'\]"),
    ],
)
def test_bad_override_values(kw, msg):
    with pytest.raises(ModelError, match=msg):
        meta_model("resnest14", **kw)


def test_none_override_keeps_the_table_value():
    m = meta_model("resnest14", radix=None, stem_width=None, final_drop=None)
    assert m.layer1[0].conv2.radix == 2 and m.conv1[0].out_channels == 32


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_overrides_rebuild_the_architecture():
    # Knob by knob, resnest50 becomes the fast 4s2x40d variant.
    a = meta_model("resnest50", radix=4, cardinality=2, bottleneck_width=40, avd_first=True)
    assert shapes(a) == shapes(meta_model("resnest50_fast_4s2x40d"))
    assert isinstance(a.layer2[0].avd_first, nn.AvgPool2d) and isinstance(a.layer2[0].avd_last, nn.Identity)

    m = meta_model("resnest50", num_classes=10, in_chans=1, stem_width=16, final_drop=0.3)
    assert m.fc.out_features == 10 and m.conv1[0].in_channels == 1 and m.conv1[0].out_channels == 16
    assert m.bn1.num_features == 32 and isinstance(m.drop, nn.Dropout) and m.drop.p == 0.3

    m = meta_model("resnest50", deep_stem=False, avg_down=False, avd=False)
    assert isinstance(m.conv1, nn.Conv2d) and m.conv1.kernel_size == (7, 7) and m.bn1.num_features == 64
    ds = m.layer2[0].downsample
    assert isinstance(ds[0], nn.Conv2d) and ds[0].stride == (2, 2) and len(ds) == 2
    assert m.layer2[0].conv2.conv.stride == (2, 2)  # no avd: the 3x3 conv strides
    assert all(isinstance(b.avd_last, nn.Identity) for b in m.modules() if hasattr(b, "avd_last"))

    m = meta_model("resnest50", radix=0, cardinality=2)
    blk = m.layer1[0]
    assert type(blk.conv2) is nn.Conv2d and blk.conv2.groups == 2 and isinstance(blk.bn2, nn.BatchNorm2d)

    m = meta_model("resnest50", radix=1)  # SE-style gate
    assert m.layer1[0].conv2.radix == 1 and m.layer1[0].conv2.conv.out_channels == 64
    m = meta_model("resnest50", layers=[1, 2, 3, 1])
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [1, 2, 3, 1]


def test_radix_one_is_a_sigmoid_gate():
    torch.manual_seed(0)
    sa = create_model("resnest14", radix=1).layer1[0].conv2.eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        u = sa.act0(sa.bn0(sa.conv(x)))
        gate = torch.sigmoid(sa.fc2(sa.act1(sa.bn1(sa.fc1(u.mean((2, 3), keepdim=True))))))
        torch.testing.assert_close(sa(x), u * gate)


def test_zero_init_last_really_zeroes_every_bn3():
    m = create_model("resnest26")
    bn3 = [mod.bn3 for mod in m.modules() if hasattr(mod, "bn3")]
    assert len(bn3) == 8
    assert all(torch.count_nonzero(bn.weight) == 0 for bn in bn3)
    others = [mod for name, mod in m.named_modules() if isinstance(mod, nn.BatchNorm2d) and not name.endswith("bn3")]
    assert others and all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in others)
    m = create_model("resnest26", zero_init_last=False)
    assert all(torch.all(mod.bn3.weight == 1) for mod in m.modules() if hasattr(mod, "bn3"))


def test_init_is_kaiming_fan_out():
    torch.manual_seed(0)
    w = create_model("resnest50").layer3[0].conv3.weight  # 1024 x 256 x 1 x 1, fan_out 1024
    assert w.std().item() == pytest.approx((2 / 1024) ** 0.5, rel=0.02)


def test_every_norm_is_batchnorm2d():
    m = meta_model("resnest50_fast_2s2x40d")
    for name, mod in m.named_modules():
        if list(mod.parameters(recurse=False)) and not isinstance(mod, (nn.Conv2d, nn.Linear)):
            assert isinstance(mod, nn.BatchNorm2d), name


# --------------------------------------------------------------------------------------
# Official layout: timm's weights load strict and give the same logits
# --------------------------------------------------------------------------------------

TIMM_PAIRS = [
    ("resnest14d", "resnest14"),
    ("resnest26d", "resnest26"),
    ("resnest50d", "resnest50"),
    ("resnest101e", "resnest101"),
    ("resnest200e", "resnest200"),
    ("resnest269e", "resnest269"),
    ("resnest50d_4s2x40d", "resnest50_fast_4s2x40d"),
    ("resnest50d_1s4x24d", "resnest50_fast_1s4x24d"),
    ("resnet50d", "resnet50d"),
]


def randomize_bn(model, gen):
    """Non-trivial BN stats and affine params. bn3 gammas are kept small (0.1-0.3): with
    gamma ~1 the residual stream of ResNeSt-200/269 grows ~1.2x per block to 1e5-1e7,
    where float32 itself is ill-conditioned and no two summation orders agree."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.1, 0.1, generator=gen)
                if name.endswith("bn3"):
                    m.weight.mul_(0.2)


@pytest.mark.parametrize("timm_name,name", slow_except(TIMM_PAIRS, fast=TIMM_PAIRS[:3] + TIMM_PAIRS[-3:]))
def test_timm_weights_load_strict_and_match(timm_name, name):
    torch.manual_seed(0)
    ref = timm.create_model(timm_name)
    gen = torch.Generator().manual_seed(1)
    randomize_bn(ref, gen)
    ours = create_model(name)
    assert shapes(ours) == shapes(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    ours.eval()
    x = torch.randn(2, 3, 64, 64, generator=gen)  # 64 px keeps the 269 at ~1 s
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert want.shape == (2, 1000)
    # rtol 1e-5 per logit; atol 1e-5 of the largest logit so logits that happen to be
    # near 0 are held to the same 1e-5 relative (to the logits' scale), not to float32
    # noise. Measured max |diff| / max |logit|: 0 to 4e-7; a layout or maths mistake is O(1).
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_official_key_names():
    keys = set(meta_model("resnest50").state_dict())
    for k in [
        "conv1.0.weight",
        "conv1.1.running_var",
        "conv1.3.weight",
        "conv1.4.weight",
        "conv1.6.weight",
        "bn1.weight",
        "layer1.0.conv2.conv.weight",
        "layer1.0.conv2.bn0.weight",
        "layer1.0.conv2.fc1.bias",
        "layer1.0.conv2.bn1.weight",
        "layer1.0.conv2.fc2.weight",
        "layer2.0.downsample.1.weight",
        "layer2.0.downsample.2.running_mean",
        "layer1.0.downsample.1.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert k in keys, k
    assert not any(k.startswith("layer2.0.downsample.0") for k in keys)  # the pool
    assert not any("drop" in k for k in meta_model("resnest50", dropblock={}).state_dict())


# --------------------------------------------------------------------------------------
# The paper's table
# --------------------------------------------------------------------------------------

PAPER = {  # params (M), 224 px GFLOPs (multiply-adds)
    "resnet50d": (25.6, 4.34),
    "resnest50": (27.5, 5.39),
    "resnest101": (48.3, None),
    "resnest200": (70.2, None),
    "resnest269": (110.9, None),
    "resnest50_fast_1s1x64d": (26.3, 4.34),
    "resnest50_fast_2s1x64d": (27.5, 4.34),
    "resnest50_fast_4s1x64d": (31.9, 4.35),
    "resnest50_fast_1s2x40d": (25.9, 4.38),
    "resnest50_fast_2s2x40d": (26.9, 4.38),
    "resnest50_fast_4s2x40d": (30.4, 4.41),
    "resnest50_fast_1s4x24d": (25.7, 4.42),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_params_and_macs(name):
    params, gflops = PAPER[name]
    info = model_info(meta_model(name), 224)
    assert info["params"] / 1e6 == pytest.approx(params, rel=0.005)
    if gflops is not None:
        assert info["gmacs"] == pytest.approx(gflops, rel=0.015)


def test_model_info_counts_conv_and_fc_macs():
    m = create_model("resnest14", num_classes=10)
    info = model_info(m, 32)
    assert info == model_info(meta_model("resnest14", num_classes=10), 32)
    assert info["params"] == sum(p.numel() for p in m.parameters())
    assert m.training  # restored
    # A lone conv + fc, checked by hand.
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 5))
    assert model_info(tiny, 32)["gmacs"] * 1e9 == pytest.approx(8 * 16 * 16 * 27 + 8 * 16 * 16 * 5)
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2))
    assert model_info(grouped, 10)["gmacs"] * 1e9 == pytest.approx(8 * 10 * 10 * 2 * 9)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_table(capsys):
    assert cli_main([]) == 0
    out = capsys.readouterr().out
    assert "GMACs (at each model's default crop)" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("| res")]
    assert [ln.split("|")[1].strip() for ln in lines] == NAMES
    assert "| resnest50 | 3-4-6-3 | 2 | 1 | 64d | 27.48 | 5.37 | 224 |" in out
    assert "| resnest101 | 3-4-23-3 | 2 | 1 | 64d | 48.28 | 13.32 | 256 |" in out


@pytest.mark.slow
def test_cli_json_one_model_at_a_size():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnest_train.models",
            "--model",
            "resnest50_fast_1s4x24d",
            "--img-size",
            "224",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["name"] == "resnest50_fast_1s4x24d" and row["img_size"] == 224
    assert (row["radix"], row["cardinality"], row["width"]) == (1, 4, 24)
    assert row["params_m"] == pytest.approx(25.7, rel=0.005) and row["gmacs"] == pytest.approx(4.42, rel=0.015)


def test_cli_unknown_model(capsys):
    assert cli_main(["--model", "resnest51"]) == 2
    assert "unknown model 'resnest51'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# DropBlock
# --------------------------------------------------------------------------------------


def dropblock_paths(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, DropBlock))


def test_dropblock_recipe_placement():
    m = create_model("resnest50", dropblock=dict(prob=0.1))
    paths = dropblock_paths(m)
    want = sorted(f"layer{s}.{b}.drop{i}" for s, n in ((3, 6), (4, 3)) for b in range(n) for i in (1, 2, 3))
    assert paths == want
    assert all(m.get_submodule(p).block_size == 3 for p in paths)
    assert all(float(m.get_submodule(p).drop_prob) == pytest.approx(0.1) for p in paths)
    assert dropblock_paths(meta_model("resnest50")) == []  # no dropblock= -> none


def test_dropblock_per_stage_and_site():
    m = meta_model("resnest50", dropblock=dict(stages=[2], sites=["bn3"], block_size=5))
    assert dropblock_paths(m) == [f"layer2.{b}.drop3" for b in range(4)]
    assert m.layer2[0].drop3.block_size == 5
    m = meta_model("resnet50d", dropblock=dict(stages=[1, 4], sites=["splat"]))
    assert dropblock_paths(m) == [f"layer1.{b}.drop2" for b in range(3)] + [f"layer4.{b}.drop2" for b in range(3)]


def test_dropblock_accepts_a_config_dataclass():
    from dataclasses import dataclass, field

    @dataclass
    class Cfg:
        stages: list = field(default_factory=lambda: [4])
        sites: list = field(default_factory=lambda: ["bn1"])
        block_size: int = 3
        prob: float = 0.0
        schedule: str = "linear"

    assert dropblock_paths(meta_model("resnest14", dropblock=Cfg())) == ["layer4.0.drop1"]


def test_dropblock_prob_zero_is_exactly_no_dropblock():
    torch.manual_seed(0)
    plain = create_model("resnest26", num_classes=10, zero_init_last=False)
    dropped = create_model(
        "resnest26", num_classes=10, zero_init_last=False, dropblock=dict(stages=[1, 2, 3, 4], prob=0.0)
    )
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 64, 64)
    outs, grads = [], []
    for m in (plain, dropped):
        m.train()
        y = m(x)
        y.square().sum().backward()
        outs.append(y)
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_dropblock_eval_is_deterministic_identity():
    torch.manual_seed(0)
    plain = create_model("resnest14", num_classes=10, zero_init_last=False).eval()
    dropped = create_model("resnest14", num_classes=10, zero_init_last=False, dropblock=dict(prob=0.3)).eval()
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b, c = dropped(x), dropped(x), plain(x)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_dropblock_train_zeroes_blocks_only_where_placed():
    torch.manual_seed(0)
    m = create_model(
        "resnest26", num_classes=10, zero_init_last=False, dropblock=dict(stages=[3], sites=["bn1", "bn3"], prob=0.2)
    ).train()
    newly_zeroed = {}

    def hook(name):
        def fn(mod, inp, out):
            newly_zeroed[name] = int(((out == 0) & (inp[0] != 0)).sum())

        return fn

    for name, mod in m.named_modules():
        if isinstance(mod, (DropBlock, nn.Identity)) and name.split(".")[-1] in ("drop1", "drop2", "drop3"):
            mod.register_forward_hook(hook(name))
    m(torch.randn(4, 3, 128, 128))
    placed = {n for n, v in newly_zeroed.items() if isinstance(m.get_submodule(n), DropBlock)}
    assert placed == {"layer3.0.drop1", "layer3.0.drop3", "layer3.1.drop1", "layer3.1.drop3"}
    assert all(newly_zeroed[n] > 0 for n in placed)
    assert all(v == 0 for n, v in newly_zeroed.items() if n not in placed)
    assert len(newly_zeroed) == 24  # 8 blocks x 3 sites, all reached


def test_dropblock_op_rate_blocks_and_scale():
    torch.manual_seed(0)
    db = DropBlock(0.1, block_size=3).train()
    x = torch.ones(8, 16, 28, 28)
    y = db(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.1, abs=0.01)  # gamma is calibrated to drop ~prob
    assert y.mean().item() == pytest.approx(1.0, abs=1e-4)  # kept units are rescaled
    # Zeros come in 3x3 blocks: a dropped unit away from the border has a dropped
    # 3x3 block containing it, so no dropped unit is isolated from all 8 neighbours.
    z = (y == 0).float()
    z = z.view(-1, 1, 28, 28)
    neighbours = torch.nn.functional.conv2d(z, torch.ones(1, 1, 3, 3), padding=1) - z
    assert not torch.any((z == 1) & (neighbours == 0))
    assert torch.equal(db.eval()(x), x)


def test_set_dropblock_prob_and_schedule():
    m = create_model("resnest50", dropblock=dict(prob=0.0))
    assert set_dropblock_prob(m, 0.05) == 27
    assert all(
        float(mod.drop_prob) == pytest.approx(0.05) and mod.active for mod in m.modules() if isinstance(mod, DropBlock)
    )
    set_dropblock_prob(m, 0.0)
    assert not any(mod.active for mod in m.modules() if isinstance(mod, DropBlock))
    assert set_dropblock_prob(meta_model("resnest14"), 0.1) == 0
    with pytest.raises(ValueError):
        set_dropblock_prob(m, 1.5)

    ramp = [dropblock_prob(e, 270, 0.1) for e in range(270)]
    assert ramp[0] == pytest.approx(0.1 / 270) and ramp[134] == pytest.approx(0.05)
    assert ramp[-1] == pytest.approx(0.1) and ramp == sorted(ramp)
    assert dropblock_prob(10, 270, 0.1, "constant") == 0.1
    assert dropblock_prob(300, 270, 0.1) == pytest.approx(0.1)  # clamped past the end
    with pytest.raises(ValueError, match="schedule"):
        dropblock_prob(0, 10, 0.1, "cosine")


def test_dropblock_ramp_under_torch_compile_does_not_recompile():
    """The trainer changes the probability every epoch; a compiled model must read it
    at run time (a Python-float probability recompiles each epoch and after 8 epochs
    dynamo gives up and runs eager)."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    db = DropBlock(0.0, 3).train()
    compiled = torch.compile(db, backend="aot_eager", fullgraph=True)
    x = torch.ones(4, 8, 16, 16)
    rates = []
    for p in (0.02, 0.1, 0.3, 0.05):
        set_dropblock_prob(db, p)
        rates.append((compiled(x) == 0).float().mean().item())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert rates[0] < rates[3] < rates[1] < rates[2]  # the buffer value is used
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------
# Memory layout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnest50_fast_4s2x40d", "resnest14", "resnest50_fast_1s4x24d"])
def test_channels_last_keeps_the_layout(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, layers=(1, 1, 1, 1)).eval()
    cl = create_model(name, num_classes=10, layers=(1, 1, 1, 1)).eval()
    cl.load_state_dict(m.state_dict())
    cl.to(memory_format=torch.channels_last)
    splat_out = []
    cl.layer2[0].conv2.register_forward_hook(lambda mod, i, o: splat_out.append(o))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y, y_cl = m(x), cl(x.contiguous(memory_format=torch.channels_last))
    # The split-attention output stays channels_last: no layout conversion before conv3.
    assert splat_out[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5 * y.abs().max().item())


def test_channels_last_train_step_matches_nchw_exactly_in_float64():
    """Same loss and gradients from both layouts. float64: in float32 a random net in train
    mode (BN over a few values) amplifies rounding differences of the conv kernels of the
    two layouts to percent-level gradient differences, timm's model included."""
    torch.manual_seed(0)
    m = (
        create_model("resnest50_fast_4s2x40d", num_classes=10, zero_init_last=False, layers=(1, 1, 1, 1))
        .double()
        .train()
    )
    cl = (
        create_model("resnest50_fast_4s2x40d", num_classes=10, zero_init_last=False, layers=(1, 1, 1, 1))
        .double()
        .train()
    )
    cl.load_state_dict(m.state_dict())
    cl.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y, y_cl = m(x), cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y, rtol=1e-10, atol=1e-12)
    y.square().sum().backward()
    y_cl.square().sum().backward()
    for (n, p), p_cl in zip(m.named_parameters(), cl.parameters()):
        # fc1.bias feeds a train-mode BN: its true gradient is 0, what is left is rounding.
        atol = 1e-8 if n.endswith("fc1.bias") else 1e-10 * p.grad.abs().max().item()
        torch.testing.assert_close(p_cl.grad, p.grad, rtol=1e-8, atol=atol, msg=n)
