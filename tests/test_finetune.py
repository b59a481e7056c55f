"""Fine-tuning: frozen stages and BatchNorm, LR multipliers in the optimizer, the rules around
them, and a pretrained model fine-tuned on another small set beating the same schedule from
scratch (train.py end to end)."""

import os

import pytest
import torch
from torch import nn

from helpers import NARROW, SHAPES_RUN, make_shapes, metrics, train
from resnest_train.config import Config
from resnest_train.config_loader import config_to_dict, load_config
from resnest_train.errors import ConfigError, UserError
from resnest_train.finetune import (
    FrozenBatchNorm2d,
    freeze_batch_norm,
    freeze_stages,
    lr_mult_fn,
    lr_multiplier,
    stage_of,
)
from resnest_train.models import create_model
from resnest_train.optim import build_optimizer, param_groups, set_lr
from resnest_train.resume import restore


def test_stage_of_names():
    assert [
        stage_of(n)
        for n in (
            "conv1.0.weight",
            "bn1.bias",
            "layer1.0.conv1.weight",
            "layer4.2.bn3.weight",
            "fc.weight",
            "fpn.inner_blocks.0.0.weight",
        )
    ] == [0, 0, 1, 4, 5, 5]


def test_frozen_batch_norm_computes_eval_batch_norm_and_keeps_its_keys():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    bn.train()(torch.randn(4, 8, 5, 5) * 3 + 1)  # statistics to freeze
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    frozen = freeze_batch_norm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and list(frozen.state_dict()) == list(bn.state_dict())
    x = torch.randn(3, 8, 5, 5)
    frozen.train()  # train mode changes nothing
    assert torch.equal(frozen(x), bn.eval()(x))
    assert torch.equal(frozen.running_mean, bn.running_mean)
    assert not frozen.weight.requires_grad and not frozen.bias.requires_grad
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(frozen))
    assert isinstance(sync[0], FrozenBatchNorm2d)  # train.sync_bn leaves frozen layers frozen


def test_freeze_stages_stops_their_weights_and_statistics_only():
    torch.manual_seed(0)
    model = create_model("resnest14", num_classes=5)
    plain_keys = list(model.state_dict())
    freeze_stages(model, 2)  # stem + layer1
    assert list(model.state_dict()) == plain_keys  # checkpoints interchange with unfrozen models
    for name, p in model.named_parameters():
        assert p.requires_grad == (stage_of(name) >= 2), name
    assert isinstance(model.bn1, FrozenBatchNorm2d) and isinstance(model.layer1[0].bn3, FrozenBatchNorm2d)
    assert type(model.layer2[0].bn1) is nn.BatchNorm2d
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()(torch.randn(4, 3, 64, 64)).sum().backward()
    after = model.state_dict()
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert torch.equal(after["layer1.0.conv2.bn0.running_var"], before["layer1.0.conv2.bn0.running_var"])
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    assert model.conv1[0].weight.grad is None and model.layer2[0].conv1.weight.grad is not None
    assert freeze_stages(create_model("resnest14"), 5).fc.weight.requires_grad  # 5: all but the head
    with pytest.raises(ValueError, match="freeze_stages takes 0..5, got 6"):
        freeze_stages(model, 6)


def test_lr_multipliers_reach_every_parameter_through_the_optimizer():
    torch.manual_seed(0)
    model = create_model("resnest14", num_classes=5)
    freeze_stages(model, 1)
    cfg = load_config(
        None,
        [
            "model.name=resnest14",
            "model.weights=w.pth",
            "finetune.freeze_stages=1",
            "finetune.body_lr_mult=0.1",
            "finetune.layer_decay=0.5",
        ],
    )
    optimizer = build_optimizer(model, cfg.optim, lr=0.0, lr_mult=lr_mult_fn(cfg.finetune))
    set_lr(optimizer, 0.2)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert optimizer.param_groups[0]["lr"] == 0.2 and optimizer.param_groups[0]["lr_mult"] == 1.0  # the head
    assert lr_of[id(names["fc.weight"])] == lr_of[id(names["fc.bias"])] == 0.2
    assert lr_of[id(names["layer4.0.conv1.weight"])] == pytest.approx(0.2 * 0.1 * 0.5)
    assert lr_of[id(names["layer1.0.conv1.weight"])] == pytest.approx(0.2 * 0.1 * 0.5**4)
    assert id(names["conv1.0.weight"]) not in lr_of  # frozen: not in the optimizer
    assert decay_of[id(names["layer2.0.bn1.weight"])] == 0.0 and decay_of[id(names["layer2.0.conv1.weight"])] == 1e-4
    assert len(lr_of) == sum(p.requires_grad for p in model.parameters())
    assert lr_multiplier("layer3.0.conv1.weight", 0.1, 1.0) == 0.1 and lr_mult_fn(Config().finetune) is None
    # without multipliers: the two groups of a plain run, as before
    decay, no_decay = param_groups(create_model("resnest14"), 1e-4)
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["lr_mult"]) == (1e-4, 0.0, 1.0)


def test_freezing_needs_pretrained_weights():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["finetune.freeze_stages=2"])
    assert str(e.value).startswith("Config key 'finetune.freeze_stages' is 2, but 'model.weights' is empty")
    with pytest.raises(
        ConfigError, match="'finetune.freeze_bn' is true, but 'model.weights' is empty.*set finetune.freeze_bn=false"
    ):
        load_config(None, ["finetune.freeze_bn=true"])
    assert load_config(None, ["finetune.body_lr_mult=0.1"]).finetune.body_lr_mult == 0.1  # harmless from scratch


def test_resume_refuses_other_finetune_settings():
    cfg = load_config(None, ["model.weights=w.pth", "finetune.freeze_stages=2"])
    saved = {"config": {"model": config_to_dict(Config())["model"]}}
    with pytest.raises(UserError, match=r"finetune.freeze_stages: checkpoint 0, config 2"):
        restore(None, saved, cfg, "last.pth")  # a checkpoint without the section: the defaults


# ---------------------------------------------------------------------------------------
# train.py end to end: fine-tuned beats from scratch
# ---------------------------------------------------------------------------------------

# 5 classes (the shapes whatever their colour) that the 10-class pretraining set does not
# have, 16 training images each: 30 steps of batch 8, evaluated once at the end on 200 images.
SCHEDULE = SHAPES_RUN + [
    "train.batch_size=8",
    "train.epochs=3",
    "train.eval_every=3",
    "optim.base_lr=0.64",
    "optim.warmup_epochs=0.5",
]
FINETUNE = ["finetune.freeze_stages=1", "finetune.freeze_bn=true", "finetune.body_lr_mult=0.1"]
# Measured with train.seed 0-3 (pretraining and both runs) on a 2-core CPU: fine-tuned 61.0 /
# 43.5 / 63.0 / 57.0 % top-1, from scratch 25.5 / 29.5 / 32.5 / 31.5 %; the smallest gap was 14 points.
MARGIN = 10.0


@pytest.fixture(scope="module")
def finetune_runs(pretrained_run, tmp_path_factory):
    root = make_shapes(str(tmp_path_factory.mktemp("shapes5")), 16, 40, seed=1, by_colour=False)
    weights = os.path.join(pretrained_run, "checkpoints", "last.pth")
    tuned, scratch = str(tmp_path_factory.mktemp("tuned")), str(tmp_path_factory.mktemp("scratch"))
    train(*SCHEDULE, *FINETUNE, f"data.root={root}", f"model.weights={weights}", f"output.dir={tuned}")
    train(*SCHEDULE, f"data.root={root}", f"output.dir={scratch}")
    return weights, tuned, scratch


@pytest.mark.slow
def test_finetuned_model_beats_the_same_schedule_from_scratch(finetune_runs):
    _, tuned, scratch = finetune_runs
    ft, sc = metrics(tuned)[-1]["val_top1"], metrics(scratch)[-1]["val_top1"]
    assert metrics(tuned)[-1]["val_images"] == 200 and "val_top1" not in metrics(tuned)[0]  # evaluated once
    assert ft >= sc + MARGIN, (ft, sc)


@pytest.mark.slow
def test_finetuning_kept_the_frozen_parts(finetune_runs):
    weights, tuned, _ = finetune_runs
    before = torch.load(weights, weights_only=True)["model"]
    after = torch.load(os.path.join(tuned, "checkpoints", "last.pth"), weights_only=True)["model"]
    arch = {k.split("=")[0][len("model.") :]: int(k.split("=")[1]) for k in NARROW[1:]}
    norms = tuple(
        f"{name}." for name, m in create_model("resnest14", **arch).named_modules() if isinstance(m, nn.BatchNorm2d)
    )
    assert set(after) == set(before) and len(norms) > 20
    for key, value in after.items():
        if key.startswith("fc."):
            assert value.shape[0] == 5 and before[key].shape[0] == 10  # a new classifier
        elif stage_of(key) == 0 or key.startswith(norms):
            assert torch.equal(value, before[key]), key  # the stem and every BatchNorm: frozen
    assert not torch.equal(after["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])
