"""Configs are checked before work: a method, attack or model typo fails before any data is read.

Each test replaces the dataset constructor by one that raises, so a test passes only when the
config error comes first (and no output folder is claimed); with the check removed, the commands
reach the data and these tests fail with "data was loaded".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medrobust.cli import main
from medrobust.config import EvalConfig, MarginsConfig, TrainConfig, load_config
from medrobust.errors import ConfigError
from medrobust.preflight import check_config


class DataLoaded(AssertionError):
    pass


@pytest.fixture
def no_data(monkeypatch):
    """Data loading raises (the class is patched, wherever it is imported from)."""
    from medrobust.data.datasets import DataModule

    def boom(self, *a, **k):
        raise DataLoaded("data was loaded before the config was checked")

    monkeypatch.setattr(DataModule, "__init__", boom)


def _train_cfg(tmp_path: Path, **over) -> dict:
    cfg = {"epochs": 1, "batch_size": 2, "output_dir": str(tmp_path / "run"),
           "data": {"phantom": {"n_cases": 4, "size": [16, 16]}, "preprocess": {"size": [16, 16]}},
           "model": {"params": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def _cli(tmp_path: Path, command: str, cfg: dict):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return CliRunner().invoke(main, [command, str(p)], catch_exceptions=True)


@pytest.mark.parametrize("over, expect", [
    ({"method": {"name": "pgd_at", "epz": 0.1}}, r"method 'pgd_at': unknown key 'epz'; did you mean 'eps'"),
    ({"method": {"name": "awp", "base": {"name": "trades", "betta": 6}}}, r"method 'trades': unknown key 'betta'"),
    ({"method": "pgd-at"}, r"unknown training method 'pgd-at'; did you mean 'pgd_at'"),
    ({"model": {"params": {"channels": [4, 8], "strides": [2], "num_res_unit": 0}}},
     r"model 'unet' does not take the parameter 'num_res_unit'"),
    ({"model": {"name": "small_cnn"}}, r"model 'small_cnn' is a classification model but the task is segmentation"),
    ({"method": {"name": "pgd_at", "eps": 0.1}, "val_attack": {"attack": {"name": "apgd", "n_iterz": 2}}},
     r"attack 'apgd': unknown key 'n_iterz'"),
])
def test_train_typo_fails_before_data(tmp_path, no_data, over, expect):
    res = _cli(tmp_path, "train-seg", _train_cfg(tmp_path, **over))
    assert not isinstance(res.exception, DataLoaded), "the config was checked only after the data was loaded"
    assert res.exit_code == 2, res.output
    assert re.search(expect, res.stderr), res.stderr
    assert not (tmp_path / "run").exists(), "an output folder was claimed for a config that fails"


@pytest.mark.parametrize("command, cfg, expect", [
    ("eval-seg", {"attacks": ["white_noise", {"name": "apgd", "n_iter": 2, "los": "ce"}]}, r"attack 'apgd': unknown key 'los'; did you mean 'loss'"),
    ("eval-seg", {"attacks": ["whitenoise"]}, r"unknown attack 'whitenoise'; did you mean 'white_noise'"),
    ("margins", {"attack": {"name": "pgd", "step": 3}}, r"attack 'pgd': unknown key 'step'; did you mean 'steps'"),
])
def test_eval_and_margins_typo_fails_before_checkpoint_and_data(tmp_path, no_data, command, cfg, expect):
    # the checkpoint does not exist: the attack's sentence must come before the checkpoint's
    res = _cli(tmp_path, command, {"checkpoint": str(tmp_path / "missing.pt"), "output_dir": str(tmp_path / "out"), **cfg})
    assert res.exit_code == 2, res.output
    assert re.search(expect, res.stderr), res.stderr
    assert not (tmp_path / "out").exists()


def test_pipeline_step_is_checked_before_its_command(tmp_path, no_data):
    pipe = {"name": "p", "output_dir": str(tmp_path / "out"),
            "steps": [{"id": "train", "command": "train-seg", "config": _train_cfg(tmp_path, method={"name": "trades", "bta": 1})}]}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(pipe))
    res = CliRunner().invoke(main, ["run", str(p)], catch_exceptions=True)
    assert res.exit_code == 2, res.output
    assert re.search(r"step 'train'.*method 'trades': unknown key 'bta'; did you mean 'beta'", res.stderr), res.stderr


def test_pipeline_checks_every_step_before_the_first_runs(tmp_path, no_data):
    """A typo in the last step's attack fails before the first (training) step reads any data."""
    pipe = {"name": "p", "output_dir": str(tmp_path / "out"), "seeds": [0, 1],
            "steps": [{"id": "train", "command": "train-seg", "config": _train_cfg(tmp_path)},
                      {"id": "ev", "command": "eval-seg",
                       "config": {"checkpoint": "${train.best_checkpoint}", "attacks": [{"name": "pgd", "stepz": 2}]}}]}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(pipe))
    res = CliRunner().invoke(main, ["run", str(p)], catch_exceptions=True)
    assert not isinstance(res.exception, DataLoaded), "the first step ran before the last step's config was checked"
    assert res.exit_code == 2, res.output
    assert re.search(r"step 'ev': attack 'pgd': unknown key 'stepz'; did you mean 'steps'", res.stderr), res.stderr
    # --only the training step: the eval step is not run, so not checked either (it reaches the data)
    res = CliRunner().invoke(main, ["run", str(p), "--only", "train"], catch_exceptions=True)
    assert isinstance(res.exception, DataLoaded), res.output


def test_valid_configs_pass(tmp_path):
    check_config(load_config(TrainConfig, data=_train_cfg(tmp_path, method={"name": "awp", "base": {"name": "trades", "beta": 6}}),
                             base_dir=tmp_path))
    check_config(load_config(TrainConfig, data={"task": "classification", "model": {"name": "small_cnn", "params": {"width": 4}}},
                             base_dir=tmp_path))
    check_config(load_config(EvalConfig, data={"checkpoint": "x.pt", "attacks": ["white_noise", "corruptions", {"name": "apgd", "n_iter": 2}]},
                             base_dir=tmp_path))
    check_config(load_config(MarginsConfig, data={"checkpoint": "x.pt"}, base_dir=tmp_path))


def test_val_attack_of_standard_training_is_not_checked(tmp_path):
    """Standard training runs no validation attack (enabled: auto), so its settings stay as accepted as before."""
    cfg = load_config(TrainConfig, data=_train_cfg(tmp_path, val_attack={"attack": {"name": "apgd", "n_iterz": 2}}), base_dir=tmp_path)
    check_config(cfg)
    cfg.val_attack.enabled = True
    with pytest.raises(ConfigError, match="unknown key 'n_iterz'"):
        check_config(cfg)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_method_attack_and_model_configs_pass_the_early_checks():
    from medrobust.config import ModelConfig, load_yaml
    from medrobust.models.registry import MODELS
    from medrobust.preflight import check_attack, check_method, check_model

    methods = sorted((CONFIGS / "methods").glob("*.yaml"))
    for f in methods:
        check_method(load_yaml(f))
    attacks = [spec for f in sorted((CONFIGS / "attacks").glob("*.yaml")) for spec in load_yaml(f)["attacks"]]
    for spec in attacks:
        check_attack(spec)
    models = sorted((CONFIGS / "models").glob("*.yaml"))
    for f in models:
        m = ModelConfig(**load_yaml(f))
        check_model(m, MODELS.meta(m.name)["task"])
    assert len(methods) >= 20 and len(attacks) >= 4 and len(models) >= 4


def test_model_params_of_a_source_to_fine_tune_are_not_checked_as_registry_params(tmp_path):
    """init_from an nnU-Net folder: model.params are the source's options (folds), not UNet arguments."""
    folder = tmp_path / "nnunet"
    folder.mkdir()
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text("{}")
    cfg = load_config(TrainConfig, data=_train_cfg(tmp_path, init_from=str(folder), model={"params": {"folds": [0]}}),
                      base_dir=tmp_path)
    check_config(cfg)
    cfg.init_from = str(tmp_path / "not_yet_written")  # a pipeline's earlier step writes it
    check_config(cfg)
    cfg.init_from = None
    with pytest.raises(ConfigError, match="does not take the parameter 'folds'"):
        check_config(cfg)
