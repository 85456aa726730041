"""TorchScript files as medrobust models (evaluation only).

The file is loaded with ``torch.jit.load`` (TorchScript archives hold code and tensors, never
arbitrary pickles). A TorchScript file carries no preprocessing: the command's ``data`` block
states it (``data.preprocess``, ``data.dims``), and the labels come from ``model.params.labels``
or ``data.label_map``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import Field
from torch import nn

from medrobust.config import Strict
from medrobust.errors import CheckpointError, ConfigError
from medrobust.models.sources.base import ExternalModel, check_options


class TorchScriptOptions(Strict):
    """``model.params`` of the ``torchscript`` source."""

    labels: Optional[dict[int, str]] = Field(None, description="label map, e.g. {0: background, 1: liver}; default data.label_map")
    spatial_dims: Optional[int] = Field(None, description="2 or 3 (default data.dims, else 2)")
    in_channels: int = 1
    roi_size: Optional[list[int]] = Field(None, description="sliding-window size for inputs larger than the model's patch")


class ScriptedModel(nn.Module):
    """Holds the scripted module (its outputs as plain tensors)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out


def load(path: str | Path, params: dict[str, Any] | None, task: str = "segmentation",
         data: Optional[dict[str, Any]] = None) -> ExternalModel:
    """Load a TorchScript file as an :class:`ExternalModel` (preprocessing from the ``data`` block)."""
    from medrobust.config import DataConfig, parse_config
    from medrobust.data.transforms import intensity_bounds

    opts = check_options(TorchScriptOptions, params, "torchscript")
    p = Path(path)
    try:
        module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"'{p}' is not a TorchScript file ({str(exc).splitlines()[0][:160]}); export the model with torch.jit.script / torch.jit.save.") from None
    data = dict(data or {})
    labels = opts.labels or data.get("label_map")
    if not labels:
        raise ConfigError(f"the TorchScript model '{p}' carries no labels; set model.params.labels (e.g. {{0: background, 1: organ}}) or data.label_map.")
    labels = {int(k): str(v) for k, v in labels.items()}
    if not data.get("preprocess"):
        raise ConfigError(f"the TorchScript model '{p}' carries no preprocessing; state it in the data block (data.preprocess.intensity, spacing, ...).")
    dims = int(opts.spatial_dims or data.get("dims") or 2)
    defaults = {"dims": dims, "label_map": labels}
    data_cfg = parse_config(DataConfig, {**data, **defaults}, "data of the TorchScript model")
    spec = {"name": f"torchscript:{p.name}", "source": "torchscript", "spatial_dims": dims, "in_channels": opts.in_channels,
            "out_channels": len(labels), "params": {"file": str(p.resolve()), **opts.model_dump(exclude={"labels"})}}
    info = {"task": task, "label_map": labels, "in_channels": opts.in_channels, "spatial_dims": dims,
            "input_size": opts.roi_size, "preprocess": data_cfg.preprocess.model_dump(),
            "bounds": list(b) if (b := intensity_bounds(data_cfg.preprocess.intensity)) is not None else None,
            "intensity_kind": data_cfg.preprocess.intensity.kind}
    description = {"source": "torchscript", "file": str(p.resolve()), "roi_size": opts.roi_size}
    return ExternalModel(ScriptedModel(module).eval(), spec, info, defaults, description)
