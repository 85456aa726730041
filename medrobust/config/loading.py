"""Loading configs: YAML (safe loader, duplicate keys refused), ``_base_``, ``--set`` overrides, errors.

Every problem becomes one :class:`~medrobust.errors.ConfigError` sentence that names the key, the
problem and the fix (an unknown key suggests the closest valid one).
"""

from __future__ import annotations

import copy
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from medrobust.config.paths import resolve_config_paths
from medrobust.errors import ConfigError
from medrobust.registry import closest

__all__ = ["apply_overrides", "deep_merge", "format_validation_error", "load_config", "load_yaml", "parse_config",
           "parse_override", "resolve_bases", "safe_load_unique", "unwrap_model"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; explicit keys may override them
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen and key != "<<":
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises on duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; a clear error for a missing or malformed file.

    Raises:
        ConfigError: the file is missing, a folder, binary, not valid YAML, has a key twice in
            one mapping, or does not hold a mapping.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config '{p}' is a folder; give the path of a YAML file.")
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist; check the path (it is resolved from {Path.cwd()}).")
    try:
        raw = p.read_bytes()
        if b"\x00" in raw[:8192]:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "binary")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{p}' is a binary file, not YAML text; give the path of a .yaml config.") from None
    except OSError as exc:
        raise ConfigError(f"config file '{p}' could not be read ({exc.strerror or exc}); check its permissions.") from None
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file '{p}' is not valid YAML{where} ({problem}); fix it there.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys to values, not a {type(data).__name__}.")
    return data


def resolve_bases(data: Any, base_dir: Path, _seen: tuple = ()) -> Any:
    """Merge ``_base_: path.yaml`` (relative to ``base_dir``) under any mapping, recursively.

    The mapping's own keys override the base's, so ``method: {_base_: ../configs/methods/ima.yaml,
    delta: 0.5}`` takes the documented defaults and changes one value.
    """
    if isinstance(data, list):
        return [resolve_bases(v, base_dir, _seen) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: resolve_bases(v, base_dir, _seen) for k, v in data.items() if k != "_base_"}
    if "_base_" in data:
        p = Path(str(data["_base_"]))
        p = p if p.is_absolute() else base_dir / p
        if p.resolve() in _seen:
            raise ConfigError(f"'_base_: {data['_base_']}' includes itself (a cycle); remove the loop.")
        base = resolve_bases(load_yaml(p), p.resolve().parent, _seen + (p.resolve(),))
        out = deep_merge(base, out)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' has no '='; write it as key.sub=value (e.g. --set epochs=3).")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key part; write it as key.sub=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (values parsed as YAML)."""
    out = copy.deepcopy(data)
    for item in overrides or []:
        parts, value = parse_override(item)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """The valid field names of the sub-model that ``loc`` (minus the last item) points into."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        cls = unwrap_model(ann)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}).keys())


def unwrap_model(ann: Any) -> Any:
    """The pydantic model inside a field annotation (``X``, ``Optional[X]``, ``Union[X, str]``), else None.

    Args:
        ann: a field's annotation (``Model.model_fields[name].annotation``).

    Returns:
        The first :class:`pydantic.BaseModel` subclass found, or None.
    """
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        m = unwrap_model(arg)
        if m is not None:
            return m
    return None


def format_validation_error(exc: ValidationError, model_cls: type[BaseModel], source: str) -> str:
    """Turn the first pydantic error into one sentence naming the key, the problem and the fix."""
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "<root>"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        valid = _fields_at(model_cls, loc)
        close = closest(str(loc[-1]), valid, cutoff=0.5)
        hint = f"did you mean '{'.'.join(str(p) for p in loc[:-1] + (close,))}'?" if close else \
            f"valid keys here are: {', '.join(valid)}." if valid else "remove it."
        return f"{source}: unknown key '{key}'; {hint}"
    if kind == "missing":
        return f"{source}: required key '{key}' is missing; add it to the config."
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    if not loc:
        return f"{source}: {msg}."
    return f"{source}: invalid value for '{key}'{shown}: {msg}."


def parse_config(model_cls: type[BaseModel], data: dict[str, Any], source: str = "config") -> Any:
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model_cls, source)) from None



def load_config(model_cls: type[BaseModel], path: str | os.PathLike | None = None,
                overrides: list[str] | None = None, data: dict[str, Any] | None = None,
                base_dir: Path | None = None, defaults: dict[str, Any] | None = None) -> Any:
    """Load a config from a YAML file (or a dict), apply overrides, validate, resolve paths."""
    if path is not None:
        base_dir = Path(path).resolve().parent
        raw = resolve_bases(load_yaml(path), base_dir)
        source = str(path)
    else:
        base_dir = base_dir or Path.cwd()
        raw = resolve_bases(copy.deepcopy(data or {}), base_dir)
        source = "config"
    raw = apply_overrides(deep_merge(defaults or {}, raw), overrides)
    cfg = parse_config(model_cls, raw, source)
    return resolve_config_paths(cfg, base_dir)

