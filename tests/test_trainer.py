"""The trainer's parts: the learning-rate schedule, the metrics file, the run log, small functions.

The schedule is checked against the documented formulas written out here (docs/config_reference.md:
linear warm-up, then cosine / poly / step / multistep), for every schedule in configs/ and
pipelines/ and a few more, through the same calls the trainer makes.
"""

from __future__ import annotations

import ast
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

from medrobust.config import ScheduleConfig, TrainConfig
from medrobust.training.run_folder import run_log, write_metrics

from conftest import bare_logger
from medrobust.training.schedule import build_optimizer, build_scheduler, set_epoch_lr

ROOT = Path(__file__).resolve().parents[1]


def _expected_lr(lr: float, s: dict, epoch: int, epochs: int) -> float:
    """The documented schedule: linear warm-up (epoch + 1) / (W + 1), then the named decay over the remaining epochs."""
    w = s.get("warmup_epochs", 0)
    if w and epoch < w:
        return lr * ((epoch + 1) / (w + 1))
    t, total = epoch - w, max(1, epochs - w)
    name, gamma = s.get("name", "none"), s.get("gamma", 0.1)
    if name == "cosine":
        return lr * (0.5 * (1 + math.cos(math.pi * t / total)))
    if name == "poly":
        return lr * ((1 - t / total) ** s.get("power", 0.9))
    if name == "step":
        return lr * (gamma ** (t // max(1, s.get("step_size", 30))))
    if name == "multistep":
        return lr * (gamma ** sum(1 for m in s.get("milestones", []) if epoch >= m))
    return lr * 1.0


def _schedules_in_repo() -> list[tuple[str, dict, float, int]]:
    """(file, schedule, lr, epochs) of every mapping with a ``schedule`` key in configs/ and pipelines/."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            if isinstance(node.get("schedule"), dict):
                lr = (node.get("optimizer") or {}).get("lr", 1e-3)
                found.append((path, node["schedule"], float(lr), int(node.get("epochs", 10))))
            for v in node.values():
                walk(v, path)
        elif isinstance(node, list):
            for v in node:
                walk(v, path)

    for f in sorted([*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("pipelines/*.yaml")]):
        walk(yaml.safe_load(f.read_text()), str(f.relative_to(ROOT)))
    return found


MORE = [({"name": "cosine", "warmup_epochs": 3}, 0.05, 50), ({"name": "step", "step_size": 2, "gamma": 0.5}, 0.003, 10),
        ({"name": "multistep", "milestones": [3, 6], "gamma": 0.2}, 0.1, 10), ({"name": "poly", "warmup_epochs": 1}, 1e-3, 20),
        ({"name": "none", "warmup_epochs": 2}, 0.003, 5), ({"name": "cosine"}, 0.003, 1)]


def _lrs(sched: dict, lr: float, epochs: int, resume_at: int | None = None) -> list[float]:
    """The rate of every epoch as the trainer sets it (optionally rebuilt and reloaded at ``resume_at``)."""
    cfg = TrainConfig.model_validate({"epochs": epochs, "optimizer": {"name": "sgd", "lr": lr}, "schedule": sched})
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(cfg, model)
    sch = build_scheduler(cfg, opt)
    out = []
    for e in range(epochs):
        if e == resume_at:  # a new process: fresh optimiser and schedule, the optimiser state of the checkpoint
            saved = opt.state_dict()
            opt = build_optimizer(cfg, model)
            sch = build_scheduler(cfg, opt)
            opt.load_state_dict(saved)
        set_epoch_lr(sch, e)
        out.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
    return out


def test_repo_schedules_are_found():
    names = {s.get("name") for _, s, _, _ in _schedules_in_repo()}
    assert {"cosine", "none"} <= names  # the walk finds the schedules the pipelines use


CASES = list({repr((s, lr, e)): (s, lr, e) for _, s, lr, e in _schedules_in_repo()}.values()) + MORE


@pytest.mark.parametrize("sched,lr,epochs", CASES)
def test_lr_per_epoch_equals_the_documented_formula_exactly(sched, lr, epochs):
    expected = [_expected_lr(lr, sched, e, epochs) for e in range(epochs)]
    assert _lrs(sched, lr, epochs) == expected  # bit for bit, not approximately
    if epochs > 2:
        assert _lrs(sched, lr, epochs, resume_at=epochs // 2) == expected


def test_lr_after_resume_with_more_epochs_follows_the_new_plan():
    """--resume may raise epochs: the cosine of the remaining epochs is planned over the new total."""
    cfg3 = TrainConfig.model_validate({"epochs": 3, "optimizer": {"lr": 0.003}, "schedule": {"name": "cosine"}})
    cfg5 = TrainConfig.model_validate({"epochs": 5, "optimizer": {"lr": 0.003}, "schedule": {"name": "cosine"}})
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(cfg3, model)
    set_epoch_lr(build_scheduler(cfg3, opt), 1)
    assert opt.param_groups[0]["lr"] == 0.003 * (0.5 * (1 + math.cos(math.pi / 3)))
    opt2 = build_optimizer(cfg5, model)
    sch2 = build_scheduler(cfg5, opt2)
    opt2.load_state_dict(opt.state_dict())
    set_epoch_lr(sch2, 2)
    assert opt2.param_groups[0]["lr"] == 0.003 * (0.5 * (1 + math.cos(math.pi * 2 / 5)))


def test_metrics_csv_keeps_column_order_ints_and_empty_cells(tmp_path: Path):
    history = [{"epoch": 1, "lr": 0.003, "train_loss": 0.5, "val_dice": None},
               {"epoch": 2, "lr": 0.00030000000000000003, "train_loss": 0.25, "steps": 3, "val_dice": 0.75},
               {"epoch": 3, "note": "a,b", "val_attack_forward": 8}]
    write_metrics(tmp_path, history)
    expected = ("epoch,lr,train_loss,val_dice,steps,note,val_attack_forward\r\n"
                "1,0.003,0.5,,,,\r\n"
                "2,0.00030000000000000003,0.25,0.75,3,,\r\n"
                '3,,,,,"a,b",8\r\n')
    assert (tmp_path / "metrics.csv").read_bytes().decode() == expected
    assert (tmp_path / "metrics.jsonl").read_text().splitlines()[2] == '{"epoch": 3, "note": "a,b", "val_attack_forward": 8}'


def test_run_log_removes_its_file_handler_on_exit_and_on_error(tmp_path: Path):
    with bare_logger() as lg:
        with run_log(tmp_path / "a"):
            logging.getLogger("medrobust.training.trainer").info("inside the run")
            assert len(lg.handlers) == 1 and lg.level == logging.INFO
        logging.getLogger("medrobust.training.trainer").info("after the run")
        assert lg.handlers == [] and lg.level == logging.NOTSET
        text = (tmp_path / "a" / "log.txt").read_text()
        assert "inside the run" in text and "after the run" not in text
        with pytest.raises(RuntimeError), run_log(tmp_path / "b"):
            raise RuntimeError("boom")
        assert lg.handlers == []
        with run_log(tmp_path / "c", enabled=False):
            assert lg.handlers == []
        assert not (tmp_path / "c").exists()


def test_trainer_functions_are_small():
    """No function of the trainer's modules over 80 lines (the architecture review's bar)."""
    files = ["engine", "trainer", "ddp", "schedule", "run_folder", "robust_validation", "validation", "budget", "state", "batchnorm"]
    long = []
    for name in files:
        path = ROOT / "medrobust" / "training" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{name}.py:{node.name}")
    assert long == []
