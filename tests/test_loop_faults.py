"""The loop's faults: resume on a new batch or world, EMA under DDP, divergence, host syncs per step."""

import collections
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY, TRAIN, env, event_files, metrics, run_state, scalars, scalars_in, train, train_preempted
from resnest_train.loop import Plan
from resnest_train.optim import lr_at, peak_lr
from resnest_train.resume import resume_position


def plan(world_size, batch_size, accum_steps, steps_per_epoch, epochs=2):
    global_batch = world_size * batch_size * accum_steps
    return Plan(
        world_size=world_size,
        batch_size=batch_size,
        accum_steps=accum_steps,
        global_batch=global_batch,
        peak_lr=peak_lr(0.1, global_batch),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
    )


def saved(position, old_plan=None, batch_size=8, accum_steps=1):
    """A checkpoint's position fields; `old_plan` None makes one written before plans were saved."""
    epoch, step_in_epoch, step, loss_sum, loss_count = position
    return {
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "step": step,
        "loss_sum": loss_sum,
        "loss_count": loss_count,
        "plan": old_plan and vars(old_plan),
        "config": {"train": {"batch_size": batch_size, "accum_steps": accum_steps}},
    }


# --------------------------------------------------------------------------------------
# Resume position (pure)
# --------------------------------------------------------------------------------------


def test_same_global_batch_on_another_world_keeps_the_position():
    one = plan(1, 4, 2, 8)  # 1 process accumulating 2 x 4
    position, note = resume_position(saved((1, 3, 11, 6.0, 6), one), plan(2, 4, 1, 8))
    assert position == {"epoch": 1, "step_in_epoch": 3, "step": 11, "loss_sum": 6.0, "loss_count": 6}
    assert "goes on exactly where it stopped (step 11)" in note
    # 1 x 8 -> 2 x 4: the same global batch, two losses per step instead of one: the mean is kept.
    position, _ = resume_position(saved((0, 3, 3, 6.0, 3), plan(1, 8, 1, 8)), plan(2, 4, 1, 8))
    assert (position["step"], position["loss_count"], position["loss_sum"]) == (3, 6, 12.0)
    assert resume_position(saved((1, 3, 11, 6.0, 6), one), one) == (
        {"epoch": 1, "step_in_epoch": 3, "step": 11, "loss_sum": 6.0, "loss_count": 6},
        None,
    )


def test_another_global_batch_goes_on_at_the_same_fraction_of_the_epoch_with_the_schedules_lr():
    # Issue 9.6: stopped in epoch 2 at step 3/8 on 1 process, resumed on 2 (global batch 8 -> 16).
    # It used to keep step 11 of a 2 x 4 = 8-step run: LR 0 for the rest of epoch 2.
    new = plan(2, 8, 1, 4)
    position, note = resume_position(saved((1, 3, 11, 6.0, 3), plan(1, 8, 1, 8)), new)
    assert position == {"epoch": 1, "step_in_epoch": 1, "step": 5, "loss_sum": 4.0, "loss_count": 2}
    lr = lr_at(position["step"], steps_per_epoch=4, epochs=2, warmup_epochs=1, peak=new.peak_lr)
    assert lr == pytest.approx(0.1 * 16 / 256 * 0.5 * (1 + 0.5**0.5))  # cosine a quarter of the way
    assert "global batch 8 and 8 steps per epoch" in note and "step 1/4 (was 3/8)" in note
    # Batch 8 -> 16 at step 7/8 (it used to raise "start_step 7 outside [0, 4]"); 2.5 rounds down.
    position, _ = resume_position(saved((0, 7, 7, 14.0, 7), plan(1, 8, 1, 8)), plan(1, 16, 1, 4))
    assert (position["step_in_epoch"], position["step"]) == (3, 3)
    position, _ = resume_position(saved((0, 5, 5, 5.0, 5), plan(1, 8, 1, 8)), plan(1, 16, 1, 4))
    assert (position["step_in_epoch"], position["step"]) == (2, 2)
    position, _ = resume_position(saved((0, 5, 5, 5.0, 5), plan(1, 8, 1, 8)), plan(1, 4, 1, 16))
    assert (position["step_in_epoch"], position["step"]) == (10, 10)


def test_checkpoints_without_a_plan_are_read_from_their_config_and_counters():
    # Epoch 2: steps per epoch = (step - step_in_epoch) / epoch; 2 losses per step: 2 processes.
    old = saved((1, 3, 11, 12.0, 6), batch_size=4)
    position, note = resume_position(old, plan(2, 4, 1, 8))
    assert position == {"epoch": 1, "step_in_epoch": 3, "step": 11, "loss_sum": 12.0, "loss_count": 6}
    assert note is None
    position, note = resume_position(old, plan(1, 8, 2, 4))
    assert (position["step_in_epoch"], position["step"], position["loss_count"]) == (1, 5, 2)
    assert "the checkpoint had global batch 8 and 8 steps per epoch" in note
    # Epoch 1 of another global batch: steps per epoch estimated from the global batch ratio.
    position, _ = resume_position(saved((0, 6, 6, 6.0, 6), batch_size=8), plan(1, 16, 1, 4))
    assert (position["step_in_epoch"], position["step"]) == (3, 3)


# --------------------------------------------------------------------------------------
# Resume end to end
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("finished"))
    train(*TINY, f"output.dir={out}")
    return out


def mid_epoch_checkpoint(finished, out, epoch, step_in_epoch):
    """The finished 1-process run's last.pth moved to (epoch, step_in_epoch) of its 8-step epochs."""
    state = torch.load(os.path.join(finished, "checkpoints", "last.pth"), weights_only=True)
    state.update(
        epoch=epoch,
        step_in_epoch=step_in_epoch,
        step=epoch * 8 + step_in_epoch,
        loss_sum=2.0 * step_in_epoch,
        loss_count=step_in_epoch,
    )
    os.makedirs(os.path.join(out, "checkpoints"))
    torch.save(state, os.path.join(out, "checkpoints", "last.pth"))


def check_resumed_lrs(out, first_step, last_step, global_batch, steps_per_epoch):
    lrs = scalars(os.path.join(out, "tb"), "train/lr")  # logged after step s with the LR of step s - 1
    assert sorted(lrs) == list(range(first_step + 1, last_step + 1))
    peak = 0.1 * global_batch / 256
    for step, value in lrs.items():
        assert value == pytest.approx(
            lr_at(step - 1, steps_per_epoch=steps_per_epoch, epochs=2, warmup_epochs=1, peak=peak), rel=1e-6
        )
        assert value > 0


@pytest.mark.slow
def test_resume_with_a_larger_batch_goes_on_at_the_same_point(finished_run, tmp_path):
    out = str(tmp_path / "bigger")
    mid_epoch_checkpoint(finished_run, out, epoch=0, step_in_epoch=7)  # step 7 of 8
    result = train(*TINY, "train.batch_size=16", f"output.dir={out}", check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "step 3/4 (was 7/8), global step 3 (was 7)" in result.stdout
    check_resumed_lrs(out, 3, 8, global_batch=16, steps_per_epoch=4)
    assert [r["epoch"] for r in metrics(out)] == [1, 2]


def torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", TRAIN, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env(), timeout=600)


@pytest.mark.slow
@pytest.mark.dist
def test_resume_on_more_processes_trains_at_the_schedules_lr(finished_run, tmp_path):
    out = str(tmp_path / "wider")
    mid_epoch_checkpoint(finished_run, out, epoch=1, step_in_epoch=3)  # epoch 2, step 3 of 8
    result = torchrun(*TINY, f"output.dir={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step 1/4 (was 3/8), global step 5 (was 11)" in result.stdout
    check_resumed_lrs(out, 5, 8, global_batch=16, steps_per_epoch=4)


# One process accumulating 2 x 4 and two processes of 4 see the same images in the same
# BatchNorm groups of 4 (the torchvision backend: a global batch holds the same images for any
# world size). Mixup pairs images inside a process's batch, so it is off.
def exact(root):
    return TINY + [
        "data.backend=torchvision",
        f"data.root={root}",
        "data.workers=0",
        "train.mixup_alpha=0",
        "train.batch_size=4",
        "train.ema=true",
        "train.ema_decay=0.5",
    ]


@pytest.fixture(scope="module")
def moved_to_two_processes(tmp_path_factory, demo_root):
    """An uninterrupted 1-process run, and one stopped mid-epoch 1 then resumed on 2 processes."""
    full = str(tmp_path_factory.mktemp("full"))
    train(*exact(demo_root), "train.accum_steps=2", f"output.dir={full}")
    out = str(tmp_path_factory.mktemp("moved"))
    train_preempted(*exact(demo_root), "train.accum_steps=2", f"output.dir={out}", at="epoch 1/2 step 3/8", timeout=300)
    stopped = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)["step"]
    resumed = torchrun(*exact(demo_root), f"output.dir={out}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return full, out, stopped, resumed.stdout


@pytest.mark.slow
@pytest.mark.dist
def test_same_global_batch_on_two_processes_repeats_the_per_step_losses(moved_to_two_processes):
    full, out, stopped, stdout = moved_to_two_processes
    assert 3 <= stopped < 8
    assert f"the checkpoint's global batch, so the run goes on exactly where it stopped (step {stopped})" in stdout
    after = event_files(out)[1:]  # the stopped process wrote the first file
    loss, lr = scalars_in(after, "train/loss"), scalars_in(after, "train/lr")
    full_loss, full_lr = scalars(os.path.join(full, "tb"), "train/loss"), scalars(os.path.join(full, "tb"), "train/lr")
    assert sorted(loss) == list(range(stopped + 1, 17))
    # The step's loss over the global batch; DDP's gradient average and accumulation round differently.
    assert loss == pytest.approx({s: full_loss[s] for s in loss}, rel=1e-4)
    assert lr == {s: full_lr[s] for s in lr}
    for a, b in zip(metrics(out), metrics(full)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    wa = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)["model"]
    wb = torch.load(os.path.join(full, "checkpoints", "last.pth"), weights_only=True)["model"]
    for k in wa:
        if wa[k].is_floating_point() and "running_" not in k:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def evaluate_saved(weights, args):
    """Evaluate a saved state_dict on the whole val set in this one process."""
    from resnest_train.config_loader import load_config
    from resnest_train.data import build_loaders
    from resnest_train.engine import build_model
    from resnest_train.loop import evaluate

    cfg = load_config(None, args)
    loaders = build_loaders(cfg.data, batch_size=cfg.train.batch_size, device=torch.device("cpu"), seed=cfg.train.seed)
    model = build_model(cfg, loaders.num_classes)
    model.load_state_dict(weights)
    return evaluate(model, loaders.val, torch.device("cpu"), cfg.train.amp)


@pytest.mark.slow
@pytest.mark.dist
def test_ema_metric_under_ddp_equals_evaluating_the_saved_ema(moved_to_two_processes, demo_root):
    _, out, _, _ = moved_to_two_processes
    saved_state = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)
    last = metrics(out)[-1]
    ema = {k.removeprefix("module."): v for k, v in saved_state["ema"].items()}
    val = evaluate_saved(ema, exact(demo_root))
    assert val["images"] == 24
    assert last["val_top1_ema"] == pytest.approx(val["top1"])
    assert last["val_loss_ema"] == pytest.approx(val["loss"], rel=1e-6)
    plain = evaluate_saved(saved_state["model"], exact(demo_root))  # as the model always did
    assert last["val_loss"] == pytest.approx(plain["loss"], rel=1e-6)


# --------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "diverged")
    train(*TINY, "train.epochs=1", f"output.dir={out}")
    last = os.path.join(out, "checkpoints", "last.pth")
    good = open(last, "rb").read()
    result = train(*TINY, "optim.base_lr=50000", f"output.dir={out}", check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr
    assert "error: training diverged: a loss became NaN or infinite in epoch 2, at optimizer" in message
    assert "lower optim.base_lr (now 50000)" in message and "optim.warmup_epochs" in message
    assert "optim.clip_grad_norm" in message and f"{last} was not overwritten" in message
    state = run_state(out)
    assert state["state"] == "diverged" and "NaN or infinite loss" in state["reason"]
    assert 8 < state["step"] <= 16 and state["lr"] > 0
    assert open(last, "rb").read() == good
    assert [r["epoch"] for r in metrics(out)] == [1]


@pytest.mark.slow
def test_divergence_never_writes_a_non_finite_checkpoint(tmp_path):
    out = str(tmp_path / "fresh")
    result = train(*TINY, "optim.base_lr=50000", "output.save_every_steps=1", f"output.dir={out}", check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    last = os.path.join(out, "checkpoints", "last.pth")
    if os.path.exists(last):  # periodic saves before the blow-up hold finite numbers only
        saved_state = torch.load(last, weights_only=True)
        for key, value in saved_state["model"].items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), key
    assert run_state(out)["state"] == "diverged"


# --------------------------------------------------------------------------------------
# Host syncs per step
# --------------------------------------------------------------------------------------

SYNC_TENSOR_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
SYNC_COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "barrier",
    "reduce",
    "gather",
    "scatter",
    "all_to_all",
)


def _count_syncs(rank, store, result_dir):
    """One rank of a 2-process gloo group: one 16-step epoch, counting the calls that sync the host."""
    import torch.distributed as tdist
    from timm.utils import ModelEmaV3

    from resnest_train.checkpoint import AsyncSaver
    from resnest_train.config_loader import load_config
    from resnest_train.data import build_loaders
    from resnest_train.distributed import DistInfo
    from resnest_train.engine import build_model
    from resnest_train.loop import StopRequested, make_plan, train_one_epoch
    from resnest_train.monitor import Monitor
    from resnest_train.optim import build_optimizer
    from resnest_train.trainer import Trainer

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    cfg = load_config(
        None,
        TINY
        + [
            "train.batch_size=2",
            "output.log_every=1000",
            "output.image_grid=false",
            "train.ema=true",
            "optim.clip_grad_norm=5",
            f"output.dir={result_dir}",
        ],
    )
    cpu = torch.device("cpu")
    loaders = build_loaders(cfg.data, batch_size=2, rank=rank, world_size=2, device=cpu, seed=0)
    plan = make_plan(cfg, 2, len(loaders.train))
    torch.manual_seed(0)
    model = build_model(cfg, loaders.num_classes)
    trainer = Trainer(
        model,
        build_optimizer(model, cfg.optim, lr=0.0),
        cfg.train,
        cfg.optim.clip_grad_norm,
        cpu,
        loaders.num_classes,
        distributed=True,
    )
    trainer.net = torch.nn.parallel.DistributedDataParallel(model)
    trainer.ema = ModelEmaV3(model, decay=0.9)
    loaders.train.set_epoch(0)
    calls = collections.Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    originals = [(torch.Tensor, n, getattr(torch.Tensor, n)) for n in SYNC_TENSOR_METHODS]
    originals += [(tdist, n, getattr(tdist, n)) for n in SYNC_COLLECTIVES]
    for owner, name, fn in originals:
        setattr(owner, name, counted(name, fn))
    try:
        train_one_epoch(
            trainer,
            loaders.train,
            plan,
            cfg,
            DistInfo(rank, rank, 2, cpu),
            Monitor(cfg.output, False),
            StopRequested(),
            AsyncSaver(),
        )
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"steps": plan.steps_per_epoch, "calls": calls}, f)
    tdist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.dist
def test_two_process_epoch_syncs_the_host_only_at_polls(tmp_path):
    torch.multiprocessing.spawn(_count_syncs, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    from resnest_train.loop import POLL_EVERY

    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.json") as f:
            counted = json.load(f)
        steps, calls = counted["steps"], counted["calls"]
        assert steps == 16
        polls = steps // POLL_EVERY
        collectives = sum(calls.get(n, 0) for n in SYNC_COLLECTIVES)
        reads = sum(calls.get(n, 0) for n in SYNC_TENSOR_METHODS)
        # Besides the polls, once per epoch: the running loss's all-reduce and its read back.
        assert collectives <= polls + 1, calls
        assert reads <= polls + 1, calls
