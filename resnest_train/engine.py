"""Orchestration: ``run(cfg)`` builds everything once and hands it to ``loop.fit``.

Under torchrun or plain ``python``: the process group and device (``distributed``), torch's
numerics (``configure_backends``), the loaders, the plan, the model (``build_model``, with
``model.weights``), the ``Trainer`` (optimizer, grad scaler, EMA), the resume (``resume``) and
the monitor; then ``loop.fit`` trains. ``describe`` is what ``--dry-run`` prints.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from . import checkpoint, finetune
from .config import Config
from .config_loader import config_to_dict, config_to_yaml
from .data import Loaders, build_loaders
from .distributed import DistInfo, cleanup, init_distributed
from .errors import UserError
from .loop import Plan, StopRequested, fit, make_plan
from .models import create_model, model_info
from .models.resnest import arch_overrides
from .monitor import Monitor
from .optim import build_optimizer
from .preflight import check_device
from .resume import adopt_resume_position, load_resume, pick_resume
from .rundir import RunDir
from .trainer import Trainer


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The model of ``cfg.model`` with a ``num_classes``-way classifier, DropBlock at prob 0 (the loop sets it),
    loaded from ``model.weights`` when given (``load_weights``). Raises UserError for weights that do not fit."""
    m = cfg.model
    arch = arch_overrides(m)
    db = m.dropblock
    dropblock = {"stages": db.stages, "sites": db.sites, "block_size": db.block_size, "prob": 0.0}
    model = create_model(
        m.name, num_classes=num_classes, zero_init_last=m.zero_init_last, dropblock=dropblock, **arch
    )  # preflight.check_model built it already
    if m.weights:
        load_weights(model, m.weights, use_ema=m.weights_ema, name=m.name)
    return finetune.apply(model, cfg.finetune)  # frozen stages / BatchNorm, after the weights are in


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
        raise UserError(
            f"Config key 'model.weights': the {which} in {path} do not fit model "
            f"'{name or type(model).__name__}' ({mismatch}). Set model.name and the architecture "
            "overrides (model.radix, model.deep_stem, ...) to those of the run that saved the file, "
            "or point model.weights at weights of this architecture."
        )
    model.load_state_dict(state, strict=True)


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


def describe(cfg: Config, plan: Plan, info: dict, loaders: Loaders) -> str:
    """What --dry-run prints and a run starts with: model size, data, world, global batch, peak LR, steps.

    ``info`` is ``models.model_info``'s {"params", "gmacs"} at the train crop.
    """
    return "\n".join(
        [
            f"model            {cfg.model.name} ({info['params'] / 1e6:.2f}M params, "
            f"{info['gmacs']:.2f} GMACs at {cfg.data.train_crop}px)",
            f"data             {loaders.backend}: {loaders.num_classes} classes, {loaders.val_images} val images",
            f"world size       {plan.world_size}",
            f"global batch     {plan.global_batch} = {plan.batch_size} per process x {plan.world_size} x "
            f"{plan.accum_steps} accumulation",
            f"peak LR          {plan.peak_lr:.6g} = {cfg.optim.base_lr} x {plan.global_batch} / 256",
            f"steps per epoch  {plan.steps_per_epoch}",
            f"total steps      {plan.total_steps} ({plan.epochs} epochs)",
        ]
    )


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
    loaders = build_loaders(
        cfg.data,
        batch_size=cfg.train.batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        device=dist.device,
        seed=cfg.train.seed,
        channels_last=cfg.train.channels_last,
    )
    plan = make_plan(cfg, dist.world_size, len(loaders.train))
    model = build_model(cfg, loaders.num_classes)
    if dry_run:
        if dist.is_main:
            print(describe(cfg, plan, model_info(model, cfg.data.train_crop), loaders))
        return 0

    monitor = Monitor(cfg.output, enabled=dist.is_main)
    if dist.is_main:
        RunDir(cfg.output.dir).write_config(config_to_yaml(cfg))
    monitor.config(config_to_dict(cfg))
    model.to(dist.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    trainer = Trainer(
        model,
        build_optimizer(model, cfg.optim, lr=0.0, lr_mult=finetune.lr_mult_fn(cfg.finetune)),
        cfg.train,
        cfg.optim.clip_grad_norm,
        dist.device,
        loaders.num_classes,
        distributed=dist.enabled,
    )

    # Every rank restores the checkpoint rank 0 picked into the bare model, before DDP's one-time
    # broadcast and torch.compile, and the ranks check they stand at the same step.
    resume_from, saved = pick_resume(cfg, dist, monitor.print)
    if resume_from:
        saved = load_resume(trainer, cfg, dist, resume_from, saved)
        adopt_resume_position(trainer, saved, plan, cfg, monitor)
    new_ema = cfg.train.ema and saved is not None and not saved.get("ema")
    if cfg.train.ema:
        trainer.enable_ema(cfg.train.ema_decay, saved.get("ema") if saved else None)
    saved = None  # free the checkpoint's tensors
    if resume_from:
        if dist.is_main:
            RunDir(cfg.output.dir).trim_metrics(trainer.epoch)
        if trainer.epoch >= plan.epochs:
            best = f"{trainer.best_top1:.2f}%" if trainer.best_top1 is not None else "n/a"
            monitor.print(
                f"Run in {cfg.output.dir} already finished its {plan.epochs} epochs "
                f"(best val top-1 {best}); nothing to do. Use a new output.dir to train again."
            )
            monitor.run_state(state="finished", epoch=trainer.epoch, epochs=plan.epochs, best_top1=trainer.best_top1)
            return 0
        monitor.print(
            f"Resuming from {resume_from}: epoch {trainer.epoch + 1}, step {trainer.step}"
            + (" (the checkpoint holds no EMA: train.ema starts from its weights)" if new_ema else "")
        )
    trainer.wrap(dist, cfg.dist)

    monitor.print(describe(cfg, plan, model_info(model, cfg.data.train_crop), loaders))
    stop = StopRequested()
    stop.install()
    try:
        return fit(trainer, loaders, plan, cfg, dist, monitor, stop)
    except BaseException:
        monitor.run_state(state="failed", epoch=trainer.epoch, epochs=plan.epochs, best_top1=trainer.best_top1)
        raise
    finally:
        monitor.close()
