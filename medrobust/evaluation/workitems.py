"""Resumable, sharded runs over work items (batches of cases): rows reach disk as they are computed.

An evaluation-like command (``eval-seg``, ``eval-classify``, ``margins``) splits its cases into
deterministic work items (shape-bucketed batches). :class:`WorkItemStore` keeps, in
``<run_dir>/partial/``:

- ``meta.json``: the config hash and the item list; ``--resume`` refuses a different one;
- ``rows_rank<r>.jsonl``: one JSON line per finished item (its rows, flags, timings), appended
  and flushed to disk (``fsync``) per item, so a killed run loses at most the item in progress;
  a torn last line is ignored on reading;
- ``examples_<item>.pt``: small example tensors of the first items (for the report figures).

Under ``torchrun`` (``WORLD_SIZE`` > 1) item ``i`` goes to rank ``i mod world_size``; every rank
appends to its own file, rank 0 waits for all items and merges them **in item order**, so the
table is the same whatever the number of processes and however often the run was resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from medrobust.distributed import Shard
from medrobust.errors import ConfigError
from medrobust.utils import progress, to_jsonable, torch_save_atomic, write_json_atomic

log = logging.getLogger(__name__)


def init_shard(device: torch.device) -> tuple[Shard, torch.device]:
    """Join the process group under ``torchrun`` (gloo on CPU, NCCL on GPUs); one GPU per local rank."""
    sh = Shard.from_env()
    if sh.world_size <= 1:
        return sh, device
    import datetime

    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", sh.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # a long timeout: ranks wait for each other only at the start and the end of a long evaluation
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(days=7))
    return sh, device


def barrier(sh: Shard) -> None:
    if sh.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()


def config_hash(cfg_dict: dict[str, Any], ignore: tuple[str, ...] = ("output_dir", "device", "resume")) -> str:
    """Stable hash of a config (without keys that do not change results)."""
    d = {k: v for k, v in cfg_dict.items() if k not in ignore}
    return hashlib.sha256(json.dumps(to_jsonable(d), sort_keys=True, default=str).encode()).hexdigest()[:16]


class WorkItemStore:
    """Per-item records of one run on disk (see the module docstring).

    Args:
        run_dir: the run folder (``partial/`` is created inside).
        items: the work items, each a list of sample ids (order defines item numbers).
        cfg_hash: hash of the config; ``resume`` with another hash is an error.
        resume: keep the finished items of an earlier run of the same config.
        shard: this process's rank and the number of processes.

    Raises:
        ConfigError: ``resume`` on a folder started with another config or other cases.
    """

    def __init__(self, run_dir: Path, items: list[list[str]], cfg_hash: str, resume: bool, shard: Shard) -> None:
        self.dir = Path(run_dir) / "partial"
        self.items = items
        self.shard = shard
        self.hash = cfg_hash
        meta = {"config_hash": cfg_hash, "n_items": len(items),
                "items_hash": hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]}
        if shard.main:
            old = self._read_meta()
            if resume and old is not None and old != meta:
                what = "config" if old.get("config_hash") != cfg_hash else "list of cases or batches"
                raise ConfigError(f"cannot resume in '{run_dir}': it was started with a different {what}; "
                                  f"run without --resume (starts over) or use another output_dir.")
            if not resume and self.dir.exists():
                shutil.rmtree(self.dir)
            if resume and old is None and self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.dir / "meta.json", meta)
        barrier(shard)
        self._fh = None

    def _read_meta(self) -> Optional[dict[str, Any]]:
        p = self.dir / "meta.json"
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    # ---- reading ----------------------------------------------------------------------
    def records(self) -> dict[int, dict[str, Any]]:
        """Finished items on disk (all ranks' files): item number -> record."""
        out: dict[int, dict[str, Any]] = {}
        for f in sorted(self.dir.glob("rows_rank*.jsonl")):
            with open(f, "rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        continue  # torn last line of a killed run
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    i = int(rec["item"])
                    if 0 <= i < len(self.items) and rec.get("ids") == self.items[i]:
                        out.setdefault(i, rec)
        return out

    def todo(self) -> list[int]:
        """This rank's items that are not finished yet."""
        done = self.records()
        mine = range(self.shard.rank, len(self.items), self.shard.world_size)
        skipped = sum(1 for i in mine if i in done)
        if skipped:
            log.info("resuming: %d of %d work items of this process are already done", skipped, len(mine))
        return [i for i in mine if i not in done]

    # ---- writing ----------------------------------------------------------------------
    def append(self, item: int, record: dict[str, Any]) -> None:
        """Append one finished item (one line, flushed and fsync'ed)."""
        rec = {"item": int(item), "ids": self.items[item], **record}
        line = json.dumps(to_jsonable(rec), allow_nan=True) + "\n"
        if self._fh is None:
            path = self.dir / f"rows_rank{self.shard.rank}.jsonl"
            _drop_torn_tail(path)
            self._fh = open(path, "ab")
        self._fh.write(line.encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def save_examples(self, item: int, examples: Any) -> None:
        torch_save_atomic(examples, self.dir / f"examples_{item}.pt")

    def load_examples(self, item: int) -> Any:
        p = self.dir / f"examples_{item}.pt"
        if not p.exists():
            return None
        return torch.load(p, map_location="cpu", weights_only=True)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def gather(self, poll_s: float = 1.0) -> Iterator[tuple[int, dict[str, Any]]]:
        """All records in item order (rank 0, after every rank finished)."""
        self.close()
        barrier(self.shard)
        recs = self.records()
        while len(recs) < len(self.items):  # without a process group (should not happen): wait for the files
            missing = [i for i in range(len(self.items)) if i not in recs]
            if self.shard.world_size <= 1:
                raise RuntimeError(f"work items {missing[:5]} were not computed (a bug)")
            time.sleep(poll_s)
            recs = self.records()
        for i in range(len(self.items)):
            yield i, recs[i]


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a write interrupted by a kill) so appends start clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def finish(sh: Shard) -> None:
    """Leave the process group (after rank 0 wrote the outputs)."""
    if sh.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            barrier(sh)
            dist.destroy_process_group()


class _PassLine:
    """``update()`` / ``close()`` over :func:`medrobust.utils.progress`'s one line per pass (no terminal)."""

    def __init__(self, total: int, desc: str) -> None:
        self._bar = progress(range(total), total=total, desc=desc)
        self._it = iter(self._bar)

    def update(self, n: int = 1) -> None:
        for _ in range(n):
            next(self._it, None)

    def close(self) -> None:
        self._bar.close()


def step_progress(total: int, desc: str) -> Any:
    """A progress bar stepped by hand with ``update()`` and ended with ``close()``.

    ``tqdm(total=...)`` on a terminal; otherwise (a pipe, a log file) the one line per pass of
    :func:`medrobust.utils.progress`, and nothing with ``MEDROBUST_NO_PROGRESS=1``.

    Args:
        total: the number of steps.
        desc: the label.

    Returns:
        An object with ``update(n=1)`` and ``close()``.
    """
    if os.environ.get("MEDROBUST_NO_PROGRESS", "0") != "1" and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=0.5, dynamic_ncols=True, leave=False)
    return _PassLine(total, desc)
