"""The sweep's parts: row builder, merging work items, attack reseeding, run results, hand-stepped progress."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medrobust.config import EvalConfig, load_config
from medrobust.evaluation.rows import RowBuilder
from medrobust.evaluation.sweep import merge_items, reseed_attack
from medrobust.tasks import build_task


def _cfg(**over) -> EvalConfig:
    return load_config(EvalConfig, data={"checkpoint": "x.pt", "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, 0.5]}, **over})


def _batch(n: int, spatial: tuple[int, ...] = ()) -> dict:
    return {"id": [f"s{i}" for i in range(n)], "case": [f"c{i}" for i in range(n)], "slice": torch.full((n,), -1),
            "case_index": torch.arange(n), "spacing": torch.ones(n, max(1, len(spatial)), dtype=torch.float64)}


def test_classification_rows_hold_identity_units_metrics_and_extras():
    task = build_task("classification", 3)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    rows = RowBuilder(task, _cfg(), {0: "a", 1: "b", 2: "c"}).rows(
        _batch(2), logits, y, "pgd", 0.5, {"input": torch.tensor([3.0, 4.0])}, {"score_worst": torch.tensor([1.0, 0.0]),
                                                                               "member:fab": torch.tensor([0.5, 0.25])})
    r0, r1 = rows
    assert (r0["sample"], r0["case"], r0["slice"], r0["attack"], r0["norm"], r0["units"], r0["budget"]) == ("s0", "c0", -1, "pgd", "L2", "rms", 0.5)
    assert r0["eps_input"] == 3.0 and np.isnan(r0["eps_native"]) and np.isnan(r0["eps_rms"])  # units not given at a budget > 0
    assert (r0["pred"], r0["correct"], r1["pred"], r1["correct"]) == (0, True, 2, False)
    assert r0["margin"] == pytest.approx(2.0) and r1["margin"] == pytest.approx(-2.0)  # z_y - max_{j != y} z_j
    p = torch.softmax(logits, 1)
    assert r1["prob_2"] == pytest.approx(float(p[1, 2])) and r1["success"] is False
    assert r0["correct_worst"] == 1.0 and r1["correct_worst"] == 0.0  # "score" extras are named after the metric
    assert r1["member:fab"] == 0.25
    clean = RowBuilder(task, _cfg(), {}).rows(_batch(2), logits, y, "clean", 0.0, {"input": torch.zeros(2)})
    assert clean[0]["eps_rms"] == 0.0 and clean[0]["eps_input"] == 0.0  # budget 0 is 0 in every unit


def test_segmentation_rows_count_tp_fp_fn_per_class():
    task = build_task("segmentation", 3)
    y = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    y[0, 0, :2, :2] = 1  # 4 voxels of class 1
    y[0, 0, 3, 3] = 2
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, :2, :1] = 1  # 2 of the 4 found
    pred[0, 3, 2:] = 2  # 1 right, 1 wrong
    logits = torch.nn.functional.one_hot(pred, 3).movedim(-1, 1).float() * 5
    b = _batch(1, (4, 4))
    (r,) = RowBuilder(task, _cfg(metrics=["dice", "iou"]), {1: "liver", 2: "tumour"}).rows(b, logits, y, "clean", 0.0, {})
    assert (r["tp_1"], r["fp_1"], r["fn_1"]) == (2, 0, 2) and (r["tp_2"], r["fp_2"], r["fn_2"]) == (1, 1, 0)
    assert r["dice_liver"] == pytest.approx(4 / 6) and r["dice_tumour"] == pytest.approx(2 / 3)
    assert r["dice"] == pytest.approx((4 / 6 + 2 / 3) / 2) and r["iou_liver"] == pytest.approx(0.5)
    assert r["iou"] == pytest.approx((0.5 + 0.5) / 2)


class _Store:
    def __init__(self, recs, examples):
        self.recs, self.examples = recs, examples

    def gather(self):
        yield from enumerate(self.recs)

    def load_examples(self, item):
        return self.examples.get(item)


def test_merge_items_keeps_item_order_flags_once_and_the_largest_artefact_drops():
    attacks = [SimpleNamespace(label="pgd"), _artefact("motion")]
    recs = [{"rows": [{"i": 0}], "flags": ["f1"], "attack_time": {"pgd": 1.0}},
            {"rows": [{"i": 1}, {"i": 2}], "flags": ["f1", "f2"], "attack_time": {"pgd": 0.5, "motion": 2.0}}]
    ex = {0: {"pgd": [{"id": "a"}, {"id": "b"}], "motion": [{"id": "m0", "drop": 0.1}]},
          1: {"pgd": [{"id": "c"}], "motion": [{"id": "m1", "drop": 0.4}, {"id": "m2", "drop": 0.05}]}}
    m = merge_items(_Store(recs, ex), attacks, 2)
    assert [r["i"] for r in m.rows] == [0, 1, 2] and m.flags == ["f1", "f2"]
    assert m.attack_time == {"pgd": 1.5, "motion": 2.0}
    assert [e["id"] for e in m.examples["pgd"]] == ["a", "b"]  # the first items' examples, capped
    assert [e["id"] for e in m.examples["motion"]] == ["m1", "m0"]  # the largest drops over all items


def _artefact(label: str):
    from medrobust.attacks import build_attack
    from medrobust.threat import ThreatModel

    return build_attack({"name": label}, build_task("segmentation", 2), ThreatModel("L2", None))


def test_reseed_depends_on_the_item_not_on_the_order_and_reaches_members():
    def attack(label, seed, members=()):
        return SimpleNamespace(label=label, params=SimpleNamespace(seed=seed), members=list(members))

    a, b = attack("x", 7, [attack("m", 3)]), attack("x", 7, [attack("m", 3)])
    reseed_attack(a, "s1|s2")
    reseed_attack(a, "s3")
    reseed_attack(a, "s1|s2")  # the original seed is kept: the same item gets the same seed again
    reseed_attack(b, "s1|s2")
    assert a.params.seed == b.params.seed != 7 and a.members[0].params.seed == b.members[0].params.seed != 3
    reseed_attack(b, "s3")
    assert b.params.seed != a.params.seed
    none = attack("y", None)
    reseed_attack(none, "s1")
    assert none.params.seed is None  # unseeded attacks stay unseeded


def test_run_results_name_their_outputs():
    from medrobust.evaluation.card import CardResult
    from medrobust.evaluation.compare import CompareResult
    from medrobust.evaluation.sweep import EvalResult
    from medrobust.margins.run import MarginsResult

    d = Path("/runs/x")
    assert EvalResult.paths(d) == {"run_dir": str(d), "results": str(d / "results.csv"), "summary": str(d / "summary.json"),
                                   "report": str(d / "report.html")}
    assert MarginsResult.paths(d) == {"run_dir": str(d), "results": str(d / "margins.csv"), "summary": str(d / "summary.json")}
    assert CompareResult.paths(d)["report"] == str(d / "study_report.html")
    assert CardResult.paths(d)["correlation"] == str(d / "margin_correlation.csv")
    assert EvalResult(d, None, {}).outputs() == EvalResult.paths(d)


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty,quiet", [(False, False), (False, True), (True, False)])
def test_step_progress_one_line_when_piped_a_bar_on_a_terminal(monkeypatch, tty, quiet):
    from medrobust.evaluation.workitems import step_progress

    monkeypatch.setenv("MEDROBUST_NO_PROGRESS", "1" if quiet else "0")
    s = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", s)
    bar = step_progress(5, "evaluating")
    for _ in range(5):
        bar.update(1)
    n = getattr(bar, "n", None)
    bar.close()
    if quiet:
        assert s.text == ""
    elif tty:
        from tqdm import tqdm

        assert isinstance(bar, tqdm) and n == 5 and "0/5" in s.text  # a real bar, advanced by update()
    else:
        assert s.text.startswith("evaluating: 5/5 in") and len(s.text.splitlines()) == 1
