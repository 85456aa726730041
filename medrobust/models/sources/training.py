"""Fine-tuning a source model (nnU-Net folder, MONAI bundle) with any medrobust method."""

from __future__ import annotations

import logging
from typing import Any, Optional

from medrobust.errors import ConfigError
from medrobust.models.sources.base import ExternalModel

log = logging.getLogger(__name__)


def prepare_source_training(cfg: Any) -> tuple[Any, Optional[ExternalModel]]:
    """If ``init_from`` is an nnU-Net folder or bundle (or ``model.source`` says so), load it.

    The source's preprocessing replaces ``data.dims``, ``data.slice_axis`` and ``data.preprocess``
    (spacing, normalisation, crop) so that training sees exactly the source model's inputs; the
    training crop is the source's patch / ROI size unless ``data.preprocess.size`` is set.

    Args:
        cfg: a :class:`medrobust.config.TrainConfig`.

    Returns:
        ``(cfg, None)`` for registry models; otherwise a copy of ``cfg`` with the source's data
        settings and the loaded :class:`ExternalModel` (weights of the requested fold).

    Raises:
        ConfigError: a source without ``init_from``, several folds, or a TorchScript model.
    """
    from medrobust.config import DataConfig, deep_merge, parse_config
    from medrobust.models.sources import external_source, load_external

    source = external_source(cfg.init_from, cfg.model) if (cfg.init_from or cfg.model.source != "registry") else None
    if source is None:
        return cfg, None
    if not cfg.init_from:
        raise ConfigError(f"model.source is '{source}' but init_from is not set; point init_from at the model folder to fine-tune.")
    if source == "torchscript":
        raise ConfigError("a TorchScript model cannot be fine-tuned and written back (its architecture is frozen code); "
                          "fine-tune the nnU-Net folder or MONAI bundle it came from instead.")
    if cfg.task != "segmentation":
        raise ConfigError(f"the {source} source holds segmentation models; use train-seg.")
    params = dict(cfg.model.params or {})
    if source == "nnunetv2":
        folds = params.get("folds", [0])
        folds = folds if isinstance(folds, list) else [folds]
        if len(folds) != 1:
            raise ConfigError(f"fine-tuning starts from one fold, but model.params.folds is {folds}; set it to one fold, e.g. [0].")
    ext = load_external(cfg.init_from, source, params, cfg.task)
    if source == "nnunetv2":
        from medrobust.models.sources.nnunetv2 import training_data

        forced = training_data(ext.spec, ext.data_defaults)
    else:
        from medrobust.models.sources.monai_bundle import training_data

        forced = training_data(ext.spec, ext.data_defaults)
    if cfg.data.preprocess.size:
        forced["preprocess"]["size"] = list(cfg.data.preprocess.size)
    merged = deep_merge(cfg.data.model_dump(), forced)
    cfg = cfg.model_copy(deep=True)
    cfg.data = parse_config(DataConfig, merged, f"data (with the preprocessing of the {source} model)")
    cfg.model.source = source
    log.info("fine-tuning the %s model %s; its preprocessing is used: %s", source, cfg.init_from, forced["preprocess"])
    return cfg, ext
