"""The trainer end to end: real train.py runs on tiny data, numbers checked."""

import math
import os

import pytest
import torch

from helpers import TINY, event_files, metrics, run_state, scalars, scalars_in, train, train_preempted

pytestmark = [pytest.mark.slow]  # every test runs train.py for real


def images_counted(percent, images=24):
    """Whether an accuracy in percent is k / images of the val set, k a whole number of images."""
    k = round(percent * images / 100)
    return 0 <= k <= images and abs(percent - 100.0 * k / images) < 1e-9


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    result = train(*TINY, f"output.dir={out}")
    return out, result


def test_two_epoch_run_writes_metrics_tensorboard_and_checkpoints(tiny_run):
    out, result = tiny_run
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_sec", "epoch_time_s"):
            assert isinstance(r[key], float), key
        assert r["val_top1"] <= r["val_top5"] and r["val_images"] == 24
        assert images_counted(r["val_top1"]) and images_counted(r["val_top5"])
    # 64 images / batch 8 = 8 steps per epoch; warm-up from 0 over epoch 1, then cosine to 0 at step 16
    # (Goyal et al.'s warm-up, the paper's cosine): the formula written out, not optim.lr_at.
    peak = 0.1 * 8 / 256
    tb = os.path.join(out, "tb")
    lrs = scalars(tb, "train/lr")
    assert sorted(lrs) == list(range(1, 17))
    for step, value in lrs.items():  # logged after step `step` with the LR that step used
        s = step - 1
        expected = peak * s / 8 if s < 8 else peak * 0.5 * (1 + math.cos(math.pi * (s - 8) / 8))
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert rows[1]["lr"] == pytest.approx(lrs[16])
    top1 = scalars(tb, "epoch/val_top1")
    assert top1 == pytest.approx({1: rows[0]["val_top1"], 2: rows[1]["val_top1"]})
    assert scalars(tb, "epoch/train_loss")[2] == pytest.approx(rows[1]["train_loss"])
    assert scalars(tb, "epoch/dropblock_prob") == pytest.approx({1: 0.0, 2: 0.0})
    assert len(scalars(tb, "train/loss")) == 16 and len(scalars(tb, "train/images_per_sec")) == 16
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb)
    acc.Reload()
    assert acc.Tags()["images"] == ["train/augmented_images"]
    hparams = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    assert b"model.name" in hparams and b"resnest14" in hparams and b"global_batch" in hparams
    for name in ("last.pth", "best.pth", "epoch_0002.pth"):
        assert os.path.isfile(os.path.join(out, "checkpoints", name)), name
    assert not os.path.exists(os.path.join(out, "checkpoints", "epoch_0001.pth"))  # keep_last=1
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    state = run_state(out)
    assert state["state"] == "finished" and state["epoch"] == 2
    assert state["best_top1"] == pytest.approx(max(r["val_top1"] for r in rows))
    assert "Finished 2 epochs" in result.stdout and "tensorboard --logdir" in result.stdout


def test_checkpoint_holds_everything_and_loads_weights_only(tiny_run):
    out, _ = tiny_run
    saved = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)
    assert (saved["epoch"], saved["step"], saved["step_in_epoch"]) == (2, 16, 0)
    assert {"model", "optimizer", "scaler", "ema", "config", "best_top1"} <= set(saved)
    assert saved["config"]["model"]["name"] == "resnest14"


def test_finished_run_is_not_trained_again(tiny_run):
    out, _ = tiny_run
    before = open(os.path.join(out, "metrics.jsonl")).read()
    result = train(*TINY, f"output.dir={out}")
    assert "already finished its 2 epochs" in result.stdout
    assert open(os.path.join(out, "metrics.jsonl")).read() == before


def test_sigterm_saves_and_resume_repeats_the_uninterrupted_run(tiny_run, tmp_path):
    full, _ = tiny_run
    out = str(tmp_path / "preempted")
    train_preempted(*TINY, f"output.dir={out}", at="epoch 1/2 step 3/8", timeout=120)
    stopped = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)
    assert 3 <= stopped["step"] < 16 and stopped["step_in_epoch"] == stopped["step"] % 8
    assert run_state(out)["state"] == "preempted"

    resumed = train(*TINY, f"output.dir={out}")
    assert f"step {stopped['step']}" in resumed.stdout.splitlines()[0]
    # Per-step loss and LR after the resume point equal the uninterrupted run's, bit for bit.
    full_loss, full_lr = scalars(os.path.join(full, "tb"), "train/loss"), scalars(os.path.join(full, "tb"), "train/lr")
    after_resume = event_files(out)[1:]  # the preempted process wrote the first file
    loss, lr = scalars_in(after_resume, "train/loss"), scalars_in(after_resume, "train/lr")
    assert sorted(loss) == list(range(stopped["step"] + 1, 17))
    assert loss == {s: full_loss[s] for s in loss} and lr == {s: full_lr[s] for s in lr}
    timing = ("images_per_sec", "epoch_time_s", "checkpoint_save_s", "checkpoint_mb")  # of this process's run
    assert [{k: v for k, v in r.items() if k not in timing} for r in metrics(out)] == [
        {k: v for k, v in r.items() if k not in timing} for r in metrics(full)
    ]
    a = torch.load(os.path.join(full, "checkpoints", "last.pth"), weights_only=True)["model"]
    b = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_different_model_is_a_clear_error(tiny_run):
    out, _ = tiny_run
    result = train(*TINY, f"output.dir={out}", "model.radix=4", check=False)
    assert result.returncode == 2
    assert "model.radix: checkpoint None, config 4" in result.stderr and "Traceback" not in result.stderr


def test_bf16_channels_last_ema_and_accumulation_run_on_cpu(tmp_path):
    out = str(tmp_path / "options")
    result = train(
        *TINY,
        "train.epochs=1",
        "train.amp=bf16",
        "train.channels_last=true",
        "train.ema=true",
        "train.accum_steps=2",
        f"output.dir={out}",
    )
    (row,) = metrics(out)
    assert "global batch     16 = 8 per process x 1 x 2 accumulation" in result.stdout
    assert "peak LR          0.00625 = 0.1 x 16 / 256" in result.stdout
    assert "steps per epoch  4" in result.stdout  # 8 batches of 8, two per optimizer step
    assert images_counted(row["val_top1_ema"]) and row["val_images"] == 24
    saved = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)
    assert saved["step"] == 4 and saved["ema"] is not None


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    result = train(*TINY, "device=cpu", "train.amp=fp16", f"output.dir={tmp_path}", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'train.amp' is fp16, which needs a CUDA GPU" in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_bad_input_stops_clearly_and_never_harms_the_checkpoint(demo_root, tmp_path):
    import shutil

    root = str(tmp_path / "data")
    shutil.copytree(demo_root, root)
    out = str(tmp_path / "run")
    args = [*TINY, "data.backend=torchvision", f"data.root={root}", "data.workers=0", f"output.dir={out}"]
    train(*args, "train.epochs=1")
    last = os.path.join(out, "checkpoints", "last.pth")
    good = open(last, "rb").read()

    victim = os.path.join(root, "train", sorted(os.listdir(os.path.join(root, "train")))[0])
    victim = os.path.join(victim, sorted(os.listdir(victim))[0])
    with open(victim, "wb") as f:
        f.write(b"\xff\xd8\xff not a jpeg")
    broken = train(*args, "train.epochs=2", check=False)
    assert broken.returncode == 2 and victim in broken.stderr and "Traceback" not in broken.stderr

    missing = train(*args[:-2], f"data.root={tmp_path / 'nowhere'}", f"output.dir={out}", check=False)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr

    val_class = os.path.join(root, "val", sorted(os.listdir(os.path.join(root, "val")))[-1])
    os.rename(val_class, val_class + "_renamed")
    mismatch = train(*args, "train.epochs=2", check=False)
    assert mismatch.returncode == 2 and "_renamed" in mismatch.stderr and "Traceback" not in mismatch.stderr

    assert open(last, "rb").read() == good
    assert [r["epoch"] for r in metrics(out)] == [1]
