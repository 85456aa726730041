"""The config package: its public surface, its place in the layers, and the settings removed as dead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import medrobust.config as config
from medrobust.config import EvalConfig, MarginsConfig, TrainConfig, load_config
from medrobust.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1] / "medrobust"

#: every public name of the former medrobust/config.py module (importers must keep working)
FORMER_NAMES = """AugmentConfig ComputeBudgetConfig DataConfig DistributedConfig EvalConfig InferenceConfig IntensityConfig
    MarginsConfig MedMNISTConfig ModelConfig OptimConfig PhantomConfig PreprocessConfig ScheduleConfig SegLossConfig
    SplitConfig Strict SuccessConfig ThreatConfig TrainConfig ValAttackConfig apply_overrides check_params deep_merge
    expand_data_root format_validation_error load_config load_yaml parse_config parse_override plugin_spec resolve_bases
    resolve_config_paths resolve_data_paths resolve_path safe_load_unique""".split()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_every_former_name_is_exported():
    missing = [n for n in FORMER_NAMES if not hasattr(config, n)]
    assert not missing, missing
    assert set(FORMER_NAMES) <= set(config.__all__)
    assert config.unwrap_model(config.TrainConfig.model_fields["inference"].annotation) is config.InferenceConfig


def test_config_package_imports_nothing_above_it():
    above = ("medrobust.tasks", "medrobust.training", "medrobust.evaluation", "medrobust.attacks", "medrobust.margins",
             "medrobust.data", "medrobust.models", "medrobust.pipelines", "medrobust.cli", "medrobust.preflight")
    for f in sorted((ROOT / "config").glob("*.py")):
        bad = [m for m in _imports(f) if m.startswith(above)]
        assert not bad, f"{f.name} imports {bad}"


def test_tasks_does_not_import_config():
    mods = _imports(ROOT / "tasks.py")
    assert not any(m == "medrobust.config" or m.startswith("medrobust.config.") for m in mods), mods
    from medrobust.schema import SegLossConfig
    from medrobust.tasks import SegmentationTask

    assert config.SegLossConfig is SegLossConfig  # one class, re-exported
    assert isinstance(SegmentationTask(2).loss_cfg, config.SegLossConfig)


def test_threat_eps_is_gone_and_refused_with_the_replacement(tmp_path):
    assert "eps" not in config.ThreatConfig.model_fields
    cases = [(TrainConfig, {}, r"threat\.eps is not used by training .*method: \{name: \.\.\., eps: \.\.\.\}"),
             (EvalConfig, {"checkpoint": "x.pt"}, r"threat\.eps is not used by evaluation; .*threat\.budgets"),
             (MarginsConfig, {"checkpoint": "x.pt"}, r"threat\.eps is not used by margins .*eps_max")]
    for cls, base, expect in cases:
        with pytest.raises(ConfigError, match=expect):
            load_config(cls, data={**base, "threat": {"eps": 0.03}}, base_dir=tmp_path)
        with pytest.raises(ConfigError, match=r"threat\.eps is not used"):
            load_config(cls, data={**base, "threat": {"eps": "x"}}, base_dir=tmp_path)


def test_recorded_configs_with_the_old_default_eps_still_load(tmp_path):
    """Runs recorded every key, so their config.yaml / checkpoint config lists threat.eps: 0.0 (resume re-validates it)."""
    old = TrainConfig().model_dump(mode="json")
    old["threat"]["eps"] = 0.0
    again = TrainConfig.model_validate(old)
    assert again.model_dump(mode="json") == TrainConfig().model_dump(mode="json")
    ev = load_config(EvalConfig, data={"checkpoint": "x.pt", "threat": {"eps": 0, "budgets": [0.0, 0.1]}}, base_dir=tmp_path)
    assert ev.threat.budgets == [0.0, 0.1]


def test_training_refuses_threat_budgets_and_units_naming_the_method(tmp_path):
    for threat, key in (({"budgets": [0.0, 0.1]}, "budgets"), ({"units": "rms"}, "units")):
        with pytest.raises(ConfigError, match=rf"threat\.{key} is not used by training .*units: \.\.\.\}}"):
            load_config(TrainConfig, data={"threat": threat}, base_dir=tmp_path)
    # the defaults, as a run's own config.yaml lists them, stay valid
    load_config(TrainConfig, data={"threat": {"budgets": [0.0], "units": "input", "norm": "Linf"}}, base_dir=tmp_path)


def test_margins_refuse_threat_budgets(tmp_path):
    with pytest.raises(ConfigError, match=r"threat\.budgets is not used by margins"):
        load_config(MarginsConfig, data={"checkpoint": "x.pt", "threat": {"budgets": [0.0, 0.5]}}, base_dir=tmp_path)
    load_config(MarginsConfig, data={"checkpoint": "x.pt", "threat": {"units": "rms"}}, base_dir=tmp_path)


def test_tasks_raise_config_or_data_errors_not_the_base_class():
    from medrobust.tasks import ClassificationTask, SegmentationTask, build_task

    with pytest.raises(DataError, match="at least 2 classes"):
        ClassificationTask(1)
    with pytest.raises(DataError, match="background plus at least one class"):
        build_task("segmentation", 1)
    cls = ClassificationTask(3)
    with pytest.raises(ConfigError, match=r"shape \(B, C\)"):
        cls.check_target(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError, match=r"shape \(B,\)"):
        cls.check_target(torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long))
    seg = SegmentationTask(3)
    logits = torch.zeros(2, 3, 4, 4)
    with pytest.raises(DataError, match="does not match logits"):
        seg.check_target(logits, torch.zeros(2, 1, 4, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="set model.out_channels to 3"):
        seg.check_target(torch.zeros(2, 2, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(DataError, match=r"span \[3, 3\]"):
        seg.check_target(logits, torch.full((2, 1, 4, 4), 3, dtype=torch.long))
    src = (ROOT / "tasks.py").read_text()
    assert "MedrobustError" not in src
