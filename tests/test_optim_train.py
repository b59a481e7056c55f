"""LAMB, LARS, step decay and cosine with a floor in real train.py runs (issue 14): the LR each
step used, read back from TensorBoard against the formula written out; a LAMB run resumed from
its epoch-1 checkpoint repeats the uninterrupted run's losses and weights (its Adam moments and
step count restored); resuming with another optimizer is a clear error."""

import math
import os

import pytest
import torch

from helpers import TINY, event_files, scalars, scalars_in, train

pytestmark = [pytest.mark.slow]  # every test runs train.py for real

# TINY: 64 images / batch 8 = 8 steps per epoch, 2 epochs; peak LR = base_lr x 8 / 256
LAMB = ["optim.name=lamb", "optim.base_lr=0.01", "optim.weight_decay=0.02", "optim.final_lr=0.0001"]
LAMB_PEAK = 0.01 * 8 / 256


@pytest.fixture(scope="module")
def lamb_run(tmp_path_factory):
    """Two epochs of TINY with LAMB and a cosine to a floor of 1e-4; epoch_0001.pth kept."""
    out = str(tmp_path_factory.mktemp("lamb"))
    train(*TINY, *LAMB, "output.keep_last=2", f"output.dir={out}")
    return out


def test_lamb_run_follows_cosine_to_its_floor(lamb_run):
    lrs = scalars(os.path.join(lamb_run, "tb"), "train/lr")
    assert sorted(lrs) == list(range(1, 17))
    for step, value in lrs.items():  # logged after step `step` with the LR that step used
        s = step - 1
        if s < 8:  # warm-up over epoch 1
            expected = LAMB_PEAK * s / 8
        else:
            expected = 1e-4 + 0.5 * (LAMB_PEAK - 1e-4) * (1 + math.cos(math.pi * (s - 8) / 8))
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert min(v for s, v in lrs.items() if s > 8) > 1e-4  # the floor is reached only after the last step
    saved = torch.load(os.path.join(lamb_run, "checkpoints", "last.pth"), weights_only=True)
    groups = saved["optimizer"]["param_groups"]
    assert [g["always_adapt"] for g in groups] == [True, False]  # norm/bias out of the trust ratio
    assert [int(g["step"]) for g in groups] == [16, 16] and [g["betas"] for g in groups] == [(0.9, 0.999)] * 2
    assert all({"exp_avg", "exp_avg_sq"} == set(state) for state in saved["optimizer"]["state"].values())


def test_lamb_resume_repeats_the_uninterrupted_run(lamb_run, tmp_path):
    out = str(tmp_path / "resumed")
    epoch1 = os.path.join(lamb_run, "checkpoints", "epoch_0001.pth")
    assert torch.load(epoch1, weights_only=True)["step"] == 8
    resumed = train(*TINY, *LAMB, f"output.dir={out}", f"resume={epoch1}")
    assert "step 8" in resumed.stdout.splitlines()[0]
    # Per-step loss and LR after the resume point equal the uninterrupted run's, bit for bit: from
    # step 10 on the loss depends on the restored Adam moments and LAMB's step count.
    full_loss = scalars(os.path.join(lamb_run, "tb"), "train/loss")
    loss, lr = scalars_in(event_files(out), "train/loss"), scalars_in(event_files(out), "train/lr")
    assert sorted(loss) == list(range(9, 17))
    assert loss == {s: full_loss[s] for s in loss}
    assert lr == {s: v for s, v in scalars(os.path.join(lamb_run, "tb"), "train/lr").items() if s > 8}
    a = torch.load(os.path.join(lamb_run, "checkpoints", "last.pth"), weights_only=True)["model"]
    b = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_optimizer_is_a_clear_error(lamb_run):
    result = train(*TINY, f"output.dir={lamb_run}", "train.epochs=3", check=False)  # optim.name: sgd
    assert result.returncode == 2, result.stdout + result.stderr
    assert "optim.name: checkpoint 'lamb', config 'sgd'" in result.stderr and "Traceback" not in result.stderr


def test_lars_run_with_step_decay(tmp_path):
    out = str(tmp_path / "lars")
    lars = ["optim.name=lars", "optim.nesterov=false", "optim.base_lr=1.0", "optim.warmup_epochs=0"]
    step = ["optim.schedule=step", "optim.step_epochs=[1]", "optim.step_gamma=0.1"]
    train(*TINY, *lars, *step, f"output.dir={out}")
    peak = 1.0 * 8 / 256
    lrs = scalars(os.path.join(out, "tb"), "train/lr")
    assert lrs == pytest.approx({s: peak if s <= 8 else peak * 0.1 for s in range(1, 17)}, rel=1e-6)
    saved = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)
    groups = saved["optimizer"]["param_groups"]
    assert [g["always_adapt"] for g in groups] == [True, False] and groups[0]["trust_coeff"] == 0.001
    assert all(set(state) == {"momentum_buffer"} for state in saved["optimizer"]["state"].values())
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
