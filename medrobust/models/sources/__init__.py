"""Model sources beside the registry: bring your own trained model.

``model.source`` picks where a model comes from:

- ``registry``: medrobust's own networks (:func:`medrobust.models.create_model`), the default;
- ``nnunetv2``: an nnU-Net v2 trained-model folder (``DatasetXXX_Name/Trainer__Plans__configuration``),
  its fold(s) and checkpoint; network, preprocessing and sliding-window inference from the plans;
- ``monai_bundle``: a MONAI bundle folder (``configs/inference.json|yaml``, ``models/model.pt``);
- ``torchscript``: a TorchScript file plus the preprocessing stated in the command's ``data`` block.

``eval-seg`` and ``margins`` take such a model in ``checkpoint`` (the folder or file; the source is
detected, or set with ``model: {source: ..., params: {...}}``). ``train-seg`` fine-tunes one with
``init_from`` and writes it back in the source's own format (a new nnU-Net trained-model folder, or
a bundle copy with a new ``models/model.pt``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Optional

from medrobust.errors import CheckpointError, ConfigError
from medrobust.models.sources.base import ExternalModel

SOURCES: dict[str, str] = {
    "registry": "medrobust's own networks (medrobust list models); checkpoints written by train-seg / train-classify",
    "nnunetv2": "nnU-Net v2 trained-model folder + fold(s) + checkpoint name (pip install medrobust[nnunet])",
    "monai_bundle": "MONAI bundle folder: configs/inference.json|yaml + models/model.pt, read with monai.bundle.ConfigParser",
    "torchscript": "TorchScript file (torch.jit.save) + the preprocessing given in the data config",
}


def list_sources() -> dict[str, str]:
    """Source name -> one-line description."""
    return dict(SOURCES)


def detect_source(path: str | Path | None) -> Optional[str]:
    """The source a path belongs to (``None`` for a medrobust checkpoint or an unknown path)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        if (p / "plans.json").is_file() and (p / "dataset.json").is_file():
            return "nnunetv2"
        if any((p / "configs" / f"inference.{e}").is_file() for e in ("json", "yaml", "yml")):
            return "monai_bundle"
        return None
    if p.is_file() and zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
    return None


def external_source(path: str | Path | None, model_cfg: Any = None) -> Optional[str]:
    """The non-registry source to use for ``path``, from ``model.source`` or detected; ``None`` for the registry."""
    src = getattr(model_cfg, "source", None) if model_cfg is not None else None
    if src is not None and src != "registry":
        return src
    if src == "registry" and model_cfg is not None and "source" in getattr(model_cfg, "model_fields_set", set()):
        return None
    return detect_source(path)


def load_external(path: str | Path, source: str, params: dict[str, Any] | None = None, task: str = "segmentation",
                  data: dict[str, Any] | None = None) -> ExternalModel:
    """Load a model from a source.

    Args:
        path: the nnU-Net trained-model folder, bundle folder or TorchScript file.
        source: ``nnunetv2``, ``monai_bundle`` or ``torchscript``.
        params: the source's options (``model.params``).
        task: the command's task.
        data: the command's ``data`` block (the TorchScript source reads its labels and dims there).

    Returns:
        The :class:`ExternalModel`.

    Raises:
        ConfigError / CheckpointError: unknown source, missing files, unsafe content (one sentence each).
    """
    if path is None or not Path(path).exists():
        raise CheckpointError(f"the {source} model '{path}' does not exist; check the path given in checkpoint / init_from.")
    if source == "nnunetv2":
        from medrobust.models.sources import nnunetv2

        return nnunetv2.load(path, params, task)
    if source == "monai_bundle":
        from medrobust.models.sources import monai_bundle

        return monai_bundle.load(path, params, task)
    if source == "torchscript":
        from medrobust.models.sources import torchscript

        return torchscript.load(path, params, task, data)
    raise ConfigError(f"unknown model source '{source}'; use one of {', '.join(SOURCES)}.")


def build_from_spec(spec: dict[str, Any]):
    """The architecture of a source model spec stored in a medrobust checkpoint (weights loaded after)."""
    source = spec.get("source")
    if source == "nnunetv2":
        from medrobust.models.sources import nnunetv2

        return nnunetv2.build_from_spec(spec)
    if source == "monai_bundle":
        from medrobust.models.sources import monai_bundle

        return monai_bundle.build_from_spec(spec)
    raise CheckpointError(f"a checkpoint with a '{source}' model cannot be rebuilt without its original file; evaluate that file directly.")


def load_for_checkpoint(path: str | Path, model_cfg: Any, expect_task: Optional[str], data: dict[str, Any] | None = None):
    """``(model, checkpoint-like dict)`` for an external model, as :func:`medrobust.checkpoint.load_model_from_checkpoint` returns."""
    source = external_source(path, model_cfg)
    params = dict(getattr(model_cfg, "params", None) or {})
    ext = load_external(path, source, params, expect_task or "segmentation", data)
    return ext.model, ext.as_checkpoint()


def export_trained(spec: dict[str, Any], model_state: dict[str, Any], run_dir: str | Path, method: str) -> Optional[Path]:
    """After fine-tuning a source model, write it back in the source's own format (``None`` for registry models)."""
    source = spec.get("source")
    if source == "nnunetv2":
        from medrobust.models.sources import nnunetv2

        return nnunetv2.export(spec, model_state, Path(run_dir) / "nnUNet_results", method)
    if source == "monai_bundle":
        from medrobust.models.sources import monai_bundle

        return monai_bundle.export(spec, model_state, Path(run_dir) / "bundle", method)
    return None


__all__ = ["SOURCES", "ExternalModel", "list_sources", "detect_source", "external_source", "load_external", "build_from_spec",
           "load_for_checkpoint", "export_trained"]
