"""Per-sample method state (IMA margins, IAAT radii, ...) kept by stable sample id.

The engine creates one :class:`SampleState` for the training set, methods register named
tensors in it, and it is saved in every checkpoint and restored exactly on resume. Under DDP
each rank updates the samples it saw and :meth:`SampleState.sync` merges the updates.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from medrobust.errors import CheckpointError


class SampleState:
    """Named tensors with one row per training sample, indexed by the samples' string ids."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("sample ids must be unique")
        self.index = {s: i for i, s in enumerate(self.ids)}
        self.tensors: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def register(self, name: str, init: float | torch.Tensor, dtype: torch.dtype = torch.float64) -> None:
        if name in self.tensors:
            return
        if isinstance(init, torch.Tensor):
            t = init.to(dtype).clone()
            if t.shape[0] != len(self):
                raise ValueError(f"state '{name}' needs {len(self)} rows, got {t.shape[0]}")
        else:
            t = torch.full((len(self),), float(init), dtype=dtype)
        self.tensors[name] = t

    def rows(self, ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.index[i] for i in ids], dtype=torch.long)

    def get(self, name: str, ids: Sequence[str]) -> torch.Tensor:
        return self.tensors[name][self.rows(ids)].clone()

    def set(self, name: str, ids: Sequence[str], values: torch.Tensor) -> None:
        self.tensors[name][self.rows(ids)] = values.detach().to(self.tensors[name].dtype).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "tensors": {k: v.clone() for k, v in self.tensors.items()}}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if list(d.get("ids", [])) != self.ids:
            raise CheckpointError("the checkpoint's per-sample state was saved for a different training set "
                                  "(sample ids differ); resume with the same data config, or start a new run.")
        self.tensors = {k: v.clone() for k, v in d.get("tensors", {}).items()}

    def sync(self, touched: torch.Tensor) -> None:
        """DDP: every rank contributes the rows it ``touched`` (bool mask); others are kept."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        mask = touched.to(torch.float64)
        count = mask.clone()
        dist.all_reduce(count)
        for name, t in self.tensors.items():
            contrib = (t * mask.reshape(-1, *([1] * (t.ndim - 1)))).to(torch.float64)
            dist.all_reduce(contrib)
            upd = count > 0
            merged = contrib / count.clamp_min(1).reshape(-1, *([1] * (t.ndim - 1)))
            t[upd] = merged[upd].to(t.dtype)
