"""The training loop.

`run(cfg)` builds everything once (model, loaders, optimizer, monitor) and hands it to
`fit`, which moves batches through `train_one_epoch` and `evaluate`. Randomness in the loop
(mixup, dropout, DropBlock) is re-seeded at every optimizer step from (seed, rank, step), and
the data order and augmentation are a function of (seed, epoch, sample): so the step counter
is the whole RNG state, and a run resumed from any checkpoint repeats the uninterrupted run.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .config import Config
from .config_loader import config_to_dict, config_to_yaml
from .data import build_loaders
from .distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    average_bn_stats,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    state_checksums,
)
from .errors import UserError
from .models import create_model, dropblock_prob, model_info, set_dropblock_prob
from .monitor import Monitor, hparam_values
from .optim import build_optimizer, lr_at, peak_lr, set_lr
from .preflight import check_device, check_steps_per_epoch
from .rundir import RunDir

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what schedulers expect of a job stopped by SIGTERM
DIVERGED_EXIT_CODE = 3  # a NaN or infinite loss stopped the run (2 is a user error, 1 a crash)
POLL_EVERY = 8  # most optimizer steps between two "should we stop" polls (see StopRequested)


@dataclass
class Plan:
    """Numbers derived from the config and the world: what --dry-run prints."""
    world_size: int
    batch_size: int
    accum_steps: int
    global_batch: int
    peak_lr: float
    steps_per_epoch: int  # optimizer steps
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def make_plan(cfg: Config, world_size: int, batches_per_epoch: int) -> Plan:
    global_batch = cfg.train.batch_size * world_size * cfg.train.accum_steps
    steps = check_steps_per_epoch(cfg, world_size, batches_per_epoch)
    return Plan(world_size=world_size, batch_size=cfg.train.batch_size, accum_steps=cfg.train.accum_steps,
                global_batch=global_batch, peak_lr=peak_lr(cfg.optim.base_lr, global_batch),
                steps_per_epoch=steps, epochs=cfg.train.epochs)


def schedule_lr(step: int, plan: Plan, optim_cfg) -> float:
    """The LR of optimizer step `step` (0-based) under `plan`: optim.lr_at with the config's schedule."""
    return lr_at(step, steps_per_epoch=plan.steps_per_epoch, epochs=plan.epochs, warmup_epochs=optim_cfg.warmup_epochs,
                 peak=plan.peak_lr, warmup_start=optim_cfg.warmup_start_lr, final=optim_cfg.final_lr)


def step_seed(seed: int, rank: int, step: int) -> None:
    """Seed every RNG the loop uses from (seed, rank, step)."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[1]))


@dataclass
class TrainState:
    model: nn.Module  # the bare model (what checkpoints hold)
    net: nn.Module  # what runs the forward pass: DDP and/or compiled around `model`
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ema: Any  # timm ModelEmaV3 or None
    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    step: int = 0  # optimizer steps done in the run
    best_top1: float | None = None
    loss_sum: float = 0.0  # train loss summed over the epoch so far, all ranks (restored on resume)
    loss_count: int = 0


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------

def build_model(cfg: Config, num_classes: int) -> nn.Module:
    m = cfg.model
    arch = {k: getattr(m, k) for k in ("radix", "cardinality", "bottleneck_width", "stem_width", "deep_stem",
                                       "avg_down", "avd", "avd_first", "final_drop")
            if getattr(m, k) is not None}
    db = m.dropblock
    dropblock = {"stages": db.stages, "sites": db.sites, "block_size": db.block_size, "prob": 0.0}
    model = create_model(m.name, num_classes=num_classes, zero_init_last=m.zero_init_last,
                         dropblock=dropblock, **arch)  # preflight.check_model built it already
    if m.weights:
        load_weights(model, m.weights, use_ema=m.weights_ema, name=m.name)
    return model


def load_weights(model: nn.Module, path: str, use_ema: bool = False, name: str = "") -> None:
    """Load `model.weights` into `model`, strictly, except for a classifier of another class count.

    The file is a state_dict (official release layout, or saved from a DDP-wrapped or compiled
    model: prefixes stripped) or a resnest-train checkpoint (its `model`, or with `use_ema` its
    `ema` weights); see `checkpoint.weights_state_dict`. A different `fc` shape (another class
    count) keeps the freshly initialised classifier. Raises UserError listing the first
    missing/unexpected keys and shape mismatches when the weights do not fit.
    """
    state = checkpoint.weights_state_dict(checkpoint.load(path, key="model.weights"), path, use_ema)
    own = model.state_dict()
    for k in ("fc.weight", "fc.bias"):  # a different class count: keep our freshly initialised classifier
        if k in state and k in own and state[k].shape != own[k].shape:
            state[k] = own[k]
    mismatch = checkpoint.state_dict_mismatch(state, own)
    if mismatch:
        which = "EMA weights" if use_ema else "weights"
        raise UserError(f"Config key 'model.weights': the {which} in {path} do not fit model "
                        f"'{name or type(model).__name__}' ({mismatch}). Set model.name and the architecture "
                        "overrides (model.radix, model.deep_stem, ...) to those of the run that saved the file, "
                        "or point model.weights at weights of this architecture.")
    model.load_state_dict(state, strict=True)


def autocast(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(train, device: torch.device) -> None:
    """Set torch's process-wide numerics from ``train`` (a TrainConfig) for a run on ``device``.

    ``torch.backends.cudnn.benchmark`` = cudnn_benchmark and not deterministic. deterministic
    sets ``cudnn.deterministic`` and ``torch.use_deterministic_algorithms(warn_only=True)``: an
    op without a deterministic implementation warns, naming itself, instead of stopping the
    run; on a GPU also ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set, which deterministic
    cuBLAS needs before its first call (PyTorch's "Reproducibility" notes). On a GPU, tf32
    sets TF32 for fp32 matmuls (``torch.set_float32_matmul_precision``: "high" or "highest")
    and cuDNN convs (``torch.backends.cudnn.allow_tf32``); a CPU run keeps plain fp32 (the
    matmul precision would also switch oneDNN's CPU matmuls).
    """
    torch.backends.cudnn.benchmark = train.cudnn_benchmark and not train.deterministic
    torch.backends.cudnn.deterministic = train.deterministic
    torch.use_deterministic_algorithms(train.deterministic, warn_only=True)
    if device.type == "cuda":
        if train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.set_float32_matmul_precision("high" if train.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = train.tf32


def build_mixup(cfg: Config, num_classes: int):
    t = cfg.train
    if t.mixup_alpha <= 0 and t.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, prob=t.mixup_prob,
                 label_smoothing=t.label_smoothing, num_classes=num_classes)


def soft_target_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# --------------------------------------------------------------------------------------
# One epoch of training, one evaluation
# --------------------------------------------------------------------------------------

@dataclass
class Poll:
    """What every rank learns at a poll: the same values on all of them."""
    stop: bool  # SIGTERM/SIGINT reached at least one rank
    diverged: bool  # a loss or weight of at least one rank is NaN or infinite
    loss: float  # the polled step's loss, averaged over ranks (nan when none was given)


class StopRequested:
    """Whether the loop should stop: a signal on any rank, or a NaN/infinite loss on any rank.

    SIGTERM/SIGINT only set a Python flag. The loop does not read its device tensors every
    step: it calls `poll` every ``min(POLL_EVERY, output.log_every)`` steps, at log steps,
    before every checkpoint and at the end of each epoch. A poll sums [signal flag, non-finite
    flag, step loss] over the ranks with one all-reduce (none with one process) and reads it
    back with one device-to-host copy: the loop's only host sync, so between polls the CPU
    queues step k+1 while the device runs step k. A signal therefore stops the run within
    POLL_EVERY steps.
    """

    def __init__(self):
        self.flag = False
        self.signal_name = ""

    def install(self):
        def handler(signum, frame):
            self.flag = True
            self.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def poll(self, device: torch.device, world_size: int, loss_sum: torch.Tensor | None = None,
             model: nn.Module | None = None, step_loss: torch.Tensor | None = None) -> Poll:
        """Agree with every rank on whether to stop. Collective: every rank must call it at the same step.

        `loss_sum`: this rank's running sum of the epoch's losses (NaN or infinite as soon as one
        loss was); `model`: weights and buffers checked too, so no checkpoint ever holds a NaN;
        `step_loss`: a 0-dim tensor averaged over ranks into `Poll.loss`.
        """
        zero = torch.zeros((), dtype=torch.float64, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        if loss_sum is not None:
            finite &= torch.isfinite(loss_sum)
        if model is not None:
            finite &= torch.isfinite(weight_sum(model))
        flags = torch.stack([zero + float(self.flag), (~finite).double(),
                             step_loss.double() if step_loss is not None else zero])
        signalled, nonfinite, loss = all_reduce_sum(flags).tolist()
        return Poll(stop=signalled > 0, diverged=nonfinite > 0,
                    loss=loss / world_size if step_loss is not None else float("nan"))


def weight_sum(model: nn.Module) -> torch.Tensor:
    """The sum of every floating parameter and buffer: NaN or infinite when any of them is."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return torch.stack([t.detach().sum(dtype=torch.float32) for t in tensors]).sum()


class Diverged(Exception):
    """A NaN or infinite loss (or weight) was seen after optimizer step `first` and by step `last`."""

    def __init__(self, first: int, last: int, lr: float):
        super().__init__(f"non-finite loss between steps {first} and {last}")
        self.first, self.last, self.lr = first, last, lr


def train_one_epoch(state: TrainState, loader, plan: Plan, cfg: Config, dist: DistInfo, monitor: Monitor,
                    mixup, stop: StopRequested, save_step) -> bool:
    """Train until the epoch ends; returns False if a stop was requested (the state is then saved).

    Raises Diverged, before any save, when a poll finds a NaN or infinite loss or weight. Only the
    loss counts: fp16's GradScaler skips steps whose scaled gradients overflow, and those steps
    have a finite loss, so they are not divergence; a loss that is itself NaN or infinite (the
    forward pass overflowed, or the weights already hold NaN) is.
    """
    net, optimizer, accum = state.net, state.optimizer, plan.accum_steps
    net.train()
    device = dist.device
    label_smoothing = cfg.train.label_smoothing
    use_mixup = mixup is not None and (cfg.train.mixup_off_epoch == 0 or state.epoch < cfg.train.mixup_off_epoch)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    loss_count = 0
    window_n, window_start = 0, time.perf_counter()
    data_time = 0.0
    epoch_start = time.perf_counter()
    start_step = state.step_in_epoch
    checked_step = state.step  # every loss up to this optimizer step was finite
    poll_every = min(POLL_EVERY, cfg.output.log_every)
    batches = iter(loader)

    for step_in_epoch in range(start_step, plan.steps_per_epoch):
        lr = schedule_lr(state.step, plan, cfg.optim)
        set_lr(optimizer, lr)
        step_seed(cfg.train.seed, dist.rank, state.step)
        losses = []
        for micro in range(accum):
            t0 = time.perf_counter()
            images, labels = next(batches)
            data_time += time.perf_counter() - t0
            if state.step == 0 and micro == 0 and cfg.output.image_grid:
                monitor.images("train/augmented_images", images, cfg.data.mean, cfg.data.std)
            if use_mixup:
                images, targets = mixup(images, labels)
            sync = micro == accum - 1
            with (contextlib.nullcontext() if sync or not dist.enabled else net.no_sync()):
                with autocast(cfg.train.amp, device):
                    logits = net(images)
                if use_mixup:
                    loss = soft_target_loss(logits, targets)
                else:
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
                scaled = loss / accum
                if state.scaler is not None:
                    state.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            loss_sum += loss.detach()
            loss_count += 1
            losses.append(loss.detach())
        if state.scaler is not None:
            state.scaler.unscale_(optimizer)
        if cfg.optim.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.optim.clip_grad_norm)
        if state.scaler is not None:
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if state.ema is not None:
            state.ema.update(state.model, step=state.step)
        state.step += 1
        state.step_in_epoch = step_in_epoch + 1
        window_n += 1

        mid_epoch = state.step_in_epoch < plan.steps_per_epoch
        log = state.step_in_epoch % cfg.output.log_every == 0 or not mid_epoch
        periodic = bool(cfg.output.save_every_steps) and state.step % cfg.output.save_every_steps == 0
        if not (log or periodic or state.step_in_epoch % poll_every == 0):  # log: also the epoch's last step
            continue
        # The step's loss over the global batch: the mean of every rank's micro-batch losses.
        poll = stop.poll(device, dist.world_size, loss_sum, state.model,
                         torch.stack(losses).mean() if log else None)
        if poll.diverged:
            raise Diverged(checked_step + 1, state.step, lr)
        checked_step = state.step
        if log:
            elapsed = time.perf_counter() - window_start
            ips = window_n * plan.global_batch / max(elapsed, 1e-9)
            monitor.scalars({"train/loss": poll.loss, "train/lr": lr, "train/images_per_sec": ips,
                             "train/data_time_s": data_time / window_n}, state.step)
            done = state.step_in_epoch - start_step
            eta = (time.perf_counter() - epoch_start) / done * (plan.steps_per_epoch - state.step_in_epoch)
            monitor.progress(state.epoch, plan.epochs, state.step_in_epoch, plan.steps_per_epoch,
                             poll.loss, lr, ips, eta)
            window_n, window_start, data_time = 0, time.perf_counter(), 0.0
        if (poll.stop or periodic) and mid_epoch:
            total, count = reduce_loss(loss_sum, loss_count, device)
            save_step(state, state.loss_sum + total, state.loss_count + count)
        if poll.stop and mid_epoch:  # at the epoch's last step, fit saves and stops after the epoch
            return False
    monitor.end_bar()
    total, count = reduce_loss(loss_sum, loss_count, device)
    state.loss_sum += total
    state.loss_count += count
    return True


def reduce_loss(loss_sum: torch.Tensor, count: int, device) -> tuple[float, int]:
    """(sum of the losses, number of losses) over every rank; one all-reduce, one read back."""
    t = torch.stack([loss_sum.to(torch.float64), torch.full((), float(count), device=device, dtype=torch.float64)])
    total, n = all_reduce_sum(t).tolist()
    return total, int(n)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str) -> dict:
    """Loss and top-1/top-5 over this rank's shard, summed over ranks: each image counted once."""
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, images
    for images, labels in loader:
        with autocast(amp, device):
            logits = model(images)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, labels, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5.eq(labels[:, None])
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += len(labels)
    loss, top1, top5, images = all_reduce_sum(sums).tolist()
    n = max(images, 1.0)
    return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": int(images)}


# --------------------------------------------------------------------------------------
# Checkpoint state
# --------------------------------------------------------------------------------------

def state_dict(state: TrainState, cfg: Config) -> dict:
    return {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "step": state.step,
        "best_top1": state.best_top1,
        "loss_sum": state.loss_sum,
        "loss_count": state.loss_count,
        "config": config_to_dict(cfg),
    }


def restore(state: TrainState, saved: dict, cfg: Config, path: str) -> None:
    """Put a checkpoint's model, optimizer, scaler and counters into `state` (its bare model).

    The EMA is not touched: `build_ema` makes it afterwards from the restored weights and the
    checkpoint's EMA state. Raises UserError when the config's model differs from the checkpoint's.
    """
    current = config_to_dict(cfg)["model"]
    previous = dict(saved["config"]["model"])
    for key in ("weights", "weights_ema"):  # where the run started from, not what it is
        previous.pop(key, None)
        current.pop(key, None)
    diffs = checkpoint.model_differences(previous, current)
    if diffs:
        raise UserError(f"Cannot resume from {path}: the model in the config differs from the checkpoint's "
                        f"({'; '.join(diffs)}). Use the checkpoint's model settings, or a new output.dir "
                        "(or resume=none) to start a different run.")
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scaler is not None and saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    for key in ("epoch", "step_in_epoch", "step", "best_top1", "loss_sum", "loss_count"):
        setattr(state, key, saved[key])


def build_ema(model: nn.Module, decay: float, saved_ema: dict | None = None):
    """timm's ModelEmaV3 of `model`, then the checkpoint's EMA state `saved_ema` if there is one.

    ModelEmaV3 copies the model's current weights, so it is built after they are final (loaded
    from model.weights or restored): an EMA switched on at resume starts at the restored weights.
    """
    from timm.utils import ModelEmaV3
    ema = ModelEmaV3(model, decay=decay)
    if saved_ema:
        ema.load_state_dict(saved_ema)
    return ema


def pick_resume(cfg: Config, dist: DistInfo, log) -> tuple[str | None, dict | None]:
    """The checkpoint path rank 0 picked (`checkpoint.find_resume`), the same on every rank.

    Only rank 0 looks at output.dir, so ranks whose view of a network filesystem lags cannot
    decide otherwise. Returns (path, content): the content only on rank 0, which loaded it while
    choosing; (None, None) to start afresh. Rank 0's UserError is raised on every rank.
    """
    choice, saved = (None, None), None
    if dist.is_main:
        try:
            path, saved = checkpoint.find_resume(cfg.resume, cfg.output.dir, log, map_location=dist.device)
            choice = (path, None)
        except UserError as e:
            choice = (None, str(e))
    path, error = broadcast_object(choice)
    if error:
        raise UserError(error)
    return path, saved


def load_resume(state: TrainState, cfg: Config, dist: DistInfo, path: str, saved: dict | None) -> dict:
    """Every rank restores `path` into `state` (loading it unless `saved` is given); returns the content.

    Then the ranks compare where they are, (epoch, step_in_epoch, step), and all raise the same
    UserError (`check_resume_positions`) if one could not load the file or they disagree.
    """
    try:
        if saved is None:
            saved = checkpoint.load_training_state(path, map_location=dist.device)
        restore(state, saved, cfg, path)
        mine = (state.epoch, state.step_in_epoch, state.step)
    except UserError as e:
        mine = str(e)
    check_resume_positions(all_gather_object(mine), path)
    return saved


def check_resume_positions(positions: list, path: str) -> None:
    """Raise UserError unless every rank restored the same (epoch, step_in_epoch, step) from `path`.

    `positions[r]` is rank r's tuple, or its error message if it could not restore.
    """
    errors = {r: p for r, p in enumerate(positions) if isinstance(p, str)}
    if errors and len(set(errors.values())) == 1 and len(errors) == len(positions):
        raise UserError(next(iter(errors.values())))
    shared = "output.dir must be on a filesystem that every node sees the same"
    if errors:
        failed = ", ".join(str(r) for r in errors)
        raise UserError(f"Rank(s) {failed} could not resume from {path}, which rank 0 chose ({shared}; wait "
                        f"for it to settle, then run again): {next(iter(errors.values()))}")
    if len(set(positions)) > 1:
        listed = "; ".join(f"rank {r}: {p}" for r, p in enumerate(positions))
        raise UserError(f"The ranks resumed from {path} at different points (epoch, step_in_epoch, step) = "
                        f"{listed}: they read different contents of one file, so replicas and loop counts "
                        f"would diverge. {shared} (a lagging network filesystem can serve a stale copy); "
                        "wait for it to settle, then run the same command again.")


def checkpoint_plan(saved: dict, plan: Plan) -> dict:
    """What a checkpoint was trained with: {global_batch, steps_per_epoch, loss_terms}.

    ``loss_terms`` counts the losses summed into ``loss_sum`` per optimizer step (world size x
    accumulation). Checkpoints store their plan; older ones are read back from their config,
    their counters and, for an epoch-1 checkpoint whose global batch differs, an estimate
    (``steps_per_epoch`` scaled by the global batch ratio, as the epoch holds the same images).
    """
    if saved.get("plan"):
        old = saved["plan"]
        return {"global_batch": old["global_batch"], "steps_per_epoch": old["steps_per_epoch"],
                "loss_terms": old["world_size"] * old["accum_steps"]}
    train = saved["config"]["train"]
    epoch, step_in_epoch, step = saved["epoch"], saved["step_in_epoch"], saved["step"]
    loss_terms = plan.world_size * plan.accum_steps
    if step_in_epoch and saved.get("loss_count"):
        loss_terms = saved["loss_count"] // step_in_epoch
    world_size = max(1, loss_terms // train["accum_steps"])
    global_batch = train["batch_size"] * train["accum_steps"] * world_size
    if epoch:
        steps = (step - step_in_epoch) // epoch
    elif global_batch == plan.global_batch:
        steps = plan.steps_per_epoch
    else:
        steps = max(1, plan.steps_per_epoch * plan.global_batch // global_batch)
    return {"global_batch": global_batch, "steps_per_epoch": steps, "loss_terms": loss_terms}


def resume_position(saved: dict, plan: Plan) -> tuple[dict, str | None]:
    """Where a run resumed under `plan` goes on from checkpoint `saved`, and why (None: as saved).

    Returns ({epoch, step_in_epoch, step, loss_sum, loss_count}, note). With the checkpoint's
    global batch and steps per epoch the position is kept: a global batch holds the same images
    for any world size and accumulation (see resnest_train/data/common.py), so the run repeats
    the uninterrupted one. Otherwise the run goes on in the same epoch at the same fraction of it,
    rounded down, and the global step becomes ``epoch * steps_per_epoch + step_in_epoch`` so the
    LR is the schedule's value at that point of the new plan. The epoch's running loss is kept as
    a mean, re-counted in the new plan's loss terms, so each step of the epoch weighs the same in
    ``train_loss``.
    """
    old = checkpoint_plan(saved, plan)
    epoch, step_in_epoch, step = saved["epoch"], saved["step_in_epoch"], saved["step"]
    loss_sum, loss_count = saved["loss_sum"], saved["loss_count"]
    same = old["global_batch"] == plan.global_batch and old["steps_per_epoch"] == plan.steps_per_epoch
    if not same:
        step_in_epoch = min(step_in_epoch * plan.steps_per_epoch // old["steps_per_epoch"], plan.steps_per_epoch)
        step = epoch * plan.steps_per_epoch + step_in_epoch
    loss_terms = plan.world_size * plan.accum_steps
    if loss_count and (not same or old["loss_terms"] != loss_terms):
        mean = loss_sum / loss_count
        loss_count = step_in_epoch * loss_terms
        loss_sum = mean * loss_count
    position = {"epoch": epoch, "step_in_epoch": step_in_epoch, "step": step,
                "loss_sum": loss_sum, "loss_count": loss_count}
    old_world = (saved.get("plan") or {}).get("world_size", plan.world_size)
    if same and old_world == plan.world_size and old["loss_terms"] == loss_terms:
        return position, None
    layout = (f"global batch {plan.global_batch} = {plan.batch_size} x {plan.world_size} process(es) x "
              f"{plan.accum_steps} accumulation, {plan.steps_per_epoch} steps per epoch")
    if same:
        return position, (f"Resuming with {layout}: the checkpoint's global batch, so the run goes on exactly "
                          f"where it stopped (step {step}).")
    return position, (f"Resuming with {layout}; the checkpoint had global batch {old['global_batch']} and "
                      f"{old['steps_per_epoch']} steps per epoch: going on at the same point of epoch {epoch + 1}, "
                      f"step {step_in_epoch}/{plan.steps_per_epoch} (was {saved['step_in_epoch']}/"
                      f"{old['steps_per_epoch']}), global step {step} (was {saved['step']}), with the new "
                      "plan's schedule from there.")


def adopt_resume_position(state: TrainState, saved: dict, plan: Plan, cfg: Config, monitor: Monitor) -> None:
    """Move a restored `state` onto this run's plan (see resume_position) and say so in one line."""
    position, note = resume_position(saved, plan)
    for key, value in position.items():
        setattr(state, key, value)
    if note:
        monitor.print(f"{note} LR {schedule_lr(state.step, plan, cfg.optim):.6g}.")


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

def describe(cfg: Config, plan: Plan, info: dict, loaders) -> str:
    return "\n".join([
        f"model            {cfg.model.name} ({info['params'] / 1e6:.2f}M params, "
        f"{info['gmacs']:.2f} GMACs at {cfg.data.train_crop}px)",
        f"data             {loaders.backend}: {loaders.num_classes} classes, {loaders.val_images} val images",
        f"world size       {plan.world_size}",
        f"global batch     {plan.global_batch} = {plan.batch_size} per process x {plan.world_size} x "
        f"{plan.accum_steps} accumulation",
        f"peak LR          {plan.peak_lr:.6g} = {cfg.optim.base_lr} x {plan.global_batch} / 256",
        f"steps per epoch  {plan.steps_per_epoch}",
        f"total steps      {plan.total_steps} ({plan.epochs} epochs)",
    ])


def run(cfg: Config, dry_run: bool = False) -> int:
    """Train (or with dry_run, print the plan) and return the process exit code."""
    dist = init_distributed(cfg.dist, cfg.device)
    try:
        return _run(cfg, dist, dry_run)
    finally:
        cleanup()


def _run(cfg: Config, dist: DistInfo, dry_run: bool) -> int:
    check_device(cfg, dist.device, dist.world_size)
    configure_backends(cfg.train, dist.device)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    loaders = build_loaders(cfg.data, batch_size=cfg.train.batch_size, rank=dist.rank,
                            world_size=dist.world_size, device=dist.device, seed=cfg.train.seed,
                            channels_last=cfg.train.channels_last)
    plan = make_plan(cfg, dist.world_size, len(loaders.train))
    model = build_model(cfg, loaders.num_classes)
    if dry_run:
        if dist.is_main:
            print(describe(cfg, plan, model_info(model, cfg.data.train_crop), loaders))
        return 0

    monitor = Monitor(cfg.output, enabled=dist.is_main)
    if dist.is_main:
        RunDir(cfg.output.dir).write_config(config_to_yaml(cfg))
    model.to(dist.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg.optim, lr=0.0)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    state = TrainState(model=model, net=model, optimizer=optimizer, scaler=scaler, ema=None)

    # Every rank restores the checkpoint rank 0 picked into the bare model, before DDP's one-time
    # broadcast and torch.compile, and the ranks check they stand at the same step.
    resume_from, saved = pick_resume(cfg, dist, monitor.print)
    if resume_from:
        saved = load_resume(state, cfg, dist, resume_from, saved)
        adopt_resume_position(state, saved, plan, cfg, monitor)
    new_ema = cfg.train.ema and saved is not None and not saved.get("ema")
    if cfg.train.ema:
        state.ema = build_ema(model, cfg.train.ema_decay, saved.get("ema") if saved else None)
    saved = None  # free the checkpoint's tensors
    if resume_from:
        if dist.is_main:
            RunDir(cfg.output.dir).trim_metrics(state.epoch)
        if state.epoch >= plan.epochs:
            best = f"{state.best_top1:.2f}%" if state.best_top1 is not None else "n/a"
            monitor.print(f"Run in {cfg.output.dir} already finished its {plan.epochs} epochs "
                          f"(best val top-1 {best}); nothing to do. Use a new output.dir to train again.")
            monitor.run_state(state="finished", epoch=state.epoch, epochs=plan.epochs, best_top1=state.best_top1)
            return 0
        monitor.print(f"Resuming from {resume_from}: epoch {state.epoch + 1}, step {state.step}"
                      + (" (the checkpoint holds no EMA: train.ema starts from its weights)" if new_ema else ""))
    if dist.enabled:
        state.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
            bucket_cap_mb=cfg.dist.bucket_cap_mb, find_unused_parameters=cfg.dist.find_unused_parameters)
    if cfg.train.compile:
        state.net = torch.compile(state.net)

    monitor.print(describe(cfg, plan, model_info(model, cfg.data.train_crop), loaders))
    stop = StopRequested()
    stop.install()
    try:
        return fit(state, loaders, plan, cfg, dist, monitor, stop)
    except BaseException:
        monitor.run_state(state="failed", epoch=state.epoch, epochs=plan.epochs, best_top1=state.best_top1)
        raise
    finally:
        monitor.close()


def fit(state: TrainState, loaders, plan: Plan, cfg: Config, dist: DistInfo, monitor: Monitor,
        stop: StopRequested) -> int:
    mixup = build_mixup(cfg, loaders.num_classes)
    out = cfg.output

    def snapshot(st: TrainState) -> dict:
        return dict(state_dict(st, cfg), plan=asdict(plan))  # the plan lets a resume on a new world map the step

    def save_last(st: TrainState, loss_sum: float, loss_count: int) -> None:
        if dist.is_main:
            saved = snapshot(st)
            saved.update(loss_sum=loss_sum, loss_count=loss_count)
            checkpoint.atomic_save(saved, RunDir(out.dir).last_checkpoint)
        barrier()

    monitor.run_state(state="running", epoch=state.epoch, epochs=plan.epochs, best_top1=state.best_top1)
    record = {}
    while state.epoch < plan.epochs:
        epoch = state.epoch
        drop = dropblock_prob(epoch, plan.epochs, cfg.model.dropblock.prob, cfg.model.dropblock.schedule)
        set_dropblock_prob(state.model, drop)
        loaders.train.set_epoch(epoch, start_step=state.step_in_epoch * plan.accum_steps)
        resumed_steps = state.step_in_epoch
        t0 = time.perf_counter()
        try:
            finished = train_one_epoch(state, loaders.train, plan, cfg, dist, monitor, mixup, stop, save_last)
        except Diverged as e:
            return report_divergence(e, state, plan, cfg, monitor)
        if not finished:
            monitor.print(f"Stopped by {stop.signal_name or 'a signal'} at step {state.step}; "
                          f"checkpoint saved to {RunDir(out.dir).last_checkpoint}. Run the same command to resume.")
            monitor.run_state(state="preempted", epoch=state.epoch, epochs=plan.epochs, best_top1=state.best_top1)
            return PREEMPTED_EXIT_CODE
        train_time = time.perf_counter() - t0
        train_loss = state.loss_sum / max(state.loss_count, 1)
        images_per_sec = (plan.steps_per_epoch - resumed_steps) * plan.global_batch / train_time

        record = {"epoch": epoch + 1, "train_loss": train_loss, "lr": state.optimizer.param_groups[0]["lr"],
                  "images_per_sec": images_per_sec, "dropblock_prob": drop}
        if dist.enabled:
            if not cfg.train.sync_bn:  # the EMA's BN statistics too: each rank's follow its own model's
                average_bn_stats(state.model)
                if state.ema is not None:
                    average_bn_stats(state.ema.module)
            checksums = state_checksums(state.model)
            record["weight_checksums"] = checksums
            if len(set(checksums)) > 1:
                monitor.print(f"warning: model replicas differ across ranks after epoch {epoch + 1}: {checksums}")
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == plan.epochs:
            val = evaluate(state.model, loaders.val, dist.device, cfg.train.amp)
            record.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"],
                          val_images=val["images"])
            if state.ema is not None:
                ema_val = evaluate(state.ema.module, loaders.val, dist.device, cfg.train.amp)
                record.update(val_loss_ema=ema_val["loss"], val_top1_ema=ema_val["top1"],
                              val_top5_ema=ema_val["top5"])
        record["epoch_time_s"] = time.perf_counter() - t0
        is_best = "val_top1" in record and (state.best_top1 is None or record["val_top1"] > state.best_top1)
        if is_best:
            state.best_top1 = record["val_top1"]

        state.epoch, state.step_in_epoch, state.loss_sum, state.loss_count = epoch + 1, 0, 0.0, 0
        monitor.epoch_metrics(record)
        numbers = {k: v for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))}
        monitor.scalars({f"epoch/{k}": v for k, v in numbers.items()}, epoch + 1)
        monitor.print(f"epoch {epoch + 1}/{plan.epochs} " + " ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()))
        if dist.is_main:
            saved = snapshot(state)
            checkpoint.atomic_save(saved, RunDir(out.dir).last_checkpoint)
            if is_best:
                checkpoint.atomic_save(saved, RunDir(out.dir).best_checkpoint)
            if out.save_every_epochs and state.epoch % out.save_every_epochs == 0:
                checkpoint.save_periodic(saved, out.dir, state.epoch, out.keep_last)
        barrier()
        if state.epoch < plan.epochs and stop.poll(dist.device, dist.world_size).stop:
            monitor.print(f"Stopped by {stop.signal_name or 'a signal'} after epoch {state.epoch}; "
                          f"checkpoint saved to {RunDir(out.dir).last_checkpoint}. Run the same command to resume.")
            monitor.run_state(state="preempted", epoch=state.epoch, epochs=plan.epochs, best_top1=state.best_top1)
            return PREEMPTED_EXIT_CODE
        monitor.run_state(state="running", epoch=state.epoch, epochs=plan.epochs, best_top1=state.best_top1)

    final = {k: record[k] for k in ("val_top1", "val_top5", "val_loss", "train_loss") if k in record}
    final["best_val_top1"] = state.best_top1 if state.best_top1 is not None else float("nan")
    hparams = {k: v for k, v in hparam_values(config_to_dict(cfg)).items() if not k.startswith("output.")}
    hparams.update(global_batch=plan.global_batch, peak_lr=plan.peak_lr, world_size=plan.world_size)
    monitor.hparams(hparams, {f"hparam/{k}": v for k, v in final.items()})
    monitor.run_state(state="finished", epoch=state.epoch, epochs=plan.epochs, best_top1=state.best_top1)
    if state.best_top1 is not None:
        monitor.print(f"Finished {plan.epochs} epochs: final val top-1 {record.get('val_top1', float('nan')):.2f}%, "
                      f"best {state.best_top1:.2f}%. Run directory: {out.dir}")
    monitor.print(f"TensorBoard: tensorboard --logdir {RunDir(out.dir).tensorboard}")
    return 0


def report_divergence(e: Diverged, state: TrainState, plan: Plan, cfg: Config, monitor: Monitor) -> int:
    """Say what happened and what to try, record it in run_state.json; returns DIVERGED_EXIT_CODE."""
    last = RunDir(cfg.output.dir).last_checkpoint
    kept = (f"{last} was not overwritten and holds the last state checked finite" if os.path.exists(last)
            else "no checkpoint had been written")
    o = cfg.optim
    tries = [f"a lower optim.base_lr (now {o.base_lr:g})",
             f"a longer warm-up, optim.warmup_epochs (now {o.warmup_epochs:g})",
             "gradient clipping, optim.clip_grad_norm=1.0" if not o.clip_grad_norm
             else f"a lower optim.clip_grad_norm (now {o.clip_grad_norm:g})"]
    if cfg.train.amp == "fp16":
        tries.append("train.amp=bf16 instead of fp16 (the same range as float32)")
    steps = f"step {e.last}" if e.first == e.last else f"one of steps {e.first} to {e.last}"
    monitor.error(
        f"training diverged: a loss became NaN or infinite in epoch {state.epoch + 1}, at optimizer "
        f"{steps} (LR {e.lr:.4g}, peak LR {plan.peak_lr:.4g}); the run stopped without "
        f"saving, and {kept}. Try {', '.join(tries[:-1])} or {tries[-1]}; then run the same command to resume "
        "from the last checkpoint with the new setting, or set resume=none (or a new output.dir) to start afresh.")
    monitor.run_state(state="diverged", reason=f"NaN or infinite loss at optimizer {steps}", step=e.last,
                      lr=e.lr, epoch=state.epoch, epochs=plan.epochs, best_top1=state.best_top1)
    return DIVERGED_EXIT_CODE
