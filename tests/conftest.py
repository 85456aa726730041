"""Shared fixtures. Real-data tests find ../shared/datasets through MEDROBUST_DATA_ROOT (default
../shared/datasets); they skip with a reason when it is absent, except in CI (CI=true) where the
data must be there and a missing folder fails the test."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MEDROBUST_NO_PROGRESS", "1")
# OMP_NUM_THREADS wins when set: two spinning threads on a busy two-core machine make attack tests 10-20x slower
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, min(2, os.cpu_count() or 1)))


def _keep_the_tracer_through_pyautoattack() -> None:
    """``pyautoattack.checks.check_dynamic`` ends with ``sys.settrace(None)``, which switches coverage
    (``pytest --cov``) off for the rest of the run; wrap it so that the tracer in place before is restored."""
    try:
        from pyautoattack import checks
    except ImportError:
        return
    orig = checks.check_dynamic
    if getattr(orig, "_keeps_tracer", False):
        return

    def check_dynamic(*args, **kwargs):
        tracer = sys.gettrace()
        try:
            return orig(*args, **kwargs)
        finally:
            sys.settrace(tracer)

    check_dynamic._keeps_tracer = True  # type: ignore[attr-defined]
    checks.check_dynamic = check_dynamic


_keep_the_tracer_through_pyautoattack()


@pytest.fixture(autouse=True)
def _restore_tracer():
    """Backstop for any other library that clears the tracer (coverage) inside a test."""
    tracer = sys.gettrace()
    yield
    if tracer is not None and sys.gettrace() is not tracer:
        sys.settrace(tracer)


def data_root() -> Path:
    from medrobust.utils import default_data_root

    return default_data_root()


def require_data(*parts: str) -> Path:
    """The path of a shared dataset, or skip (fail in CI) when it is absent."""
    p = data_root().joinpath(*parts)
    if not p.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the shared dataset at {p} (set MEDROBUST_DATA_ROOT)")
        pytest.skip(f"shared dataset not found at {p}; set MEDROBUST_DATA_ROOT to run this test")
    return p


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def tiny_train_config(tmp_path: Path, **over) -> dict:
    """A seconds-long 2D phantom training config (dict)."""
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "epochs": 2,
        "batch_size": 4,
        "data": {"source": "phantom", "phantom": {"n_cases": 12, "size": [32, 32]}, "preprocess": {"size": [32, 32]},
                 "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
        "model": {"name": "unet", "params": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
        "optimizer": {"name": "adam", "lr": 0.003},
    }
    from medrobust.config import deep_merge

    return deep_merge(cfg, over)


@contextlib.contextmanager
def bare_logger():
    """The ``medrobust`` logger with no handlers and level NOTSET inside the block; its handlers, level
    and ``propagate`` are put back afterwards (handlers added in the block are removed and closed).
    A context manager, not a fixture: pytest attaches its capture handler after fixtures are set up."""
    import logging

    lg = logging.getLogger("medrobust")
    saved = (list(lg.handlers), lg.level, lg.propagate)
    for h in list(lg.handlers):
        lg.removeHandler(h)
    lg.setLevel(logging.NOTSET)
    try:
        yield lg
    finally:
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()
        for h in saved[0]:
            lg.addHandler(h)
        lg.setLevel(saved[1])
        lg.propagate = saved[2]


@pytest.fixture
def kspace_spy(monkeypatch):
    """Record the spike locations handed to MONAI's ``KSpaceSpikeNoise`` (the transform still runs)."""
    import monai.transforms as mt

    seen: list = []
    real = mt.KSpaceSpikeNoise

    def spy(loc, k_intensity):
        seen.extend(loc)
        return real(loc=loc, k_intensity=k_intensity)

    monkeypatch.setattr(mt, "KSpaceSpikeNoise", spy)
    return seen
