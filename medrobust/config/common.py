"""Schemas shared by the commands: data, model, threat model, inference (and the task settings).

Every schema refuses unknown keys (:class:`~medrobust.schema.Strict`); see
``docs/config_reference.md`` for every key.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from medrobust.schema import SegLossConfig, Strict, SuccessConfig

__all__ = ["AugmentConfig", "DataConfig", "InferenceConfig", "IntensityConfig", "MedMNISTConfig", "ModelConfig",
           "PhantomConfig", "PreprocessConfig", "SegLossConfig", "SplitConfig", "Strict", "SuccessConfig",
           "ThreatConfig", "refuse_threat_eps"]


# ============================================================================ data
class IntensityConfig(Strict):
    """Intensity normalisation; records the affine map so budgets can be given in native units.

    kind: ``zscore`` (per image and channel, optionally over non-zero voxels), ``window``
    (clip ``[a_min, a_max]`` and map linearly to ``[b_min, b_max]``, e.g. a CT window),
    ``minmax`` (per image to ``[b_min, b_max]``), ``scale`` (multiply by ``factor``, e.g.
    1/255 for 8-bit images; bounds ``[0, 255*factor]``), or ``none``.
    """

    kind: Literal["none", "zscore", "window", "minmax", "scale"] = "zscore"
    a_min: Optional[float] = None
    a_max: Optional[float] = None
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    nonzero: bool = False
    factor: float = 1.0 / 255.0

    @model_validator(mode="after")
    def _check_window(self) -> "IntensityConfig":
        if self.kind == "window":
            if self.a_min is None or self.a_max is None:
                raise ValueError("intensity kind 'window' needs a_min and a_max (e.g. a_min: -57, a_max: 164 for a soft-tissue CT window)")
            if self.a_max <= self.a_min:
                raise ValueError(f"intensity window a_max ({self.a_max}) must be larger than a_min ({self.a_min})")
        return self


class PreprocessConfig(Strict):
    """Deterministic preprocessing, recorded in every checkpoint so evaluation rebuilds it."""

    orientation: Optional[str] = Field(None, description="axcodes such as RAS; None keeps the file's orientation")
    spacing: Optional[list[float]] = Field(None, description="resample to this spacing (mm); None keeps it")
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)
    size: Optional[list[int]] = Field(None, description="spatial size of each model input (crop or pad, centred)")
    resize: Optional[list[int]] = Field(None, description="resize (interpolate) 2D images to this size before crop/pad")
    crop_foreground: bool = Field(False, description="crop each case to the bounding box of its non-zero image voxels first")


class AugmentConfig(Strict):
    """Training-time augmentation (MONAI random transforms, seeded per sample and epoch)."""

    flip_prob: float = 0.0
    flip_axes: Optional[list[int]] = None
    rotate90_prob: float = 0.0
    affine_prob: float = 0.0
    rotate_range: float = 0.26
    scale_range: float = 0.1
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0
    noise_std: float = 0.0
    gamma_prob: float = 0.0


class SplitConfig(Strict):
    """Deterministic split by case (slices of one case never cross splits)."""

    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    folds: Optional[int] = Field(None, description="k for k-fold cross-validation over non-test cases")
    fold: int = 0
    use_manifest_split: bool = Field(True, description="use a manifest's own split column / lists when present")

    @model_validator(mode="after")
    def _check(self) -> "SplitConfig":
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("split fractions must be in [0, 1) and val_fraction + test_fraction < 1")
        if self.folds is not None and (self.folds < 2 or not 0 <= self.fold < self.folds):
            raise ValueError(f"k-fold needs folds >= 2 and 0 <= fold < folds (got folds={self.folds}, fold={self.fold})")
        return self


class PhantomConfig(Strict):
    """Synthetic phantoms: the embedded default data (no files, deterministic from the seed)."""

    n_cases: int = 40
    size: list[int] = Field(default_factory=lambda: [64, 64])
    n_structures: int = Field(3, ge=1, le=5)
    noise: float = 0.04
    bias: float = 0.25
    seed: int = 0
    task: Literal["segmentation", "classification"] = "segmentation"
    channels: int = Field(1, ge=1, le=8, description="image channels (co-registered 'sequences' with their own contrast)")


class MedMNISTConfig(Strict):
    path: str = Field(..., description="a MedMNIST .npz file (train/val/test images and labels)")


class DataConfig(Strict):
    """Where the cases come from and how they become model inputs."""

    source: Literal["phantom", "manifest", "medmnist"] = "phantom"
    manifest: Optional[str] = Field(None, description="CSV, MSD dataset.json, MONAI datalist JSON, or nnU-Net raw folder")
    root: Optional[str] = Field(None, description="data root for ${data_root}; default $MEDROBUST_DATA_ROOT or ../shared/datasets")
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)
    medmnist: Optional[MedMNISTConfig] = None
    dims: Optional[Literal[2, 3]] = Field(None, description="spatial dims of model inputs; 2 with 3D volumes means slices")
    slice_axis: int = Field(2, ge=0, le=2)
    foreground_slices_only: bool = True
    label_map: Optional[dict[int, str]] = None
    label_remap: Optional[dict[int, int]] = Field(None, description="map raw label values, e.g. {255: 1} for 0/255 masks")
    label_threshold: Optional[float] = Field(None, description="binarise masks: raw values >= this become 1, others 0 (e.g. 128 for JPEG masks); applied before label_remap")
    class_column: Optional[str] = Field(None, description="CSV column with the class label (classification)")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    cache: bool = True
    max_cases: Optional[int] = Field(None, description="use only the first N cases (by id; per split when the source gives splits), for quick runs")

    @model_validator(mode="after")
    def _check_source(self) -> "DataConfig":
        if self.source == "manifest" and not self.manifest:
            raise ValueError("data.source is 'manifest' but data.manifest is not set; give a CSV, dataset.json or nnU-Net folder")
        if self.source == "medmnist" and self.medmnist is None:
            raise ValueError("data.source is 'medmnist' but data.medmnist.path is not set; give the .npz file")
        return self


# ============================================================================ model
class ModelConfig(Strict):
    """A model from the registry (:func:`medrobust.models.create_model`) or another source.

    source: ``registry`` (default), ``nnunetv2`` (an nnU-Net v2 trained-model folder),
    ``monai_bundle`` (a MONAI bundle folder) or ``torchscript`` (a TorchScript file); the folder or
    file is ``init_from`` (train-seg) or ``checkpoint`` (eval-seg, margins) and ``params`` holds the
    source's options (see ``medrobust list sources`` and :mod:`medrobust.models.sources`).
    """

    source: Literal["registry", "nnunetv2", "monai_bundle", "torchscript"] = "registry"
    name: str = "unet"
    spatial_dims: Optional[int] = None
    in_channels: Optional[int] = None
    out_channels: Optional[int] = None
    params: dict[str, Any] = Field(default_factory=dict)



class ThreatConfig(Strict):
    """Threat model: norm, budgets, units and intensity bounds.

    units: ``input`` (model-input units after preprocessing), ``native`` (scanner / HU units
    through the recorded intensity affine), or ``rms`` (L2 only: per-voxel RMS, so that a budget
    means the same on a 32x32 slice and a 96^3 volume).
    bounds: ``auto`` (from the preprocessing: [0, 1] after a window, none after z-score),
    ``none``, ``per_image`` (each image's own intensity range), or ``[lo, hi]``.
    """

    norm: Literal["Linf", "L2"] = "L2"
    budgets: list[float] = Field(default_factory=lambda: [0.0])
    units: Literal["input", "native", "rms"] = "input"
    bounds: Union[Literal["auto", "none", "per_image"], list[float]] = "auto"

    @field_validator("budgets")
    @classmethod
    def _nonneg(cls, v: list[float]) -> list[float]:
        if any(b < 0 for b in v):
            raise ValueError(f"budgets must be >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ThreatConfig":
        if self.units == "rms" and self.norm != "L2":
            raise ValueError("units 'rms' apply to the L2 norm only; use units: input or native for Linf")
        if isinstance(self.bounds, list) and (len(self.bounds) != 2 or self.bounds[0] >= self.bounds[1]):
            raise ValueError(f"bounds must be [lo, hi] with lo < hi, got {self.bounds}")
        return self


class InferenceConfig(Strict):
    """How a model is run on inputs larger than its training patch (3D)."""

    sliding_window: Union[bool, Literal["auto"]] = "auto"
    roi_size: Optional[list[int]] = None
    overlap: float = 0.25
    sw_batch_size: int = 4
    checkpoint_windows: bool = Field(True, description="recompute window activations in backward (bounded memory)")
    amp: Literal[False, "bf16"] = Field(False, description="bf16: run the network's forward under bfloat16 autocast "
                                        "(logits back to float32) during evaluation and attacks; false: full float32")


def refuse_threat_eps(data: Any, command: str, instead: str) -> Any:
    """The removed ``threat.eps`` (it was never read): one sentence naming what to set ``instead``.

    An ``eps`` of 0 (its old default, listed in the recorded config of every earlier run) is
    dropped silently so that those configs still load (``--resume``, re-validation).

    Args:
        data: the raw config mapping of a command (before validation).
        command: the command's name in the message, e.g. ``training``.
        instead: the sentence's fix, e.g. ``set method: {name: ..., eps: ...}``.

    Returns:
        ``data`` without ``threat.eps``.

    Raises:
        ValueError: ``threat.eps`` is set to something else than 0 (pydantic turns it into the
            config's one-sentence error).
    """
    threat = data.get("threat") if isinstance(data, dict) else None
    if not isinstance(threat, dict) or "eps" not in threat:
        return data
    eps = threat["eps"]
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps == 0:
        return {**data, "threat": {k: v for k, v in threat.items() if k != "eps"}}
    raise ValueError(f"threat.eps is not used by {command}; remove it and {instead}")
