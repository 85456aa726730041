"""Which samples a model sees: whole cases or 2D slices of volumes, shuffled shards, shape buckets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler

from medrobust.errors import DataError
from medrobust.utils import derive_seed


@dataclass(frozen=True)
class SliceLayout:
    """How prepared cases ``(C, *spatial)`` become model inputs: whole cases, or 2D slices of 3D volumes.

    Args:
        dims: the model's spatial dims.
        slice_axis: the spatial axis a 2D model slices volumes along.
        input_size: the model's training input size (padding / sliding windows), if any.
    """

    dims: int
    slice_axis: int = 0
    input_size: Optional[tuple[int, ...]] = None

    def sliced(self, case_id: str, case_dims: int) -> bool:
        """True when a case with ``case_dims`` spatial dims is cut into slices (False: taken whole).

        Raises:
            DataError: a case the model cannot take (e.g. a 2D image for a 3D model).
        """
        if self.dims == case_dims:
            return False
        if self.dims == 2 and case_dims == 3:
            return True
        raise DataError(f"case '{case_id}' is {case_dims}D but the model takes {self.dims}D inputs; set data.dims to {case_dims} (or 2 to slice volumes).")

    def slice_indices(self, label: Optional[torch.Tensor], n: int, foreground_only: bool) -> list[int]:
        """The slice numbers ``0..n-1`` to use (only those whose label ``(1, *spatial)`` has foreground when asked)."""
        if not foreground_only or label is None:
            return list(range(n))
        ax = 1 + self.slice_axis
        other = tuple(i - 1 for i in range(1, 4) if i != ax)
        has = (label[0] > 0).any(dim=other).tolist()
        return [s for s in range(n) if has[s]]

    def take(self, t: Optional[torch.Tensor], s: int) -> Optional[torch.Tensor]:
        """Slice ``s`` of a channel-first volume (None stays None)."""
        return t.select(1 + self.slice_axis, s) if t is not None else None

    def slice_spacing(self, spacing: tuple[float, ...]) -> tuple[float, ...]:
        """The in-plane spacing of a slice."""
        return tuple(sp for k, sp in enumerate(spacing) if k != self.slice_axis)


class ShardedShuffleSampler(Sampler[int]):
    """Deterministic shuffle from ``(seed, epoch)``; with ``world_size > 1`` each rank gets a shard.

    Padded so every rank sees the same number of samples (as ``DistributedSampler`` does), and
    optionally capped at ``num_samples`` per epoch.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, num_samples: Optional[int] = None,
                 shuffle: bool = True) -> None:
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.shuffle = shuffle
        self.cap = num_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "sampler", self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.cap is not None:
            order = order[: self.cap]
        total = -(-len(order) // self.world_size) * self.world_size
        order = order + order[: total - len(order)]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order())

    def __len__(self) -> int:
        return len(self._order())


class ShapeBucketBatchSampler(Sampler[list[int]]):
    """Batches of samples that share one spatial shape (for evaluation of varying-size cases)."""

    def __init__(self, shapes: list[tuple[int, ...]], batch_size: int) -> None:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(shapes):
            groups.setdefault(tuple(s), []).append(i)
        self.batches = []
        for idx in groups.values():
            for k in range(0, len(idx), batch_size):
                self.batches.append(idx[k:k + batch_size])
        self.batches.sort(key=lambda b: b[0])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
