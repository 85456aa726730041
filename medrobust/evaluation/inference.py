"""Running a model on inputs of any size: padding, sliding windows, whole volumes from slices.

:class:`SlidingWindowModel` wraps a network so that inputs larger than its patch go through
MONAI's differentiable ``sliding_window_inference``; gradients flow through it, so attacks work
on whole 3D volumes. With ``checkpoint_windows`` each window's activations are recomputed in the
backward pass (``torch.utils.checkpoint``), which bounds memory to about one window.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import InferenceConfig


class SlidingWindowModel(nn.Module):
    """``forward(x)``: the wrapped model on ``x`` if it fits ``roi_size``, else sliding windows.

    Args:
        model: a segmentation network (output ``(B, C, *spatial)``).
        roi_size: window size (the training patch size).
        overlap, sw_batch_size: as in MONAI's ``sliding_window_inference``.
        checkpoint_windows: recompute window activations in backward (bounded memory).
    """

    def __init__(self, model: nn.Module, roi_size: list[int], overlap: float = 0.25, sw_batch_size: int = 4,
                 checkpoint_windows: bool = True) -> None:
        super().__init__()
        self.model = model
        self.roi_size = list(roi_size)
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.checkpoint_windows = checkpoint_windows

    def _predict(self, w: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_windows and torch.is_grad_enabled() and w.requires_grad:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.model, w, use_reentrant=False)
        return self.model(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if all(s <= r for s, r in zip(x.shape[2:], self.roi_size)):
            return self.model(x)
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(x, self.roi_size, self.sw_batch_size, self._predict, overlap=self.overlap,
                                        mode="gaussian")


def wrap_for_inference(model: nn.Module, input_size: Optional[list[int]], cfg: InferenceConfig, task: str) -> nn.Module:
    """Wrap a segmentation model for sliding-window inference when configured (or ``auto``)."""
    if task != "segmentation" or cfg.sliding_window is False:
        return model
    roi = cfg.roi_size or input_size
    if roi is None:
        return model
    return SlidingWindowModel(model, roi, cfg.overlap, cfg.sw_batch_size, cfg.checkpoint_windows)


def pad_to(x: torch.Tensor, size: Optional[list[int]]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Symmetric zero padding of the spatial dims up to ``size`` (never crops). Returns the pads."""
    if size is None:
        return x, [(0, 0)] * (x.ndim - 2)
    pads = []
    for s, t in zip(x.shape[2:], size):
        extra = max(0, int(t) - int(s))
        pads.append((extra // 2, extra - extra // 2))
    flat = []
    for lo, hi in reversed(pads):
        flat += [lo, hi]
    return (F.pad(x, flat) if any(flat) else x), pads


def unpad(x: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
    sl = [slice(None), slice(None)]
    for (lo, hi), s in zip(pads, x.shape[2:]):
        sl.append(slice(lo, s - hi))
    return x[tuple(sl)]


@torch.no_grad()
def predict_case(model: nn.Module, image: torch.Tensor, dims: int, slice_axis: int, input_size: Optional[list[int]],
                 batch_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits for a whole case ``image (C, *spatial)`` -> ``(num_classes, *spatial)`` on the CPU.

    3D models see the whole volume (padded to the input size; sliding windows if the model is
    wrapped); 2D models on 3D volumes see every slice along ``slice_axis`` and the slice logits
    are stacked back into a volume.
    """
    cd = image.ndim - 1
    if dims == cd:
        x, pads = pad_to(image[None].to(device), input_size)
        return unpad(model(x), pads)[0].float().cpu()
    ax = 1 + slice_axis
    n = image.shape[ax]
    outs = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        sl = image.index_select(ax, idx).movedim(ax, 0)  # (b, C, h, w)
        x, pads = pad_to(sl.to(device), input_size)
        outs.append(unpad(model(x), pads).float().cpu())
    logits = torch.cat(outs, 0)  # (n, K, h, w)
    return logits.movedim(0, ax)
