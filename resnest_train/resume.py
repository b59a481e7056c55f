"""Resuming a run: which checkpoint (rank 0 decides), restoring it on every rank, and where to go on.

``pick_resume`` (rank 0 looks at output.dir, every rank gets its choice), ``load_resume`` (every
rank restores the file into its ``Trainer`` before DDP and ``torch.compile`` wrap the model, then
the ranks compare positions), ``resume_position`` (the same step, or the same fraction of the
epoch when the global batch changed).
"""

from __future__ import annotations

from . import checkpoint
from .config import Config, OptimConfig
from .config_loader import config_to_dict
from .distributed import DistInfo, all_gather_object, broadcast_object
from .errors import UserError
from .loop import Plan, schedule_lr
from .monitor import Monitor
from .trainer import Trainer


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


def load_resume(trainer: Trainer, cfg: Config, dist: DistInfo, path: str, saved: dict | None) -> dict:
    """Every rank restores `path` into `trainer` (loading it unless `saved` is given); returns the content.

    Then the ranks compare where they are, (epoch, step_in_epoch, step), and all raise the same
    UserError (`check_resume_positions`) if one could not load the file or they disagree.
    """
    try:
        if saved is None:
            saved = checkpoint.load_training_state(path, map_location=dist.device)
        restore(trainer, saved, cfg, path)
        mine = (trainer.epoch, trainer.step_in_epoch, trainer.step)
    except UserError as e:
        mine = str(e)
    check_resume_positions(all_gather_object(mine), path)
    return saved


def restore(trainer: Trainer, saved: dict, cfg: Config, path: str) -> None:
    """Put a checkpoint's model, optimizer, scaler and counters into `trainer` (its bare model).

    The EMA is not touched: `Trainer.enable_ema` makes it afterwards from the restored weights and
    the checkpoint's EMA state. Raises UserError when the config's model (or what shapes the
    optimizer: fine-tuning's groups, ``optim.name``) differs from the checkpoint's.
    """
    current = config_to_dict(cfg)["model"]
    previous = dict(saved["config"]["model"])
    for key in ("weights", "weights_ema"):  # where the run started from, not what it is
        previous.pop(key, None)
        current.pop(key, None)
    diffs = checkpoint.model_differences(previous, current)
    # what is frozen and the LR multipliers shape the optimizer's parameter groups
    defaults = config_to_dict(Config())["finetune"]
    diffs += checkpoint.model_differences(
        saved["config"].get("finetune", defaults), config_to_dict(cfg)["finetune"], prefix="finetune"
    )
    # and the optimizer's state only fits the optimizer that wrote it (momentum vs. Adam moments)
    saved_optim = saved["config"].get("optim", {}).get("name", OptimConfig.name)
    diffs += checkpoint.model_differences({"name": saved_optim}, {"name": cfg.optim.name}, prefix="optim")
    if diffs:
        raise UserError(
            f"Cannot resume from {path}: the model or optimizer in the config differs from the checkpoint's "
            f"({'; '.join(diffs)}). Use the checkpoint's settings, or a new output.dir "
            "(or resume=none) to start a different run."
        )
    trainer.load_state_dict(saved)


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
        raise UserError(
            f"Rank(s) {failed} could not resume from {path}, which rank 0 chose ({shared}; wait "
            f"for it to settle, then run again): {next(iter(errors.values()))}"
        )
    if len(set(positions)) > 1:
        listed = "; ".join(f"rank {r}: {p}" for r, p in enumerate(positions))
        raise UserError(
            f"The ranks resumed from {path} at different points (epoch, step_in_epoch, step) = "
            f"{listed}: they read different contents of one file, so replicas and loop counts "
            f"would diverge. {shared} (a lagging network filesystem can serve a stale copy); "
            "wait for it to settle, then run the same command again."
        )


def checkpoint_plan(saved: dict, plan: Plan) -> dict:
    """What a checkpoint was trained with: {global_batch, steps_per_epoch, loss_terms}.

    ``loss_terms`` counts the losses summed into ``loss_sum`` per optimizer step (world size x
    accumulation). Checkpoints store their plan; older ones are read back from their config,
    their counters and, for an epoch-1 checkpoint whose global batch differs, an estimate
    (``steps_per_epoch`` scaled by the global batch ratio, as the epoch holds the same images).
    """
    if saved.get("plan"):
        old = saved["plan"]
        return {
            "global_batch": old["global_batch"],
            "steps_per_epoch": old["steps_per_epoch"],
            "loss_terms": old["world_size"] * old["accum_steps"],
        }
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
    position = {
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "step": step,
        "loss_sum": loss_sum,
        "loss_count": loss_count,
    }
    old_world = (saved.get("plan") or {}).get("world_size", plan.world_size)
    if same and old_world == plan.world_size and old["loss_terms"] == loss_terms:
        return position, None
    layout = (
        f"global batch {plan.global_batch} = {plan.batch_size} x {plan.world_size} process(es) x "
        f"{plan.accum_steps} accumulation, {plan.steps_per_epoch} steps per epoch"
    )
    if same:
        return position, (
            f"Resuming with {layout}: the checkpoint's global batch, so the run goes on exactly "
            f"where it stopped (step {step})."
        )
    return position, (
        f"Resuming with {layout}; the checkpoint had global batch {old['global_batch']} and "
        f"{old['steps_per_epoch']} steps per epoch: going on at the same point of epoch {epoch + 1}, "
        f"step {step_in_epoch}/{plan.steps_per_epoch} (was {saved['step_in_epoch']}/"
        f"{old['steps_per_epoch']}), global step {step} (was {saved['step']}), with the new "
        "plan's schedule from there."
    )


def adopt_resume_position(trainer: Trainer, saved: dict, plan: Plan, cfg: Config, monitor: Monitor) -> None:
    """Move a restored `trainer` onto this run's plan (see resume_position) and say so in one line."""
    position, note = resume_position(saved, plan)
    trainer.set_position(**position)
    if note:
        monitor.print(f"{note} LR {schedule_lr(trainer.step, plan, cfg.optim):.6g}.")
