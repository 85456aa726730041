"""MONAI transform chains built from config.

Two chains per dataset:

- the *case* chain (deterministic, once per case): orientation, resampling to a spacing,
  foreground crop, 2D resize, intensity normalisation. The intensity step records the affine
  map ``x_input = scale * x_native + offset`` per channel, so budgets can later be stated in
  native units (HU, scanner units) and intensity bounds are known.
- the *sample* chain (per model input): pad to the input size, a random crop for training,
  then the training augmentations, seeded per sample and epoch.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Optional

import numpy as np
import torch
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    Resized,
    Spacingd,
    SpatialPadd,
)

from medrobust.config import AugmentConfig, IntensityConfig, PreprocessConfig


class RecordedIntensityd(MapTransform):
    """Intensity normalisation that records its per-channel affine ``x_in = scale * x + offset``.

    Writes ``intensity_scale`` and ``intensity_offset`` (float arrays, one value per channel)
    into the data dict. ``window`` clips to ``[a_min, a_max]`` before mapping when ``clip``.
    """

    def __init__(self, keys, cfg: IntensityConfig, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cfg = cfg

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            x = img.float() if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img), dtype=torch.float32)
            scales, offsets = [], []
            out = torch.empty_like(x)
            for c in range(x.shape[0]):
                xc = x[c]
                s, o = self._affine(xc)
                y = xc * s + o
                if self.cfg.kind == "window" and self.cfg.clip:
                    y = y.clamp(self.cfg.b_min, self.cfg.b_max)
                out[c] = y
                scales.append(s)
                offsets.append(o)
            if hasattr(img, "copy_meta_from"):
                from monai.data import MetaTensor

                out = MetaTensor(out, meta=dict(img.meta))
            d[key] = out
            d["intensity_scale"] = np.asarray(scales, dtype=np.float64)
            d["intensity_offset"] = np.asarray(offsets, dtype=np.float64)
        return d

    def _affine(self, xc: torch.Tensor) -> tuple[float, float]:
        c = self.cfg
        if c.kind == "none":
            return 1.0, 0.0
        if c.kind == "scale":
            return float(c.factor), 0.0
        if c.kind == "window":
            s = (c.b_max - c.b_min) / (c.a_max - c.a_min)
            return s, c.b_min - c.a_min * s
        vals = xc[xc != 0] if c.nonzero and bool((xc != 0).any()) else xc.reshape(-1)
        if c.kind == "zscore":
            mean, std = float(vals.mean()), float(vals.std(unbiased=False))
            std = std if std > 1e-8 else 1.0
            return 1.0 / std, -mean / std
        lo, hi = float(vals.min()), float(vals.max())
        rng = hi - lo if hi - lo > 1e-8 else 1.0
        s = (c.b_max - c.b_min) / rng
        return s, c.b_min - lo * s


def intensity_bounds(cfg: IntensityConfig, native_range: Optional[tuple[float, float]] = None) -> Optional[tuple[float, float]]:
    """The input-space range the preprocessing guarantees (None when unbounded, e.g. z-score)."""
    if cfg.kind == "window":
        return (cfg.b_min, cfg.b_max) if cfg.clip else None
    if cfg.kind == "minmax":
        return (cfg.b_min, cfg.b_max)
    if cfg.kind == "scale" and native_range is not None:
        lo, hi = native_range[0] * cfg.factor, native_range[1] * cfg.factor
        return (min(lo, hi), max(lo, hi))
    if cfg.kind == "none" and native_range is not None:
        return native_range
    return None


def case_transforms(pre: PreprocessConfig, has_label: bool, spatial_dims: int, stage: str = "all") -> Compose:
    """Deterministic per-case chain applied after loading (keys ``image`` and ``label``).

    ``stage``: ``all``; ``before_resize`` (orientation, spacing, foreground crop: the grid metrics
    are computed on); ``from_resize`` (resize and intensity).
    """
    keys = ["image", "label"] if has_label else ["image"]
    modes_interp = ("bilinear", "nearest") if has_label else ("bilinear",)
    ts: list = []
    if stage == "from_resize":
        if pre.resize:
            ts.append(Resized(keys=keys, spatial_size=pre.resize, mode=("area", "nearest") if has_label else ("area",)))
        ts.append(RecordedIntensityd(keys=["image"], cfg=pre.intensity))
        return Compose(ts)
    if pre.orientation and len(pre.orientation) == spatial_dims:
        ts.append(Orientationd(keys=keys, axcodes=pre.orientation))
    if pre.spacing:
        ts.append(Spacingd(keys=keys, pixdim=pre.spacing[:spatial_dims], mode=modes_interp))
    if pre.crop_foreground:
        ts.append(CropForegroundd(keys=keys, source_key="image", margin=2, allow_smaller=True))
    if stage == "before_resize":
        return Compose(ts)
    if pre.resize:
        ts.append(Resized(keys=keys, spatial_size=pre.resize, mode=("area", "nearest") if has_label else ("area",)))
    ts.append(RecordedIntensityd(keys=["image"], cfg=pre.intensity))
    return Compose(ts)


def sample_transforms(size: Optional[list[int]], train: bool, aug: AugmentConfig, has_label: bool,
                      spatial_dims: int, pos_neg_crop: bool = True) -> Compose:
    """Per-sample chain: pad (and for training randomly crop) to ``size``, then augment."""
    keys = ["image", "label"] if has_label else ["image"]
    ts: list = []
    if size:
        ts.append(SpatialPadd(keys=keys, spatial_size=size, mode="constant"))
        if train:
            if has_label and pos_neg_crop:
                ts.append(RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=size, pos=1, neg=1,
                                                 num_samples=1, allow_smaller=True))
            else:
                ts.append(RandSpatialCropd(keys=keys, roi_size=size, random_size=False))
    if train:
        ts.extend(augmentations(aug, keys, spatial_dims, has_label))
    return Compose(ts)


def augmentations(aug: AugmentConfig, keys: list[str], spatial_dims: int, has_label: bool) -> list:
    ts: list = []
    if aug.flip_prob > 0:
        for ax in aug.flip_axes if aug.flip_axes is not None else range(spatial_dims):
            ts.append(RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=ax))
    if aug.rotate90_prob > 0:
        ts.append(RandRotate90d(keys=keys, prob=aug.rotate90_prob, spatial_axes=(0, 1)))
    if aug.affine_prob > 0:
        rr = aug.rotate_range
        ts.append(RandAffined(keys=keys, prob=aug.affine_prob,
                              rotate_range=(rr,) if spatial_dims == 2 else (rr, rr, rr),
                              scale_range=[aug.scale_range] * spatial_dims,
                              mode=("bilinear", "nearest") if has_label else ("bilinear",), padding_mode="zeros"))
    if aug.intensity_scale > 0:
        ts.append(RandScaleIntensityd(keys=["image"], factors=aug.intensity_scale, prob=0.5))
    if aug.intensity_shift > 0:
        ts.append(RandShiftIntensityd(keys=["image"], offsets=aug.intensity_shift, prob=0.5))
    if aug.gamma_prob > 0:
        ts.append(RandAdjustContrastd(keys=["image"], prob=aug.gamma_prob, gamma=(0.7, 1.5)))
    if aug.noise_std > 0:
        ts.append(RandGaussianNoised(keys=["image"], prob=0.5, std=aug.noise_std))
    return ts


def center_crop(size: list[int], has_label: bool) -> CenterSpatialCropd:
    return CenterSpatialCropd(keys=["image", "label"] if has_label else ["image"], roi_size=size)
