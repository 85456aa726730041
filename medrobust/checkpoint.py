"""Checkpoints: everything needed to rebuild a model and its inputs, loaded with ``weights_only=True``.

A checkpoint holds the model spec and weights, the data info (label map, channels, dims), the
preprocessing record (so evaluation rebuilds the same inputs and knows intensity bounds and
native units), the resolved training config, the training state (optimiser, epoch, RNG states,
history) and the per-sample method state (IMA margins, IAAT radii). Only plain containers,
numbers, strings and tensors are stored, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medrobust.errors import CheckpointError
from medrobust.utils import torch_save_atomic

FORMAT = "medrobust-checkpoint/1"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    payload = {"format": FORMAT, **payload}
    torch_save_atomic(payload, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a medrobust checkpoint safely; one clear sentence for every way this can fail."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return load_checkpoint(p / name, map_location)
        raise CheckpointError(f"checkpoint '{p}' is a folder without best.pt or last.pt; give a checkpoint file (a run folder's best.pt).")
    if not p.is_file():
        hint = " (did the training run finish? its run folder holds best.pt and last.pt)" if p.suffix == ".pt" else ""
        raise CheckpointError(f"checkpoint '{p}' does not exist{hint}; check the path.")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        import zipfile

        text = str(exc).strip()
        if "Weights only load failed" in text or "weights_only" in text:
            first = "it holds Python objects other than tensors and plain data, which are never unpickled"
        elif not zipfile.is_zipfile(p):
            first = "not a complete PyTorch zip archive"
        else:
            first = text.splitlines()[0].split(". ")[0][:160] if text else type(exc).__name__
        raise CheckpointError(f"checkpoint '{p}' could not be loaded safely ({first}); it is corrupt, truncated, or not a medrobust checkpoint.") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"'{p}' is not a medrobust checkpoint (no '{FORMAT}' marker); use best.pt or last.pt from a medrobust run folder.")
    for key in ("model_spec", "model_state", "data_info"):
        if key not in ck:
            raise CheckpointError(f"checkpoint '{p}' lacks '{key}'; it is incomplete, re-run the training.")
    return ck


def load_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu", expect_task: str | None = None,
                               command: str | None = None, model_cfg: Any = None, data: dict[str, Any] | None = None):
    """Rebuild the model of a checkpoint: returns ``(model in eval mode, checkpoint dict)``.

    A run folder is accepted and its ``best.pt`` used. ``command`` (e.g. ``margins``) words the
    hint when the checkpoint's task differs from ``expect_task``. ``path`` may also be an nnU-Net
    trained-model folder, a MONAI bundle or a TorchScript file (detected, or named by
    ``model_cfg.source``); see :mod:`medrobust.models.sources`.
    """
    from medrobust.models import build_model, load_state_checked
    from medrobust.models.sources import external_source, load_for_checkpoint

    if external_source(path, model_cfg) is not None:
        model, ck = load_for_checkpoint(path, model_cfg, expect_task, data)
        return model.to(device).eval(), ck

    ck = load_checkpoint(path)
    task = ck["data_info"].get("task")
    if expect_task is not None and task != expect_task:
        if command == "margins":
            raise CheckpointError(f"checkpoint '{path}' is a {task} model but the margins config says task: {expect_task}; "
                                  f"set task: {task} in the margins config.")
        cmd = "eval-seg" if task == "segmentation" else "eval-classify"
        raise CheckpointError(f"checkpoint '{path}' is a {task} model, not a {expect_task} one; use `medrobust {cmd}` for it.")
    model = build_model(ck["model_spec"])
    load_state_checked(model, ck["model_state"], str(path))
    model.to(device).eval()
    return model, ck
