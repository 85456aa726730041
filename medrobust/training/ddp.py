"""Data-parallel training without a wrapper: DDP's gradient averaging and buffer broadcast by hand.

Launched with ``torchrun``, the trainer initialises the process group from the environment,
averages gradients over ranks after each backward (in buckets, as DDP does; no wrapper, so attacks
and ``functional_call`` work on the plain model) and broadcasts buffers from rank 0.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from medrobust.config import TrainConfig
from medrobust.distributed import Shard

Dist = Shard  # this process's place among the torchrun processes (one class for training and evaluation)


def init_distributed(cfg: TrainConfig, device: torch.device) -> Dist:
    """Join the torchrun process group (from ``WORLD_SIZE`` etc.); a single process gets ``Dist()``.

    Args:
        cfg: the training config (``distributed.backend``; ``auto``: NCCL on CUDA, else gloo).
        device: this process's device.

    Returns:
        This process's rank, world size and local rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def allreduce_grads(model: nn.Module, d: Dist, bucket_mb: float = 25.0) -> int:
    """Average parameter gradients over ranks in buckets (DDP's scheme, without its forward wrapper).

    Gradients are flattened into buckets of about ``bucket_mb`` MiB (grouped by dtype and device)
    and each bucket takes one ``all_reduce`` call, instead of one call per parameter.

    Returns:
        The number of ``all_reduce`` calls made.
    """
    if d.world_size <= 1:
        return 0
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    limit = int(bucket_mb * 2**20)
    buckets: list[list[torch.Tensor]] = []
    cur: list[torch.Tensor] = []
    size = 0
    for p in model.parameters():
        g = p.grad
        if g is None:
            continue
        if cur and (size + g.numel() * g.element_size() > limit or g.dtype != cur[0].dtype or g.device != cur[0].device):
            buckets.append(cur)
            cur, size = [], 0
        cur.append(g)
        size += g.numel() * g.element_size()
    if cur:
        buckets.append(cur)
    for b in buckets:
        flat = _flatten_dense_tensors(b)
        dist.all_reduce(flat)
        flat /= d.world_size
        for g, v in zip(b, _unflatten_dense_tensors(flat, b)):
            g.copy_(v)
    return len(buckets)


def sync_buffers(model: nn.Module, d: Dist) -> None:
    """Broadcast buffers (BN running statistics) from rank 0, as DDP does."""
    if d.world_size <= 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b, 0)


def barrier(d: Dist) -> None:
    """Wait for every rank (no-op for one process)."""
    if d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


