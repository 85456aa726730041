"""What every model source hands to medrobust: a network, a spec, the data info and data defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medrobust.errors import ConfigError


@dataclass
class ExternalModel:
    """A model read from outside medrobust's registry.

    Attributes:
        model: the network as medrobust calls it: ``(B, C, *spatial) -> (B, K, *spatial)`` logits in
            medrobust's axis order, on inputs already preprocessed (normalised) by the data chain.
        spec: the model spec stored in checkpoints (``source`` plus what rebuilds the architecture).
        data_info: :class:`medrobust.data.datasets.DataInfo` as a dict (labels, channels, dims, bounds).
        data_defaults: a partial ``data`` config (dims, slice axis, preprocessing) that reproduces the
            source's own preprocessing; a command's ``data:`` block is merged on top.
        description: where the model came from (source, folder, folds, checkpoint, plans, ...), for reports.
    """

    model: nn.Module
    spec: dict[str, Any]
    data_info: dict[str, Any]
    data_defaults: dict[str, Any]
    description: dict[str, Any] = field(default_factory=dict)

    def as_checkpoint(self) -> dict[str, Any]:
        """The dict that evaluation reads from a medrobust checkpoint (without weights)."""
        return {"model_spec": self.spec, "data_info": self.data_info, "config": {"data": self.data_defaults},
                "source": self.description}


def check_options(cls, params: dict[str, Any] | None, source: str):
    """Validate a source's ``model.params`` with the project's error style."""
    from medrobust.config import parse_config

    return parse_config(cls, dict(params or {}), f"model.params for source '{source}'")


def label_map_from_dataset_json(labels: dict[str, Any], where: str) -> dict[int, str]:
    """``{"background": 0, "organ": 1}`` (nnU-Net v2) -> ``{0: "background", 1: "organ"}``; refuses regions."""
    out: dict[int, str] = {}
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):
            raise ConfigError(f"{where} uses region-based labels ('{name}': {list(v)}), which medrobust's per-class "
                              f"losses and metrics do not take yet; use a model trained on plain integer labels.")
        if name == "ignore":
            continue
        out[int(v)] = str(name)
    if 0 not in out:
        raise ConfigError(f"{where} has no label with value 0 (background); add \"background\": 0 to its labels.")
    return dict(sorted(out.items()))
