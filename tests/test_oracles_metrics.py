"""Independent oracles for medrobust.evaluation.metrics and the summary of medrobust.evaluation.report:
hand-computed Dice / TP / FP / FN, pooled and case Dice on several cases of different sizes, and
every summary number recomputed from the per-row table with plain Python."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from medrobust.evaluation.metrics import nanmean_fg, normalised_auc, pooled_dice, segmentation_metrics
from medrobust.evaluation.report import _stats, summarize, summary_table

# same hand-worked pair as tests/test_oracles_tasks.py
TARGET = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 0]], [[2, 2, 2, 0], [0, 0, 0, 0]]])
PRED = torch.tensor([[[0, 1, 1, 0], [2, 1, 1, 0]], [[2, 0, 0, 0], [0, 0, 0, 1]]])


def test_segmentation_metrics_counts_dice_iou_by_hand():
    m = segmentation_metrics(PRED, TARGET, 3, torch.ones(2, 2), {"iou"})
    np.testing.assert_array_equal(m["counts"], [[[2, 1, 1], [2, 2, 1], [1, 0, 1]], [[4, 2, 1], [0, 1, 0], [1, 0, 2]]])
    np.testing.assert_allclose(m["dice"], [[4 / 6, 4 / 7, 2 / 3], [8 / 11, 0.0, 0.5]])
    np.testing.assert_allclose(m["iou"], [[2 / 4, 2 / 5, 1 / 2], [4 / 7, 0.0, 1 / 3]])
    assert "hd95" not in m and "nsd" not in m
    empty = segmentation_metrics(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), 2, torch.ones(1, 2), {"iou"})
    assert math.isnan(empty["iou"][0, 1]) and empty["iou"][0, 0] == 1.0
    fp = torch.zeros(1, 2, 2, dtype=torch.long)
    fp[0, 0, 0] = 1
    one = segmentation_metrics(fp, torch.zeros(1, 2, 2, dtype=torch.long), 2, torch.ones(1, 2), {"iou"})
    assert one["iou"][0, 1] == 0.0 and one["dice"][0, 1] == 0.0  # one false-positive voxel: 0, not undefined


def test_distance_metrics_empty_rules_use_the_anisotropic_diagonal():
    tgt = torch.zeros(3, 20, 30, dtype=torch.long)
    tgt[:, 4:10, 5:15] = 1
    pred = tgt.clone()
    pred[1] = 0  # total miss
    tgt[2] = 0  # pure false positive
    pred[2] = 0
    pred[2, 1:3, 1:3] = 1
    spacing = torch.tensor([[0.5, 2.0], [0.5, 2.0], [1.0, 3.0]])
    m = segmentation_metrics(pred, tgt, 2, spacing, {"hd95", "nsd"})
    assert m["hd95"][0, 1] == pytest.approx(0.0) and m["nsd"][0, 1] == pytest.approx(1.0)  # perfect
    assert m["hd95"][1, 1] == pytest.approx(math.hypot(20 * 0.5, 30 * 2.0))
    assert m["hd95"][2, 1] == pytest.approx(math.hypot(20 * 1.0, 30 * 3.0))
    assert m["nsd"][1, 1] == 0.0 and m["nsd"][2, 1] == 0.0
    assert np.isnan(m["hd95"][:, 0]).all() and np.isnan(m["nsd"][:, 0]).all()
    both = segmentation_metrics(torch.zeros(1, 6, 6, dtype=torch.long), torch.zeros(1, 6, 6, dtype=torch.long), 2, torch.ones(1, 2), {"hd95", "nsd"})
    assert np.isnan(both["hd95"][0, 1]) and np.isnan(both["nsd"][0, 1])
    # a one-pixel shift along the axis of spacing 2 mm: every boundary point is 0 or 2 mm away
    shift = tgt[:1].clone()
    shift[0] = 0
    shift[0, 4:10, 6:16] = 1
    m2 = segmentation_metrics(shift, tgt[:1], 2, torch.tensor([[0.5, 2.0]]), {"hd95", "nsd"}, nsd_tolerance=2.5)
    assert m2["hd95"][0, 1] == pytest.approx(2.0)
    assert m2["nsd"][0, 1] == pytest.approx(1.0)


def test_pooled_dice_sums_counts_over_cases():
    counts = np.array([[[9, 9, 9], [2, 1, 3], [0, 0, 0]],
                       [[9, 9, 9], [5, 0, 1], [0, 0, 0]],
                       [[9, 9, 9], [0, 4, 0], [0, 0, 0]]], dtype=float)
    # class 1: TP 7, FP 5, FN 4 -> 14 / 23; class 2: nothing anywhere -> NaN
    pd_ = pooled_dice(counts)
    assert pd_[1] == pytest.approx(14 / 23) and math.isnan(pd_[2])
    assert pd_[0] == pytest.approx(54 / (54 + 27 + 27))
    one_fp = np.zeros((2, 2, 3))
    one_fp[1, 1, 1] = 1  # a single false-positive voxel in the whole data set: Dice 0, not undefined
    assert pooled_dice(one_fp)[1] == 0.0


def test_nanmean_fg_and_auc_by_hand():
    v = np.array([[0.9, 0.2, np.nan, 0.6], [0.1, np.nan, np.nan, np.nan], [np.nan, 0.0, 0.5, 1.0], [0.3, np.nan, 0.7, np.nan]])
    np.testing.assert_allclose(nanmean_fg(v)[[0, 2, 3]], [0.4, 0.5, 0.7])
    assert math.isnan(nanmean_fg(v)[1])
    assert nanmean_fg(v, empty_value=1.0)[1] == 1.0
    # trapezoids over unsorted, non-uniform budgets, NaN values dropped
    assert normalised_auc([2.0, 0.0, 0.5, 1.0], [0.0, 1.0, 0.8, float("nan")]) == pytest.approx((0.5 * 1.8 / 2 + 1.5 * 0.8 / 2) / 2.0)
    assert normalised_auc([1.0, 3.0], [0.6, 0.2]) == pytest.approx(0.4)  # divided by the covered width
    assert math.isnan(normalised_auc([1.0], [0.5]))
    assert math.isnan(normalised_auc([0.0, 0.0], [0.5, 0.4]))
    assert math.isnan(normalised_auc([-1.0, 0.0], [0.5, 0.4]))
    assert normalised_auc([0.0, 0.5], [0.4, 0.2]) == pytest.approx(0.3)
    assert normalised_auc([0.0, 0.0, 1.0], [1.0, 0.8, 0.6]) == pytest.approx(0.8)  # a repeated budget 0 adds no area


def _pct(a: list[float], q: float) -> float:
    """Linear-interpolation percentile written out."""
    s = sorted(a)
    pos = (len(s) - 1) * q / 100
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def test_stats_by_hand():
    s = _stats(pd.Series([1.0, 2.0, float("nan"), 4.0, 10.0]))
    assert s["n"] == 4 and s["mean"] == pytest.approx(4.25)
    assert s["sd"] == pytest.approx(math.sqrt(48.75 / 3))
    assert s["median"] == pytest.approx(3.0) and s["q1"] == pytest.approx(1.75) and s["q3"] == pytest.approx(5.5)
    two = _stats(pd.Series([1.0, 3.0]))
    assert two["sd"] == pytest.approx(math.sqrt(2.0)) and two["q1"] == pytest.approx(1.5)
    one = _stats(pd.Series([0.7]))
    assert one["n"] == 1 and one["mean"] == 0.7 and one["sd"] == 0.0 and one["median"] == 0.7
    none = _stats(pd.Series([float("nan")]))
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["sd"]) and math.isnan(none["q3"])


# ---------------------------------------------------------------------------- summary
CASES = [("A", 0), ("A", 1), ("A", 2), ("B", -1), ("C", 0), ("C", 1)]  # cases of 3, 1 and 2 samples; B a whole volume


def _seg_table() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for attack, budgets in (("clean", [0.0]), ("pgd", [0.0, 0.5, 1.0]), ("noise", [0.0, 0.5, 1.0])):
        for b in budgets:
            for i, (case, sl) in enumerate(CASES):
                r = {"sample": f"{case}_{sl}", "case": case, "slice": sl, "attack": attack, "budget": b}
                dices = []
                for k in (1, 2):
                    tp, fp, fn = (int(v) for v in rng.integers(0, 20, 3))
                    if attack != "clean":
                        tp = max(0, tp - int(10 * b) - (3 if attack == "pgd" else 0))
                    if case == "C" and k == 2:
                        tp = fp = fn = 0  # absent from truth and prediction in case C
                    r[f"tp_{k}"], r[f"fp_{k}"], r[f"fn_{k}"] = tp, fp, fn
                    den = 2 * tp + fp + fn
                    dices.append(2 * tp / den if den else float("nan"))
                r["dice_organ_a"], r["dice_organ_b"] = dices
                valid = [d for d in dices if d == d]
                r["dice"] = sum(valid) / len(valid) if valid else 1.0
                r["success"] = r["dice"] >= 0.6
                r["hd95"] = float(rng.uniform(0, 9))
                r["dice_worst"] = r["dice"] - 0.05
                rows.append(r)
    t = pd.DataFrame(rows)
    clean = t[t.attack == "clean"].set_index("sample")
    zero = t.budget == 0.0
    for col in [c for c in t.columns if c not in ("sample", "case", "slice", "attack", "budget")]:
        t.loc[zero & (t.attack == "pgd"), col] = clean.loc[t.loc[zero & (t.attack == "pgd"), "sample"], col].to_numpy()
    return t


def _pooled(rows: pd.DataFrame) -> list[float]:
    out = []
    for k in (1, 2):
        tp, fp, fn = rows[f"tp_{k}"].sum(), rows[f"fp_{k}"].sum(), rows[f"fn_{k}"].sum()
        den = 2 * tp + fp + fn
        out.append(2 * tp / den if den else float("nan"))
    return out


def _check_seg_block(block: dict, rows: pd.DataFrame) -> None:
    d = [float(v) for v in rows["dice"]]
    assert block["dice"]["n"] == len(d)
    assert block["dice"]["mean"] == pytest.approx(sum(d) / len(d))
    assert block["dice"]["sd"] == pytest.approx(statistics.stdev(d))
    assert block["dice"]["median"] == pytest.approx(statistics.median(d))
    assert block["dice"]["q1"] == pytest.approx(_pct(d, 25)) and block["dice"]["q3"] == pytest.approx(_pct(d, 75))
    assert block["success_rate"] == pytest.approx(sum(bool(s) for s in rows["success"]) / len(d))
    p = _pooled(rows)
    assert block["pooled_dice"]["organ_a"] == pytest.approx(p[0]) and block["pooled_dice"]["organ_b"] == pytest.approx(p[1])
    assert block["pooled_dice_mean"] == pytest.approx(sum(p) / 2)
    for name in ("organ_a", "organ_b"):
        vals = [float(v) for v in rows[f"dice_{name}"] if v == v]
        assert block["class_dice"][name] == pytest.approx(sum(vals) / len(vals))
    assert block["hd95"]["mean"] == pytest.approx(float(rows["hd95"].mean()))
    assert block["dice_worst"] == pytest.approx(float(rows["dice_worst"].mean()))
    # case Dice: slices of a case pooled, foreground classes averaged where defined, then the mean over cases
    per_case = []
    for case in sorted(set(rows["case"])):
        pc = [v for v in _pooled(rows[rows.case == case]) if v == v]
        per_case.append(sum(pc) / len(pc) if pc else 1.0)
    assert block["case_dice"]["n"] == len(per_case) == 3
    assert block["case_dice"]["mean"] == pytest.approx(sum(per_case) / len(per_case))
    assert block["case_dice"]["median"] == pytest.approx(statistics.median(per_case))


def test_segmentation_summary_recomputed_from_the_rows():
    t = _seg_table()
    info = SimpleNamespace(task="segmentation", num_classes=3, label_map={0: "background", 1: "organ_a", 2: "organ_b"})
    budgets = [0.5, 1.0]
    s = summarize(t, None, info, budgets, ["pgd", "noise"], ["a flag"])
    assert s["task"] == "segmentation" and s["flags"] == ["a flag"]
    _check_seg_block(s["clean"], t[t.attack == "clean"])
    for a in ("pgd", "noise"):
        assert set(s["attacks"][a]) == {"0.5", "1.0"}
        for b in budgets:
            _check_seg_block(s["attacks"][a][str(b)], t[(t.attack == a) & (t.budget == b)])
        # AUC: the clean mean at budget 0, then the attack's means
        m = [t[(t.attack == a) & (t.budget == b)]["dice"].mean() for b in budgets]
        c = t[t.attack == "clean"]["dice"].mean()
        assert s["auc"][a] == pytest.approx((0.5 * (c + m[0]) / 2 + 0.5 * (m[0] + m[1]) / 2) / 1.0)
    for b in budgets:
        worst = []
        for smp in [f"{c}_{sl}" for c, sl in CASES]:
            cand = t[(t.attack != "clean") & (t.budget == b) & (t["sample"] == smp)]
            worst.append(cand.loc[cand["dice"].idxmin()])
        wrows = pd.DataFrame(worst)
        assert len(wrows) == 6
        _check_seg_block(s["worst_case"][str(b)], wrows)
        assert s["worst_case"][str(b)]["dice"]["mean"] < min(s["attacks"][a][str(b)]["dice"]["mean"] for a in ("pgd", "noise"))
    txt = summary_table(s)
    assert f"{s['clean']['dice']['mean']:.4f}" in txt and f"{s['worst_case']['1.0']['dice']['mean']:.4f}" in txt
    assert "FLAG a flag" in txt
    # a budget 0 in the grid: the attack's own budget-0 rows start its curve
    s0 = summarize(t, None, info, [0.0, 0.5, 1.0], ["pgd"], [])
    m0 = [t[(t.attack == "pgd") & (t.budget == b)]["dice"].mean() for b in (0.0, 0.5, 1.0)]
    assert s0["auc"]["pgd"] == pytest.approx((0.5 * (m0[0] + m0[1]) / 2 + 0.5 * (m0[1] + m0[2]) / 2) / 1.0)
    # a budget with no rows is left out
    s1 = summarize(t, None, info, [0.5, 2.0, 1.0], ["pgd"], [])
    assert set(s1["attacks"]["pgd"]) == {"0.5", "1.0"} and set(s1["worst_case"]) == {"0.5", "1.0"}


def _auc_binary(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_classification_summary_recomputed_from_the_rows():
    labels = [0, 0, 0, 1, 1]
    rows = []
    probs = {"clean": [0.9, 0.6, 0.3, 0.2, 0.55], "fgsm": [0.7, 0.4, 0.2, 0.6, 0.8], "noise": [0.4, 0.3, 0.45, 0.3, 0.5]}
    for attack, p0s in probs.items():
        for i, (y, p0) in enumerate(zip(labels, p0s)):
            pred = 0 if p0 > 0.5 else 1
            rows.append({"sample": f"s{i}", "case": f"s{i}", "slice": -1, "attack": attack, "budget": 0.0 if attack == "clean" else 0.1,
                         "label": y, "pred": pred, "correct": pred == y, "margin": (p0 - 0.5) * (1 if y == 0 else -1),
                         "prob_0": p0, "prob_1": 1 - p0, "correct_mean": 0.5 + 0.1 * i})
    t = pd.DataFrame(rows)
    info = SimpleNamespace(task="classification", num_classes=2, label_map={0: "no", 1: "yes"})
    s = summarize(t, None, info, [0.1], ["fgsm", "noise"], [])
    for key, attack in (("clean", "clean"), ("fgsm", "fgsm")):
        blk = s["clean"] if key == "clean" else s["attacks"]["fgsm"]["0.1"]
        d = t[t.attack == attack]
        corr = [bool(c) for c in d["correct"]]
        assert blk["accuracy"] == pytest.approx(sum(corr) / 5)
        rec0 = sum(c for c, y in zip(corr, labels) if y == 0) / 3
        rec1 = sum(c for c, y in zip(corr, labels) if y == 1) / 2
        assert blk["balanced_accuracy"] == pytest.approx((rec0 + rec1) / 2)
        assert blk["auc"] == pytest.approx(_auc_binary(list(d["prob_1"]), labels))
        assert blk["correct"]["n"] == 5 and blk["margin"]["mean"] == pytest.approx(float(d["margin"].mean()))
        assert blk["accuracy_mean_draw"] == pytest.approx(0.7)
    # worst case: per sample, an attack that fools it if any does
    w = s["worst_case"]["0.1"]
    fooled = [any(not bool(r.correct) for r in t[(t.attack != "clean") & (t["sample"] == f"s{i}")].itertuples()) for i in range(5)]
    assert w["accuracy"] == pytest.approx(sum(not f for f in fooled) / 5)
    assert w["accuracy"] < min(s["attacks"][a]["0.1"]["accuracy"] for a in ("fgsm", "noise"))
    clean_acc = s["clean"]["accuracy"]
    assert s["auc"]["fgsm"] == pytest.approx((clean_acc + s["attacks"]["fgsm"]["0.1"]["accuracy"]) / 2)
    assert f"{clean_acc:.4f}" in summary_table(s)


def test_summary_with_three_foreground_classes_and_an_empty_case():
    """Pooled and case Dice average over three foreground classes (mean, not median); a case with nothing
    to find and nothing found scores 1."""
    counts = {  # sample -> (case, slice, [(tp, fp, fn) for classes 1, 2, 3])
        "a0": ("A", 0, [(5, 1, 0), (1, 0, 3), (0, 2, 0)]),
        "a1": ("A", 1, [(3, 0, 1), (0, 0, 0), (0, 0, 2)]),
        "b0": ("B", 0, [(9, 0, 0), (2, 2, 0), (4, 0, 0)]),
        "e0": ("E", 0, [(0, 0, 0), (0, 0, 0), (0, 0, 0)]),
    }
    rows = []
    for smp, (case, sl, cc) in counts.items():
        r = {"sample": smp, "case": case, "slice": sl, "attack": "clean", "budget": 0.0, "success": True}
        ds = []
        for k, (tp, fp, fn) in enumerate(cc, start=1):
            r[f"tp_{k}"], r[f"fp_{k}"], r[f"fn_{k}"] = tp, fp, fn
            den = 2 * tp + fp + fn
            r[f"dice_c{k}"] = 2 * tp / den if den else float("nan")
            if den:
                ds.append(2 * tp / den)
        r["dice"] = sum(ds) / len(ds) if ds else 1.0
        rows.append(r)
    t = pd.DataFrame(rows)
    info = SimpleNamespace(task="segmentation", num_classes=4, label_map={0: "bg", 1: "c1", 2: "c2", 3: "c3"})
    s = summarize(t, None, info, [], [], [])["clean"]
    pooled = [2 * 17 / (2 * 17 + 1 + 1), 2 * 3 / (2 * 3 + 2 + 3), 2 * 4 / (2 * 4 + 2 + 2)]
    assert [s["pooled_dice"][c] for c in ("c1", "c2", "c3")] == pytest.approx(pooled)
    assert s["pooled_dice_mean"] == pytest.approx(sum(pooled) / 3)
    case_a = [2 * 8 / (16 + 1 + 1), 2 * 1 / (2 + 0 + 3), 0.0]
    case_b = [1.0, 4 / 6, 1.0]
    per_case = [sum(case_a) / 3, sum(case_b) / 3, 1.0]
    assert s["case_dice"]["n"] == 3
    assert s["case_dice"]["mean"] == pytest.approx(sum(per_case) / 3)
    assert s["case_dice"]["q1"] == pytest.approx(_pct(per_case, 25))
    assert s["class_dice"]["c2"] == pytest.approx((0.4 + 4 / 6) / 2)  # NaN rows left out


def test_pooled_mean_skips_a_class_absent_everywhere():
    rows = []
    for i, (tp, fp, fn) in enumerate([(3, 1, 2), (5, 0, 1)]):
        rows.append({"sample": f"s{i}", "case": f"s{i}", "slice": -1, "attack": "clean", "budget": 0.0, "success": True,
                     "dice": 2 * tp / (2 * tp + fp + fn), "tp_1": tp, "fp_1": fp, "fn_1": fn, "tp_2": 0, "fp_2": 0, "fn_2": 0,
                     "dice_a": 2 * tp / (2 * tp + fp + fn), "dice_b": float("nan")})
    info = SimpleNamespace(task="segmentation", num_classes=3, label_map={0: "bg", 1: "a", 2: "b"})
    s = summarize(pd.DataFrame(rows), None, info, [], [], [])["clean"]
    assert s["pooled_dice"]["a"] == pytest.approx(16 / 20) and math.isnan(s["pooled_dice"]["b"])
    assert s["pooled_dice_mean"] == pytest.approx(16 / 20)
