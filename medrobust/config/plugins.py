"""Plug-in specs (a training method, an attack): ``"name"`` or ``{name: ..., **params}``."""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel

from medrobust.config.loading import parse_config
from medrobust.errors import ConfigError

__all__ = ["check_params", "plugin_spec"]


def check_params(params_cls: type[BaseModel], data: dict[str, Any], source: str) -> Any:
    """Validate a plugin's parameters (a method or an attack) with the same error style."""
    return parse_config(params_cls, data, source)



def plugin_spec(spec: Union[str, dict[str, Any]], kind: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name"`` or ``{name: ..., **params}`` into (name, params)."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"each {kind} must be a name or a mapping with a 'name' key, got {spec!r}.")
    params = {k: v for k, v in spec.items() if k != "name"}
    return str(spec["name"]), params
