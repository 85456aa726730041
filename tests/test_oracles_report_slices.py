"""Case-level Dice in the summary (medrobust/evaluation/report.py; issue #17): rows of a 2D model
carry their slice index (0, 1, ...) and get a ``case_dice`` block (TP / FP / FN pooled over a
case's slices); whole-volume rows carry slice -1 and get none. A volume of a single slice (index 0)
is still a 2D model's case. Values by hand."""

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
