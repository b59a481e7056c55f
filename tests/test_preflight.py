"""The one pre-flight check: every numeric key has a tested range, the rules across keys,
model construction, the device and steps-per-epoch rules kept apart; and train.py --dry-run
and scripts/sweep.py --dry-run refuse the same configs."""

import dataclasses
import os
import types
import typing

import pytest
import torch
import yaml

from helpers import ROOT, TINY, train
from resnest_train.config import Config
from resnest_train.config_loader import get_key, load_config
from resnest_train.errors import ConfigError
from resnest_train.preflight import RANGES, check_device, check_steps_per_epoch, preflight
from resnest_train.sweep import format_value, parse_overrides

BASE = ["model.name=resnest14"]  # cheap to build; every other key at the schema default

# key -> (values just inside the range, values just outside). A value that needs other keys
# set to pass the rules across keys gives them as (value, {key: value, ...}).
CASES = {
    "model.radix": ([0], [-1]),
    "model.cardinality": ([1], [0]),
    "model.bottleneck_width": ([(1, {"model.radix": 1})], [0]),
    "model.stem_width": ([1], [0]),
    "model.final_drop": ([0.0, 0.99], [-0.01, 1.0]),
    "model.dropblock.stages": ([[1], [4], []], [[0], [3, 5]]),
    "model.dropblock.block_size": ([1], [0]),
    "model.dropblock.prob": ([0.0, 0.99], [-0.01, 1.0]),
    "data.workers": ([0], [-1]),
    "data.train_crop": ([32], [31]),
    "data.eval_crop": ([32, None], [31]),
    "data.eval_ratio": ([0.01, 1.0], [0.0, 1.01]),
    "data.rrc_scale": ([[0.01, 1.0], [0.5, 0.5]], [[0.0, 1.0], [0.08, 1.01], [1.0, 0.08], [0.5]]),
    "data.rrc_ratio": ([[0.01, 100.0], [1.0, 1.0]], [[0.0, 1.0], [1.34, 0.75], [1.0, 1.0, 1.0]]),
    "data.train_crop_schedule.start_crop": ([0, (32, {"train.epochs": 2})], [-1]),
    "data.train_crop_schedule.start_ramp": ([0], [-1]),
    "data.train_crop_schedule.end_ramp": ([0], [-1]),
    "data.train_crop_schedule.step": ([1], [0]),
    "data.repeated_aug": ([1, 3], [0]),
    "data.color_jitter": ([0.0], [-0.01]),
    "data.lighting": ([0.0], [-0.01]),
    "data.randaugment_num_ops": ([1], [0]),
    "data.randaugment_magnitude": ([0, 30], [-1, 31]),
    "data.random_erasing": ([0.0, 1.0], [-0.01, 1.01]),
    "data.mean": ([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [[0.5], [-0.01, 0.5, 0.5], [123.675, 116.28, 103.53]]),
    "data.std": ([[0.01, 0.01, 0.01], [1.0, 1.0, 1.0]], [[0.0, 0.2, 0.2], [0.2, 0.2], [58.395, 57.12, 57.375]]),
    "data.dali.threads": ([1], [0]),
    "data.dali.prefetch": ([1], [0]),
    "data.dali.hw_decoder_load": ([0.0, 1.0], [-0.01, 1.01]),
    "data.synthetic.train_images": ([1], [0]),
    "data.synthetic.val_images": ([1], [0]),
    "data.synthetic.num_classes": ([1], [0]),
    "optim.base_lr": ([1e-6], [0.0, -0.1, float("nan"), float("inf")]),
    "optim.momentum": ([(0.0, {"optim.nesterov": False}), 0.99], [-0.01, 1.0]),
    "optim.betas": ([[0.0, 0.0], [0.9, 0.999]], [[0.9], [0.9, 1.0], [-0.01, 0.999]]),
    "optim.trust_coeff": ([1e-6], [0.0, -0.001]),
    "optim.weight_decay": ([0.0], [-1e-4]),
    "optim.warmup_epochs": ([0.0], [-0.5]),
    "optim.warmup_start_lr": ([0.0], [-0.01]),
    "optim.final_lr": ([0.0], [-0.01]),
    "optim.step_epochs": ([[1], [], [90, 30]], [[0], [30, -1]]),
    "optim.step_gamma": ([1e-6, 1.0], [0.0, 1.01]),
    "optim.clip_grad_norm": ([0.01, None], [0.0]),
    "train.epochs": ([1], [0]),
    "train.batch_size": ([2, (1, {"train.mixup_alpha": 0, "train.sync_bn": True})], [0, (1, {"train.mixup_alpha": 0})]),
    "train.accum_steps": ([1], [0]),
    "train.label_smoothing": ([0.0, 0.99], [-0.01, 1.0]),
    "train.mixup_alpha": ([0.0], [-0.01]),
    "train.cutmix_alpha": ([0.0], [-0.01]),
    "train.mixup_prob": ([0.0, 1.0], [-0.01, 1.01]),
    "train.mixup_off_epoch": ([0], [-1]),
    "train.ema_decay": ([0.01, 0.9999], [0.0, 1.0]),
    "train.seed": ([0, 2**32 - 1], [-1, 2**32]),
    "train.max_steps_per_epoch": ([0], [-1]),
    "train.eval_every": ([1], [0]),
    "finetune.freeze_stages": ([0, (5, {"model.weights": "pretrained.pth"})], [-1, 6]),
    "finetune.body_lr_mult": ([1e-6, 10.0], [0.0, -0.1]),
    "finetune.layer_decay": ([1e-6, 1.0], [0.0, 1.01]),
    "dist.timeout_min": ([1], [0]),
    "dist.bucket_cap_mb": ([1], [0]),
    "output.log_every": ([1], [0]),
    "output.save_every_epochs": ([0], [-1]),
    "output.keep_last": ([0], [-1]),
    "output.save_every_steps": ([0], [-1]),
}


def is_number_type(hint):
    """int, float, or an Optional or list of them (bool is not a number here)."""
    if typing.get_origin(hint) in (list, typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return len(inner) == 1 and is_number_type(inner[0])
    return hint in (int, float)


def numeric_keys(cls=Config, prefix=""):
    """Every int / float / list-of-number field of the schema (Optional ones too), by type."""
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            keys += numeric_keys(hint, prefix + name + ".")
        elif is_number_type(hint):
            keys.append(prefix + name)
    return keys


def test_every_numeric_key_has_a_range_and_a_test():
    keys = set(numeric_keys())
    assert {"train.batch_size", "data.mean", "model.radix", "optim.clip_grad_norm"} <= keys  # the walk works
    assert set(RANGES) == keys
    assert set(CASES) == keys


def _cases(inside):
    for key, (good, bad) in CASES.items():
        for case in good if inside else bad:
            value, context = case if isinstance(case, tuple) else (case, {})
            yield pytest.param(key, value, context, id=f"{key}={format_value(value)}")


def overrides(key, value, context):
    return BASE + [f"{k}={format_value(v)}" for k, v in {**context, key: value}.items()]


@pytest.mark.parametrize("key,value,context", list(_cases(inside=True)))
def test_value_just_inside_the_range_is_accepted(key, value, context):
    cfg = load_config(None, overrides(key, value, context))
    got = get_key(cfg, key)
    assert got == value or (value is None and got is None)


@pytest.mark.parametrize("key,value,context", list(_cases(inside=False)))
def test_value_just_outside_the_range_names_key_value_and_range(key, value, context):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides(key, value, context))
    message = str(e.value)
    assert message.startswith(f"Config key '{key}' is ") and "\n" not in message
    if key == "train.batch_size" and value == 1:
        assert "at least 2 images per process" in message  # the BatchNorm rule, not the table
    else:
        assert f"outside its valid range {RANGES[key].describe(isinstance(value, list))}" in message


def test_range_message_reads_as_one_paragraph():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.mean=[0.5]"])
    assert str(e.value) == (
        "Config key 'data.mean' is [0.5], outside its valid range a list of 3 numbers, each in [0, 1]: the R, G, "
        "B means in [0, 1] pixel units (ImageNet: [0.485, 0.456, 0.406], not 0-255 values). Set data.mean "
        "within that range."
    )


# ---------------------------------------------------------------------------------------
# Rules across keys, choices, model construction
# ---------------------------------------------------------------------------------------


def test_batch_of_one_is_refused_for_batch_norm():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.batch_size=1", "train.mixup_alpha=0"])
    assert "'train.batch_size' is 1" in str(e.value) and "more than one value per channel" in str(e.value)
    # what the rule prevents: PyTorch's BatchNorm after split-attention pooling at batch 1
    from resnest_train.models import create_model

    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        create_model("resnest14", num_classes=2).train()(torch.randn(1, 3, 32, 32))


def test_odd_batch_with_mixup_and_nesterov_without_momentum():
    with pytest.raises(ConfigError, match="'train.batch_size' is 7; mixup/cutmix pair each batch"):
        load_config(None, ["train.batch_size=7"])
    with pytest.raises(ConfigError, match="'train.batch_size' is 7; mixup/cutmix"):
        load_config(None, ["train.batch_size=7", "train.mixup_alpha=0", "train.cutmix_alpha=1.0"])
    assert load_config(None, ["train.batch_size=7", "train.mixup_alpha=0"]).train.batch_size == 7
    with pytest.raises(ConfigError, match="'optim.nesterov' is true but 'optim.momentum' is 0"):
        load_config(None, ["optim.momentum=0"])
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):  # what it prevents
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.0, nesterov=True)


def test_optimizer_and_schedule_rules():
    # timm's Lars adapts every group that decays, so MLPerf's exclusion needs the no-decay group
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.name=lars", "optim.no_decay_norm_bias=false"])
    assert str(e.value).startswith("Config key 'optim.no_decay_norm_bias' is false with optim.name=lars: ")
    assert load_config(None, ["optim.name=lamb", "optim.no_decay_norm_bias=false"]).optim.name == "lamb"
    # Nesterov without momentum: refused where momentum is used (SGD, LARS), not for LAMB
    with pytest.raises(ConfigError, match=r"'optim.momentum' is 0: .*\(timm.optim.Lars refuses it\)"):
        load_config(None, ["optim.name=lars", "optim.momentum=0"])
    assert load_config(None, ["optim.name=lamb", "optim.momentum=0"]).optim.momentum == 0
    # step decay's milestones come after the warm-up (warmup_epochs 5 by default)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.schedule=step", "optim.step_epochs=[30, 5]"])
    assert str(e.value).startswith(
        "Config key 'optim.step_epochs' is [30, 5], but 5 does not come after the warm-up (optim.warmup_epochs=5)"
    )
    assert load_config(None, ["optim.schedule=step", "optim.step_epochs=[30, 6]"]).optim.step_epochs == [30, 6]
    assert load_config(None, ["optim.step_epochs=[5]"]).optim.schedule == "cosine"  # unused by cosine
    with pytest.raises(ConfigError, match="'optim.name' is 'adamw', which is not one of 'sgd', 'lamb', 'lars'"):
        load_config(None, ["optim.name=adamw"])
    with pytest.raises(ConfigError, match="'optim.schedule' is 'linear', which is not one of 'cosine', 'step'"):
        load_config(None, ["optim.schedule=linear"])


def test_choices_include_autoaugment_interpolation_and_list_items():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.autoaugment_interpolation=bicubic"])
    assert str(e.value) == (
        "Config key 'data.autoaugment_interpolation' is 'bicubic', which is not one of "
        "'nearest', 'bilinear'. Set it to one of those."
    )
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.augment=randaug"])
    assert str(e.value) == (
        "Config key 'data.augment' is 'randaug', which is not one of "
        "'autoaugment', 'randaugment', 'trivialaugment', 'none'. Set it to one of those."
    )
    with pytest.raises(ConfigError, match=r"'model.dropblock.sites' is \['bn1', 'bn2'\]: 'bn2' is not one of"):
        load_config(None, ["model.dropblock.sites=[bn1, bn2]"])


def test_model_that_cannot_be_built_names_its_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.cardinality=3", "model.bottleneck_width=10"])
    message = str(e.value)
    assert message.startswith(
        "The model of the config cannot be built (model.name=resnest50, "
        "model.cardinality=3, model.bottleneck_width=10): "
    )
    assert "divisible" in message
    with pytest.raises(ConfigError, match="model.name=resnest51.*unknown model 'resnest51'"):
        load_config(None, ["model.name=resnest51"])


def test_types_are_checked_for_a_config_built_in_code():
    cfg = Config()
    cfg.train.batch_size = "8"
    with pytest.raises(ConfigError, match="'train.batch_size' in the config must be an integer, got '8'"):
        preflight(cfg)
    assert preflight(Config()) == Config()


def test_every_shipped_config_and_sweep_run_passes():
    folder = os.path.join(ROOT, "configs")
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            if name.endswith(".yaml") and "sweeps" not in dirpath:
                load_config(path)
    from resnest_train import sweep as sw

    for name in ("cpu_smoke.yaml", "radix_cardinality.yaml", "recipe_ablation.yaml"):
        sweep = sw.load_sweep(os.path.join(folder, "sweeps", name))
        assert len(sw.check(sweep)) == len(sweep.runs)


# ---------------------------------------------------------------------------------------
# Rules that need the device or the dataset
# ---------------------------------------------------------------------------------------


def test_device_rules_are_apart_from_the_config_check():
    cfg = load_config(None, ["train.amp=fp16", "train.sync_bn=true"])  # fine until the device is known
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(ConfigError, match="'train.amp' is fp16, which needs a CUDA GPU"):
        check_device(cfg, cpu, 1)
    cfg.train.amp = "none"
    with pytest.raises(ConfigError, match="'train.sync_bn' is true, but PyTorch's SyncBatchNorm runs only on GPUs"):
        check_device(cfg, cpu, 1)
    check_device(cfg, cuda, 1)
    cfg = load_config(None, ["train.batch_size=1", "train.mixup_alpha=0", "train.sync_bn=true"])
    with pytest.raises(ConfigError, match="'train.batch_size' is 1 with train.sync_bn on a single process"):
        check_device(cfg, cuda, 1)
    check_device(cfg, cuda, 2)  # SyncBN normalises over the global batch of 2


def test_final_lr_above_the_peak_lr_is_refused_once_the_global_batch_is_known():
    from resnest_train.loop import make_plan

    # base_lr 0.1 at a global batch of 8 x 2 processes: peak LR 0.00625
    cfg = load_config(None, ["train.batch_size=8", "optim.final_lr=0.00625"])
    assert make_plan(cfg, world_size=2, batches_per_epoch=10).peak_lr == 0.00625  # a floor at the peak is fine
    with pytest.raises(ConfigError) as e:
        make_plan(cfg, world_size=1, batches_per_epoch=10)  # peak LR 0.003125
    assert str(e.value).startswith(
        "Config key 'optim.final_lr' is 0.00625, above the peak LR 0.003125 (optim.base_lr 0.1 x global batch 8 / 256)"
    )


def test_steps_per_epoch_rule():
    cfg = load_config(None, ["train.accum_steps=4", "train.max_steps_per_epoch=3"])
    assert check_steps_per_epoch(cfg, 1, 20) == 3  # 20 // 4 = 5, capped at 3
    assert check_steps_per_epoch(cfg, 1, 8) == 2
    with pytest.raises(ConfigError, match="An epoch would have no optimizer step: 3 batches"):
        check_steps_per_epoch(cfg, 2, 3)


# ---------------------------------------------------------------------------------------
# train.py --dry-run and scripts/sweep.py --dry-run refuse the same configs
# ---------------------------------------------------------------------------------------

# (overrides, the key the error must name)
BAD_CONFIGS = [
    (["train.batch_size=1", "train.mixup_alpha=0"], "train.batch_size"),
    (["model.dropblock.prob=1.0"], "model.dropblock.prob"),
    (["data.mean=[0.5]"], "data.mean"),
    (["optim.base_lr=-0.1"], "optim.base_lr"),
    (["data.autoaugment_interpolation=bicubic"], "data.autoaugment_interpolation"),
    (["optim.name=lars", "optim.no_decay_norm_bias=false"], "optim.no_decay_norm_bias"),
    (["data.augment=randaug"], "data.augment"),
    (["data.autoaugment=false"], "data.augment=none"),  # the replaced key names its replacement
    (["model.dropblock.block_size=0"], "model.dropblock.block_size"),
    (["train.batch_size=7"], "train.batch_size"),
    (["model.cardinality=3", "model.bottleneck_width=10"], "model.cardinality=3"),
    (["data.train_crop_schedule.start_crop=32", "data.train_crop_schedule.end_ramp=2"], "end_ramp"),
]
GOOD = TINY + ["train.max_steps_per_epoch=1"]


def sweep_main():
    """The main of scripts/sweep.py (and resnest-sweep)."""
    from resnest_train.cli.sweep import main

    return main


def sweep_dry_run(tmp_path, bad, capsys):
    """scripts/sweep.py --dry-run on a sweep whose run 1 is GOOD and run 2 is GOOD plus ``bad``."""
    base = tmp_path / "base.yaml"
    base.write_text("{}\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(base),
                "overrides": parse_overrides(GOOD),
                "runs": [{"name": "good", "train.seed": 1}, {"name": "bad", **parse_overrides(bad)}],
            }
        )
    )
    code = sweep_main()([str(path), f"output.dir={tmp_path / 'runs'}", "--dry-run"])
    out = capsys.readouterr()
    return code, out.out, out.err, str(path)


@pytest.mark.slow
@pytest.mark.parametrize("bad,key", BAD_CONFIGS, ids=[" ".join(b) for b, _ in BAD_CONFIGS])
def test_train_dry_run_and_sweep_dry_run_refuse_the_same_configs(bad, key, tmp_path, capsys):
    result = train(*GOOD, *bad, f"output.dir={tmp_path / 'run'}", "--dry-run", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert key in result.stderr and result.stderr.count("\n") == 1  # one paragraph
    code, out, err, path = sweep_dry_run(tmp_path, bad, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: Run 2 'bad' of sweep {path} has a bad config: ") and key in err
    # the very message train.py gives
    assert err.split("has a bad config: ", 1)[1] == result.stderr[len("error: ") :]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_good_config_passes_both_dry_runs(tmp_path, capsys):
    result = train(*GOOD, f"output.dir={tmp_path / 'run'}", "--dry-run")
    assert "global batch     8 = 8 per process x 1 x 1 accumulation" in result.stdout
    code, out, err, _ = sweep_dry_run(tmp_path, [], capsys)
    assert code == 0 and "[2/2] bad: pending, would start" in out, err


SCHEDULE = "data.train_crop_schedule"


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"start_crop": 16, "step": 16}, "'data.train_crop_schedule.start_crop' is 16: ResNeSt's total stride is 32"),
        ({"start_crop": 256}, "'data.train_crop_schedule.start_crop' is 256, larger than data.train_crop=224"),
        ({"start_crop": 160, "step": 48}, "'data.train_crop_schedule.start_crop' is 160, not a multiple of"),
        ({"start_crop": 96, "step": 48}, "'data.train_crop' is 224, not a multiple of data.train_crop_schedule.step"),
        ({"start_crop": 128, "start_ramp": 5, "end_ramp": 4}, "'data.train_crop_schedule.start_ramp' is 5, after"),
        ({"start_crop": 128, "end_ramp": 10}, "'data.train_crop_schedule.end_ramp' is 10, but train.epochs=10"),
    ],
)
def test_crop_schedule_rules_name_the_key_and_the_fix(settings, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + ["train.epochs=10"] + [f"{SCHEDULE}.{k}={v}" for k, v in settings.items()])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_crop_schedule_within_the_rules_loads():
    keys = {"start_crop": 128, "start_ramp": 2, "end_ramp": 9, "step": 32}
    cfg = load_config(None, BASE + ["train.epochs=10"] + [f"{SCHEDULE}.{k}={v}" for k, v in keys.items()])
    assert dataclasses.asdict(cfg.data.train_crop_schedule) == keys
