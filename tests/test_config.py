import os
import subprocess
import sys

import pytest

from resnest_train.config_loader import load_config
from resnest_train.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_base_inheritance_any_depth_and_lists(tmp_path):
    write(tmp_path / "a.yaml", "train: {epochs: 10, batch_size: 64}\noptim: {base_lr: 0.2}\n")
    write(tmp_path / "sub/b.yaml", "base: ../a.yaml\ntrain: {epochs: 20}\n")
    write(tmp_path / "c.yaml", "train: {seed: 7}\n")
    top = write(tmp_path / "sub/deeper/top.yaml", "base: [../b.yaml, ../../c.yaml]\ntrain: {batch_size: 32}\n")
    cfg = load_config(top, ["optim.base_lr=0.4", "model.dropblock.stages=[4]"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (20, 32, 7)
    assert cfg.optim.base_lr == 0.4 and cfg.model.dropblock.stages == [4]
    assert cfg.train.label_smoothing == 0.1  # schema default untouched


@pytest.mark.parametrize(
    "name,crop,ratio,drop,jitter",
    [
        ("resnest50", 224, 0.875, None, 0.4),
        ("resnest101", 256, 0.889, None, 0.4),
        ("resnest200", 320, 0.909, 0.2, 0.0),
        ("resnest269", 416, 0.929, 0.2, 0.0),
    ],
)
def test_paper_configs_hold_the_recipe(name, crop, ratio, drop, jitter):
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"))
    assert cfg.model.name == name
    assert (cfg.data.train_crop, cfg.data.eval_ratio, cfg.model.final_drop) == (crop, ratio, drop)
    assert cfg.data.color_jitter == jitter
    assert cfg.train.epochs == 270 and cfg.train.batch_size == 128 and cfg.train.mixup_alpha == 0.2
    assert cfg.optim.base_lr == 0.1 and cfg.optim.warmup_epochs == 5 and cfg.optim.nesterov
    assert cfg.optim.weight_decay == 1e-4 and cfg.train.label_smoothing == 0.1
    db = cfg.model.dropblock
    assert (db.stages, db.sites, db.block_size, db.prob) == ([3, 4], ["bn1", "splat", "bn3"], 3, 0.1)
    assert cfg.data.augment == "autoaugment" and cfg.data.random_erasing == 0 and cfg.model.zero_init_last


def test_every_ablation_config_loads():
    folder = os.path.join(CONFIGS, "ablation")
    names = sorted(load_config(os.path.join(folder, f)).model.name for f in os.listdir(folder))
    assert names == [
        "resnest50_fast_1s1x64d",
        "resnest50_fast_1s2x40d",
        "resnest50_fast_1s4x24d",
        "resnest50_fast_2s1x64d",
        "resnest50_fast_2s2x40d",
        "resnest50_fast_4s1x64d",
        "resnest50_fast_4s2x40d",
        "resnet50d",
    ]


def test_unknown_key_names_file_key_and_closest(tmp_path):
    path = write(tmp_path / "bad.yaml", "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "'train.epoch'" in str(e.value) and "'train.epochs'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.base_rl=0.1"])
    assert "optim.base_rl=0.1" in str(e.value) and "'optim.base_lr'" in str(e.value)


@pytest.mark.parametrize("old,new", [("true", "autoaugment"), ("false", "none")])
def test_the_replaced_autoaugment_key_names_data_augment(tmp_path, old, new):
    path = write(tmp_path / "old.yaml", f"data:\n  autoaugment: {old}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (
        f"Config key 'data.autoaugment' in {path} was replaced by 'data.augment' (autoaugment, randaugment, "
        f"trivialaugment, none): write 'augment: {new}' under 'data:' (or data.augment={new} on the command "
        "line), and remove 'data.autoaugment'."
    )
    with pytest.raises(ConfigError, match=f"'data.autoaugment' in command-line override 'data.autoaugment={old}' "):
        load_config(None, [f"data.autoaugment={old}"])


@pytest.mark.parametrize("old,new", [(True, "autoaugment"), (False, "none")])
def test_a_checkpoints_saved_autoaugment_reads_as_data_augment(old, new):
    """A checkpoint cannot be edited: its saved config's old key is read as the new one."""
    from resnest_train.config import Config
    from resnest_train.config_loader import config_from_dict, config_to_dict

    saved = config_to_dict(Config())
    del saved["data"]["augment"]
    saved["data"]["autoaugment"] = old
    assert config_from_dict(saved).data.augment == new
    with pytest.raises(ConfigError, match="'data.autoaugment' in command-line override"):  # a user's override is not
        config_from_dict(saved, overrides=["data.autoaugment=true"])


def test_wrong_type_names_expected_type(tmp_path):
    path = write(tmp_path / "bad.yaml", "train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"'train.epochs' in .*bad.yaml must be an integer, got 'ten'"):
        load_config(path)
    with pytest.raises(ConfigError, match="must be true/false"):
        load_config(None, ["train.ema=3"])
    assert load_config(None, ["model.final_drop=0.2"]).model.final_drop == 0.2  # official fault #3


def test_bad_yaml_missing_base_and_cycles(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load_config(write(tmp_path / "y.yaml", "train:\n  epochs: [1\n"))
    with pytest.raises(ConfigError, match="nope.yaml .*does not exist"):
        load_config(write(tmp_path / "m.yaml", "base: nope.yaml\n"))
    write(tmp_path / "p.yaml", "base: q.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(write(tmp_path / "q.yaml", "base: p.yaml\n"))
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, ["data.backend=ffcv"])


def run_train(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.slow
def test_cli_user_errors_are_one_paragraph_and_exit_2(tmp_path):
    result = run_train("--config", os.path.join(CONFIGS, "resnest50.yaml"), "train.epohcs=2")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: Unknown config key 'train.epohcs'")
    result = run_train("--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "missing.yaml does not exist" in result.stderr


@pytest.mark.slow
def test_print_config_shows_resolved_values():
    result = run_train("--config", os.path.join(CONFIGS, "resnest101.yaml"), "--print-config", "train.epochs=3")
    assert result.returncode == 0, result.stderr
    assert "name: resnest101" in result.stdout and "epochs: 3" in result.stdout
    assert "train_crop: 256" in result.stdout
