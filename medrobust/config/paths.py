"""Paths inside configs: relative to the YAML file that holds them, ``${data_root}`` and ``~`` expanded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from medrobust.config.common import DataConfig
from medrobust.utils import default_data_root

__all__ = ["expand_data_root", "resolve_config_paths", "resolve_data_paths", "resolve_path"]


def expand_data_root(value: str, data_root: str | os.PathLike | None) -> str:
    root = Path(data_root) if data_root else default_data_root()
    return value.replace("${data_root}", str(root))


def resolve_path(value: Optional[str], base_dir: Path | None, data_root: str | None = None) -> Optional[str]:
    """Expand ``${data_root}`` and ``~`` and make a relative path relative to ``base_dir``."""
    if value is None:
        return None
    v = os.path.expanduser(expand_data_root(str(value), data_root))
    p = Path(v)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return os.path.normpath(p) if p.is_absolute() else str(p)  # 'pipelines/../runs' -> '/.../runs'


def resolve_data_paths(data: DataConfig, base_dir: Path | None) -> DataConfig:
    data = data.model_copy(deep=True)
    if data.root is not None:
        data.root = resolve_path(data.root, base_dir)
    data.manifest = resolve_path(data.manifest, base_dir, data.root)
    if data.medmnist is not None:
        data.medmnist.path = resolve_path(data.medmnist.path, base_dir, data.root)
    return data



def resolve_config_paths(cfg: Any, base_dir: Path) -> Any:
    if hasattr(cfg, "data") and isinstance(getattr(cfg, "data"), DataConfig):
        cfg.data = resolve_data_paths(cfg.data, base_dir)
    for name in ("output_dir", "checkpoint", "init_from"):
        if hasattr(cfg, name) and getattr(cfg, name) is not None:
            data_root = cfg.data.root if isinstance(getattr(cfg, "data", None), DataConfig) else None
            setattr(cfg, name, resolve_path(getattr(cfg, name), base_dir, data_root))
    if isinstance(getattr(cfg, "data", None), dict):
        d = cfg.data
        for key in ("manifest", "root"):
            if d.get(key):
                d[key] = resolve_path(d[key], base_dir, d.get("root"))
        if isinstance(d.get("medmnist"), dict) and d["medmnist"].get("path"):
            d["medmnist"]["path"] = resolve_path(d["medmnist"]["path"], base_dir, d.get("root"))
    return cfg

