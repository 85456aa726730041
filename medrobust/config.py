"""Typed, validated configs: YAML in (safe loader), one clear sentence out on any error.

Every config is a pydantic model with ``extra="forbid"``: an unknown key is an error that
suggests the closest valid key. Paths inside a config resolve relative to the YAML file that
holds them; the token ``${data_root}`` expands to the data root (``data.root``, else
``$MEDROBUST_DATA_ROOT``, else ``../shared/datasets``).

Overrides use dotted keys with YAML values: ``--set epochs=3 --set data.split.seed=1``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medrobust.errors import ConfigError
from medrobust.registry import closest
from medrobust.utils import default_data_root


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


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


# ============================================================================ task / threat
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


class ThreatConfig(Strict):
    """Threat model: norm, budgets, units and intensity bounds.

    units: ``input`` (model-input units after preprocessing), ``native`` (scanner / HU units
    through the recorded intensity affine), or ``rms`` (L2 only: per-voxel RMS, so that a budget
    means the same on a 32x32 slice and a 96^3 volume).
    bounds: ``auto`` (from the preprocessing: [0, 1] after a window, none after z-score),
    ``none``, ``per_image`` (each image's own intensity range), or ``[lo, hi]``.
    """

    norm: Literal["Linf", "L2"] = "L2"
    eps: float = Field(0.0, ge=0.0, description="single budget (margins and attacks that take one); training uses the method's eps")
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


# ============================================================================ training
class OptimConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


class ScheduleConfig(Strict):
    name: Literal["none", "cosine", "poly", "step", "multistep"] = "none"
    warmup_epochs: int = 0
    milestones: list[int] = Field(default_factory=list)
    gamma: float = 0.1
    step_size: int = 30
    power: float = 0.9


class DistributedConfig(Strict):
    backend: Literal["auto", "gloo", "nccl"] = "auto"


class ValAttackConfig(Strict):
    """Robust validation during training: a cheap attack on the validation cases every ``val_every`` epochs.

    ``enabled: auto`` runs it for adversarial methods (those with a training budget) and not for
    standard training. The budget defaults to the method's own training budget and units (IMA:
    ``eps_max``); ``eps`` / ``units`` set another (e.g. the same budget for every method of a study).
    The attack defaults to APGD with the task loss (soft Dice + CE; CE for classifiers) and 5
    iterations; 2D models on volumes are attacked slice by slice, 3D models through sliding windows.
    Its forward and backward passes are logged (``val_attack_passes``) beside the training passes.
    """

    enabled: Union[bool, Literal["auto"]] = "auto"
    attack: Union[str, dict[str, Any]] = Field(default_factory=lambda: {"name": "apgd", "n_iter": 5, "loss": "auto"})
    eps: Optional[float] = Field(None, ge=0, description="budget; default the method's training budget")
    units: Optional[Literal["input", "rms", "native"]] = Field(None, description="units of eps; default the method's")
    max_cases: Optional[int] = Field(None, ge=1, description="attack only the first N validation cases (cost)")


class ComputeBudgetConfig(Strict):
    """Stop training after this much compute instead of (or before) ``epochs``.

    ``passes``: forward + backward passes through the network counted by the engine during
    training steps (validation attacks not included unless ``include_validation``). ``seconds``:
    wall-clock training time (validation excluded). ``epochs`` stays the upper bound and the length
    of the learning-rate schedule. The epoch in which the budget runs out stops at that step, is
    validated and checkpointed.
    """

    passes: Optional[int] = Field(None, ge=1)
    seconds: Optional[float] = Field(None, gt=0)
    include_validation: bool = False


class TrainConfig(Strict):
    """``medrobust train-seg`` / ``train-classify``."""

    task: Literal["segmentation", "classification"] = "segmentation"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: Union[str, dict[str, Any]] = "standard"
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    loss: SegLossConfig = Field(default_factory=SegLossConfig)
    success: SuccessConfig = Field(default_factory=SuccessConfig)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    val_batch_size: int = Field(32, ge=1)
    iterations_per_epoch: Optional[int] = Field(None, description="cap on optimiser steps per epoch (random subset)")
    optimizer: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    val_every: int = 1
    select_metric: Optional[str] = Field(None, description="validation metric that picks the best checkpoint; default "
                                         "the robust one (val_robust_dice / val_robust_acc) when a validation attack runs")
    val_attack: ValAttackConfig = Field(default_factory=ValAttackConfig)
    budget: ComputeBudgetConfig = Field(default_factory=ComputeBudgetConfig)
    init_from: Optional[str] = Field(None, description="start from the weights of this checkpoint (fine-tuning)")
    output_dir: str = "runs/train"
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    inference: "InferenceConfig" = Field(default_factory=lambda: InferenceConfig())
    amp: Literal[False, "bf16"] = Field(False, description="bf16: training steps (including the attacks of adversarial "
                                        "methods) run the network under bfloat16 autocast, logits back to float32; "
                                        "validation follows inference.amp")

    @model_validator(mode="after")
    def _check_ignored(self) -> "TrainConfig":
        defaults = ThreatConfig()
        # non-default values only: a run's own config.yaml (which lists every key) stays valid
        ignored = sorted(k for k in ("eps", "budgets", "units") if getattr(self.threat, k) != getattr(defaults, k))
        if ignored:
            raise ValueError(f"threat.{ignored[0]} is not used by training (the training budget is the method's own "
                             f"setting); remove it and set method: {{name: ..., eps: ...}} (see docs/methods.md)")
        if self.inference.sliding_window is True:
            raise ValueError("inference.sliding_window has no effect in a training config yet (validation runs whole "
                             "cases); remove it, and set it in the evaluation config instead")
        return self


# ============================================================================ evaluation
class InferenceConfig(Strict):
    """How a model is run on inputs larger than its training patch (3D)."""

    sliding_window: Union[bool, Literal["auto"]] = "auto"
    roi_size: Optional[list[int]] = None
    overlap: float = 0.25
    sw_batch_size: int = 4
    checkpoint_windows: bool = Field(True, description="recompute window activations in backward (bounded memory)")
    amp: Literal[False, "bf16"] = Field(False, description="bf16: run the network's forward under bfloat16 autocast "
                                        "(logits back to float32) during evaluation and attacks; false: full float32")


class EvalConfig(Strict):
    """``medrobust eval-seg`` / ``eval-classify``: attacks x budgets over a dataset."""

    task: Literal["segmentation", "classification"] = "segmentation"
    checkpoint: str
    model: Optional[ModelConfig] = Field(None, description="source and options when checkpoint is an nnU-Net folder, MONAI bundle or TorchScript file (detected when omitted)")
    data: Optional[dict[str, Any]] = Field(None, description="overrides merged into the checkpoint's data config")
    split: Literal["train", "val", "test", "all"] = "test"
    max_samples: Optional[int] = None
    threat: ThreatConfig = Field(default_factory=lambda: ThreatConfig(budgets=[0.0, 0.5, 1.0]))
    attacks: list[Union[str, dict[str, Any]]] = Field(default_factory=lambda: ["white_noise"])
    metrics: list[Literal["dice", "hd95", "nsd", "iou"]] = Field(default_factory=lambda: ["dice"])
    nsd_tolerance_mm: float = Field(1.0, gt=0.0, description="surface-distance tolerance of NSD, in mm")
    success: Optional[SuccessConfig] = None
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/eval"
    examples: int = Field(4, ge=0, description="number of example figures to draw")
    save_nifti: bool = False
    save_adversarial: bool = False
    inference: InferenceConfig = Field(default_factory=InferenceConfig)


class MarginsConfig(Strict):
    """``medrobust margins``: per-case smallest budget that breaks each sample, and per-voxel maps."""

    task: Literal["segmentation", "classification"] = "segmentation"
    checkpoint: str
    model: Optional[ModelConfig] = Field(None, description="source and options when checkpoint is an nnU-Net folder, MONAI bundle or TorchScript file (detected when omitted)")
    data: Optional[dict[str, Any]] = None
    split: Literal["train", "val", "test", "all"] = "test"
    max_samples: Optional[int] = None
    threat: ThreatConfig = Field(default_factory=lambda: ThreatConfig(norm="L2"))
    attack: Union[str, dict[str, Any]] = Field(default_factory=lambda: {"name": "pgd", "steps": 20})
    eps_max: float = Field(10.0, gt=0)
    bisection_steps: int = Field(8, ge=1)
    success: Optional[SuccessConfig] = None
    voxel_maps: bool = True
    voxel_steps: int = Field(20, ge=1)
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/margins"
    save_nifti: bool = False
    examples: int = 4
    inference: InferenceConfig = Field(default_factory=InferenceConfig)


TrainConfig.model_rebuild()


# ============================================================================ loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; explicit keys may override them
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen and key != "<<":
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises on duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; a clear error for a missing or malformed file.

    Raises:
        ConfigError: the file is missing, a folder, binary, not valid YAML, has a key twice in
            one mapping, or does not hold a mapping.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config '{p}' is a folder; give the path of a YAML file.")
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist; check the path (it is resolved from {Path.cwd()}).")
    try:
        raw = p.read_bytes()
        if b"\x00" in raw[:8192]:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "binary")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{p}' is a binary file, not YAML text; give the path of a .yaml config.") from None
    except OSError as exc:
        raise ConfigError(f"config file '{p}' could not be read ({exc.strerror or exc}); check its permissions.") from None
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file '{p}' is not valid YAML{where} ({problem}); fix it there.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys to values, not a {type(data).__name__}.")
    return data


def resolve_bases(data: Any, base_dir: Path, _seen: tuple = ()) -> Any:
    """Merge ``_base_: path.yaml`` (relative to ``base_dir``) under any mapping, recursively.

    The mapping's own keys override the base's, so ``method: {_base_: ../configs/methods/ima.yaml,
    delta: 0.5}`` takes the documented defaults and changes one value.
    """
    if isinstance(data, list):
        return [resolve_bases(v, base_dir, _seen) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: resolve_bases(v, base_dir, _seen) for k, v in data.items() if k != "_base_"}
    if "_base_" in data:
        p = Path(str(data["_base_"]))
        p = p if p.is_absolute() else base_dir / p
        if p.resolve() in _seen:
            raise ConfigError(f"'_base_: {data['_base_']}' includes itself (a cycle); remove the loop.")
        base = resolve_bases(load_yaml(p), p.resolve().parent, _seen + (p.resolve(),))
        out = deep_merge(base, out)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' has no '='; write it as key.sub=value (e.g. --set epochs=3).")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key part; write it as key.sub=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (values parsed as YAML)."""
    out = copy.deepcopy(data)
    for item in overrides or []:
        parts, value = parse_override(item)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """The valid field names of the sub-model that ``loc`` (minus the last item) points into."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        cls = _unwrap_model(ann)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}).keys())


def _unwrap_model(ann: Any) -> Any:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        m = _unwrap_model(arg)
        if m is not None:
            return m
    if isinstance(ann, str) and ann in globals():
        return globals()[ann]
    return None


def format_validation_error(exc: ValidationError, model_cls: type[BaseModel], source: str) -> str:
    """Turn the first pydantic error into one sentence naming the key, the problem and the fix."""
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "<root>"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        valid = _fields_at(model_cls, loc)
        close = closest(str(loc[-1]), valid, cutoff=0.5)
        hint = f"did you mean '{'.'.join(str(p) for p in loc[:-1] + (close,))}'?" if close else \
            f"valid keys here are: {', '.join(valid)}." if valid else "remove it."
        return f"{source}: unknown key '{key}'; {hint}"
    if kind == "missing":
        return f"{source}: required key '{key}' is missing; add it to the config."
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    if not loc:
        return f"{source}: {msg}."
    return f"{source}: invalid value for '{key}'{shown}: {msg}."


def parse_config(model_cls: type[BaseModel], data: dict[str, Any], source: str = "config") -> Any:
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model_cls, source)) from None


def check_params(params_cls: type[BaseModel], data: dict[str, Any], source: str) -> Any:
    """Validate a plugin's parameters (a method or an attack) with the same error style."""
    return parse_config(params_cls, data, source)


def expand_data_root(value: str, data_root: str | os.PathLike | None) -> str:
    root = Path(data_root) if data_root else default_data_root()
    return value.replace("${data_root}", str(root))


def resolve_path(value: Optional[str], base_dir: Path | None, data_root: str | None = None) -> Optional[str]:
    """Expand ``${data_root}`` and ``~`` and make a relative path relative to ``base_dir``."""
    if value is None:
        return None
    v = os.path.expanduser(expand_data_root(str(value), data_root))
    p = Path(v)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return os.path.normpath(p) if p.is_absolute() else str(p)  # 'pipelines/../runs' -> '/.../runs'


def resolve_data_paths(data: DataConfig, base_dir: Path | None) -> DataConfig:
    data = data.model_copy(deep=True)
    if data.root is not None:
        data.root = resolve_path(data.root, base_dir)
    data.manifest = resolve_path(data.manifest, base_dir, data.root)
    if data.medmnist is not None:
        data.medmnist.path = resolve_path(data.medmnist.path, base_dir, data.root)
    return data


def load_config(model_cls: type[BaseModel], path: str | os.PathLike | None = None,
                overrides: list[str] | None = None, data: dict[str, Any] | None = None,
                base_dir: Path | None = None, defaults: dict[str, Any] | None = None) -> Any:
    """Load a config from a YAML file (or a dict), apply overrides, validate, resolve paths."""
    if path is not None:
        base_dir = Path(path).resolve().parent
        raw = resolve_bases(load_yaml(path), base_dir)
        source = str(path)
    else:
        base_dir = base_dir or Path.cwd()
        raw = resolve_bases(copy.deepcopy(data or {}), base_dir)
        source = "config"
    raw = apply_overrides(deep_merge(defaults or {}, raw), overrides)
    cfg = parse_config(model_cls, raw, source)
    return resolve_config_paths(cfg, base_dir)


def resolve_config_paths(cfg: Any, base_dir: Path) -> Any:
    if hasattr(cfg, "data") and isinstance(getattr(cfg, "data"), DataConfig):
        cfg.data = resolve_data_paths(cfg.data, base_dir)
    for name in ("output_dir", "checkpoint", "init_from"):
        if hasattr(cfg, name) and getattr(cfg, name) is not None:
            data_root = cfg.data.root if isinstance(getattr(cfg, "data", None), DataConfig) else None
            setattr(cfg, name, resolve_path(getattr(cfg, name), base_dir, data_root))
    if isinstance(getattr(cfg, "data", None), dict):
        d = cfg.data
        for key in ("manifest", "root"):
            if d.get(key):
                d[key] = resolve_path(d[key], base_dir, d.get("root"))
        if isinstance(d.get("medmnist"), dict) and d["medmnist"].get("path"):
            d["medmnist"]["path"] = resolve_path(d["medmnist"]["path"], base_dir, d.get("root"))
    return cfg


def plugin_spec(spec: Union[str, dict[str, Any]], kind: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name"`` or ``{name: ..., **params}`` into (name, params)."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"each {kind} must be a name or a mapping with a 'name' key, got {spec!r}.")
    params = {k: v for k, v in spec.items() if k != "name"}
    return str(spec["name"]), params
