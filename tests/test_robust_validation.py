"""Robust validation and selection during training, and compute budgets (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_train_config
from medrobust.config import ComputeBudgetConfig, TrainConfig, load_config
from medrobust.errors import ConfigError
from medrobust.training.budget import ComputeMeter
from medrobust.training.engine import train
from medrobust.training.robust_validation import Selection, training_budget


def test_pgd_at_two_epochs_logs_robust_validation_and_selects_by_it(tmp_path: Path):
    cfg = tiny_train_config(tmp_path, epochs=2, threat={"norm": "L2"},
                            method={"name": "pgd_at", "eps": 0.1, "units": "rms", "steps": 1})
    res = train(load_config(TrainConfig, data=cfg))
    m = pd.read_csv(res.run_dir / "metrics.csv")
    robust_cols = [c for c in m.columns if "robust" in c]
    assert "val_robust_dice" in robust_cols
    assert m["val_robust_dice"].between(0, 1).all()
    # the validation attack costs passes, and they are counted
    assert (m["val_attack_forward"] > 0).all() and (m["val_attack_backward"] > 0).all()
    assert m["passes_val_attack_total"].iloc[-1] == (m["val_attack_forward"] + m["val_attack_backward"]).sum()
    s = json.loads((res.run_dir / "summary.json").read_text())
    assert "robust" in s["select_metric"]
    assert s["best_epoch"] == int(m.loc[m["val_robust_dice"].idxmax(), "epoch"])
    assert s["best_clean_epoch"] == int(m.loc[m["val_dice"].idxmax(), "epoch"])
    assert s["robust_validation"]["eps"] == 0.1 and s["robust_validation"]["units"] == "rms"
    assert (res.run_dir / "best_clean.pt").is_file() and res.outputs()["best_clean_checkpoint"].endswith("best_clean.pt")
    cases = pd.read_csv(res.run_dir / "robust_validation_cases.csv")
    assert sorted(cases["epoch"].unique()) == [1, 2]
    assert cases.groupby("epoch")["robust_dice"].mean().round(6).tolist() == m["val_robust_dice"].round(6).tolist()


def test_standard_training_keeps_clean_selection_and_robust_validation_can_be_forced(tmp_path: Path):
    res = train(load_config(TrainConfig, data=tiny_train_config(tmp_path / "a", epochs=1)))
    s = json.loads((res.run_dir / "summary.json").read_text())
    assert s["select_metric"] == "val_dice" and s["robust_validation"] is None
    assert not any("robust" in k for k in res.history[-1])
    with pytest.raises(ConfigError, match="val_attack.eps"):
        train(load_config(TrainConfig, data=tiny_train_config(tmp_path / "b", epochs=1, val_attack={"enabled": True})))
    forced = tiny_train_config(tmp_path / "c", epochs=1, threat={"norm": "L2"},
                               val_attack={"enabled": True, "eps": 0.2, "units": "rms", "attack": {"name": "pgd", "steps": 2}})
    res = train(load_config(TrainConfig, data=forced))
    assert res.history[-1]["val_robust_dice"] <= res.history[-1]["val_dice"] + 0.05
    assert json.loads((res.run_dir / "summary.json").read_text())["select_metric"] == "val_robust_dice"


def test_training_budget_lookup():
    from medrobust.tasks import build_task
    from medrobust.threat import ThreatModel
    from medrobust.training.base import build_method

    cfg = TrainConfig()
    task, threat = build_task("segmentation", 3, cfg.loss, cfg.success), ThreatModel("L2", None)
    assert training_budget(build_method({"name": "pgd_at", "eps": 0.3, "units": "rms"}, task, threat, cfg)) == (0.3, "rms")
    assert training_budget(build_method({"name": "ima", "delta": 0.1, "eps_max": 0.5}, task, threat, cfg)) == (0.5, "input")
    assert training_budget(build_method({"name": "awp", "base": {"name": "trades", "eps": 0.2}}, task, threat, cfg)) == (0.2, "input")
    assert training_budget(build_method("standard", task, threat, cfg)) is None
    assert training_budget(build_method("avg_margin", task, threat, cfg)) is None


def test_selection_rebuilds_from_history():
    hist = [{"epoch": 1, "val_dice": 0.9, "val_robust_dice": 0.2}, {"epoch": 2, "val_dice": 0.8, "val_robust_dice": 0.5},
            {"epoch": 3, "val_dice": 0.85, "val_robust_dice": 0.4}]
    s = Selection("val_robust_dice", "val_dice", hist)
    assert (s.best_epoch, s.best_clean_epoch) == (2, 1)
    assert s.offer({"epoch": 4, "val_dice": 0.95, "val_robust_dice": 0.1}) == (False, True)


def test_compute_meter_budget_and_resume_totals():
    class C:
        forward, backward = 30, 30

    m = ComputeMeter(ComputeBudgetConfig(passes=100), [])
    assert not m.spent_during_epoch(C(), 0.0)
    m.close_epoch(30, 30, 1.0)
    assert not m.spent and m.spent_during_epoch(C(), 0.0)
    m.close_epoch(30, 30, 1.0)
    assert m.spent
    again = ComputeMeter(ComputeBudgetConfig(passes=100), [{"passes_train_total": 120, "time_train_total_s": 2.0}])
    assert again.spent and again.passes == 120
    assert not ComputeMeter(ComputeBudgetConfig(), []).spent
    secs = ComputeMeter(ComputeBudgetConfig(seconds=2.0), [{"passes_train_total": 10, "time_train_total_s": 1.5}])
    assert not secs.spent and not secs.spent_during_epoch(C(), 0.4) and secs.spent_during_epoch(C(), 0.6)
    with_val = ComputeMeter(ComputeBudgetConfig(passes=100, include_validation=True), [])
    with_val.close_epoch(30, 30, 1.0)
    with_val.add_validation({"val_attack_forward": 25, "val_attack_backward": 20})
    assert with_val.spent and with_val.val_passes == 45


def test_training_stops_at_a_pass_budget(tmp_path: Path):
    # 12 phantom cases -> 8 training slices, batch 4 -> 2 steps per epoch; standard: 2 passes per step
    cfg = tiny_train_config(tmp_path, epochs=20, budget={"passes": 10})
    res = train(load_config(TrainConfig, data=cfg))
    last = res.history[-1]
    assert last["passes_train_total"] >= 10
    assert last["passes_train_total"] - 2 < 10  # stops within one step of the budget
    assert len(res.history) < 20 and "val_dice" in last
    s = json.loads((res.run_dir / "summary.json").read_text())
    assert s["epochs_run"] == len(res.history) and s["compute"]["passes_train"] == last["passes_train_total"]


def test_batched_2d_images_match_case_by_case_attacks():
    import torch

    from medrobust.data.datasets import DataModule
    from medrobust.models import build_model, resolve_spec
    from medrobust.tasks import build_task
    from medrobust.threat import ThreatModel
    from medrobust.training.robust_validation import RobustValidator

    cfg = load_config(TrainConfig, data=tiny_train_config(Path("/nonexistent"), threat={"norm": "L2"}, val_batch_size=3,
                                                          val_attack={"enabled": True, "eps": 0.3, "units": "rms",
                                                                      "attack": {"name": "pgd", "steps": 2, "random_start": False}}))
    dm = DataModule(cfg.data, "segmentation")
    cases = dm.prepared("val") + dm.prepared("test")
    info = dm.info(cases)
    torch.manual_seed(0)
    model = build_model(resolve_spec("unet", 2, 1, info.num_classes, "segmentation", cfg.model.params)).eval()
    task = build_task("segmentation", info.num_classes, cfg.loss, cfg.success)
    rv = RobustValidator(cfg.val_attack, task, ThreatModel("L2", None), 0.3, "rms", 2, 2, [32, 32], 3, cfg)
    batched = dict(rv._images_segmentation(model, cases, torch.device("cpu")))
    single = {c.case_id: rv._case_segmentation(model, c, torch.device("cpu")) for c in cases}
    assert len(cases) > 3 and batched == pytest.approx(single, abs=1e-6)


def test_robust_validation_has_no_side_effect_on_training_and_survives_resume(tmp_path: Path):
    import torch

    from medrobust.checkpoint import load_checkpoint

    base = tiny_train_config(tmp_path, epochs=2, threat={"norm": "L2"}, data={"augment": {"flip_prob": 0.5}},
                             method={"name": "pgd_at", "eps": 0.1, "units": "rms", "steps": 1})
    on = train(load_config(TrainConfig, data=dict(base, output_dir=str(tmp_path / "on"))))
    off = train(load_config(TrainConfig, data=dict(base, output_dir=str(tmp_path / "off"), val_attack={"enabled": False})))
    part_cfg = load_config(TrainConfig, data=dict(base, output_dir=str(tmp_path / "part")))
    train(part_cfg, stop_after=1)
    resumed = train(part_cfg, resume=True)
    w = [load_checkpoint(r.last_checkpoint)["model_state"] for r in (on, off, resumed)]
    assert all(torch.equal(w[0][k], w[1][k]) and torch.equal(w[0][k], w[2][k]) for k in w[0])
    assert "val_robust_dice" not in off.history[-1] and json.loads((off.run_dir / "summary.json").read_text())["select_metric"] == "val_dice"
    assert [h["val_robust_dice"] for h in resumed.history] == [h["val_robust_dice"] for h in on.history]
    assert len(pd.read_csv(resumed.run_dir / "robust_validation_cases.csv")) == len(pd.read_csv(on.run_dir / "robust_validation_cases.csv"))
