"""Moved to :mod:`medrobust.inference` (one whole-case predictor below training and evaluation).

Kept so existing imports keep working: ``SlidingWindowModel`` is :class:`~medrobust.inference.CasePredictor`
with a window size, ``wrap_for_inference`` is :func:`~medrobust.inference.build_predictor`.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from medrobust.inference import CasePredictor, ShapeError, build_predictor, pad_to, predict_case, to_original_grid, unpad


class SlidingWindowModel(CasePredictor):
    """A :class:`~medrobust.inference.CasePredictor` with window ``roi_size`` (backward-compatible signature)."""

    def __init__(self, model: nn.Module, roi_size: list[int], overlap: float = 0.25, sw_batch_size: int = 4,
                 checkpoint_windows: bool = True) -> None:
        super().__init__(model, roi_size, 1, overlap, sw_batch_size, "auto", checkpoint_windows)


def wrap_for_inference(model: nn.Module, input_size: Optional[list[int]], cfg: Any, task: str,
                       model_spec: Optional[dict[str, Any]] = None) -> nn.Module:
    """See :func:`medrobust.inference.build_predictor`."""
    return build_predictor(model, input_size, cfg, task, model_spec)


__all__ = ["SlidingWindowModel", "wrap_for_inference", "CasePredictor", "ShapeError", "build_predictor", "pad_to", "unpad",
           "predict_case", "to_original_grid"]
