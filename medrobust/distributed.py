"""Where this process stands among ``torchrun`` processes (shared by training and evaluation)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Shard:
    """This process's place among the ``torchrun`` processes (rank, world size, local rank)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Shard":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(rank=int(os.environ.get("RANK", "0")), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
