"""The base of every config schema, and the settings of the per-sample task contract.

This module sits below both :mod:`medrobust.config` (the command schemas, which re-export every
name here) and :mod:`medrobust.tasks` (which takes :class:`SegLossConfig` and
:class:`SuccessConfig`), so that the task contract does not import the command schemas.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A pydantic model that refuses unknown keys and validates assignments (every config schema)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class SegLossConfig(Strict):
    """Segmentation loss: ``dice_weight * (1 - soft Dice over foreground) + ce_weight * CE``, per sample."""

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    include_background: bool = False
    smooth: float = 1e-5


class SuccessConfig(Strict):
    """When is a segmentation sample still "correct"? Dice >= threshold (mean or max over foreground)."""

    threshold: float = Field(0.6, ge=0.0, le=1.0)
    reduction: Literal["mean", "max"] = "mean"
