"""Configs: safe YAML, unknown keys with suggestions, overrides, path resolution, data root."""

from __future__ import annotations

from pathlib import Path

import pytest

from medrobust.config import EvalConfig, TrainConfig, apply_overrides, load_config, load_yaml
from medrobust.errors import ConfigError


@pytest.mark.parametrize("text, expect", [
    ("epochs: 2\nbatch_sise: 4\n", r"unknown key 'batch_sise'; did you mean 'batch_size'\?"),  # closest key suggested
    ("data:\n  preprocess:\n    sise: [32, 32]\n", r"data\.preprocess\.size"),  # nested too
    ("epochs: 2\ndata: [unclosed\n", r"not valid YAML at line \d+"),  # malformed YAML names the line
])
def test_bad_config_file_gets_one_sentence(tmp_path: Path, text: str, expect: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=expect):
        load_config(TrainConfig, p)


def test_yaml_is_loaded_safely(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values():
    d = apply_overrides({"a": {"b": 1}}, ["a.b=3", "a.c=[1, 2]", "x.y.z=true", "s=hello"])
    assert d == {"a": {"b": 3, "c": [1, 2]}, "x": {"y": {"z": True}}, "s": "hello"}
    with pytest.raises(ConfigError, match="no '='"):
        apply_overrides({}, ["epochs"])


def test_invalid_value_is_one_sentence(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"invalid value for 'epochs'"):
        load_config(TrainConfig, data={"epochs": 0})
    with pytest.raises(ConfigError, match="a_min and a_max"):
        load_config(TrainConfig, data={"data": {"preprocess": {"intensity": {"kind": "window"}}}})
    with pytest.raises(ConfigError, match="rms"):
        load_config(EvalConfig, data={"checkpoint": "x.pt", "threat": {"norm": "Linf", "units": "rms"}})


def test_relative_paths_resolve_from_yaml_and_data_root(tmp_path: Path, monkeypatch):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    p = sub / "c.yaml"
    p.write_text("output_dir: ../out\ndata:\n  source: manifest\n  manifest: ${data_root}/ds/dataset.json\n")
    monkeypatch.setenv("MEDROBUST_DATA_ROOT", str(tmp_path / "root"))
    cfg = load_config(TrainConfig, p)
    assert Path(cfg.output_dir) == tmp_path / "out"  # relative to the YAML file, normalised (no cfgs/../)
    assert cfg.data.manifest == str(tmp_path / "root" / "ds" / "dataset.json")
    cfg2 = load_config(TrainConfig, p, overrides=[f"data.root={tmp_path / 'other'}"])
    assert cfg2.data.manifest == str(tmp_path / "other" / "ds" / "dataset.json")
