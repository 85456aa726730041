"""Summary blocks (medrobust/evaluation/report.py; issue #17), values by hand: case-level Dice
(rows of a 2D model carry their slice index 0, 1, ... and get a ``case_dice`` block with TP / FP /
FN pooled over a case's slices, even for single-slice cases; whole-volume rows carry slice -1 and
get none), the worst case over attacks leaving out clean rows and artefacts (a severity level is
not a budget), and the gradient-evaluation line of the text table."""

from __future__ import annotations

import pandas as pd
import pytest

from medrobust.evaluation.report import _seg_block


def _rows(slices):
    # case X: TP 3, FP 1, FN 2 -> Dice 6/9; case Y: TP 4, FP 2, FN 0 -> 8/10
    return pd.DataFrame([
        {"sample": "X", "case": "X", "slice": slices[0], "dice": 6 / 9, "success": True, "tp_1": 3, "fp_1": 1, "fn_1": 2, "dice_organ": 6 / 9},
        {"sample": "Y", "case": "Y", "slice": slices[1], "dice": 0.8, "success": True, "tp_1": 4, "fp_1": 2, "fn_1": 0, "dice_organ": 0.8},
    ])


def test_single_slice_cases_of_a_2d_model_get_case_dice():
    b = _seg_block(_rows([0, 0]), [1], ["dice_organ"])
    assert b["case_dice"]["n"] == 2 and b["case_dice"]["mean"] == pytest.approx((6 / 9 + 0.8) / 2)
    # pooled over both cases: 2 * 7 / (14 + 3 + 2)
    assert b["pooled_dice"]["organ"] == pytest.approx(14 / 19)


def test_whole_volume_rows_get_no_case_dice():
    assert "case_dice" not in _seg_block(_rows([-1, -1]), [1], ["dice_organ"])


def _cls_rows():
    from types import SimpleNamespace

    rows = []
    labels = [0, 1, 0, 1]
    # clean: all correct; fgsm at budget 1: sample 0 fooled; the contrast artefact at severity 1
    # (also stored as budget 1): every sample fooled. Severity levels are not budgets.
    for attack, budget, fooled, sev in (("clean", 0.0, [], None), ("fgsm", 1.0, [0], None), ("contrast", 1.0, [0, 1, 2, 3], 1.0)):
        for i, y in enumerate(labels):
            wrong = i in fooled
            p1 = (0.2 if y == 1 else 0.8) if wrong else (0.8 if y == 1 else 0.2)
            rows.append({"sample": f"s{i}", "case": f"s{i}", "slice": -1, "attack": attack, "budget": budget, "severity": sev,
                         "label": y, "pred": int(p1 > 0.5), "correct": not wrong, "margin": -0.3 if wrong else 0.3,
                         "prob_0": 1 - p1, "prob_1": p1})
    info = SimpleNamespace(task="classification", num_classes=2, label_map={0: "no", 1: "yes"})
    return pd.DataFrame(rows), info


def test_worst_case_over_attacks_leaves_artefacts_and_clean_rows_out():
    from medrobust.evaluation.report import summarize

    t, info = _cls_rows()
    s = summarize(t, None, info, [1.0], ["fgsm", "contrast"], [])
    assert s["worst_case"]["1.0"]["accuracy"] == pytest.approx(3 / 4)  # fgsm only: sample 0 fooled
    assert s["attacks"]["contrast"]["1.0"]["accuracy"] == 0.0 and s["clean"]["accuracy"] == 1.0


def test_gradient_evaluation_line_needs_both_nominal_and_spent():
    from medrobust.evaluation.report import summarize, summary_table

    t, info = _cls_rows()
    s = summarize(t, None, info, [1.0], ["fgsm"], [])
    s["gradient_evaluations"] = {"fgsm": {"nominal_per_case": 100}}
    assert "gradient evaluations" not in summary_table(s)  # nothing spent recorded: no line
    s["gradient_evaluations"] = {"fgsm": {"1.0": {"mean_per_case": 80.0}}}
    assert "gradient evaluations" not in summary_table(s)  # no nominal figure: no line
    s["gradient_evaluations"] = {"fgsm": {"nominal_per_case": 100, "1.0": {"mean_per_case": 80.0}}}
    assert "gradient evaluations per case, fgsm: nominal 100, spent 1.0: 80" in summary_table(s)


def test_headline_numbers_for_sliced_and_whole_volume_summaries():
    from medrobust.evaluation.report import headline_numbers

    sliced = _seg_block(_rows([0, 0]), [1], ["dice_organ"])
    whole = _seg_block(_rows([-1, -1]), [1], ["dice_organ"])
    h = headline_numbers({"clean": sliced, "worst_case": {"1.0": whole}})
    assert h["unit"] == "slice"
    assert h["clean"]["case_dice_mean"] == pytest.approx((6 / 9 + 0.8) / 2) and h["clean"]["n_cases"] == 2
    assert h["clean"]["slice_dice_mean"] == pytest.approx((6 / 9 + 0.8) / 2) and h["clean"]["n_slices"] == 2
    assert h["clean"]["pooled_dice"] == pytest.approx(14 / 19)
    hw = headline_numbers({"clean": whole, "worst_case": {}})
    assert hw["unit"] == "case" and "slice_dice_mean" not in hw["clean"] and hw["worst_case"] == {}
    assert hw["clean"]["case_dice_mean"] == pytest.approx((6 / 9 + 0.8) / 2)
