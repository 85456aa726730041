"""Typed, validated configs: YAML in (safe loader), one clear sentence out on any error.

Every config is a pydantic model with ``extra="forbid"``: an unknown key is an error that
suggests the closest valid key. Paths inside a config resolve relative to the YAML file that
holds them; the token ``${data_root}`` expands to the data root (``data.root``, else
``$MEDROBUST_DATA_ROOT``, else ``../shared/datasets``).

Overrides use dotted keys with YAML values: ``--set epochs=3 --set data.split.seed=1``.

The package, one module per concern (every public name is re-exported here, so
``from medrobust.config import TrainConfig`` keeps working):

- :mod:`~medrobust.config.common`: schemas shared by the commands (data, model, threat, inference);
  ``Strict`` and the task settings come from :mod:`medrobust.schema`;
- :mod:`~medrobust.config.train`, :mod:`~medrobust.config.evaluate`, :mod:`~medrobust.config.margins`:
  one root schema per command;
- :mod:`~medrobust.config.loading`: YAML, ``_base_``, overrides, the error sentence, ``load_config``;
- :mod:`~medrobust.config.paths`: path resolution; :mod:`~medrobust.config.plugins`: method / attack specs.
"""

from __future__ import annotations

from medrobust.config.common import (
    AugmentConfig,
    DataConfig,
    InferenceConfig,
    IntensityConfig,
    MedMNISTConfig,
    ModelConfig,
    PhantomConfig,
    PreprocessConfig,
    SegLossConfig,
    SplitConfig,
    Strict,
    SuccessConfig,
    ThreatConfig,
)
from medrobust.config.evaluate import EvalConfig
from medrobust.config.loading import (
    apply_overrides,
    deep_merge,
    format_validation_error,
    load_config,
    load_yaml,
    parse_config,
    parse_override,
    resolve_bases,
    safe_load_unique,
    unwrap_model,
)
from medrobust.config.margins import MarginsConfig
from medrobust.config.paths import expand_data_root, resolve_config_paths, resolve_data_paths, resolve_path
from medrobust.config.plugins import check_params, plugin_spec
from medrobust.config.train import (
    ComputeBudgetConfig,
    DistributedConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    ValAttackConfig,
)

__all__ = [
    "AugmentConfig", "ComputeBudgetConfig", "DataConfig", "DistributedConfig", "EvalConfig", "InferenceConfig",
    "IntensityConfig", "MarginsConfig", "MedMNISTConfig", "ModelConfig", "OptimConfig", "PhantomConfig",
    "PreprocessConfig", "ScheduleConfig", "SegLossConfig", "SplitConfig", "Strict", "SuccessConfig", "ThreatConfig",
    "TrainConfig", "ValAttackConfig", "apply_overrides", "check_params", "deep_merge", "expand_data_root",
    "format_validation_error", "load_config", "load_yaml", "parse_config", "parse_override", "plugin_spec",
    "resolve_bases", "resolve_config_paths", "resolve_data_paths", "resolve_path", "safe_load_unique", "unwrap_model",
]
