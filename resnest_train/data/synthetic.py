"""The synthetic backend: random tensors for benchmarks and smoke tests, no files.

``data.synthetic.train_images`` / ``val_images`` / ``num_classes`` size the fake dataset.
Images are generated on the target device from ``(seed, epoch, rank, step)``; a batch is a
pure function of those, so ``set_epoch(e, start_step=k)`` resumes bit-identically; images have
``common.train_crop_at``'s size for the epoch (``data.train_crop_schedule``). To keep
data time near zero, a small pool of batches is generated once and each step picks one by
a hash of (epoch, step); the labels are drawn per step on the target device from a
generator on that device (no host-to-device copy per step; on the CPU the same labels as a
CPU generator, on a GPU the device's own stream of the same seed).
"""

from __future__ import annotations

import torch

from ..config import DataConfig
from ..errors import DataError
from .common import check_enough, check_start_step, stream_seed, train_crop_at, train_steps, val_shard

POOL = 4


class _Pool:
    def __init__(self, batch_size, crop, device, channels_last, seed):
        g = torch.Generator(device="cpu").manual_seed(seed)
        shape = (POOL, batch_size, 3, crop, crop)
        pool = torch.randn(shape, generator=g).clamp_(-2.5, 2.5)
        self.pool = [self._fmt(p, channels_last).to(device) for p in pool]

    @staticmethod
    def _fmt(x, channels_last):
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def device_labels(num_classes: int, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` labels in ``[0, num_classes)`` drawn on ``device`` from a generator of that device seeded with ``seed``."""
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, num_classes, (n,), generator=g, device=device)


class SyntheticTrain:
    """Random training batches (``common.TrainLoader``): a pure function of (seed, epoch, rank, step)."""

    def __init__(self, cfg, batch_size, rank, world_size, device, seed, channels_last):
        n = int(cfg.synthetic.train_images)
        check_enough(n, batch_size, world_size, "data.synthetic.train_images")
        self.steps = train_steps(n, batch_size, world_size)
        self.batch_size, self.rank, self.seed, self.device = batch_size, rank, int(seed), device
        self.cfg, self.channels_last = cfg, channels_last
        self.num_classes = int(cfg.synthetic.num_classes)
        self.pools = {}  # crop size -> the pool of batches at that size
        self.epoch, self.start_step = 0, 0
        self.pool = self._pool(0)
        self.bad_images = 0

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Stand at batch ``start_step`` of ``epoch`` (0-based)."""
        self.epoch, self.start_step = int(epoch), check_start_step(start_step, self.steps)
        self.pool = self._pool(self.epoch)

    def _pool(self, epoch: int) -> list:
        """The pool of batches at ``epoch``'s crop size, made the first time that size is needed."""
        crop = train_crop_at(self.cfg, epoch)
        if crop not in self.pools:
            seed = stream_seed(self.seed, self.rank, 1)
            self.pools[crop] = _Pool(self.batch_size, crop, self.device, self.channels_last, seed).pool
        return self.pools[crop]

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            s = stream_seed(self.seed, self.epoch, self.rank, step)
            labels = device_labels(self.num_classes, self.batch_size, s, self.device)
            # A copy: the trainer's mixup works in place and must not alter the pool.
            yield self.pool[s % POOL].clone(), labels


class SyntheticVal:
    """This rank's shard of the random validation set (``common.ValLoader``)."""

    def __init__(self, cfg, batch_size, rank, world_size, device, channels_last):
        n = int(cfg.synthetic.val_images)
        self.start, self.end = val_shard(n, rank, world_size)
        self.batch_size, self.device = batch_size, device
        self.num_classes = int(cfg.synthetic.num_classes)
        crop = int(cfg.eval_crop or cfg.train_crop)
        self.pool = _Pool(batch_size, crop, device, channels_last, stream_seed(rank, 2)).pool
        self.bad_images = 0

    def __len__(self):
        return -(-(self.end - self.start) // self.batch_size)

    def __iter__(self):
        for b, lo in enumerate(range(self.start, self.end, self.batch_size)):
            k = min(self.batch_size, self.end - lo)
            yield self.pool[b % POOL][:k], device_labels(self.num_classes, k, lo, self.device)


def build(
    cfg: DataConfig, batch_size: int, rank: int, world_size: int, device: torch.device, seed: int, channels_last: bool
) -> tuple[SyntheticTrain, SyntheticVal, int, list[str]]:
    """(train loader, val loader, val images in all, class names) of the synthetic data set."""
    if int(cfg.synthetic.num_classes) < 1:
        raise DataError("data.synthetic.num_classes must be at least 1.")
    train = SyntheticTrain(cfg, batch_size, rank, world_size, device, seed, channels_last)
    val = SyntheticVal(cfg, batch_size, rank, world_size, device, channels_last)
    classes = [f"class_{i}" for i in range(int(cfg.synthetic.num_classes))]
    return train, val, int(cfg.synthetic.val_images), classes
