"""Process-group setup from torchrun's environment, and the few collectives the loop needs.

This is the only module that initialises or tears down torch.distributed.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: its rank, local rank (GPU index), the world size, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process (DDP and collectives are in use)."""
        return self.world_size > 1


def pick_device(preference: str, local_rank: int) -> torch.device:
    """The device of config key ``device`` (auto: this local rank's GPU when CUDA is there, else the CPU).

    Raises UserError for ``cuda`` without a visible GPU.
    """
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            "Config key 'device' is 'cuda' but this machine has no CUDA GPU visible to PyTorch. "
            "Set device=cpu (or auto), or check CUDA_VISIBLE_DEVICES and the driver."
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(dist_cfg, device_preference: str) -> DistInfo:
    """Reads RANK/LOCAL_RANK/WORLD_SIZE set by torchrun; a plain `python train.py` is world size 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = dist_cfg.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise UserError(
                "Config key 'dist.backend' is 'nccl' but training runs on the CPU; use dist.backend=gloo (or auto)."
            )
        timeout = datetime.timedelta(minutes=dist_cfg.timeout_min)
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        # torchrun keeps its store across elastic restarts: without a per-attempt prefix a
        # restarted worker can read a dead worker's address and fail to connect (seen with gloo).
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend=backend,
            store=dist.PrefixStore(f"resnest_train/attempt_{attempt}", store),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (nothing to do with one process); returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` (any picklable object) on every rank; `obj` itself without a process group."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj` (picklable), indexed by rank; `[obj]` without a process group."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait for every rank (nothing with one process)."""
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was made."""
    if dist.is_initialized():
        dist.destroy_process_group()


def state_checksums(module: torch.nn.Module) -> list[float]:
    """One number per rank summarising every parameter and buffer, to prove replicas agree."""
    tensors = [t.detach().double() for t in module.state_dict().values() if t.is_floating_point()]
    local = sum((i + 1) * (t.sum() + t.square().sum()) for i, t in enumerate(tensors))
    local = torch.as_tensor(local, dtype=torch.float64, device=tensors[0].device).reshape(1)
    if not dist.is_initialized():
        return [local.item()]
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [g.item() for g in gathered]


def average_bn_stats(module: torch.nn.Module) -> None:
    """DDP syncs gradients, not BN running statistics: average those before evaluating or saving."""
    if dist.is_initialized():
        from timm.utils import distribute_bn

        distribute_bn(module, dist.get_world_size(), reduce=True)
