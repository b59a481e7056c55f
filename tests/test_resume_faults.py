"""Faults around checkpoints: prefixed or EMA weights, damaged files, EMA switched on at resume,
and ranks that see the checkpoint folder differently (issue 9 items 5, 7, 12, 14; issue 16 item 2)."""

import argparse
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY, TRAIN, env, metrics, train
from resnest_train import checkpoint
from resnest_train.config_loader import load_config
from resnest_train.engine import build_model
from resnest_train.errors import UserError
from resnest_train.optim import build_optimizer
from resnest_train.resume import check_resume_positions, restore
from resnest_train.trainer import Trainer, build_ema


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """One epoch of TINY without EMA: checkpoints/last.pth, epoch_0001.pth, best.pth (step 8)."""
    out = str(tmp_path_factory.mktemp("plain"))
    train(*TINY, "train.epochs=1", f"output.dir={out}")
    return out


@pytest.fixture(scope="module")
def ema_resumed_run(plain_run, tmp_path_factory):
    """plain_run resumed for a second epoch with train.ema=true."""
    out = str(tmp_path_factory.mktemp("ema") / "run")
    shutil.copytree(plain_run, out)
    result = train(*TINY, "train.epochs=2", "train.ema=true", f"output.dir={out}")
    return out, result


def ckpt(run_dir, name="last.pth"):
    return torch.load(os.path.join(run_dir, "checkpoints", name), weights_only=True)


def distance(a: dict, b: dict) -> float:
    """Euclidean distance over every floating-point tensor of two state_dicts with the same keys."""
    return sum(float((a[k].double() - b[k].double()).square().sum()) for k in a if a[k].is_floating_point()) ** 0.5


def tiny_cfg(*overrides):
    return load_config(None, [*TINY, *overrides])


# ---- issue 9 item 5: weights saved from DDP / torch.compile, or a checkpoint's EMA ---------------


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_weights_saved_from_a_wrapped_model_load_with_the_prefix_stripped(plain_run, tmp_path, prefix):
    weights = ckpt(plain_run)["model"]
    path = str(tmp_path / "wrapped.pth")
    torch.save({prefix + k: v for k, v in weights.items()}, path)
    model = build_model(tiny_cfg(f"model.weights={path}"), num_classes=5)
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys() and distance(loaded, weights) == 0.0
    # Another class count still keeps a fresh classifier and loads the rest.
    other = build_model(tiny_cfg(f"model.weights={path}"), num_classes=7).state_dict()
    assert other["fc.weight"].shape == (7, other["fc.weight"].shape[1])
    assert distance({k: v for k, v in other.items() if not k.startswith("fc.")}, weights) == 0.0


def test_prefix_is_stripped_only_when_every_key_has_it():
    t = torch.zeros(1)
    assert checkpoint.strip_wrapper_prefixes({"module.a": t, "b": t}).keys() == {"module.a", "b"}
    assert checkpoint.strip_wrapper_prefixes({"module._orig_mod.a": t}).keys() == {"a"}


@pytest.mark.slow
def test_weights_ema_picks_the_checkpoints_ema_weights(ema_resumed_run):
    out, _ = ema_resumed_run
    path = os.path.join(out, "checkpoints", "last.pth")
    saved = torch.load(path, weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in saved["ema"].items()}
    assert distance(ema, saved["model"]) > 0.0  # so the pick below is told apart
    loaded = build_model(tiny_cfg(f"model.weights={path}", "model.weights_ema=true"), num_classes=5).state_dict()
    assert distance(loaded, ema) == 0.0
    loaded = build_model(tiny_cfg(f"model.weights={path}"), num_classes=5).state_dict()
    assert distance(loaded, saved["model"]) == 0.0


@pytest.mark.slow
def test_weights_ema_of_a_run_without_ema_is_a_clear_error(plain_run):
    path = os.path.join(plain_run, "checkpoints", "last.pth")
    with pytest.raises(UserError, match=r"'model.weights_ema' is true, but .*last.pth holds no EMA weights"):
        build_model(tiny_cfg(f"model.weights={path}", "model.weights_ema=true"), num_classes=5)


@pytest.mark.slow
def test_weights_of_another_architecture_list_keys_and_shapes(plain_run):
    path = os.path.join(plain_run, "checkpoints", "last.pth")
    result = train(*TINY, f"model.weights={path}", "model.name=resnest26", "--dry-run", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"Config key 'model.weights': the weights in {path} do not fit model 'resnest26'" in result.stderr
    assert "missing keys: layer1.1.conv1.weight, layer1.1.bn1.weight" in result.stderr
    with pytest.raises(UserError) as e:
        build_model(tiny_cfg(f"model.weights={path}", "model.stem_width=16"), num_classes=5)
    assert "different shapes: conv1.0.weight: checkpoint (32, 3, 3, 3) vs model (16, 3, 3, 3)" in str(e.value)


# ---- issue 9 item 12: a checkpoint holding a non-tensor object ---------------------------------


@pytest.mark.slow
def test_weights_holding_a_python_object_name_the_key_without_escape_codes(tmp_path):
    path = str(tmp_path / "with_args.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    result = train(*TINY, f"model.weights={path}", f"output.dir={tmp_path / 'run'}", "--dry-run", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: Config key 'model.weights': {path} cannot be loaded" in result.stderr
    assert "Unsupported global: GLOBAL argparse.Namespace" in result.stderr
    assert "point 'model.weights' at" in result.stderr and "'resume'" not in result.stderr
    assert "\x1b" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---- issue 9 item 14: a damaged last.pth ---------------------------------------------------------


def fake_checkpoint(path, epoch, step):
    state = {k: 0 for k in checkpoint.TRAINING_KEYS}
    state.update(model={}, optimizer={}, config={}, epoch=epoch, step_in_epoch=0, step=step)
    torch.save(state, path)


def test_auto_resume_takes_the_newest_checkpoint_that_loads(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    fake_checkpoint(folder / "epoch_0002.pth", epoch=2, step=16)
    fake_checkpoint(folder / "best.pth", epoch=1, step=8)  # written last: the newest mtime, an older state
    fake_checkpoint(folder / "last.pth", epoch=3, step=24)
    data = (folder / "last.pth").read_bytes()
    (folder / "last.pth").write_bytes(data[: len(data) // 2])  # a copy cut short
    (folder / "epoch_0003.pth").write_bytes(b"not a checkpoint")
    lines = []
    path, saved = checkpoint.find_resume("auto", str(tmp_path), lines.append)
    assert path == str(folder / "epoch_0002.pth") and checkpoint.position(saved) == (2, 0, 16)
    skips = "warning: resume=auto skips"
    assert lines == [
        f"{skips} {folder / 'last.pth'}: RuntimeError: PytorchStreamReader "
        "failed reading zip archive: failed finding central directory",
        f"{skips} {folder / 'epoch_0003.pth'}: UnpicklingError: Unsupported operand 110",
    ]

    (folder / "last.pth").unlink()  # missing, not damaged: the same fallback
    assert checkpoint.find_resume("auto", str(tmp_path), lines.append)[0] == str(folder / "epoch_0002.pth")

    for name in ("epoch_0002.pth", "best.pth"):
        (folder / name).write_bytes(b"")
    with pytest.raises(
        UserError,
        match=r"'resume' is auto, but no checkpoint in .* loads \(last.pth: missing; "
        r"epoch_0003.pth: UnpicklingError.*; epoch_0002.pth: EOFError; "
        r"best.pth: EOFError\)",
    ):
        checkpoint.find_resume("auto", str(tmp_path), lines.append)


def test_explicit_resume_of_a_damaged_or_bare_file_names_the_resume_key(tmp_path):
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match=r"^Config key 'resume': .*damaged.pth cannot be loaded"):
        checkpoint.find_resume(str(damaged), str(tmp_path))
    bare = tmp_path / "bare.pth"
    torch.save({"w": torch.zeros(1)}, bare)
    with pytest.raises(UserError, match=r"^Config key 'resume': .*bare.pth cannot be resumed from \(it lacks model"):
        checkpoint.find_resume(str(bare), str(tmp_path))


@pytest.mark.slow
def test_truncated_last_pth_resumes_from_the_newest_good_checkpoint(plain_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(plain_run, out)
    last = os.path.join(out, "checkpoints", "last.pth")
    data = open(last, "rb").read()
    with open(last, "wb") as f:
        f.write(data[: len(data) // 3])
    result = train(*TINY, "train.epochs=2", f"output.dir={out}")
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"warning: resume=auto skips {last}: RuntimeError: PytorchStreamReader")
    epoch_1 = os.path.join(out, "checkpoints", "epoch_0001.pth")
    assert lines[1] == f"Resuming from {epoch_1}: epoch 2, step 8"
    assert [r["epoch"] for r in metrics(out)] == [1, 2]
    assert checkpoint.position(torch.load(last, weights_only=True)) == (2, 0, 16)


# ---- issue 9 item 7: EMA switched on at resume ---------------------------------------------------


@pytest.mark.slow
def test_ema_built_after_restore_starts_at_the_restored_weights(plain_run):
    cfg = tiny_cfg("train.ema=true")
    model = build_model(cfg, num_classes=5)
    saved = ckpt(plain_run)
    assert distance(model.state_dict(), saved["model"]) > 0.0  # fresh weights differ from the checkpoint's
    trainer = Trainer(
        model,
        build_optimizer(model, cfg.optim, lr=0.0),
        cfg.train,
        cfg.optim.clip_grad_norm,
        torch.device("cpu"),
        num_classes=5,
    )
    restore(trainer, saved, cfg, "last.pth")
    ema = build_ema(trainer.model, cfg.train.ema_decay, saved.get("ema"))
    assert saved["ema"] is None and distance(ema.module.state_dict(), saved["model"]) == 0.0


@pytest.mark.slow
def test_ema_switched_on_at_resume_follows_the_restored_weights(plain_run, ema_resumed_run):
    out, result = ema_resumed_run
    epoch_1, epoch_2 = ckpt(plain_run)["model"], ckpt(out)
    ema = {k.removeprefix("module."): v for k, v in epoch_2["ema"].items()}
    # Eight updates at decay 0.9998 move the EMA 0.16% of the way from the epoch-1 weights to the
    # epoch-2 ones (measured: 0.001 of the distance); an EMA built from the initial weights stays
    # about as far from the epoch-1 weights as those are (measured: 2.3x the distance).
    assert distance(ema, epoch_1) < 0.01 * distance(epoch_2["model"], epoch_1)
    assert "(the checkpoint holds no EMA: train.ema starts from its weights)" in result.stdout
    k = round(metrics(out)[1]["val_top1_ema"] * 24 / 100)  # a whole number of the 24 val images
    assert 0 <= k <= 24 and metrics(out)[1]["val_top1_ema"] == pytest.approx(100 * k / 24, abs=1e-9)


# ---- issue 16 item 2: rank 0 decides, every rank loads the same file before DDP ---------------

# Runs train.py under torchrun; rank 1 sees the checkpoint folder as a lagging network filesystem would.
ENTRY = """
import os, runpy, sys
import torch
view, sys.argv = sys.argv[1], [sys.argv[2]] + sys.argv[3:]
if os.environ["RANK"] == "1" and view == "lagging":  # its cache does not list the checkpoints yet
    isfile, exists = os.path.isfile, os.path.exists
    hidden = lambda p: os.sep + "checkpoints" + os.sep in os.fspath(p)
    os.path.isfile = lambda p: False if hidden(p) else isfile(p)
    os.path.exists = lambda p: False if hidden(p) else exists(p)
if os.environ["RANK"] == "1" and view == "stale":  # it reads an older copy of last.pth: mid-epoch 1
    load = torch.load
    def stale(f, *args, **kwargs):
        saved = load(f, *args, **kwargs)
        if str(f).endswith("last.pth"):
            saved.update(epoch=0, step_in_epoch=4, step=4)
        return saved
    torch.load = stale
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def torchrun_with_view(tmp_path, view, *args):
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(entry),
        view,
        TRAIN,
        *TINY,
        "train.batch_size=4",
        "dist.timeout_min=1",
        *args,
    ]  # global batch 8, as plain_run's
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env(), timeout=300)


@pytest.mark.slow
@pytest.mark.dist
def test_a_rank_with_a_lagging_view_resumes_from_rank_0s_choice(plain_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(plain_run, out)
    result = torchrun_with_view(tmp_path, "lagging", "train.epochs=2", f"output.dir={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Resuming from {os.path.join(out, 'checkpoints', 'last.pth')}: epoch 2, step 8" in result.stdout
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert len(set(rows[1]["weight_checksums"])) == 1  # both ranks trained the same replica
    assert checkpoint.position(ckpt(out)) == (2, 0, 16)  # both ran the same 8 steps of epoch 2


@pytest.mark.slow
@pytest.mark.dist
def test_ranks_that_restore_different_points_stop_with_each_ranks_position(plain_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(plain_run, out)
    result = torchrun_with_view(tmp_path, "stale", "train.epochs=2", f"output.dir={out}")
    output = result.stdout + result.stderr
    assert result.returncode != 0  # torchrun reports the failed workers
    assert output.count("error: The ranks resumed from") == 2, output  # both ranks stop, neither hangs
    assert "(epoch, step_in_epoch, step) = rank 0: (1, 0, 8); rank 1: (0, 4, 4)" in output
    assert [r["epoch"] for r in metrics(out)] == [1]


def test_resume_positions_check():
    check_resume_positions([(1, 0, 8), (1, 0, 8)], "last.pth")
    with pytest.raises(UserError, match=r"rank 0: \(1, 0, 8\); rank 1: \(0, 4, 4\)"):
        check_resume_positions([(1, 0, 8), (0, 4, 4)], "last.pth")
    with pytest.raises(
        UserError,
        match=r"^Rank\(s\) 1 could not resume from last.pth, which rank 0 chose .*: "
        r"Config key 'resume'",
    ):
        check_resume_positions([(1, 0, 8), "Config key 'resume': ..."], "last.pth")
    with pytest.raises(UserError, match=r"^Cannot resume"):
        check_resume_positions(["Cannot resume", "Cannot resume"], "last.pth")
