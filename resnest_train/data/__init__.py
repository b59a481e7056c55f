"""Data loading: one builder, three backends (dali, torchvision, synthetic).

    loaders = build_loaders(cfg.data, batch_size=per_process_batch, rank=rank, world_size=world_size,
                            device=device, seed=cfg.train.seed, channels_last=False)
    for epoch in range(start_epoch, epochs):
        loaders.train.set_epoch(epoch, start_step=0)    # before every epoch; k > 0 resumes mid-epoch
        for images, labels in loaders.train: ...        # float32 NCHW normalised, int64, on `device`
        for images, labels in loaders.val: ...          # this rank's shard of the val set

The contract in code: ``loaders.train`` is a ``TrainLoader`` and ``loaders.val`` a ``ValLoader``
(``typing.Protocol`` classes in ``common.py``), which every backend implements
(tests/test_data_loaders.py checks all three). Backends get the ``data`` config section and
their rank from the caller; they read no environment variables.

``loaders.train``: ``len()`` is the number of steps per epoch, the same on every rank.
Each epoch shuffles all training samples with one permutation drawn from ``(seed, epoch)``,
keeps ``world_size * steps * batch_size`` of them (``steps = n // (world_size *
batch_size)``); global batch k is the k-th run of ``world_size * batch_size`` of them, split
between the ranks in order, so it holds the same images for any world size; the remainder, fewer than one global
batch, is dropped for that epoch only (a different random remainder every epoch). So every
rank runs exactly ``steps`` full batches and DDP never waits for a rank that ran out.
``data.repeated_aug: N`` repeats each entry of the permutation N times and deals the copies
to different ranks, as DeiT's ``RASampler`` does, with ``steps`` unchanged (see ``common.py``).
``set_epoch(e, start_step=k)`` yields exactly the batches ``k..steps-1`` that an
uninterrupted epoch ``e`` would have yielded: order and augmentation are pure functions of
(seed, epoch, sample) in torchvision and synthetic; DALI replays the epoch's pipeline from
its seed (see ``dali.py``).

``loaders.val``: this rank's contiguous shard of the sorted val list, the last batch
partial, nothing padded or repeated: over all ranks every val image is seen exactly once
(``loaders.val_images`` of them) for any world size.

Augmentation (dali and torchvision alike): RandomResizedCrop at the epoch's crop
(``train_crop``, or ``common.train_crop_at`` under ``data.train_crop_schedule``) with
``rrc_scale`` / ``rrc_ratio`` (bilinear, antialiased) -> horizontal flip -> torchvision's
policy of ``augment``: AutoAugment's ImageNet policy, RandAugment (``randaugment_num_ops``,
``randaugment_magnitude``) or TrivialAugmentWide (pad 128, ``autoaugment_interpolation``) ->
ColorJitter(``color_jitter``) for brightness/contrast/saturation -> AlexNet PCA lighting
(``lighting`` std) -> mean/std -> torchvision's RandomErasing (``random_erasing``, value 0).
Eval: resize the short side to ``round(eval_crop / eval_ratio)`` (bilinear, antialiased),
centre crop ``eval_crop``, mean/std. Mixup is the trainer's.

``data.backend: auto`` is dali when ``nvidia.dali`` imports, else torchvision.
``data.dali.device: auto`` follows the trainer's ``device``: gpu (mixed decode) for a CUDA
device, cpu otherwise, whatever GPUs the machine has (see ``dali_device``).
``loaders.bad_images`` counts unreadable files skipped (``data.skip_bad_images: true``), judged
by what the backend in use can decode (DALI cannot read a GIF; PIL can);
without that option the first unreadable file stops training with a DataError naming it.
Both backends decode a file to RGB by one rule, ``decode.load_rgb``.

``data.format``: the folder layout, or WebDataset tar shards made from it (``shards``), read with
the same epoch plan and contracts.

Modules: ``layout`` (folders and list files -> ``Split``), ``shards`` (tar shards -> ``ShardSplit``),
``decode`` (file -> RGB), ``scan``
(unreadable files and their cache), ``official_val`` (sorting the official val folder),
``common`` (the epoch plan and seeds), one per backend: ``dali``, ``torchvision_backend``, ``synthetic``.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import torch

from ..errors import DataError
from .common import Loaders, TrainLoader, ValLoader, log_once

__all__ = ["build_loaders", "Loaders", "TrainLoader", "ValLoader", "dali_device", "resolve_backend"]

BACKENDS = ("auto", "dali", "torchvision", "synthetic")


def dali_available() -> bool:
    """Whether ``nvidia.dali`` imports here (a broken install counts as absent)."""
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return False
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def resolve_backend(name: str) -> str:
    """``data.backend`` resolved: auto -> dali when installed, else torchvision.

    Raises DataError for an unknown name or for dali when DALI is not installed.
    """
    if name not in BACKENDS:
        raise DataError(f"data.backend={name!r} is not one of {', '.join(BACKENDS)}.")
    if name == "auto":
        return "dali" if dali_available() else "torchvision"
    if name == "dali" and not dali_available():
        raise DataError(
            "data.backend=dali but nvidia.dali cannot be imported; install it "
            "(pip install nvidia-dali-cuda130, see README 'Installing DALI') or use "
            "data.backend=torchvision."
        )
    return name


def dali_device(name: str, device: torch.device) -> str:
    """``data.dali.device`` for a trainer on ``device``: ``auto`` is ``gpu`` for a CUDA
    device and ``cpu`` for any other; ``cpu``, ``gpu`` (and a wrong name, which the DALI
    backend reports) pass through. The trainer's device decides, not whether the machine
    has a GPU: a CPU run on a GPU machine must not get batches on the GPU.
    """
    if name == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "cpu"
    return name


def _skip_bad(backend: str, train, val, rank: int):
    """Drop the files the (cached) pre-scan finds ``backend`` cannot read; one log line for all of them."""
    import numpy as np

    from .scan import find_bad_images

    out, counts, lists = [], [], []
    for split in (train, val):
        if split is None:  # val_only
            out.append(None)
            counts.append(0)
            continue
        bad, cache = find_bad_images(split, workers=0, backend=backend, rank=rank)
        if bad:
            keep = np.asarray([i for i, f in enumerate(split.files) if f not in bad], dtype=np.int64)
            split = split.subset(keep)
            lists.append(cache)
        counts.append(len(bad))
        out.append(split)
    if sum(counts):
        log_once(
            f"data.skip_bad_images: skipping {sum(counts)} unreadable image(s): {counts[0]} of "
            f"{len(out[0] or ()) + counts[0]} train, {counts[1]} of {len(out[1]) + counts[1]} val "
            f"(list: {', '.join(lists)})",
            rank,
        )
    return out[0], out[1], sum(counts)


def build_loaders(
    cfg,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    seed: int = 0,
    channels_last: bool = False,
    val_only: bool = False,
) -> Loaders:
    """Train and val loaders for this rank; see the module docstring for the contract.

    ``val_only`` (evaluating a checkpoint): ``loaders.train`` is None and the train split is
    neither read nor required (``layout.load_splits``), so a machine with only ImageNet's val
    folder can evaluate, and a folder of 1.28M training images is not listed first."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if batch_size < 1:
        raise DataError(f"The per-process batch size must be at least 1, got {batch_size}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    backend = resolve_backend(cfg.backend)
    if backend == "synthetic":
        from . import synthetic

        train, val, n_val, classes = synthetic.build(cfg, batch_size, rank, world_size, device, seed, channels_last)
        return Loaders(None if val_only else train, val, n_val, classes, backend, 0)

    from .layout import load_splits

    classes, train_split, val_split = load_splits(cfg, val_only)
    removed = 0
    if cfg.skip_bad_images:
        train_split, val_split, removed = _skip_bad(backend, train_split, val_split, rank)
    if backend == "dali":
        from . import dali as impl

        dali_cfg = dataclasses.replace(cfg.dali, device=dali_device(cfg.dali.device, device))
        cfg = dataclasses.replace(cfg, dali=dali_cfg)
    else:
        from . import torchvision_backend as impl
    train, val = impl.build(cfg, train_split, val_split, batch_size, rank, world_size, device, seed, channels_last)
    return Loaders(train, val, len(val_split), classes, backend, removed)
