"""Small helpers shared across the package: atomic writes, seeding, devices, progress."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- atomic I/O
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success.

    A crash (or a kill) while writing leaves the previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / torch scalars, paths and tuples to plain JSON values (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (Path, str)):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if (v != v or v in (float("inf"), float("-inf"))) else v
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ---------------------------------------------------------------------------- seeding / RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: int | str) -> int:
    """A deterministic 31-bit seed from any mix of ints and strings (stable across runs)."""
    import hashlib

    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def get_rng_state() -> dict[str, Any]:
    """All global RNG states, in a form that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def fork_rng(seed: int | None) -> Iterator[None]:
    """Run a block with the torch CPU RNG seeded to ``seed``, then restore the outer state.

    Attacks use it so that their randomness is a function of their own seed only: an attack
    run alone and the same attack run inside an ensemble draw the same numbers.
    """
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------- devices
def resolve_device(name: str | None) -> torch.device:
    from medrobust.errors import ConfigError

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was requested but no CUDA GPU is available; set device: cpu (or auto).")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device '{name}' is not a valid torch device ({exc}); use cpu, cuda or cuda:N.") from None


# ---------------------------------------------------------------------------- progress
class _PipedProgress:
    """Progress for a non-interactive stderr (a log file, a pipe): no bar and no line per update;
    one line when the pass ends (``line=True``), e.g. ``evaluating: 240/240 in 12.3s (loss=0.41)``."""

    def __init__(self, iterable: Iterable, total: int | None, desc: str, line: bool, stream) -> None:
        self.iterable, self.total, self.desc, self.line, self.stream = iterable, total, desc, line, stream
        self.postfix: dict[str, Any] = {}
        self.n, self.t0, self.closed = 0, time.time(), False

    def set_postfix(self, refresh: bool = True, **kw: Any) -> None:
        self.postfix.update(kw)

    def __iter__(self):
        self.t0 = time.time()
        for item in self.iterable:
            self.n += 1
            yield item
        self.close()

    def close(self) -> None:
        """Write the pass's line (once)."""
        if self.closed:
            return
        self.closed = True
        if self.line:
            extra = f" ({', '.join(f'{k}={v}' for k, v in self.postfix.items())})" if self.postfix else ""
            total = f"/{self.total}" if self.total is not None else ""
            self.stream.write(f"{self.desc}: {self.n}{total} in {time.time() - self.t0:.1f}s{extra}\n")
            self.stream.flush()

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)  # type: ignore[arg-type]


def progress(iterable: Iterable, total: int | None = None, desc: str = "", disable: bool | None = None,
             line: bool = True, **kw):
    """Progress of a loop on stderr: a tqdm bar in a terminal, one line per pass otherwise.

    Args:
        iterable: what to loop over.
        total: its length, when ``len`` does not give it.
        desc: the label.
        disable: True for no output at all (default: ``MEDROBUST_NO_PROGRESS=1``).
        line: when stderr is not a terminal, write one line at the end of the pass (False when
            the caller logs its own line, as the training engine does once per epoch).

    Returns:
        An iterable with ``set_postfix``.
    """
    if disable is None:
        disable = os.environ.get("MEDROBUST_NO_PROGRESS", "0") == "1"
    stream = sys.stderr
    if disable or not (hasattr(stream, "isatty") and stream.isatty()):
        return _PipedProgress(iterable, total, desc, line and not disable, stream)
    from tqdm.auto import tqdm

    opts = {"mininterval": 0.5, "dynamic_ncols": True, "leave": False, **kw}
    return tqdm(iterable, total=total, desc=desc, file=stream, **opts)


_FORMAT = ("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")


def setup_logging(run_dir: Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``run_dir/log.txt``: the command line's logging set-up.

    Library functions do not call this (they only add the run's file with :func:`attach_run_log`),
    so a program that imports medrobust keeps its own logging configuration.
    """
    root = logging.getLogger("medrobust")
    root.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter(*_FORMAT))
        root.addHandler(sh)
    root.propagate = False
    if run_dir is not None:
        attach_run_log(run_dir)


def attach_run_log(run_dir: Path) -> None:
    """Write medrobust's log records to ``run_dir/log.txt`` (one run file at a time; no console handler).

    The ``medrobust`` logger gets level INFO when no level is set, so the run file holds the
    run's INFO lines also when medrobust is used as a library.
    """
    root = logging.getLogger("medrobust")
    if root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = str((run_dir / "log.txt").resolve())
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler) and h.baseFilename != target:
            root.removeHandler(h)
            h.close()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        fh = logging.FileHandler(target)
        fh.setFormatter(logging.Formatter(*_FORMAT))
        root.addHandler(fh)


def default_data_root() -> Path:
    """The data root: ``$MEDROBUST_DATA_ROOT``, else the first existing ``../shared/datasets``.

    ``../shared/datasets`` is looked up relative to the current directory and to the
    repository that holds this package (for editable installs).
    """
    env = os.environ.get("MEDROBUST_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd() / ".." / "shared" / "datasets",
                  Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]
