"""The torchvision backend: PIL decoding and torchvision transforms in DataLoader workers.

Determinism: the sampler yields ``(index, epoch, copy)`` keys (``copy``: the repeat of
``data.repeated_aug``, else 0) and every sample seeds torch's RNG from ``(seed, epoch, index,
copy)`` before its transforms run, so augmentation does not depend on which worker ran it or
what ran before; ``set_epoch(e, start_step=k)`` therefore yields bit-identical batches to
steps k.. of an uninterrupted epoch. The crop size of an epoch (``data.train_crop_schedule``)
is a function of the epoch too (``common.train_crop_at``), so every batch has one size.

Workers return uint8 HWC crops (plus the per-sample lighting offset); the conversion to
float, lighting and mean/std normalisation happen on the target device in the main
process, which keeps the workers' CPU time for decoding. Stacking HWC gives channels_last
for free when asked for.

Reading: a file of the folder layout, or a tar shard's member with one ``pread`` at the offset its
index file gives (``shards.ShardSplit.open``), so random access to any sample is exact.
Decoding: ``decode.load_rgb``, the rule DALI's decoder follows (EXIF orientation, 16-bit
and float samples scaled, alpha dropped), so the two backends see the same pixels.

Unreadable files: with ``data.skip_bad_images: false`` the first one met stops training with
a DataError naming it. With ``true`` the pre-scan has already removed the bad files it could
find; a file that still fails to decode is replaced by the next readable sample of the
dataset and counted in ``loaders.bad_images``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..errors import DataError
from .common import (
    AUTOAUGMENT_FILL,
    augment_policy,
    autoaugment_interpolation,
    check_enough,
    check_start_step,
    epoch_samples,
    erase_rectangles,
    erasing_probability,
    erasing_rectangle,
    eval_sizes,
    lighting_offset,
    log_once,
    repeated_aug,
    sample_seed,
    train_crop_at,
    train_steps,
    val_shard,
)
from .decode import load_rgb
from .layout import Split


@dataclass
class _Bad:
    path: str
    reason: str


def _unreadable_message(path: str, reason: str) -> str:
    return (
        f"Cannot read the image {path} ({reason}). Fix or delete the file (scripts/prepare_imagenet.py "
        f"--check ROOT lists every unreadable file), or set data.skip_bad_images: true to skip unreadable "
        f"files."
    )


def augment_transform(cfg):
    """torchvision's transform of ``data.augment`` (None for ``none``): AutoAugment's ImageNet policy,
    RandAugment(``randaugment_num_ops``, ``randaugment_magnitude``) or TrivialAugmentWide, each
    with ``autoaugment_interpolation`` and pad ``AUTOAUGMENT_FILL``."""
    import torchvision.transforms as T

    policy = augment_policy(cfg)
    kwargs = dict(interpolation=T.InterpolationMode(autoaugment_interpolation(cfg)), fill=[AUTOAUGMENT_FILL] * 3)
    if policy == "autoaugment":
        return T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, **kwargs)
    if policy == "randaugment":
        return T.RandAugment(num_ops=int(cfg.randaugment_num_ops), magnitude=int(cfg.randaugment_magnitude), **kwargs)
    if policy == "trivialaugment":
        return T.TrivialAugmentWide(**kwargs)
    return None


def train_transform(cfg, crop: int | None = None):
    """The PIL training transforms: RandomResizedCrop to ``crop`` pixels (None: ``data.train_crop``), flip,
    the augmentation policy (``augment_transform``), colour jitter; the result stays uint8 HWC (normalised
    later, on the device).
    """
    import torchvision.transforms as T

    ops = [
        T.RandomResizedCrop(
            crop or cfg.train_crop,
            scale=tuple(cfg.rrc_scale),
            ratio=tuple(cfg.rrc_ratio),
            interpolation=T.InterpolationMode.BILINEAR,
            antialias=True,
        )
    ]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    policy = augment_transform(cfg)
    if policy is not None:
        ops.append(policy)
    if cfg.color_jitter > 0:
        s = float(cfg.color_jitter)
        ops.append(T.ColorJitter(brightness=s, contrast=s, saturation=s))
    return T.Compose(ops)


class EvalResizeCrop:
    """Resize the short side to ``short`` (bilinear, antialiased), then centre-crop ``crop``.

    Rounding follows DALI's ``fn.resize(resize_shorter=...)`` and ``crop_pos=0.5`` so both
    backends cut the same pixels: the long side is rounded to nearest (torchvision's Resize
    truncates) and crop offsets round half up (torchvision's CenterCrop rounds half to even).
    """

    def __init__(self, short: int, crop: int):
        self.short, self.crop = short, crop

    def __call__(self, img):
        import torchvision.transforms.functional as F
        from torchvision.transforms import InterpolationMode

        w, h = img.size
        if w <= h:
            size = [int(h * self.short / w + 0.5), self.short]
        else:
            size = [self.short, int(w * self.short / h + 0.5)]
        img = F.resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        h, w = size
        c = self.crop
        if h < c or w < c:
            return F.center_crop(img, [c, c])  # pads, as torchvision does (only when crop > short side)
        top, left = (h - c + 1) // 2, (w - c + 1) // 2
        return img.crop((left, top, left + c, top + c))


def eval_transform(cfg):
    """The PIL evaluation transform: resize the short side to ``eval_crop / eval_ratio``, centre crop."""
    short, crop = eval_sizes(cfg.train_crop, cfg.eval_crop, cfg.eval_ratio)
    return EvalResizeCrop(short, crop)


def _to_hwc(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))


NO_ERASING = torch.zeros(4, dtype=torch.int64)


class TrainSet(Dataset):
    """The training images of a split, each transformed with a seed from (seed, epoch, index, copy)
    at the epoch's crop size (``common.train_crop_at``).

    A sample is (uint8 HWC crop, label, lighting offset, erased rectangle, skipped path); the
    rectangle (``common.erasing_rectangle``, drawn last) is erased after normalisation.
    """

    def __init__(self, split: Split, cfg, seed: int, skip_bad: bool):
        self.split, self.seed, self.skip_bad = split, int(seed), skip_bad
        self.cfg = cfg
        self.transforms = {}  # crop size -> train_transform at that size, built on first use
        self.lighting = float(cfg.lighting)
        self.erasing = erasing_probability(cfg)
        self.transform(0)  # a bad setting stops the build, not the first batch

    def transform(self, epoch: int):
        """The training transform of ``epoch``: at its crop size under ``data.train_crop_schedule``."""
        crop = train_crop_at(self.cfg, epoch)
        if crop not in self.transforms:
            self.transforms[crop] = train_transform(self.cfg, crop)
        return self.transforms[crop]

    def __len__(self):
        return len(self.split)

    def _sample(self, key):
        index, epoch, copy = key
        bad = ""
        img = None
        for attempt in range(len(self.split) if self.skip_bad else 1):
            i = (index + attempt) % len(self.split)
            path = self.split.path(i)
            try:
                img = load_rgb(self.split.open(i))
                label = int(self.split.labels[i])
                break
            except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
                if not self.skip_bad:
                    return _Bad(path, f"{type(e).__name__}: {e}")
                bad = bad or path
        if img is None:
            return _Bad(self.split.base, "no readable image in the whole split")
        torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index, copy))
        img = self.transform(epoch)(img)
        off = torch.zeros(3)
        if self.lighting > 0:
            off = torch.from_numpy(lighting_offset(lambda: torch.randn(3).numpy(), self.lighting))
        rect = erasing_rectangle(self.erasing, img.height, img.width) if self.erasing > 0 else NO_ERASING
        return _to_hwc(img), label, off, rect, bad

    def __getitem__(self, key):
        if torch.utils.data.get_worker_info() is None:
            with torch.random.fork_rng(devices=[]):  # leave the trainer's RNG alone
                return self._sample(key)
        return self._sample(key)


class EvalSet(Dataset):
    """This rank's shard ``[start, end)`` of the validation images, transformed for evaluation."""

    def __init__(self, split: Split, cfg, start: int, end: int):
        self.split, self.start, self.end = split, start, end
        self.transform = eval_transform(cfg)

    def __len__(self):
        return self.end - self.start

    def __getitem__(self, i):
        i += self.start
        path = self.split.path(i)
        try:
            img = load_rgb(self.split.open(i))
        except Exception as e:  # noqa: BLE001
            return _Bad(path, f"{type(e).__name__}: {e}")
        return _to_hwc(self.transform(img)), int(self.split.labels[i]), torch.zeros(3), NO_ERASING, ""


def collate(batch):
    """Stack samples into (uint8 images ``[B, H, W, 3]``, int64 labels, lighting offsets, erased
    rectangles ``[B, 4]``, skipped paths), or pass on the first unreadable file (``_Bad``).
    """
    bad = [b for b in batch if isinstance(b, _Bad)]
    if bad:
        return bad[0]
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    offs = torch.stack([b[2] for b in batch])
    rects = torch.stack([b[3] for b in batch])
    return images, labels, offs, rects, [b[4] for b in batch if b[4]]


class EpochBatchSampler:
    """Batches of ``(index, epoch, copy)`` keys: this rank's share of the epoch plan, from ``start_step``;
    ``repeats`` is ``data.repeated_aug``."""

    def __init__(self, n, batch_size, rank, world_size, seed, repeats: int = 1):
        self.n, self.batch_size, self.rank, self.world_size, self.seed = n, batch_size, rank, world_size, seed
        self.repeats = repeats
        self.steps = train_steps(n, batch_size, world_size)
        self.epoch, self.start_step = 0, 0

    def __len__(self):
        return self.steps - self.start_step

    def __iter__(self):
        idx, copies = epoch_samples(
            self.n, self.batch_size, self.rank, self.world_size, self.seed, self.epoch, self.repeats
        )
        for s in range(self.start_step, self.steps):
            batch = slice(s * self.batch_size, (s + 1) * self.batch_size)
            yield [(int(i), self.epoch, int(c)) for i, c in zip(idx[batch], copies[batch])]


class _Normalizer:
    def __init__(self, cfg, device, channels_last):
        self.device, self.channels_last = device, channels_last
        mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std)).to(device)
        self.mean, self.std = mean.to(device), std.to(device)

    def __call__(self, images, labels, offs, rects):
        nb = self.device.type == "cuda"
        x = images.to(self.device, non_blocking=nb).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        if not self.channels_last:
            x = x.contiguous()
        bias = (offs.to(self.device, non_blocking=nb).view(-1, 3, 1, 1) - self.mean) / self.std
        x = x.float().mul_(self.scale).add_(bias)
        if rects[:, 2].any():  # random erasing, after normalisation as torchvision's RandomErasing
            erase_rectangles(x, rects.to(self.device, non_blocking=nb))
        return x, labels.to(self.device, non_blocking=nb)


class _Loader:
    """The val loader (``common.ValLoader``): batches of a DataLoader, normalised on the device."""

    def __init__(self, dl, norm, steps_fn, rank: int):
        self.dl, self.norm, self._steps_fn, self.rank = dl, norm, steps_fn, rank
        self.bad_images = 0

    def __len__(self):
        return self._steps_fn()

    def __iter__(self):
        for batch in self.dl:
            if isinstance(batch, _Bad):
                raise DataError(_unreadable_message(batch.path, batch.reason))
            images, labels, offs, rects, bad = batch
            for path in bad:
                self.bad_images += 1
                log_once(f"skipped unreadable image {path} (data.skip_bad_images: true)", self.rank)
            yield self.norm(images, labels, offs, rects)


class TrainLoader(_Loader):
    """The train loader (``common.TrainLoader``): ``len()`` = steps per epoch; ``set_epoch`` first."""

    def __init__(self, dl, norm, sampler: EpochBatchSampler, rank: int):
        super().__init__(dl, norm, lambda: sampler.steps, rank)
        self.sampler = sampler

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Stand at batch ``start_step`` of ``epoch`` (0-based): the sampler skips the batches before it."""
        self.sampler.epoch, self.sampler.start_step = int(epoch), check_start_step(start_step, self.sampler.steps)


def _loader_kwargs(workers: int, device: torch.device) -> dict:
    kw = dict(num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda")
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return kw


def build(
    cfg: DataConfig,
    train: Split | None,
    val: Split,
    batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
    seed: int,
    channels_last: bool,
) -> tuple[TrainLoader | None, _Loader]:
    """This rank's train and val loaders over ``train`` / ``val`` (``common.TrainLoader`` / ``ValLoader``);
    no train loader when ``train`` is None."""
    norm = _Normalizer(cfg, device, channels_last)
    workers = max(0, int(cfg.workers))
    train_loader = None
    if train is not None:
        check_enough(len(train), batch_size, world_size, train.source)
        sampler = EpochBatchSampler(len(train), batch_size, rank, world_size, seed, repeated_aug(cfg, world_size, rank))
        train_dl = DataLoader(
            TrainSet(train, cfg, seed, cfg.skip_bad_images), batch_sampler=sampler, **_loader_kwargs(workers, device)
        )
        train_loader = TrainLoader(train_dl, norm, sampler, rank)
    start, end = val_shard(len(val), rank, world_size)
    val_dl = DataLoader(
        EvalSet(val, cfg, start, end),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        **_loader_kwargs(min(workers, max(1, (end - start) // batch_size)) if workers else 0, device),
    )
    n_val_batches = -(-(end - start) // batch_size)
    return train_loader, _Loader(val_dl, norm, lambda: n_val_batches, rank)
