"""The trainer end to end: real train.py runs on tiny data, numbers checked."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY, TRAIN, env, event_files, metrics, run_state, scalars, scalars_in, train
from resnest_train.optim import lr_at


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
        assert 0.0 <= r["val_top1"] <= r["val_top5"] <= 100.0
        assert r["val_images"] == 24
    # 64 images / batch 8 = 8 steps per epoch; warm-up over epoch 1, then cosine to 0 at step 16.
    peak = 0.1 * 8 / 256
    tb = os.path.join(out, "tb")
    lrs = scalars(tb, "train/lr")
    assert sorted(lrs) == list(range(1, 17))
    for step, value in lrs.items():  # logged after step `step` with the LR that step used
        assert value == pytest.approx(lr_at(step - 1, steps_per_epoch=8, epochs=2, warmup_epochs=1, peak=peak))
    assert rows[1]["lr"] == pytest.approx(lrs[16])
    top1 = scalars(tb, "epoch/val_top1")
    assert top1 == pytest.approx({1: rows[0]["val_top1"], 2: rows[1]["val_top1"]})
    assert scalars(tb, "epoch/train_loss")[2] == pytest.approx(rows[1]["train_loss"])
    assert scalars(tb, "epoch/dropblock_prob") == pytest.approx({1: 0.0, 2: 0.0})
    assert len(scalars(tb, "train/loss")) == 16 and len(scalars(tb, "train/images_per_sec")) == 16
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
    proc = subprocess.Popen([sys.executable, TRAIN, *TINY, f"output.dir={out}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env())
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 1/2 step 3/8"):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, "".join(lines)
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
    assert metrics(out) == [dict(r, images_per_sec=m["images_per_sec"], epoch_time_s=m["epoch_time_s"])
                            for r, m in zip(metrics(full), metrics(out))]
    a = torch.load(os.path.join(full, "checkpoints", "last.pth"), weights_only=True)["model"]
    b = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_different_model_is_a_clear_error(tiny_run):
    out, _ = tiny_run
    result = train(*TINY, f"output.dir={out}", "model.radix=4", check=False)
    assert result.returncode == 2
    assert "model.radix: checkpoint None, config 4" in result.stderr and "Traceback" not in result.stderr
