"""MONAI bundles as medrobust models.

A bundle folder holds ``configs/inference.json`` (or ``.yaml``), ``configs/metadata.json`` and
``models/model.pt``. This source reads the config with ``monai.bundle.ConfigParser``:

- ``network_def`` builds the network; ``models/model.pt`` (a state dict, or ``{"model": state}``)
  is loaded with ``torch.load(weights_only=True)`` and a strict ``load_state_dict``;
- ``preprocessing`` (a ``Compose``) is translated into medrobust's data chain: ``Orientationd``,
  ``Spacingd``, ``ScaleIntensityRanged`` (a window), ``NormalizeIntensityd`` (z-score),
  ``ScaleIntensityd`` (min-max), ``CropForegroundd``; loading / channel / type transforms are
  skipped, anything else is refused with its name (list it in ``ignore_transforms`` to skip it);
- ``inferer`` (e.g. ``SlidingWindowInferer`` with its ROI size and overlap) runs the network at
  evaluation, exactly as the bundle does; MONAI's inferers are differentiable, so attacks work.

Bundle configs run code (``$`` expressions, ``imports``, any ``_target_``). A bundle whose config
has ``$`` expressions, ``imports`` or targets outside ``monai`` / ``torch`` is refused unless
``trusted: true``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import Field
from torch import nn

from medrobust.config import Strict
from medrobust.errors import CheckpointError, ConfigError
from medrobust.models.sources.base import ExternalModel, check_options

log = logging.getLogger(__name__)

SKIP = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "AddChanneld", "EnsureTyped", "EnsureType",
        "ToTensord", "ToTensor", "CastToTyped", "CastToType", "Identityd", "Identity", "ToDeviced", "EnsureTyped"}


class BundleOptions(Strict):
    """``model.params`` of the ``monai_bundle`` source."""

    config_file: Optional[str] = Field(None, description="inference config inside the bundle (default configs/inference.json|yaml|yml)")
    weights: str = Field("models/model.pt", description="state dict inside the bundle")
    network_key: str = "network_def"
    preprocessing_key: str = "preprocessing"
    inferer_key: str = "inferer"
    labels: Optional[dict[int, str]] = Field(None, description="label map (default: metadata channel_def, else class_k)")
    spatial_dims: Optional[int] = None
    in_channels: Optional[int] = None
    ignore_transforms: list[str] = Field(default_factory=list, description="preprocessing transforms to skip (by class name)")
    trusted: bool = Field(False, description="allow configs with $ expressions, imports or non-MONAI targets (they run code)")


def _config_file(folder: Path, opts: BundleOptions) -> Path:
    if opts.config_file:
        f = folder / opts.config_file
        if not f.is_file():
            raise CheckpointError(f"bundle config '{f}' does not exist; fix model.params.config_file.")
        return f
    for ext in ("json", "yaml", "yml"):
        f = folder / "configs" / f"inference.{ext}"
        if f.is_file():
            return f
    raise CheckpointError(f"'{folder}' is not a MONAI bundle (no configs/inference.json or .yaml); point at the bundle folder.")


def _untrusted_parts(obj: Any, path: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "imports":
                out.append(f"{path}imports")
            elif k == "_target_" and isinstance(v, str) and "." in v and not v.startswith(("monai.", "torch.")):
                out.append(f"{path}_target_ {v}")
            out += _untrusted_parts(v, f"{path}{k}#")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _untrusted_parts(v, f"{path}{i}#")
    elif isinstance(obj, str) and obj.startswith("$"):
        out.append(f"{path.rstrip('#')} = {obj[:60]}")
    return out


def _parser(folder: Path, opts: BundleOptions):
    from monai.bundle import ConfigParser

    cfg_file = _config_file(folder, opts)
    p = ConfigParser()
    try:
        p.read_config(str(cfg_file))
        meta = folder / "configs" / "metadata.json"
        if meta.is_file():
            p.read_meta(str(meta))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"bundle config '{cfg_file}' could not be read ({str(exc).splitlines()[0][:160]}); fix its syntax.") from None
    raw = p.get("") or {}
    bad = _untrusted_parts({k: v for k, v in raw.items() if k != "_meta_"})
    if bad and not opts.trusted:
        raise ConfigError(f"bundle '{folder}' runs code from its config ({bad[0]}{' and more' if len(bad) > 1 else ''}); "
                          f"medrobust only parses such a bundle if you trust it: set model.params.trusted: true.")
    p["bundle_root"] = str(folder)
    if (folder / "scripts").is_dir():
        if not opts.trusted:
            raise ConfigError(f"bundle '{folder}' ships Python scripts (scripts/); set model.params.trusted: true if you trust it.")
        import sys

        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return p, cfg_file


def _parsed(p, key: str, what: str, folder: Path):
    if key not in (p.get("") or {}):
        raise ConfigError(f"bundle '{folder}' has no '{key}' in its inference config; set model.params.{what}_key to the key that holds the {what}.")
    try:
        return p.get_parsed_content(key, lazy=False)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"bundle '{folder}': '{key}' could not be built ({str(exc).splitlines()[0][:160]}); fix the bundle config.") from None


def translate_preprocessing(p, key: str, folder: Path, ignore: list[str]) -> dict[str, Any]:
    """The bundle's preprocessing as medrobust ``data.preprocess`` settings."""
    raw = p.get(f"{key}#transforms")
    if raw is None:
        raise ConfigError(f"bundle '{folder}': '{key}' is not a Compose with a 'transforms' list; medrobust cannot read its preprocessing.")
    pre: dict[str, Any] = {"orientation": None, "spacing": None, "intensity": {"kind": "none"}, "crop_foreground": False,
                           "size": None, "resize": None}
    n_int = 0
    for i, t in enumerate(raw):
        name = str(t.get("_target_", "")).split(".")[-1] if isinstance(t, dict) else ""

        def arg(a, default=None):
            return p.get_parsed_content(f"{key}#transforms#{i}#{a}") if a in t else default

        if name in SKIP or name in ignore:
            continue
        if name == "Orientationd":
            pre["orientation"] = str(arg("axcodes"))
        elif name == "Spacingd":
            pix = arg("pixdim")
            pre["spacing"] = [float(v) for v in (pix if isinstance(pix, (list, tuple)) else [pix])]
        elif name == "ScaleIntensityRanged":
            pre["intensity"] = {"kind": "window", "a_min": float(arg("a_min")), "a_max": float(arg("a_max")),
                                "b_min": float(arg("b_min", 0.0) if arg("b_min") is not None else 0.0),
                                "b_max": float(arg("b_max", 1.0) if arg("b_max") is not None else 1.0), "clip": bool(arg("clip", False))}
            n_int += 1
        elif name == "NormalizeIntensityd":
            if arg("subtrahend") is not None or arg("divisor") is not None:
                raise ConfigError(f"bundle '{folder}': NormalizeIntensityd with a fixed subtrahend/divisor is not mapped yet; list it in model.params.ignore_transforms only if you handle it in data.preprocess.")
            pre["intensity"] = {"kind": "zscore", "nonzero": bool(arg("nonzero", False))}
            n_int += 1
        elif name == "ScaleIntensityd":
            pre["intensity"] = {"kind": "minmax", "b_min": float(arg("minv", 0.0)), "b_max": float(arg("maxv", 1.0))}
            n_int += 1
        elif name == "CropForegroundd":
            pre["crop_foreground"] = True
        else:
            raise ConfigError(f"bundle '{folder}': the preprocessing transform '{name}' (#{i}) has no medrobust equivalent; "
                              f"list it in model.params.ignore_transforms to skip it, and state its effect in data.preprocess.")
    if n_int > 1:
        raise ConfigError(f"bundle '{folder}' normalises intensities {n_int} times; medrobust maps a single intensity step.")
    return pre


class BundleModel(nn.Module):
    """The bundle's network run through the bundle's inferer (eval) or directly (train).

    ``forward(x)``: ``x (B, C, *spatial)`` preprocessed as the bundle preprocesses; returns logits.
    """

    def __init__(self, network: nn.Module, inferer: Any = None) -> None:
        super().__init__()
        self.network = network
        self.inferer = inferer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.inferer is None:
            out = self.network(x)
        else:
            out = self.inferer(x, self.network)
        return out.as_tensor() if hasattr(out, "as_tensor") else out


def _describe(folder: str | Path, params: dict[str, Any] | None) -> tuple[BundleOptions, Any, Path, nn.Module, Any, dict[str, Any]]:
    opts = check_options(BundleOptions, params, "monai_bundle")
    f = Path(folder).resolve()
    if not f.is_dir():
        raise CheckpointError(f"MONAI bundle folder '{f}' does not exist; check the path.")
    p, cfg_file = _parser(f, opts)
    net = _parsed(p, opts.network_key, "network", f)
    inferer = _parsed(p, opts.inferer_key, "inferer", f) if opts.inferer_key in (p.get("") or {}) else None
    pre = translate_preprocessing(p, opts.preprocessing_key, f, opts.ignore_transforms)
    return opts, p, cfg_file, net, inferer, pre


def _labels(opts: BundleOptions, p, net: nn.Module, folder: Path) -> dict[int, str]:
    if opts.labels:
        return {int(k): str(v) for k, v in opts.labels.items()}
    meta = p.get("_meta_") or {}
    chdef = (((meta.get("network_data_format") or {}).get("outputs") or {}).get("pred") or {}).get("channel_def")
    if isinstance(chdef, dict) and chdef:
        return {int(k): str(v) for k, v in sorted(chdef.items(), key=lambda kv: int(kv[0]))}
    n = getattr(net, "out_channels", None)
    if isinstance(n, int):
        return {k: ("background" if k == 0 else f"class_{k}") for k in range(n)}
    raise ConfigError(f"cannot tell the labels of bundle '{folder}' (no channel_def in metadata.json); set model.params.labels, e.g. {{0: background, 1: spleen}}.")


def _dims(opts: BundleOptions, net: nn.Module, inferer: Any) -> int:
    if opts.spatial_dims:
        return int(opts.spatial_dims)
    for attr in ("dimensions", "spatial_dims"):
        v = getattr(net, attr, None)
        if isinstance(v, int):
            return v
    roi = getattr(inferer, "roi_size", None)
    return len(roi) if roi is not None else 3


def load(folder: str | Path, params: dict[str, Any] | None, task: str = "segmentation") -> ExternalModel:
    """Load a MONAI bundle (network, weights, preprocessing, inferer) as an :class:`ExternalModel`."""
    from medrobust.config import DataConfig, parse_config
    from medrobust.data.transforms import intensity_bounds

    opts, p, cfg_file, net, inferer, pre = _describe(folder, params)
    f = Path(folder).resolve()
    wfile = f / opts.weights
    if not wfile.is_file():
        raise CheckpointError(f"bundle weights '{wfile}' do not exist; fix model.params.weights (usually models/model.pt).")
    try:
        state = torch.load(wfile, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"bundle weights '{wfile}' could not be loaded safely ({str(exc).splitlines()[0][:160]}); "
                              f"save them as a plain state dict (torch.save(net.state_dict(), ...)).") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"bundle weights '{wfile}' do not fit its network_def ({str(exc).splitlines()[0][:160]}); they come from another network.") from None
    labels = _labels(opts, p, net, f)
    dims = _dims(opts, net, inferer)
    meta = p.get("_meta_") or {}
    in_ch = opts.in_channels or (((meta.get("network_data_format") or {}).get("inputs") or {}).get("image") or {}).get("num_channels") \
        or getattr(net, "in_channels", None) or 1
    roi = getattr(inferer, "roi_size", None)
    defaults = {"dims": dims, "label_map": {int(k): v for k, v in labels.items()}, "preprocess": pre}
    data_cfg = parse_config(DataConfig, defaults, "data defaults of the bundle preprocessing")
    spec = {"name": f"monai_bundle:{f.name}", "source": "monai_bundle", "spatial_dims": dims, "in_channels": int(in_ch),
            "out_channels": len(labels),
            "params": {"folder": str(f), **opts.model_dump(exclude={"labels"}), "roi_size": list(roi) if roi is not None else None,
                       "version": str(meta.get("version", ""))}}
    info = {"task": task, "label_map": labels, "in_channels": int(in_ch), "spatial_dims": dims, "input_size": None,
            "preprocess": data_cfg.preprocess.model_dump(),
            "bounds": list(b) if (b := intensity_bounds(data_cfg.preprocess.intensity)) is not None else None,
            "intensity_kind": data_cfg.preprocess.intensity.kind}
    description = {"source": "monai_bundle", "folder": str(f), "config": str(cfg_file.relative_to(f)), "weights": opts.weights,
                   "version": str(meta.get("version", "")), "inferer": type(inferer).__name__ if inferer is not None else None,
                   "roi_size": list(roi) if roi is not None else None, "overlap": getattr(inferer, "overlap", None)}
    return ExternalModel(BundleModel(net, inferer).eval(), spec, info, defaults, description)


def build_from_spec(spec: dict[str, Any]) -> BundleModel:
    """The bundle's network and inferer from its folder (weights loaded from a medrobust checkpoint next)."""
    params = {k: v for k, v in spec["params"].items() if k in BundleOptions.model_fields}
    _, _, _, net, inferer, _ = _describe(spec["params"]["folder"], params)
    return BundleModel(net, inferer)


def training_data(spec: dict[str, Any], data_defaults: dict[str, Any]) -> dict[str, Any]:
    """Data settings for fine-tuning: the bundle's preprocessing; crops of the inferer's ROI size."""
    out = json.loads(json.dumps(data_defaults))
    out["preprocess"]["size"] = spec["params"].get("roi_size")
    return out


def export(spec: dict[str, Any], model_state: dict[str, torch.Tensor], dest: str | Path, method: str) -> Path:
    """Copy the bundle to ``dest`` with the fine-tuned ``models/model.pt`` (a flat state dict).

    ``models/model.ts`` (if any) is removed, since it would hold the old weights; ``metadata.json``
    gets a patch-version bump and a changelog entry naming the medrobust method.
    """
    from medrobust.utils import torch_save_atomic, write_text_atomic

    src = Path(spec["params"]["folder"])
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("model.ts", "*.ts"))
    weights = {k[len("network."):]: v.detach().cpu().clone() for k, v in model_state.items() if k.startswith("network.")}
    if not weights:
        raise CheckpointError("the fine-tuned state holds no 'network.' weights; it is not a MONAI-bundle source model.")
    torch_save_atomic(weights, dest / spec["params"].get("weights", "models/model.pt"))
    meta_f = dest / "configs" / "metadata.json"
    if meta_f.is_file():
        meta = json.loads(meta_f.read_text())
        old = str(meta.get("version", "0.0.0"))
        parts = old.split(".")
        if parts and parts[-1].isdigit():
            parts[-1] = str(int(parts[-1]) + 1)
        new = ".".join(parts) if parts else "0.0.1"
        meta["version"] = new
        meta.setdefault("changelog", {})[new] = f"fine-tuned with medrobust ({method}) from version {old}"
        write_text_atomic(meta_f, json.dumps(meta, indent=4))
    log.info("wrote the fine-tuned bundle to %s", dest)
    return dest
