"""The loop: ``fit`` runs epochs of ``train_one_epoch`` and ``evaluate``, saves, and decides when to stop.

Readable top to bottom, as nanoGPT's ``train.py``: the step itself is ``Trainer.train_step``,
the files are ``RunDir``'s. Randomness in the loop (mixup, dropout, DropBlock) is re-seeded at
every optimizer step from (seed, rank, step), and the data order and augmentation are a
function of (seed, epoch, sample): so the step counter is the whole RNG state, and a run
resumed from any checkpoint repeats the uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .config import Config
from .config_loader import config_to_dict
from .data import Loaders, TrainLoader, ValLoader
from .data.common import train_crop_at
from .distributed import DistInfo, all_reduce_sum, average_bn_stats, state_checksums
from .errors import UserError
from .models import dropblock_prob, set_dropblock_prob
from .monitor import Monitor, hparam_values
from .optim import lr_at, peak_lr, set_lr
from .preflight import check_final_lr, check_steps_per_epoch
from .rundir import RunDir
from .trainer import Trainer, autocast, step_seed

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what schedulers expect of a job stopped by SIGTERM
DIVERGED_EXIT_CODE = 3  # a NaN or infinite loss stopped the run (2 is a user error, 1 a crash)
POLL_EVERY = 8  # most optimizer steps between two "should we stop" polls (see StopRequested)


@dataclass
class Plan:
    """Numbers derived from the config and the world: what --dry-run prints."""

    world_size: int
    batch_size: int  # per process
    accum_steps: int
    global_batch: int  # images per optimizer step, all ranks
    peak_lr: float  # optim.base_lr x global_batch / 256 (Goyal et al., the paper's rule)
    steps_per_epoch: int  # optimizer steps
    epochs: int

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.steps_per_epoch * self.epochs


def make_plan(cfg: Config, world_size: int, batches_per_epoch: int) -> Plan:
    """The plan of a run on ``world_size`` processes whose train loader yields ``batches_per_epoch``.

    Raises ConfigError (``preflight.check_steps_per_epoch``) when an epoch holds no optimizer step,
    and (``preflight.check_final_lr``) when ``optim.final_lr`` is above the peak LR.
    """
    global_batch = cfg.train.batch_size * world_size * cfg.train.accum_steps
    steps = check_steps_per_epoch(cfg, world_size, batches_per_epoch)
    check_final_lr(cfg, peak_lr(cfg.optim.base_lr, global_batch), global_batch)
    return Plan(
        world_size=world_size,
        batch_size=cfg.train.batch_size,
        accum_steps=cfg.train.accum_steps,
        global_batch=global_batch,
        peak_lr=peak_lr(cfg.optim.base_lr, global_batch),
        steps_per_epoch=steps,
        epochs=cfg.train.epochs,
    )


def schedule_lr(step: int, plan: Plan, optim_cfg) -> float:
    """The LR of optimizer step `step` (0-based) under `plan`: optim.lr_at with the config's schedule."""
    return lr_at(
        step,
        steps_per_epoch=plan.steps_per_epoch,
        epochs=plan.epochs,
        warmup_epochs=optim_cfg.warmup_epochs,
        peak=plan.peak_lr,
        warmup_start=optim_cfg.warmup_start_lr,
        final=optim_cfg.final_lr,
        schedule=optim_cfg.schedule,
        step_epochs=optim_cfg.step_epochs,
        step_gamma=optim_cfg.step_gamma,
    )


# --------------------------------------------------------------------------------------
# Should we stop: one poll for a signal and for divergence
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

    def install(self) -> None:
        """Catch SIGTERM and SIGINT: they set the flag (and its name) instead of ending the process."""

        def handler(signum, frame):
            self.flag = True
            self.signal_name = signal.Signals(signum).name

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def poll(
        self,
        device: torch.device,
        world_size: int,
        loss_sum: torch.Tensor | None = None,
        model: nn.Module | None = None,
        step_loss: torch.Tensor | None = None,
    ) -> Poll:
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
        flags = torch.stack(
            [zero + float(self.flag), (~finite).double(), step_loss.double() if step_loss is not None else zero]
        )
        signalled, nonfinite, loss = all_reduce_sum(flags).tolist()
        return Poll(
            stop=signalled > 0,
            diverged=nonfinite > 0,
            loss=loss / world_size if step_loss is not None else float("nan"),
        )


def weight_sum(model: nn.Module) -> torch.Tensor:
    """The sum of every floating parameter and buffer: NaN or infinite when any of them is."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return torch.stack([t.detach().sum(dtype=torch.float32) for t in tensors]).sum()


class Diverged(Exception):
    """A NaN or infinite loss (or weight) was seen after optimizer step `first` and by step `last`."""

    def __init__(self, first: int, last: int, lr: float):
        super().__init__(f"non-finite loss between steps {first} and {last}")
        self.first, self.last, self.lr = first, last, lr


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def checkpoint_state(trainer: Trainer, cfg: Config, plan: Plan) -> dict:
    """A checkpoint: the trainer's state, the config, and the plan (a resume on a new world maps its step)."""
    return dict(trainer.state_dict(), config=config_to_dict(cfg), plan=asdict(plan))


def save_last(
    trainer: Trainer, cfg: Config, plan: Plan, dist: DistInfo, saver: checkpoint.AsyncSaver, monitor: Monitor
) -> None:
    """Mid-epoch: the running loss synced over the ranks (collective), then rank 0 hands last.pth to
    the background writer; the other ranks go on without waiting for it."""
    trainer.running_loss.sync()
    if dist.is_main:
        saver.save(checkpoint_state(trainer, cfg, plan), lambda obj: _write_last(obj, cfg.output.dir), trainer.step)
        report_saves(saver, monitor)


def save_epoch(trainer: Trainer, cfg: Config, plan: Plan, is_best: bool, saver: checkpoint.AsyncSaver) -> None:
    """After an epoch (rank 0): last.pth, best.pth when the val top-1 is the best, epoch_NNNN.pth
    every ``output.save_every_epochs``, written by the background writer."""
    out = cfg.output
    periodic = bool(out.save_every_epochs) and trainer.epoch % out.save_every_epochs == 0
    saver.save(
        checkpoint_state(trainer, cfg, plan),
        lambda obj, e=trainer.epoch: _write_epoch_end(obj, out, e, is_best, periodic),
        trainer.step,
    )


def _write_last(saved: dict, output_dir: str) -> list:
    path = RunDir(output_dir).last_checkpoint
    checkpoint.atomic_save(saved, path)
    return [path]


def _write_epoch_end(saved: dict, out, epoch: int, is_best: bool, periodic: bool) -> list:
    """last.pth, best.pth when `is_best`, epoch_NNNN.pth when `periodic`; returns the paths written."""
    paths = _write_last(saved, out.dir)
    if is_best:
        paths.append(RunDir(out.dir).best_checkpoint)
        checkpoint.atomic_save(saved, paths[-1])
    if periodic:
        paths.append(checkpoint.save_periodic(saved, out.dir, epoch, out.keep_last))
    return paths


def report_saves(saver: checkpoint.AsyncSaver, monitor: Monitor) -> checkpoint.SaveReport | None:
    """Print and log (TensorBoard checkpoint/save_s, checkpoint/size_mb) each finished background
    save; returns the newest one (None when none finished since the last call)."""
    report = None
    for report in saver.done():
        names = ", ".join(os.path.basename(p) for p in report.paths)
        monitor.print(
            f"checkpoint {names} written at step {report.step}: {report.bytes / 1e6:.1f} MB in {report.seconds:.2f} s"
        )
        monitor.scalars({"checkpoint/save_s": report.seconds, "checkpoint/size_mb": report.bytes / 1e6}, report.step)
    return report


# --------------------------------------------------------------------------------------
# One epoch of training, one evaluation
# --------------------------------------------------------------------------------------


def train_one_epoch(
    trainer: Trainer,
    loader: TrainLoader,
    plan: Plan,
    cfg: Config,
    dist: DistInfo,
    monitor: Monitor,
    stop: StopRequested,
    saver: checkpoint.AsyncSaver,
) -> bool:
    """Train until the epoch ends; returns False if a stop was requested (last.pth is then handed to
    ``saver``, the background writer).

    ``loader`` stands at ``trainer.step_in_epoch`` (``set_epoch`` was called). Polls (see
    StopRequested) log, save every ``output.save_every_steps`` steps, and stop. Raises Diverged,
    before any save, when a poll finds a NaN or infinite loss or weight. Only the loss counts:
    fp16's GradScaler skips steps whose scaled gradients overflow, and those steps have a finite
    loss, so they are not divergence; a loss that is itself NaN or infinite (the forward pass
    overflowed, or the weights already hold NaN) is.
    """
    trainer.net.train()
    device, accum = dist.device, plan.accum_steps
    window_n, window_start = 0, time.perf_counter()
    data_time = 0.0
    epoch_start = time.perf_counter()
    start_step = trainer.step_in_epoch
    checked_step = trainer.step  # every loss up to this optimizer step was finite
    poll_every = min(POLL_EVERY, cfg.output.log_every)
    batches = iter(loader)

    while trainer.step_in_epoch < plan.steps_per_epoch:
        lr = schedule_lr(trainer.step, plan, cfg.optim)
        set_lr(trainer.optimizer, lr)
        step_seed(cfg.train.seed, dist.rank, trainer.step)
        losses = []
        for micro in range(accum):
            t0 = time.perf_counter()
            images, labels = next(batches)
            data_time += time.perf_counter() - t0
            if trainer.step == 0 and micro == 0 and cfg.output.image_grid:
                monitor.images("train/augmented_images", images, cfg.data.mean, cfg.data.std)
            losses.append(trainer.train_step(images, labels, accumulate=micro < accum - 1))
        window_n += 1

        mid_epoch = trainer.step_in_epoch < plan.steps_per_epoch
        log = trainer.step_in_epoch % cfg.output.log_every == 0 or not mid_epoch
        periodic = bool(cfg.output.save_every_steps) and trainer.step % cfg.output.save_every_steps == 0
        if not (log or periodic or trainer.step_in_epoch % poll_every == 0):  # log: also the epoch's last step
            continue
        # The step's loss over the global batch: the mean of every rank's micro-batch losses.
        poll = stop.poll(
            device,
            dist.world_size,
            trainer.running_loss.local_sum,
            trainer.model,
            torch.stack(losses).mean() if log else None,
        )
        if poll.diverged:
            raise Diverged(checked_step + 1, trainer.step, lr)
        checked_step = trainer.step
        if log:
            elapsed = time.perf_counter() - window_start
            ips = window_n * plan.global_batch / max(elapsed, 1e-9)
            monitor.scalars(
                {
                    "train/loss": poll.loss,
                    "train/lr": lr,
                    "train/images_per_sec": ips,
                    "train/data_time_s": data_time / window_n,
                },
                trainer.step,
            )
            done = trainer.step_in_epoch - start_step
            eta = (time.perf_counter() - epoch_start) / done * (plan.steps_per_epoch - trainer.step_in_epoch)
            monitor.progress(
                trainer.epoch, plan.epochs, trainer.step_in_epoch, plan.steps_per_epoch, poll.loss, lr, ips, eta
            )
            window_n, window_start, data_time = 0, time.perf_counter(), 0.0
        if (poll.stop or periodic) and mid_epoch:
            save_last(trainer, cfg, plan, dist, saver, monitor)
        if poll.stop and mid_epoch:  # at the epoch's last step, fit saves and stops after the epoch
            return False
    monitor.end_bar()
    trainer.running_loss.sync()
    return True


@torch.no_grad()
def evaluate(models: nn.Module | list[nn.Module], loader: ValLoader, device: torch.device, amp: str):
    """Loss and top-1/top-5 over this rank's shard, summed over ranks: each image counted once.

    `models`: one module, or a list of them (the model and its EMA) evaluated on the same
    batches in one pass over `loader`, so the validation set is decoded once. Returns one dict
    {"loss": mean cross-entropy, "top1", "top5": accuracy in percent, "images": count} over the
    whole val set (the shards of every rank), or a list of them in the order of `models`.
    Collective under torchrun.
    """
    several = isinstance(models, (list, tuple))
    models = list(models) if several else [models]
    for model in models:
        model.eval()
    sums = torch.zeros(len(models), 4, device=device, dtype=torch.float64)  # loss, top1, top5, images
    for images, labels in loader:
        for model, row in zip(models, sums):
            with autocast(amp, device):
                logits = model(images)
            logits = logits.float()
            row[0] += F.cross_entropy(logits, labels, reduction="sum")
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top5.eq(labels[:, None])
            row[1] += hits[:, 0].sum()
            row[2] += hits.any(dim=1).sum()
            row[3] += len(labels)
    results = []
    for loss, top1, top5, images in all_reduce_sum(sums).tolist():
        n = max(images, 1.0)
        results.append({"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": int(images)})
    return results if several else results[0]


# --------------------------------------------------------------------------------------
# The epochs
# --------------------------------------------------------------------------------------


def fit(
    trainer: Trainer, loaders: Loaders, plan: Plan, cfg: Config, dist: DistInfo, monitor: Monitor, stop: StopRequested
) -> int:
    """Train from where ``trainer`` stands to ``plan.epochs``; returns the process exit status.

    0 when finished, PREEMPTED_EXIT_CODE (143) after a stop signal (last.pth saved),
    DIVERGED_EXIT_CODE (3) after a NaN or infinite loss (nothing saved after the last good
    checkpoint). Every epoch appends to metrics.jsonl, writes TensorBoard scalars and saves.
    Checkpoints are written by rank 0 in the background (``checkpoint.AsyncSaver``); every return
    waits until the newest one is on disk.
    """
    saver = checkpoint.AsyncSaver()  # rank 0 writes in the background; the other ranks never wait for it
    try:
        return _epochs(trainer, loaders, plan, cfg, dist, monitor, stop, saver)
    except BaseException:
        try:
            saver.wait()
        except UserError:  # the writer's failure is secondary to the one being raised
            pass
        raise
    finally:
        saver.wait()  # the newest checkpoint is complete on disk before the run returns
        report_saves(saver, monitor)


def _epochs(
    trainer: Trainer,
    loaders: Loaders,
    plan: Plan,
    cfg: Config,
    dist: DistInfo,
    monitor: Monitor,
    stop: StopRequested,
    saver: checkpoint.AsyncSaver,
) -> int:
    """fit's epoch loop; every checkpoint goes through ``saver`` (rank 0 only)."""
    out = cfg.output
    run = RunDir(out.dir)

    def finish(state: str, code: int, message: str) -> int:
        saver.wait()  # last.pth is complete before the message names it
        report_saves(saver, monitor)
        monitor.print(message)
        monitor.run_state(state=state, epoch=trainer.epoch, epochs=plan.epochs, best_top1=trainer.best_top1)
        return code

    monitor.run_state(state="running", epoch=trainer.epoch, epochs=plan.epochs, best_top1=trainer.best_top1)
    hparams = {k: v for k, v in hparam_values(config_to_dict(cfg)).items() if not k.startswith("output.")}
    hparams.update(global_batch=plan.global_batch, peak_lr=plan.peak_lr, world_size=plan.world_size)
    monitor.hparams(hparams)  # at the start: a run that never finishes is in the HParams view too
    record = {}
    newest_save = None
    while trainer.epoch < plan.epochs:
        epoch = trainer.epoch
        drop = dropblock_prob(epoch, plan.epochs, cfg.model.dropblock.prob, cfg.model.dropblock.schedule)
        set_dropblock_prob(trainer.model, drop)
        loaders.train.set_epoch(epoch, start_step=trainer.step_in_epoch * plan.accum_steps)
        resumed_steps = trainer.step_in_epoch
        t0 = time.perf_counter()
        try:
            finished = train_one_epoch(trainer, loaders.train, plan, cfg, dist, monitor, stop, saver)
        except Diverged as e:
            saver.wait()  # last.pth, checked finite, is complete before the report names it
            return report_divergence(e, trainer, plan, cfg, monitor)
        if not finished:
            return finish(
                "preempted",
                PREEMPTED_EXIT_CODE,
                f"Stopped by {stop.signal_name or 'a signal'} at step {trainer.step}; checkpoint saved "
                f"to {run.last_checkpoint}. Run the same command to resume.",
            )
        train_time = time.perf_counter() - t0
        images_per_sec = (plan.steps_per_epoch - resumed_steps) * plan.global_batch / train_time

        record = {
            "epoch": epoch + 1,
            "train_loss": trainer.running_loss.mean(),
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "images_per_sec": images_per_sec,
            "dropblock_prob": drop,
        }
        if cfg.data.train_crop_schedule.start_crop:  # progressive resizing: the crop this epoch trained at
            record["train_crop"] = train_crop_at(cfg.data, epoch)
        if dist.enabled:
            if not cfg.train.sync_bn:  # the EMA's BN statistics too: each rank's follow its own model's
                average_bn_stats(trainer.model)
                if trainer.ema is not None:
                    average_bn_stats(trainer.ema.module)
            checksums = state_checksums(trainer.model)
            record["weight_checksums"] = checksums
            if len(set(checksums)) > 1:
                monitor.print(f"warning: model replicas differ across ranks after epoch {epoch + 1}: {checksums}")
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == plan.epochs:
            models = [trainer.model] + ([trainer.ema.module] if trainer.ema is not None else [])
            val, *ema_val = evaluate(models, loaders.val, dist.device, cfg.train.amp)  # one pass over val
            record.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"], val_images=val["images"])
            if ema_val:
                record.update(
                    val_loss_ema=ema_val[0]["loss"], val_top1_ema=ema_val[0]["top1"], val_top5_ema=ema_val[0]["top5"]
                )
        newest_save = report_saves(saver, monitor) or newest_save
        if newest_save is not None:  # the newest finished write: usually the previous epoch's, in the background
            record.update(checkpoint_save_s=newest_save.seconds, checkpoint_mb=newest_save.bytes / 1e6)
        record["epoch_time_s"] = time.perf_counter() - t0
        is_best = "val_top1" in record and (trainer.best_top1 is None or record["val_top1"] > trainer.best_top1)
        if is_best:
            trainer.best_top1 = record["val_top1"]

        trainer.set_position(epoch + 1, 0, trainer.step, 0.0, 0)
        monitor.epoch_metrics(record)
        numbers = {k: v for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))}
        monitor.scalars({f"epoch/{k}": v for k, v in numbers.items()}, epoch + 1)
        monitor.print(
            f"epoch {epoch + 1}/{plan.epochs} "
            + " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items())
        )
        if dist.is_main:
            save_epoch(trainer, cfg, plan, is_best, saver)
        if trainer.epoch < plan.epochs and stop.poll(dist.device, dist.world_size).stop:
            return finish(
                "preempted",
                PREEMPTED_EXIT_CODE,
                f"Stopped by {stop.signal_name or 'a signal'} after epoch {trainer.epoch}; checkpoint "
                f"saved to {run.last_checkpoint}. Run the same command to resume.",
            )
        monitor.run_state(state="running", epoch=trainer.epoch, epochs=plan.epochs, best_top1=trainer.best_top1)

    final = {k: record[k] for k in ("val_top1", "val_top5", "val_loss", "train_loss") if k in record}
    final["best_val_top1"] = trainer.best_top1 if trainer.best_top1 is not None else float("nan")
    monitor.hparams_end({f"hparam/{k}": v for k, v in final.items()}, trainer.epoch)
    saver.wait()  # the last checkpoint is on disk before the run says it finished
    report_saves(saver, monitor)
    monitor.run_state(state="finished", epoch=trainer.epoch, epochs=plan.epochs, best_top1=trainer.best_top1)
    if trainer.best_top1 is not None:
        monitor.print(
            f"Finished {plan.epochs} epochs: final val top-1 {record.get('val_top1', float('nan')):.2f}%, "
            f"best {trainer.best_top1:.2f}%. Run directory: {out.dir}"
        )
    monitor.print(f"TensorBoard: tensorboard --logdir {run.tensorboard}")
    return 0


def report_divergence(e: Diverged, trainer: Trainer, plan: Plan, cfg: Config, monitor: Monitor) -> int:
    """Say what happened and what to try, record it in run_state.json; returns DIVERGED_EXIT_CODE."""
    last = RunDir(cfg.output.dir).last_checkpoint
    kept = (
        f"{last} was not overwritten and holds the last state checked finite"
        if os.path.exists(last)
        else "no checkpoint had been written"
    )
    o = cfg.optim
    tries = [
        f"a lower optim.base_lr (now {o.base_lr:g})",
        f"a longer warm-up, optim.warmup_epochs (now {o.warmup_epochs:g})",
        "gradient clipping, optim.clip_grad_norm=1.0"
        if not o.clip_grad_norm
        else f"a lower optim.clip_grad_norm (now {o.clip_grad_norm:g})",
    ]
    if cfg.train.amp == "fp16":
        tries.append("train.amp=bf16 instead of fp16 (the same range as float32)")
    steps = f"step {e.last}" if e.first == e.last else f"one of steps {e.first} to {e.last}"
    monitor.error(
        f"training diverged: a loss became NaN or infinite in epoch {trainer.epoch + 1}, at optimizer "
        f"{steps} (LR {e.lr:.4g}, peak LR {plan.peak_lr:.4g}); the run stopped without "
        f"saving, and {kept}. Try {', '.join(tries[:-1])} or {tries[-1]}; then run the same command to resume "
        "from the last checkpoint with the new setting, or set resume=none (or a new output.dir) to start afresh."
    )
    monitor.run_state(
        state="diverged",
        reason=f"NaN or infinite loss at optimizer {steps}",
        step=e.last,
        lr=e.lr,
        epoch=trainer.epoch,
        epochs=plan.epochs,
        best_top1=trainer.best_top1,
    )
    return DIVERGED_EXIT_CODE
