"""bfloat16 autocast (``amp: bf16``) for evaluation, attacks and training; off leaves results bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from conftest import tiny_train_config
from medrobust.amp import AmpModel, autocast_forward, check_amp
from medrobust.attacks import build_attack
from medrobust.config import InferenceConfig, TrainConfig, load_config
from medrobust.errors import ConfigError
from medrobust.inference import CasePredictor, build_predictor
from medrobust.tasks import ClassificationTask, SegmentationTask
from medrobust.threat import ThreatModel, lp_norm
from models_fixtures import phantom_seg, trained_cls

CLEAN_DICE_TOL = 0.02  # |clean Dice bf16 - fp32| on the phantom model (measured ~0.001)
ROBUST_DICE_TOL = 0.05  # |robust Dice bf16 - fp32| under the same APGD (docs/evaluation.md table: <= 0.01)


def test_amp_off_is_bit_identical_to_the_plain_model_and_attack():
    model, x, y = phantom_seg()
    task, threat = SegmentationTask(3), ThreatModel("L2", None)
    off = build_predictor(model, None, InferenceConfig())
    assert off.amp is False and InferenceConfig().amp is False
    with torch.no_grad():
        assert torch.equal(off(x), model(x))
    spec = {"name": "apgd", "n_iter": 5, "loss": "dice_ce"}
    a = build_attack(spec, task, threat)(model, x, y, 1.0).x_adv
    b = build_attack(spec, task, threat)(off, x, y, 1.0).x_adv
    assert torch.equal(a, b)


def test_bf16_evaluation_runs_with_float32_logits_and_dice_close_to_fp32():
    model, x, y = phantom_seg()
    task, threat = SegmentationTask(3), ThreatModel("L2", None)
    fp, bf = CasePredictor(model, None), build_predictor(model, None, InferenceConfig(amp="bf16"))
    assert bf.amp == "bf16" and bf.describe()["amp"] == "bf16"
    with torch.no_grad():
        zf, zb = fp(x), bf(x)
    assert zb.dtype == torch.float32
    assert not torch.equal(zf, zb)  # autocast really ran (bf16 rounding changes the logits)
    torch.testing.assert_close(zb, zf, atol=0.2, rtol=0.05)
    dice_f, dice_b = float(task.score(zf, y).mean()), float(task.score(zb, y).mean())
    assert dice_f > 0.8 and abs(dice_b - dice_f) < CLEAN_DICE_TOL, (dice_f, dice_b)
    spec = {"name": "apgd", "n_iter": 10, "loss": "dice_ce"}
    rf = build_attack(spec, task, threat)(fp, x, y, 1.0)
    rb = build_attack(spec, task, threat)(bf, x, y, 1.0)
    assert rb.x_adv.dtype == torch.float32
    assert bool((lp_norm(rb.x_adv - x, "L2") <= 1.0 + 1e-4).all())
    with torch.no_grad():
        rob_f, rob_b = float(task.score(fp(rf.x_adv), y).mean()), float(task.score(bf(rb.x_adv), y).mean())
    assert rob_b < dice_b - 0.01  # the bf16 attack still attacks
    assert abs(rob_b - rob_f) < ROBUST_DICE_TOL, (rob_f, rob_b)


def test_bf16_classifier_is_wrapped_and_returns_float32():
    model, x, y = trained_cls()
    net = build_predictor(model, None, InferenceConfig(amp="bf16"), task="classification")
    assert isinstance(net, AmpModel)
    assert build_predictor(model, None, InferenceConfig(), task="classification") is model
    with torch.no_grad():
        z = net(x[:64])
    assert z.dtype == torch.float32
    acc_f = float(ClassificationTask(4).score(model(x[:64]), y[:64]).mean())
    acc_b = float(ClassificationTask(4).score(z, y[:64]).mean())
    assert abs(acc_f - acc_b) <= 2 / 64


def test_bad_amp_values_are_refused():
    with pytest.raises(ConfigError, match="amp must be false or bf16"):
        check_amp("fp16")
    with pytest.raises(ValidationError):
        InferenceConfig(amp="fp16")
    with pytest.raises(ValidationError):
        TrainConfig(amp=True)
    with pytest.raises(ConfigError, match="amp must be false or bf16"):
        CasePredictor(torch.nn.Identity(), None, amp="half")


def test_autocast_forward_patches_only_inside_the_block():
    model, x, _ = phantom_seg()
    with torch.no_grad():
        ref = model(x)
        with autocast_forward(model, "bf16"):
            z = model(x)
            assert "forward" in model.__dict__
        assert "forward" not in model.__dict__  # restored: the class method again
        assert torch.equal(model(x), ref)
        with autocast_forward(model, False):
            assert torch.equal(model(x), ref)
    assert z.dtype == torch.float32 and not torch.equal(z, ref)


def test_training_with_bf16_runs_and_differs_from_fp32(tmp_path: Path):
    hist = {}
    for amp in (False, "bf16"):
        cfg = tiny_train_config(tmp_path / str(amp), epochs=2)
        cfg["amp"] = amp
        hist[amp] = train_history(cfg)
    assert hist["bf16"][-1]["train_loss"] < hist["bf16"][0]["train_loss"]
    assert hist["bf16"][0]["train_loss"] != hist[False][0]["train_loss"]  # autocast ran in the steps
    assert abs(hist["bf16"][-1]["train_loss"] - hist[False][-1]["train_loss"]) < 0.2 * hist[False][-1]["train_loss"]


def train_history(cfg: dict) -> list[dict]:
    from medrobust.training.engine import train

    return train(load_config(TrainConfig, data=cfg)).history


def test_evaluation_sweep_with_bf16_records_the_setting_and_stays_close(tmp_path: Path):
    from medrobust.config import EvalConfig
    from medrobust.evaluation.sweep import evaluate

    cfg = tiny_train_config(tmp_path / "tr", epochs=3, data={"phantom": {"n_cases": 12}})
    ck = str(train_checkpoint(cfg))
    tables = {}
    for amp in (False, "bf16"):
        ev = load_config(EvalConfig, data={"checkpoint": ck, "output_dir": str(tmp_path / f"ev{amp}"), "split": "val",
                                           "threat": {"budgets": [0.0, 0.5]}, "attacks": [{"name": "apgd", "n_iter": 3}],
                                           "examples": 0, "inference": {"amp": amp}})
        res = evaluate(ev)
        assert res.summary["settings"]["inference"]["amp"] == amp
        tables[amp] = res.table.sort_values(["sample", "budget"] if "sample" in res.table else ["budget"]).reset_index(drop=True)
    f, b = tables[False], tables["bf16"]
    assert len(f) == len(b) > 0
    assert abs(float(f.dice.mean()) - float(b.dice.mean())) < ROBUST_DICE_TOL


def train_checkpoint(cfg: dict) -> Path:
    from medrobust.training.engine import train

    return train(load_config(TrainConfig, data=cfg)).best_checkpoint
