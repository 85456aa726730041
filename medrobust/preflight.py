"""Check a command's config against the registries before any work: a typo fails in the first second.

The schemas in :mod:`medrobust.config` check every key they own, but a training method's, an
attack's and a model's parameters belong to the plug-in and were only checked when it was built,
i.e. after the data was read, cached and (for training) the output folder claimed.
:func:`check_config` runs those same checks (the same registries, the same one-sentence
:class:`~medrobust.errors.ConfigError`) on the config alone; the CLI and pipeline steps call it
before handing the config to ``train`` / ``evaluate`` / ``run_margins``.

It lives above the config package (it imports the method, attack and model registries, which
import the config), beside :mod:`medrobust.pipelines`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from medrobust.config import EvalConfig, MarginsConfig, ModelConfig, TrainConfig, check_params, plugin_spec
from medrobust.errors import ConfigError

__all__ = ["check_attack", "check_config", "check_method", "check_model"]

Spec = Union[str, dict[str, Any]]


def check_config(cfg: Any) -> None:
    """Validate the method, attack and model parts of a train / eval / margins config.

    Args:
        cfg: a :class:`TrainConfig`, :class:`EvalConfig` or :class:`MarginsConfig` (other
            objects are left alone).

    Raises:
        ConfigError: an unknown method, attack or model name, a parameter it does not take, or
            a value its parameter schema refuses (the same sentence the build would give later).
    """
    if isinstance(cfg, TrainConfig):
        method = check_method(cfg.method)
        if _registry_model(cfg):
            check_model(cfg.model, cfg.task, cfg.data.dims, cfg.data.phantom.channels if cfg.data.source == "phantom" else None)
        va = cfg.val_attack
        if va.enabled is True or (va.enabled == "auto" and method != "standard"):
            name, params = plugin_spec(va.attack, "validation attack")
            if params.get("loss", "auto") == "auto":  # as the validator resolves it (robust_validation)
                params["loss"] = "dice_ce" if cfg.task == "segmentation" else "ce"
            params.setdefault("seed", 0)
            check_attack({"name": name, **params})
    elif isinstance(cfg, EvalConfig):
        from medrobust.attacks import expand_presets

        for spec in expand_presets(cfg.attacks):
            check_attack(spec)
    elif isinstance(cfg, MarginsConfig):
        spec = cfg.attack if isinstance(cfg.attack, dict) else {"name": cfg.attack}
        check_attack({**spec, "seed": spec.get("seed", cfg.seed)})


def _registry_model(cfg: TrainConfig) -> bool:
    """Does training build ``cfg.model`` from the registry? (Not when ``init_from`` is an nnU-Net folder or a
    bundle, whose options ``model.params`` then holds, nor when ``init_from`` does not exist yet: an earlier
    pipeline step may write it.)"""
    if cfg.model.source != "registry":
        return False
    if not cfg.init_from:
        return True
    from medrobust.models.sources import external_source

    return Path(cfg.init_from).exists() and external_source(cfg.init_from, cfg.model) is None


def check_method(spec: Spec) -> str:
    """Check a training-method spec (and a wrapper's ``base`` method); returns its name.

    Raises:
        ConfigError: unknown method, or parameters its ``Params`` schema refuses.
    """
    from medrobust.training import METHODS

    name, params = plugin_spec(spec, "method")
    cls = METHODS.lookup(name)  # "unknown training method 'x'; did you mean 'y'?"
    p = check_params(cls.Params, params, f"method '{name}'")
    base = getattr(p, "base", None)  # awp / avg_margin wrap another method
    if isinstance(base, (str, dict)):
        check_method(base)
    return name


def check_attack(spec: Spec) -> str:
    """Check an attack spec (name and parameters); returns its name.

    Raises:
        ConfigError: unknown attack, or parameters its ``Params`` schema refuses.
    """
    from medrobust.attacks import ATTACKS

    name, params = plugin_spec(spec, "attack")
    cls = ATTACKS.lookup(name)  # "unknown attack 'x'; did you mean 'y'?"
    check_params(cls.Params, params, f"attack '{name}'")
    return name


def check_model(model: ModelConfig, task: str, dims: int | None = None, channels: int | None = None) -> None:
    """Check a registry model: its name, its task and its parameter names, without weights or data.

    The network is built on PyTorch's ``meta`` device (no memory, no initialisation) with the
    config's spatial dims and channels where it gives them (else the model's first supported dims,
    1 input channel, 2 outputs), so a parameter the constructor does not take fails here with the
    build's own sentence. Errors that could come from those stand-in sizes are left to the real build.

    Raises:
        ConfigError: unknown model, a model of the other task or dims, or a parameter it does not take.
    """
    import torch

    from medrobust.models.registry import MODELS, build_model, resolve_spec

    entry = MODELS.lookup(model.name)  # "unknown model 'x'; did you mean 'y'?"
    spatial = model.spatial_dims or dims or entry.dims[0]
    spec = resolve_spec(model.name, spatial, model.in_channels or channels or 1, model.out_channels or 2, task, model.params)
    if any(spec["params"].get(k) for k in ("encoder_weights", "pretrained")):
        return  # building would download weights; the real build checks these parameters
    try:
        with torch.device("meta"):
            build_model(spec)
    except ConfigError as exc:
        if not str(exc).startswith(f"model '{model.name}' could not be built"):
            raise
