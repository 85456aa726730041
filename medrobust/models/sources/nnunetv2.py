"""nnU-Net v2 trained-model folders as medrobust models (optional extra: ``pip install medrobust[nnunet]``).

A trained-model folder ``$nnUNet_results/DatasetXXX_Name/Trainer__Plans__configuration`` holds
``plans.json``, ``dataset.json`` and ``fold_N/<checkpoint>``. This source

- builds the network with nnU-Net's own code (``PlansManager`` + ``get_network_from_plans``, deep
  supervision off) and loads each requested fold (several folds are ensembled by averaging their
  logits, as ``nnUNetPredictor`` does);
- loads checkpoints with ``torch.load(weights_only=True)``, allow-listing NumPy's scalar and dtype
  classes (what nnU-Net stores besides tensors); anything else is refused unless the config says
  ``trusted: true``;
- reproduces nnU-Net's inference: zero-padding to the patch size, tiles at the positions of
  ``compute_steps_for_sliding_window``, nnU-Net's Gaussian weighting, and (optionally) its
  mirroring test-time augmentation over the axes stored in the checkpoint; unlike nnU-Net's
  predictor (``torch.inference_mode``) everything is differentiable, so attacks work;
- maps the plans' preprocessing onto medrobust's data chain: target spacing, and the
  normalisation (``ZScoreNormalization``: per-case z-score, ``CTNormalization``: clip to the
  fingerprint's [p0.5, p99.5] then ``(x - mean) / std``), so perturbations live in nnU-Net's
  normalised input space and budgets convert to native units (scanner units, HU) exactly.

Axis order: nnU-Net reads images as ``(z, y, x)`` and applies ``transpose_forward``; medrobust
reads ``(x, y, z)``. The model wrapper permutes axes so that each network sees exactly what it
sees inside nnU-Net, and permutes its logits back.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medrobust.config import Strict
from medrobust.errors import CheckpointError, ConfigError
from medrobust.models.sources.base import ExternalModel, check_options, label_map_from_dataset_json

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `pip install medrobust[nnunet]` (or `pip install \"nnunetv2>=2.5\"`)"


class NNUNetOptions(Strict):
    """``model.params`` of the ``nnunetv2`` source."""

    folds: Union[list[Union[int, str]], int, str] = Field(default_factory=lambda: [0],
                                                          description="fold(s) to load: 0, [0, 1], 'all'; several are ensembled")
    checkpoint_name: str = "checkpoint_final.pth"
    mirroring: bool = Field(True, description="nnU-Net's mirroring test-time augmentation (nnUNetv2_predict default: on)")
    tile_step_size: float = Field(0.5, gt=0, le=1)
    resample: bool = Field(True, description="resample cases to the plans' target spacing")
    trusted: bool = Field(False, description="allow a full (unsafe) unpickle when the checkpoint holds more than tensors and NumPy scalars")


def require_nnunet():
    """Import nnunetv2 or fail with one sentence saying what to install."""
    try:
        import nnunetv2  # noqa: F401
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: F401
    except ImportError:
        raise ConfigError(f"the 'nnunetv2' model source needs nnU-Net v2, which is not installed; {INSTALL_HINT}.") from None
    import nnunetv2

    return nnunetv2


def _numpy_safe_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    for name in ("Float16DType", "Float32DType", "Float64DType", "Int32DType", "Int64DType", "BoolDType"):
        cls = getattr(dtypes, name, None) if dtypes is not None else None
        if cls is not None:
            out.append(cls)
    return out


def load_nnunet_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """Load an nnU-Net checkpoint with ``weights_only=True`` (NumPy scalars and dtypes allow-listed).

    Args:
        path: a ``fold_N/checkpoint_*.pth`` file.
        trusted: if the safe load fails, unpickle fully (only for folders you trust).

    Returns:
        The checkpoint dict (``network_weights``, ``trainer_name``, ``init_args``, ...).

    Raises:
        CheckpointError: missing file, or content that needs a full unpickle while ``trusted`` is false.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"nnU-Net checkpoint '{p}' does not exist; check model.params.folds and checkpoint_name "
                              f"(nnU-Net writes fold_N/checkpoint_final.pth when training finishes).")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if not trusted:
            raise CheckpointError(f"nnU-Net checkpoint '{p}' holds objects beyond tensors and NumPy scalars ({first}); "
                                  f"medrobust does not unpickle it silently: if you trust this folder, set model.params.trusted: true.") from None
        log.warning("loading %s with a full unpickle (model.params.trusted is true)", p)
        ck = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "network_weights" not in ck:
        raise CheckpointError(f"'{p}' is not an nnU-Net checkpoint (no 'network_weights'); point at a fold_N/checkpoint_*.pth of a trained-model folder.")
    return ck


def _read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"'{p}' is not valid JSON (line {exc.lineno}: {exc.msg}); fix or re-copy it.") from None


def _folds(value) -> list[Union[int, str]]:
    vals = value if isinstance(value, list) else [value]
    out: list[Union[int, str]] = []
    for v in vals:
        if isinstance(v, str) and v != "all":
            try:
                v = int(v)
            except ValueError:
                raise ConfigError(f"model.params.folds holds '{v}'; folds are integers or 'all'.") from None
        out.append(v)
    if not out:
        raise ConfigError("model.params.folds is empty; give at least one fold, e.g. [0].")
    return out


# ============================================================================ network wrapper
def build_networks(plans: dict[str, Any], dataset_json: dict[str, Any], configuration: str, n: int) -> list[nn.Module]:
    """``n`` networks of one configuration, built by nnU-Net's own code with deep supervision off."""
    require_nnunet()
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        raise ConfigError(f"configuration '{configuration}' is not in the plans (it has {', '.join(pm.available_configurations)}); fix the folder name.")
    cm = pm.get_configuration(configuration)
    lm = pm.get_label_manager(dataset_json)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    return [get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                                   n_in, lm.num_segmentation_heads, allow_init=True, deep_supervision=False) for _ in range(n)]


class NNUNetModel(nn.Module):
    """nnU-Net's inference as a differentiable module in medrobust's axis order.

    ``forward(x)``: ``x (B, C, *spatial)`` preprocessed like nnU-Net's normalised input, in
    medrobust's axis order; returns logits ``(B, K, *spatial)``. In eval mode it runs nnU-Net's
    sliding-window inference (centred zero padding to the patch, ``compute_steps_for_sliding_window``
    tiles, Gaussian weights ``sigma = patch/8``, mirroring over ``mirror_axes``) and averages the
    logits of all folds. In train mode it calls the (first) network once (inputs of patch size).

    Args:
        networks: one network per fold (same architecture).
        patch_size: nnU-Net's patch size (network axis order).
        perm: for each network axis, the medrobust spatial axis it reads.
        mirror_axes: network axes for mirroring TTA (``None``: off).
        tile_step_size: overlap step as a fraction of the patch (nnU-Net default 0.5).
    """

    def __init__(self, networks: list[nn.Module], patch_size: list[int], perm: list[int], mirror_axes: Optional[list[int]],
                 tile_step_size: float = 0.5) -> None:
        super().__init__()
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        self.networks = nn.ModuleList(networks)
        self.patch_size = [int(p) for p in patch_size]
        self.perm = [int(p) for p in perm]
        self.inv = [self.perm.index(i) for i in range(len(self.perm))]
        self.mirror_axes = [int(a) for a in mirror_axes] if mirror_axes else None
        self.tile_step_size = float(tile_step_size)
        g = compute_gaussian(tuple(self.patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32,
                             device=torch.device("cpu"))
        self.register_buffer("gaussian", g.clone(), persistent=False)

    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 1, *[2 + p for p in self.perm])

    def _from_net(self, y: torch.Tensor) -> torch.Tensor:
        return y.permute(0, 1, *[2 + p for p in self.inv])

    def _mirror_predict(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        pred = net(x)
        if self.mirror_axes:
            axes = [a + 2 for a in self.mirror_axes]
            combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
            for c in combos:
                pred = pred + torch.flip(net(torch.flip(x, c)), c)
            pred = pred / (len(combos) + 1)
        return pred

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self._mirror_predict(net, x) for net in self.networks]
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)

    def _sliding(self, x: torch.Tensor) -> torch.Tensor:
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        spatial = list(x.shape[2:])
        diff = [max(0, p - s) for s, p in zip(spatial, self.patch_size)]
        lo = [d // 2 for d in diff]
        flat: list[int] = []
        for d, l in reversed(list(zip(diff, lo))):
            flat += [l, d - l]
        xp = F.pad(x, flat) if any(diff) else x
        size = list(xp.shape[2:])
        steps = compute_steps_for_sliding_window(tuple(size), tuple(self.patch_size), self.tile_step_size)
        acc: Optional[torch.Tensor] = None
        weight = torch.zeros(size, dtype=x.dtype, device=x.device)
        g = self.gaussian.to(x.dtype)
        for starts in itertools.product(*steps):
            sl = tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size))
            pred = self._predict(xp[(slice(None), slice(None)) + sl]) * g
            if acc is None:
                acc = torch.zeros((x.shape[0], pred.shape[1], *size), dtype=pred.dtype, device=x.device)
            acc[(slice(None), slice(None)) + sl] += pred
            weight[sl] += g
        out = acc / weight
        crop = tuple(slice(l, l + s) for l, s in zip(lo, spatial))
        return out[(slice(None), slice(None)) + crop]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self._to_net(x)
        if self.training:
            return self._from_net(self.networks[0](xn))
        return self._from_net(self._sliding(xn))


# ============================================================================ plans -> medrobust
def _axes(transpose_forward: list[int], dims: int) -> tuple[int, list[int]]:
    """(medrobust slice axis for 2d configs, perm: medrobust axis read by each network axis)."""
    t = [int(v) for v in transpose_forward]
    if dims == 3:
        return 2, [2 - v for v in t]
    sa = 2 - t[0]
    rest = [a for a in range(3) if a != sa]
    return sa, [rest.index(2 - t[1]), rest.index(2 - t[2])]


def _intensity(plans: dict[str, Any], cm, folder: Path) -> tuple[dict[str, Any], bool, str]:
    """medrobust intensity config, crop flag and a sentence on units for the plans' normalisation."""
    schemes = list(cm.normalization_schemes)
    masks = list(cm.use_mask_for_norm)
    if len(set(schemes)) > 1 or len(set(masks)) > 1:
        raise ConfigError(f"'{folder}' normalises its channels differently ({schemes}); medrobust applies one scheme to all "
                          f"channels, so this model is not supported yet.")
    scheme, mask = schemes[0], bool(masks[0])
    if scheme == "ZScoreNormalization":
        return ({"kind": "zscore", "nonzero": mask}, True,
                "ZScore per case and channel (sigma from the clean image): 1 normalised unit = sigma_case native units")
    if scheme == "CTNormalization":
        props = plans.get("foreground_intensity_properties_per_channel", {})
        p = props.get("0") or props.get(0)
        if not p:
            raise ConfigError(f"'{folder}/plans.json' has no foreground_intensity_properties_per_channel for CTNormalization; copy the plans written by nnU-Net's planner.")
        if any(props[k] != p for k in props):
            raise ConfigError(f"'{folder}' has CT channels with different intensity statistics; medrobust applies one window to all channels, so this model is not supported yet.")
        lo, hi, mean, std = float(p["percentile_00_5"]), float(p["percentile_99_5"]), float(p["mean"]), max(float(p["std"]), 1e-8)
        return ({"kind": "window", "a_min": lo, "a_max": hi, "b_min": (lo - mean) / std, "b_max": (hi - mean) / std, "clip": True},
                False, f"CT: clip to [{lo:g}, {hi:g}] HU, then (x - {mean:g}) / {std:g}: 1 normalised unit = {std:g} HU")
    if scheme == "NoNormalization":
        return {"kind": "none"}, False, "none: normalised units are native units"
    if scheme == "RescaleTo01Normalization":
        return {"kind": "minmax", "b_min": 0.0, "b_max": 1.0}, False, "rescaled to [0, 1] per case: 1 unit = the case's intensity range"
    if scheme == "RGBTo01Normalization":
        return {"kind": "scale", "factor": 1.0 / 255.0}, False, "RGB / 255: 1 unit = 255 native units"
    raise ConfigError(f"'{folder}' uses the normalisation '{scheme}', which medrobust does not map yet; use a model with "
                      f"ZScore, CT, NoNormalization, RescaleTo01 or RGBTo01 normalisation.")


def describe_folder(folder: str | Path, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a trained-model folder's JSON files and settings (no weights): the spec and data defaults."""
    require_nnunet()
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    opts = check_options(NNUNetOptions, params, "nnunetv2")
    p = Path(folder)
    if not p.is_dir():
        raise CheckpointError(f"nnU-Net trained-model folder '{p}' does not exist; point at $nnUNet_results/DatasetXXX_Name/Trainer__Plans__configuration.")
    for name in ("plans.json", "dataset.json"):
        if not (p / name).is_file():
            raise CheckpointError(f"'{p}' is not an nnU-Net trained-model folder (no {name}); point at "
                                  f"$nnUNet_results/DatasetXXX_Name/Trainer__Plans__configuration.")
    plans, dj = _read_json(p / "plans.json"), _read_json(p / "dataset.json")
    parts = p.name.split("__")
    folds = _folds(opts.folds)
    ck0 = load_nnunet_checkpoint(p / f"fold_{folds[0]}" / opts.checkpoint_name, opts.trusted)
    configuration = str(ck0.get("init_args", {}).get("configuration") or (parts[2] if len(parts) == 3 else ""))
    if not configuration:
        raise CheckpointError(f"cannot tell the configuration of '{p}' (no init_args in the checkpoint, folder name not Trainer__Plans__configuration); rename the folder.")
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    label_map = label_map_from_dataset_json(dj.get("labels", {}), f"'{p / 'dataset.json'}'")
    dims = len(cm.patch_size)
    sa, perm = _axes(pm.transpose_forward, dims)
    mirror = ck0.get("inference_allowed_mirroring_axes")
    mirror_axes = [int(a) for a in mirror] if (mirror is not None and opts.mirroring) else None
    intensity, crop, units = _intensity(plans, cm, p)
    t = [int(v) for v in pm.transpose_forward]
    target = [-1.0, -1.0, -1.0]  # sitk order (z, y, x); -1 keeps the spacing (slice axis of 2d configs)
    off = 3 - dims
    for k, s in enumerate(cm.spacing):
        target[t[k + off]] = float(s)
    spacing = [target[2 - j] for j in range(3)] if opts.resample else None
    size_mr = [0] * dims
    for k, ps in enumerate(cm.patch_size):
        size_mr[perm[k]] = int(ps)
    n_in = len(dj.get("channel_names", dj.get("modality", {"0": "x"})))
    spec = {"name": f"nnunetv2:{p.parent.name}/{p.name}", "source": "nnunetv2", "spatial_dims": dims, "in_channels": n_in,
            "out_channels": len(label_map), "configuration": configuration, "plans": plans, "dataset_json": dj,
            "params": {"folder": str(p.resolve()), "folds": folds, "checkpoint_name": opts.checkpoint_name,
                       "trainer_name": str(ck0.get("trainer_name", parts[0] if parts else "nnUNetTrainer")),
                       "plans_name": pm.plans_name, "dataset_name": pm.dataset_name, "patch_size": list(cm.patch_size),
                       "perm": perm, "mirror_axes": mirror_axes, "stored_mirror_axes": list(mirror) if mirror is not None else None,
                       "tile_step_size": opts.tile_step_size, "normalisation": units}}
    data_defaults = {"dims": dims, "slice_axis": sa, "label_map": {int(k): v for k, v in label_map.items()},
                     "preprocess": {"spacing": spacing, "intensity": intensity, "crop_foreground": crop, "orientation": None,
                                    "size": None, "resize": None}}
    description = {"source": "nnunetv2", "folder": str(p.resolve()), "folds": folds, "checkpoint": opts.checkpoint_name,
                   "plans": pm.plans_name, "configuration": configuration, "trainer": spec["params"]["trainer_name"],
                   "dataset": pm.dataset_name, "mirroring": mirror_axes, "tile_step_size": opts.tile_step_size,
                   "normalisation": units}
    return {"spec": spec, "data_defaults": data_defaults, "description": description, "options": opts,
            "patch_size_medrobust": size_mr, "label_map": label_map}


def build_from_spec(spec: dict[str, Any]) -> NNUNetModel:
    """The architecture of a spec (random weights; a checkpoint's ``model_state`` is loaded next)."""
    p = spec["params"]
    nets = build_networks(spec["plans"], spec["dataset_json"], spec["configuration"], len(p["folds"]))
    return NNUNetModel(nets, p["patch_size"], p["perm"], p["mirror_axes"], p["tile_step_size"])


def load(folder: str | Path, params: dict[str, Any] | None, task: str = "segmentation") -> ExternalModel:
    """Load an nnU-Net trained-model folder (all requested folds) as an :class:`ExternalModel`."""
    from medrobust.config import DataConfig, parse_config
    from medrobust.data.transforms import intensity_bounds

    if task != "segmentation":
        raise ConfigError("nnU-Net models are segmentation models; use eval-seg / margins with task segmentation.")
    d = describe_folder(folder, params)
    spec, opts = d["spec"], d["options"]
    model = build_from_spec(spec)
    folder_p = Path(spec["params"]["folder"])
    for net, f in zip(model.networks, spec["params"]["folds"]):
        ck = load_nnunet_checkpoint(folder_p / f"fold_{f}" / opts.checkpoint_name, opts.trusted)
        state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ck["network_weights"].items()}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"fold {f} of '{folder_p}' does not match the network of its plans.json "
                                  f"({str(exc).splitlines()[0][:160]}); the folder's files come from different trainings.") from None
    data_cfg = parse_config(DataConfig, d["data_defaults"], "data defaults of the nnU-Net plans")
    info = {"task": "segmentation", "label_map": d["label_map"], "in_channels": spec["in_channels"], "spatial_dims": spec["spatial_dims"],
            "input_size": None, "preprocess": data_cfg.preprocess.model_dump(),
            "bounds": list(b) if (b := intensity_bounds(data_cfg.preprocess.intensity)) is not None else None,
            "intensity_kind": data_cfg.preprocess.intensity.kind}
    return ExternalModel(model.eval(), spec, info, d["data_defaults"], d["description"])


def training_data(spec: dict[str, Any], data_defaults: dict[str, Any]) -> dict[str, Any]:
    """Data settings forced for fine-tuning: the plans' preprocessing, random crops of the patch size."""
    p = spec["params"]
    size = [0] * len(p["patch_size"])
    for k, ps in enumerate(p["patch_size"]):
        size[p["perm"][k]] = int(ps)
    out = json.loads(json.dumps(data_defaults))
    out["preprocess"]["size"] = size
    return out


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", text) or "method"


def export(spec: dict[str, Any], model_state: dict[str, torch.Tensor], out_root: str | Path, method: str) -> Path:
    """Write a fine-tuned model as a new nnU-Net trained-model folder that ``nnUNetv2_predict`` runs unchanged.

    The folder is ``out_root/<dataset>/<Trainer>_medrobust_<method>__<Plans>__<configuration>`` with the
    original ``plans.json`` and ``dataset.json`` (and ``dataset_fingerprint.json`` when present) and
    ``fold_<k>/checkpoint_final.pth`` holding ``network_weights``, ``trainer_name`` (the original
    trainer class, so nnU-Net finds it), ``init_args`` and ``inference_allowed_mirroring_axes``.

    Args:
        spec: the model spec of the fine-tuned model (``source: nnunetv2``).
        model_state: the fine-tuned :class:`NNUNetModel` state dict.
        out_root: the new ``nnUNet_results`` folder.
        method: the medrobust training method (recorded in the trainer part of the folder name).

    Returns:
        The new trained-model folder.
    """
    from medrobust.utils import torch_save_atomic, write_text_atomic

    p = spec["params"]
    fold = p["folds"][0]
    trainer_dir = f"{p['trainer_name']}_medrobust_{_safe_name(method)}__{p['plans_name']}__{spec['configuration']}"
    dest = Path(out_root) / p["dataset_name"] / trainer_dir
    (dest / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    write_text_atomic(dest / "plans.json", json.dumps(spec["plans"], indent=2))
    write_text_atomic(dest / "dataset.json", json.dumps(spec["dataset_json"], indent=2))
    fp = Path(p["folder"]) / "dataset_fingerprint.json"
    if fp.is_file():
        shutil.copyfile(fp, dest / "dataset_fingerprint.json")
    weights = {k[len("networks.0."):]: v.detach().cpu().clone() for k, v in model_state.items() if k.startswith("networks.0.")}
    if not weights:
        raise CheckpointError("the fine-tuned state holds no 'networks.0.' weights; it is not an nnU-Net source model.")
    mirror = p.get("stored_mirror_axes")
    ck = {"network_weights": weights, "trainer_name": p["trainer_name"],
          "init_args": {"plans": spec["plans"], "configuration": spec["configuration"], "fold": fold,
                        "dataset_json": spec["dataset_json"], "device": "cpu"},
          "inference_allowed_mirroring_axes": tuple(mirror) if mirror is not None else None, "current_epoch": 0,
          "medrobust": {"method": method, "fine_tuned_from": p["folder"], "fold": str(fold), "checkpoint": p["checkpoint_name"]}}
    torch_save_atomic(ck, dest / f"fold_{fold}" / "checkpoint_final.pth")
    log.info("wrote the fine-tuned nnU-Net model to %s (predict with nnUNet_results=%s nnUNetv2_predict ... -tr %s -f %s)",
             dest, out_root, trainer_dir.split("__")[0], fold)
    return dest
