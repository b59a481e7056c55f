"""What every backend shares: the loader bundle, the epoch plan, per-sample seeds, constants.

Epoch plan (identical in every backend, so a seed gives the same sample order whichever
backend reads the files):

* ``steps = n // (world_size * batch_size)`` full batches per rank per epoch.
* Each epoch draws one global permutation of the ``n`` training samples from
  ``(seed, epoch)`` and keeps its first ``world_size * steps * batch_size`` entries; global
  batch ``k`` is the ``k``-th run of ``world_size * batch_size`` of them and rank ``r`` takes
  the ``r``-th ``batch_size`` of that run, so a global batch holds the same images for any
  world size with the same global batch. The remainder
  (fewer than ``world_size * batch_size`` samples) is dropped for that epoch only; since
  the permutation changes every epoch, a different random remainder is dropped each time
  and every sample is seen equally often in expectation.
* Every rank therefore runs exactly ``steps`` steps: DDP never waits on a rank that ran out.
* Repeated augmentation (``data.repeated_aug: N > 1``, the sampler of DeiT's ``RASampler``,
  torchvision's references and timm's ``RepeatAugSampler``): each entry of the permutation
  is repeated ``N`` times in a row and the epoch keeps the first ``world_size * steps *
  batch_size`` of that sequence, so ``steps`` is unchanged and about ``1/N`` of the images
  are seen, each ``N`` times (the last one kept may have fewer copies when ``N`` does not
  divide the kept length). Position ``p`` of the sequence goes to rank ``p % world_size``, as
  in those samplers (rank ``r`` takes ``sequence[r::world_size]`` and keeps its first
  ``steps * batch_size``): the ``N`` copies of an image land on ``N`` different ranks when
  ``world_size >= N``. Global batch ``k`` still holds positions ``k*W*B .. (k+1)*W*B - 1``, so
  it holds the same images for any world size with the same global batch. Copy ``c`` of a
  sample (``p % N``) gets its own augmentation (``sample_seed`` takes the copy number).

Validation: the sorted list of validation samples is cut into ``world_size`` contiguous
shards whose sizes differ by at most one; no sample is padded or repeated, so the union of
the shards is every validation image exactly once for any world size.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger("resnest_train.data")

# AlexNet's PCA of ImageNet RGB pixels (values in [0, 1]); used by the `lighting` noise.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], dtype=np.float32
)

# Pad value of the augmentation policies' geometric ops (rotate, shear, translate) in both backends.
AUTOAUGMENT_FILL = 128

# data.augment: torchvision's AutoAugment (ImageNet policy), RandAugment, TrivialAugmentWide, or none.
AUGMENT_POLICIES = ("autoaugment", "randaugment", "trivialaugment", "none")
AA_INTERPOLATIONS = ("nearest", "bilinear")  # data.autoaugment_interpolation: both backends sample these alike


def augment_policy(cfg) -> str:
    """``data.augment``, checked: the augmentation policy of both backends (``AUGMENT_POLICIES``)."""
    name = str(cfg.augment)
    if name not in AUGMENT_POLICIES:
        raise DataError(f"data.augment={name!r} is not one of {', '.join(AUGMENT_POLICIES)}.")
    return name


def autoaugment_interpolation(cfg) -> str:
    """``data.autoaugment_interpolation``, checked: how every policy's rotate/shear/translate sample in both backends.

    nearest is torchvision's AutoAugment default and what the official ResNeSt code did
    (PIL's default); bilinear is kinder to tiny crops (the 48 px quick start: 81% vs 74%).
    """
    name = str(cfg.autoaugment_interpolation)
    if name not in AA_INTERPOLATIONS:
        raise DataError(f"data.autoaugment_interpolation={name!r} is not one of {', '.join(AA_INTERPOLATIONS)}.")
    return name


def erasing_probability(cfg) -> float:
    """``data.random_erasing``, checked: the probability that a training image gets an erased rectangle."""
    p = float(cfg.random_erasing)
    if not 0.0 <= p <= 1.0:
        raise DataError(f"data.random_erasing={p!r} is not a probability in [0, 1].")
    return p


@functools.cache
def erasing_rule() -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, ratio) of the erased rectangle: torchvision's ``RandomErasing`` defaults, (0.02, 0.33)
    of the image area and aspect ratios (0.3, 3.3)."""
    import torchvision.transforms as T

    erasing = T.RandomErasing()
    return tuple(erasing.scale), tuple(erasing.ratio)


def erasing_rectangle(p: float, height: int, width: int) -> torch.Tensor:
    """torchvision's ``RandomErasing(p, value=0)`` rectangle for one ``height`` x ``width`` image,
    drawn from torch's global RNG in ``RandomErasing.forward``'s order (``torch.rand(1) < p``, then
    ``RandomErasing.get_params``): int64 ``[top, left, h, w]``, all 0 when nothing is erased (no
    draw below ``p``, or none of the 10 attempts fitted in the image)."""
    import torchvision.transforms as T

    if not torch.rand(1) < p:
        return torch.zeros(4, dtype=torch.int64)
    scale, ratio = erasing_rule()
    image = torch.empty(3, height, width)  # only its size is read
    top, left, h, w, _ = T.RandomErasing.get_params(image, scale=scale, ratio=ratio, value=[0.0])
    if h >= height or w >= width:  # get_params' "no rectangle fitted": the whole image, erased with itself
        return torch.zeros(4, dtype=torch.int64)
    return torch.tensor([top, left, h, w], dtype=torch.int64)


def erase_rectangles(images: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """Set rectangle ``rects[b] = [top, left, h, w]`` of image ``b`` of the normalised batch
    ``images`` (float ``[B, C, H, W]``, any memory format) to 0 in place, as torchvision's
    ``F.erase`` with value 0 does; an ``h`` or ``w`` of 0 erases nothing. Returns ``images``."""
    top, left, h, w = rects.to(images.device).view(-1, 4).unbind(1)
    rows = torch.arange(images.shape[-2], device=images.device).view(1, -1)
    cols = torch.arange(images.shape[-1], device=images.device).view(1, -1)
    in_rows = (rows >= top.view(-1, 1)) & (rows < (top + h).view(-1, 1))
    in_cols = (cols >= left.view(-1, 1)) & (cols < (left + w).view(-1, 1))
    inside = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)  # [B, H, W]
    return images.masked_fill_(inside.unsqueeze(1), 0.0)


Batch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class ValLoader(Protocol):
    """The loader contract every backend's ``loaders.val`` implements.

    Iterating yields this rank's validation shard once, in order: ``(images, labels)`` with
    ``images`` float32 ``[B, 3, H, W]`` (normalised by ``data.mean``/``data.std``, channels_last
    memory when asked for, on the trainer's device) and ``labels`` int64 ``[B]`` on the same
    device; the last batch may be smaller, nothing is padded or repeated. ``len()`` is the number
    of batches. ``bad_images`` counts unreadable files skipped while reading (0 for most backends).
    """

    bad_images: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


@runtime_checkable
class TrainLoader(ValLoader, Protocol):
    """The loader contract every backend's ``loaders.train`` implements (see the module docstring).

    ``set_epoch(epoch, start_step)`` comes before each epoch; iterating then yields exactly the
    full batches ``start_step .. len() - 1`` of that epoch (``len()`` = steps per epoch, the same
    on every rank), the same tensors an uninterrupted epoch gives at those steps, shaped as in
    ``ValLoader`` with every batch full.
    """

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Stand at optimizer-step batch ``start_step`` (0 ... ``len()``) of ``epoch`` (0-based)."""


@dataclass
class Loaders:
    """What ``build_loaders`` returns: this rank's train and val loaders and what describes them."""

    train: TrainLoader | None  # None from build_loaders(..., val_only=True)
    val: ValLoader
    val_images: int  # in the whole val set, over all ranks
    classes: list[str]
    backend: str  # the backend in use: dali, torchvision or synthetic
    bad_images_at_start: int = 0  # removed by the pre-scan (data.skip_bad_images)

    @property
    def num_classes(self) -> int:
        """The number of classes (the classifier's outputs)."""
        return len(self.classes)

    @property
    def bad_images(self) -> int:
        """Unreadable files skipped: found by the pre-scan plus any met while reading."""
        return self.bad_images_at_start + self.train.bad_images + self.val.bad_images


def train_steps(n: int, batch_size: int, world_size: int) -> int:
    """Full batches per rank per epoch: ``n // (batch_size * world_size)`` (the remainder is dropped)."""
    return n // (batch_size * world_size)


def check_enough(n: int, batch_size: int, world_size: int, what: str) -> int:
    """``train_steps``, or DataError naming ``what`` when not one global batch fits in ``n`` images."""
    steps = train_steps(n, batch_size, world_size)
    if steps < 1:
        raise DataError(
            f"The training set ({what}) has {n} images, fewer than one global batch of "
            f"{batch_size} x {world_size} processes = {batch_size * world_size}; every rank must get "
            f"at least one full batch per epoch. Lower train.batch_size or add images."
        )
    return steps


def epoch_samples(
    n: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int, repeats: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's samples for one epoch, in order: (sample indices, copy numbers), ``steps * batch_size``
    of each. Copy numbers are 0 without repeated augmentation (``repeats`` = ``data.repeated_aug``,
    see the module docstring); with it, copy ``c`` of a sample is its ``c``-th repeat (0 .. repeats - 1).
    """
    steps = train_steps(n, batch_size, world_size)
    perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x5EED]).permutation(n)
    positions = np.arange(steps * world_size * batch_size)
    if repeats == 1:
        # Global batch k is perm[k*W*B:(k+1)*W*B], rank r taking the r-th B of it: so a global
        # batch holds the same images whatever the world size, and 2 x 8 computes what 1 x 16 does.
        mine = positions.reshape(steps, world_size, batch_size)[:, rank, :]
    else:
        # Position p goes to rank p % W (RASampler's sequence[r::W]): consecutive copies on different ranks.
        mine = positions.reshape(steps, batch_size, world_size)[:, :, rank]
    mine = mine.reshape(-1)
    return perm[mine // repeats], mine % repeats


def epoch_indices(
    n: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int, repeats: int = 1
) -> np.ndarray:
    """This rank's sample indices for one epoch, in order: ``steps * batch_size`` of them (``epoch_samples``)."""
    return epoch_samples(n, batch_size, rank, world_size, seed, epoch, repeats)[0]


def repeated_aug(cfg, world_size: int, rank: int) -> int:
    """``data.repeated_aug``, checked: copies of each sampled image per epoch (1: off).

    With fewer ranks than copies some copies of an image share a rank (and its BatchNorm
    statistics), as in DeiT's sampler; a line says so. Raises DataError below 1.
    """
    repeats = int(cfg.repeated_aug)
    if repeats < 1:
        raise DataError(f"data.repeated_aug must be at least 1 (1 turns it off), got {repeats}.")
    if world_size < repeats:
        log_once(
            f"data.repeated_aug={repeats} on {world_size} process(es): copies of an image share a rank "
            f"(they sit on {repeats} different ranks only with at least {repeats} processes).",
            rank,
        )
    return repeats


def train_crop_at(cfg, epoch: int) -> int:
    """The train crop (pixels) of ``epoch`` (0-based) under ``data.train_crop_schedule``.

    FFCV's ``ProgressiveResizing`` (ffcv-imagenet ``get_resolution``): ``start_crop`` up to and including
    ``start_ramp``, ``data.train_crop`` from ``end_ramp`` on, and in between
    ``round(interp(epoch, [start_ramp, end_ramp], [start_crop, train_crop]) / step) * step`` (numpy's
    rounding, half to even, as FFCV). ``start_crop: 0`` (the default) is ``data.train_crop`` every epoch.
    """
    s = cfg.train_crop_schedule
    final = int(cfg.train_crop)
    if not s.start_crop:
        return final
    if epoch <= s.start_ramp:
        return int(s.start_crop)
    if epoch >= s.end_ramp:
        return final
    size = np.interp([epoch], [s.start_ramp, s.end_ramp], [s.start_crop, final])[0]
    return int(np.round(size / s.step)) * int(s.step)


def check_start_step(start_step: int, steps: int) -> int:
    """The step an epoch resumes at, which must lie within the epoch."""
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step {start_step} outside [0, {steps}]")
    return int(start_step)


def val_shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of this rank's contiguous validation shard; sizes differ by at most one."""
    return (n * rank) // world_size, (n * (rank + 1)) // world_size


def sample_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, sample index, copy number).

    ``copy`` numbers the repeats of repeated augmentation; copy 0 has the seed it had before that existed.
    """
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index), 0xA06] + ([int(copy)] if copy else []))
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def stream_seed(*parts: int) -> int:
    """A 31-bit seed for a random stream (DALI pipelines accept int32 seeds)."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
    return int(ss.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def lighting_offset(gen_normal: Callable[[], np.ndarray], std: float) -> np.ndarray:
    """AlexNet PCA lighting: an RGB offset (in [0, 1] pixel units) from three N(0, std) draws."""
    alpha = gen_normal() * std
    return (PCA_EIGVEC @ (alpha * PCA_EIGVAL)).astype(np.float32)


def eval_sizes(train_crop: int, eval_crop: int | None, eval_ratio: float) -> tuple[int, int]:
    """(short side to resize to, centre crop) for evaluation."""
    crop = int(eval_crop or train_crop)
    if not (0 < eval_ratio <= 1):
        raise DataError(
            f"data.eval_ratio must be in (0, 1], got {eval_ratio}: eval resizes the short "
            f"side to eval_crop / eval_ratio (0.875 for a 224 crop)."
        )
    return int(round(crop / eval_ratio)), crop


def fingerprint(items: Iterable[str]) -> str:
    """A SHA-1 hex digest of ``items`` (names that are not UTF-8 included as their bytes)."""
    h = hashlib.sha1()
    for item in items:
        h.update(item.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def log_once(msg: str, rank: int) -> None:
    """One line for the user, logged by rank 0 only (the caller knows its rank)."""
    if rank == 0:
        log.warning(msg)
