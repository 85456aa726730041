"""Matched compute: bound a training run by forward + backward passes or seconds, not epochs.

The engine already counts the real forward and backward passes through the network
(:class:`~medrobust.training.base.PassCounter`). :class:`ComputeMeter` keeps running totals in the
logged history (``passes_train_total``, ``passes_val_attack_total``, ``time_train_total_s``),
so a resumed run continues from the last logged epoch without a checkpoint field of its own, and
says when the budget of ``TrainConfig.budget`` is spent. Passes are counted per process.
"""

from __future__ import annotations

from typing import Any

from medrobust.config import ComputeBudgetConfig
from medrobust.training.base import PassCounter


class ComputeMeter:
    """Running compute totals of a training run and its budget.

    Args:
        cfg: the budget (``passes`` and / or ``seconds``; both None: no budget).
        history: the rows logged so far (resume continues the totals).
    """

    def __init__(self, cfg: ComputeBudgetConfig, history: list[dict[str, Any]]) -> None:
        self.cfg = cfg
        last = history[-1] if history else {}
        self.passes = int(last.get("passes_train_total", 0) or 0)
        self.val_passes = int(last.get("passes_val_attack_total", 0) or 0)
        self.seconds = float(last.get("time_train_total_s", 0.0) or 0.0)

    @property
    def active(self) -> bool:
        return self.cfg.passes is not None or self.cfg.seconds is not None

    def _spent(self, passes: int, seconds: float) -> bool:
        used = passes + (self.val_passes if self.cfg.include_validation else 0)
        if self.cfg.passes is not None and used >= self.cfg.passes:
            return True
        return self.cfg.seconds is not None and seconds >= self.cfg.seconds

    def spent_during_epoch(self, counter: PassCounter, epoch_seconds: float) -> bool:
        """True when this epoch's passes or time so far exhaust the budget (checked after each step)."""
        return self.active and self._spent(self.passes + counter.forward + counter.backward, self.seconds + epoch_seconds)

    @property
    def spent(self) -> bool:
        """True when the logged totals exhaust the budget."""
        return self.active and self._spent(self.passes, self.seconds)

    def close_epoch(self, forward: int, backward: int, train_seconds: float) -> dict[str, float]:
        """Add an epoch's training passes and time; returns the running-total columns."""
        self.passes += int(forward) + int(backward)
        self.seconds += float(train_seconds)
        return {"passes_train_total": self.passes, "time_train_total_s": self.seconds}

    def add_validation(self, row: dict[str, Any]) -> dict[str, float]:
        """Add a validation attack's passes (``val_attack_forward`` / ``_backward`` of ``row``)."""
        self.val_passes += int(row.get("val_attack_forward", 0) or 0) + int(row.get("val_attack_backward", 0) or 0)
        return {"passes_val_attack_total": self.val_passes}

    def describe(self) -> dict[str, Any]:
        """Budget and totals for ``summary.json``."""
        return {"budget_passes": self.cfg.passes, "budget_seconds": self.cfg.seconds, "budget_spent": self.spent if self.active else None,
                "include_validation": self.cfg.include_validation, "passes_train": self.passes,
                "passes_val_attack": self.val_passes, "seconds_train": self.seconds}
