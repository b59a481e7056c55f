"""Split attention beyond ResNet (resnest_train/models/families.py): the baselines equal timm's
and torchvision's models, parameter counts follow the formula, radix 1 is an SE gate, the
depthwise split layout, DropBlock sites, zero-gamma, no decay on norm/bias, channels_last,
TorchScript/ONNX export and DDP."""

import os

import pytest
import timm
import torch
import torchvision
from timm.layers import SEModule
from torch import nn

from helpers import TINY, slow_except
from resnest_train.models import DropBlock, SplitAttention, create_model, list_models
from resnest_train.models.families import MOBILENETV2, REGNETY, InvertedResidual, RegNetYBlock
from resnest_train.models.splat import attention_width
from resnest_train.optim import param_groups

FAMILIES = [
    "regnety_800mf",
    "splat_regnety_800mf",
    "regnety_4gf",
    "splat_regnety_4gf",
    "mobilenetv2_100",
    "splat_mobilenetv2_100",
]


def randomize_bn(model):
    """Every BatchNorm's statistics and affine parameters drawn at random (eval-mode outputs then
    depend on every BN being where it should be)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.slow
def test_every_family_model_is_listed_and_gives_logits():
    assert [n for n in list_models() if n in FAMILIES] == FAMILIES
    x = torch.randn(2, 3, 64, 64)
    for name in FAMILIES:
        torch.manual_seed(0)
        model = create_model(name, num_classes=7).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 7), name
        # layer1..layer4 at output strides 4, 8, 16, 32: DropBlock's stages are those of ResNeSt
        sizes = []

        def record(module, inputs, out, sizes=sizes):
            sizes.append(out.shape[-1])

        hooks = [getattr(model, f"layer{i}").register_forward_hook(record) for i in range(1, 5)]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        assert sizes == [16, 8, 4, 2], name


def test_model_table_rows():
    from resnest_train.models.__main__ import format_table, model_rows

    table = format_table(model_rows(["splat_regnety_800mf", "mobilenetv2_100", "splat_mobilenetv2_100"]))
    assert "| splat_regnety_800mf | 1-3-8-2 | 2 | w/16 | 64/128/320/768 | 5.57 | 0.80 | 224 |" in table
    assert "| mobilenetv2_100 | 3-3-7-4 | 0 | dw | x1.0 | 3.50 | 0.30 | 224 |" in table
    assert "| splat_mobilenetv2_100 | 3-3-7-4 | 2 | dw | x1.0 | 4.78 | 0.32 | 224 |" in table


@pytest.mark.parametrize(
    "ours,reference",
    [
        ("regnety_800mf", lambda: timm.create_model("regnety_008")),
        ("mobilenetv2_100", lambda: torchvision.models.mobilenet_v2()),
    ],
)
def test_baselines_are_timms_regnety_and_torchvisions_mobilenetv2(ours, reference):
    """Same parameter count and, with the reference's weights copied in order, the same logits."""
    ref = randomize_bn(reference())
    model = create_model(ours).eval()
    mine, theirs = model.state_dict(), ref.state_dict()
    assert [v.shape for v in mine.values()] == [v.shape for v in theirs.values()]
    model.load_state_dict(dict(zip(mine, theirs.values())))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


def test_regnety_4gf_has_timms_parameter_count():
    with torch.device("meta"):
        ours = sum(p.numel() for p in create_model("regnety_4gf").parameters())
        theirs = sum(p.numel() for p in timm.create_model("regnety_040").parameters())
    assert ours == theirs == 20_646_656


def splat_regnety_params(size: str, radix: int = 2, classes: int = 1000) -> int:
    """SplAt-RegNetY's parameters, counted by hand from the block's description."""
    spec = REGNETY[size]
    total = 3 * 32 * 9 + 2 * 32  # stem conv + BN
    chs = 32
    for width, depth in zip(spec["widths"], spec["depths"]):
        card = width // spec["group_width"]
        attn = max(width * radix // 4, 32)
        for j in range(depth):
            c_in = chs if j == 0 else width
            total += c_in * width + 2 * width  # conv1 + bn1
            total += 9 * width * width // card + 2 * width * radix  # SplAt conv (same weights as the group conv) + bn0
            total += attn * width // card + attn + 2 * attn  # fc1 (grouped by cardinality) + bias + bn1
            total += attn * width * radix // card + width * radix  # fc2 + bias
            total += width * width + 2 * width  # conv3 + bn3
            if j == 0:
                total += c_in * width + 2 * width  # shortcut conv + BN
        chs = width
    return total + chs * classes + classes


def splat_mobilenetv2_params(radix: int = 2, classes: int = 1000) -> int:
    """SplAt-MobileNetV2's parameters, counted by hand: the attention width from the block's input."""
    total = 3 * 32 * 9 + 2 * 32
    chs = 32
    for t, c, n, _, _ in MOBILENETV2:
        for _ in range(n):
            hidden, attn = chs * t, max(chs * radix // 4, 32)
            if t != 1:
                total += chs * hidden + 2 * hidden  # expansion conv + bn1
            total += 9 * hidden * radix + 2 * hidden * radix  # depthwise conv, multiplier radix, + bn0
            total += hidden * attn + attn + 2 * attn  # dense fc1 + bias + bn1
            total += attn * hidden * radix + hidden * radix  # fc2 + bias
            total += hidden * c + 2 * c  # projection + bn3
            chs = c
    return total + chs * 1280 + 2 * 1280 + 1280 * classes + classes


def test_parameter_counts_follow_the_formula():
    with torch.device("meta"):
        for size in ("800mf", "4gf"):
            model = create_model(f"splat_regnety_{size}")
            assert sum(p.numel() for p in model.parameters()) == splat_regnety_params(size)
        assert sum(p.numel() for p in create_model("splat_mobilenetv2_100").parameters()) == splat_mobilenetv2_params()
        model = create_model("splat_mobilenetv2_100", radix=4, num_classes=10)
        assert sum(p.numel() for p in model.parameters()) == splat_mobilenetv2_params(4, 10)
    assert splat_mobilenetv2_params() == 4_782_568 and splat_regnety_params("800mf") == 5_573_544


@pytest.mark.parametrize(
    "chs,cardinality,depthwise,act",
    [(64, 1, False, nn.ReLU), (96, 1, True, nn.ReLU6), (64, 4, False, nn.ReLU)],
    ids=["resnest", "mobilenetv2", "regnety"],
)
def test_radix_1_is_an_se_gate(chs, cardinality, depthwise, act):
    """SplitAttention with radix 1 = conv -> BN -> act, then timm's SEModule (BN in its MLP) on
    each cardinal group, with the weights copied: numerically the same."""
    torch.manual_seed(0)
    splat = randomize_bn(
        SplitAttention(chs, chs, 3, 1, cardinality=cardinality, radix=1, depthwise=depthwise, act_layer=act)
    )
    conv = nn.Sequential(splat.conv, splat.bn0, act()).eval()
    attn, per = splat.fc1.out_channels, chs // cardinality
    gates = []
    for g in range(cardinality):
        se = SEModule(per, rd_channels=attn // cardinality, norm_layer=nn.BatchNorm2d).eval()
        a, o = slice(g * attn // cardinality, (g + 1) * attn // cardinality), slice(g * per, (g + 1) * per)
        se.fc1.load_state_dict({"weight": splat.fc1.weight[a], "bias": splat.fc1.bias[a]})
        se.bn.load_state_dict({k: v[a] if v.dim() else v for k, v in splat.bn1.state_dict().items()})
        se.fc2.load_state_dict({"weight": splat.fc2.weight[o], "bias": splat.fc2.bias[o]})
        gates.append(se)
    x = torch.randn(2, chs, 8, 8)
    with torch.no_grad():
        y = conv(x)
        want = torch.cat([se(part) for se, part in zip(gates, y.split(per, 1))], 1)
        torch.testing.assert_close(splat(x), want, rtol=1e-5, atol=1e-6)


def test_depthwise_splits_are_channel_major_and_fused_by_a_softmax_per_channel():
    """Radix 2 depthwise: output channel c = sum_r softmax_r(attn)[r, c] * conv(x)[c * R + r],
    the attention from the pooled sum of the splits; NCHW and channels_last alike."""
    torch.manual_seed(0)
    C, R = 24, 2
    splat = randomize_bn(SplitAttention(C, C, 3, 1, radix=R, attn_chs=16, depthwise=True, act_layer=nn.ReLU6))
    x = torch.randn(2, C, 6, 6)
    with torch.no_grad():
        y = splat.act0(splat.bn0(splat.conv(x))).view(2, C, R, 6, 6)  # groups = C: each channel's splits together
        gap = y.sum(2).mean((2, 3))
        logits = splat.fc2(splat.act1(splat.bn1(splat.fc1(gap[:, :, None, None])))).view(2, R, C)
        weights = logits.softmax(1)  # over radix, per channel
        want = torch.einsum("brc,bcrhw->bchw", weights, y)
        torch.testing.assert_close(splat(x), want, rtol=1e-5, atol=1e-6)
        got = splat(x.to(memory_format=torch.channels_last))
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


CHANNELS_LAST_MODELS = ["splat_regnety_800mf", "splat_mobilenetv2_100", "regnety_800mf"]


@pytest.mark.parametrize("name", slow_except(CHANNELS_LAST_MODELS, fast={"splat_regnety_800mf"}))
def test_channels_last_gives_the_same_logits_and_gradients(name):
    """In float64, where rounding cannot hide a wrong layout. Gradients compare against the largest
    one: a bias before a training-mode BN (the attention's fc1) has a gradient of 0 up to rounding."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, zero_init_last=False, final_drop=0.0)  # no random dropout
    model = randomize_bn(model).train().double()
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    want = model(x)
    want.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.to(memory_format=torch.channels_last)
    got = model(x.to(memory_format=torch.channels_last))
    got.square().sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    scale = max(float(g.abs().max()) for g in grads)
    for g, w in zip((p.grad for p in model.parameters()), grads):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9 * scale)


def test_dropblock_sites_and_zero_gamma():
    db = dict(stages=[2, 3], sites=["bn1", "splat", "bn3"], prob=0.1, block_size=3)
    # RegNetY-800MF: 3 + 8 blocks in stages 2 and 3, three sites each
    model = create_model("splat_regnety_800mf", dropblock=db)
    drops = [n for n, m in model.named_modules() if isinstance(m, DropBlock)]
    assert len(drops) == 33 and all(n.startswith(("layer2.", "layer3.")) for n in drops)
    blocks = [m for m in model.modules() if isinstance(m, RegNetYBlock)]
    assert len(blocks) == 14 and all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in blocks)
    # MobileNetV2: stages 2 and 3 hold 3 + 7 blocks, all expanding (so all have bn1)
    model = create_model("splat_mobilenetv2_100", dropblock=dict(db, sites=["bn1"]))
    assert sum(isinstance(m, DropBlock) for m in model.modules()) == 10
    model = create_model("mobilenetv2_100", dropblock=dict(db, stages=[1], sites=["bn1", "splat"]))
    assert sum(isinstance(m, DropBlock) for m in model.modules()) == 3 + 2  # the t=1 block has no bn1
    residual = [m for m in model.modules() if isinstance(m, InvertedResidual) and m.use_res]
    others = [m for m in model.modules() if isinstance(m, InvertedResidual) and not m.use_res]
    assert len(residual) == 10 and len(others) == 7
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in residual)
    assert all(bool((b.bn3.weight == 1).all()) for b in others)  # no shortcut: zero gamma would zero the block
    assert create_model("regnety_800mf", zero_init_last=False).layer1[0].bn3.weight.min() == 1


def test_no_weight_decay_on_norm_parameters_and_biases():
    for name in ("splat_mobilenetv2_100", "regnety_800mf"):
        model = create_model(name, num_classes=10)
        decay, no_decay = param_groups(model, 1e-4)
        no_decay_ids = {id(p) for p in no_decay["params"]}
        for module in model.modules():
            for pname, p in module.named_parameters(recurse=False):
                expected = isinstance(module, nn.BatchNorm2d) or pname == "bias"
                assert (id(p) in no_decay_ids) == expected, (name, type(module).__name__, pname)
        assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    # the attention MLPs' and SE's biases are among them
    assert attention_width(16, 2) == 32 and attention_width(160, 2) == 80


def test_overrides_that_do_not_apply_are_refused():
    from resnest_train.models import ModelError

    with pytest.raises(ModelError, match=r"\['avd'\] do not apply to this model; it takes radix, final_drop"):
        create_model("regnety_800mf", avd=True)
    with pytest.raises(ModelError, match="radix 3 builds no valid network"):
        create_model("splat_regnety_800mf", radix=3)
    with pytest.raises(ModelError, match="features_only is available for the ResNeSt models only"):
        create_model("mobilenetv2_100", features_only=True)
    assert isinstance(create_model("splat_regnety_800mf", radix=0).layer1[0].se, SEModule)


SPLAT_MODELS = ["splat_regnety_800mf", "splat_mobilenetv2_100"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", slow_except(SPLAT_MODELS, fast={"splat_regnety_800mf"}))
def test_torchscript_and_onnx_exports_match(name, tmp_path):
    from resnest_train import export as ex

    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=10, zero_init_last=False))
    info = {"model": name, "num_classes": 10, "arch": {}, "img_size": 32, "source": name, "weights": "model"}
    done = ex.export(model, info, ex.ExportRequest(path="", fmt="torchscript", out=str(tmp_path / "m.pt"), fuse=True))
    assert done["max_abs_diff"] <= ex.TOLERANCE and done["fused_bn"]
    pytest.importorskip("onnxruntime")
    out = str(tmp_path / "m.onnx")
    done = ex.export(model, info, ex.ExportRequest(path="", fmt="onnx", out=out, exporter="torchscript"))
    assert done["max_abs_diff"] <= ex.TOLERANCE and os.path.getsize(out) > 1e6


@pytest.mark.slow
@pytest.mark.dist
def test_two_process_ddp_with_channels_last_keeps_identical_replicas(tmp_path):
    from helpers import metrics
    from test_distributed import finish, torchrun

    out = str(tmp_path / "ddp")
    args = [a for a in TINY if not a.startswith("model.name=")]
    proc = torchrun(
        *args,
        "model.name=splat_mobilenetv2_100",
        "model.dropblock.prob=0.1",
        "train.channels_last=true",
        "dist.backend=gloo",
        "train.max_steps_per_epoch=2",
        f"output.dir={out}",
        extra=["--standalone"],
    )
    finish(proc)
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert len(r["weight_checksums"]) == 2 and r["weight_checksums"][0] == r["weight_checksums"][1]
