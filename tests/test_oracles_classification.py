"""Classification metrics (medrobust/evaluation/metrics.py: ``classification_metrics``, ``auc_score``)
against hand-computed values (issue #17): accuracy, balanced accuracy (mean recall over the classes
present in the labels) and ROC AUC as the Mann-Whitney probability that a positive outscores a
negative (ties count one half), binary on the positive class and macro one-vs-rest over the classes
present for more classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medrobust.evaluation.metrics import auc_score, classification_metrics


def _mann_whitney(scores, positive) -> float:
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_binary_by_hand():
    p1 = np.array([0.9, 0.4, 0.6, 0.4, 0.2, 0.7, 0.1])
    labels = np.array([1, 1, 0, 0, 0, 1, 0])
    probs = np.stack([1 - p1, p1], 1)
    m = classification_metrics(probs, labels, 2)
    # predictions 1 0 1 0 0 1 0: correct T F F T T T T
    assert m["accuracy"] == pytest.approx(5 / 7)
    # recall of class 1 (samples 0, 1, 5): 2/3; of class 0 (samples 2, 3, 4, 6): 3/4
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    # positives 0.9, 0.4, 0.7 against negatives 0.6, 0.4, 0.2, 0.1: 4 + 2.5 + 4 wins of 12
    assert m["auc"] == pytest.approx(10.5 / 12)
    assert _mann_whitney(p1, labels == 1) == pytest.approx(10.5 / 12)  # the oracle agrees with the hand count
    assert auc_score(probs, labels, 2) == pytest.approx(10.5 / 12)


# seven samples, three classes; every row sums to 1 and has one largest entry
PROBS3 = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.3, 0.45, 0.25],
                   [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.2, 0.7]])
LABELS3 = np.array([0, 1, 2, 2, 1, 0, 2])
# one-vs-rest by hand: class 0 6.5/10, class 1 8/10, class 2 9.5/12
AUC3 = (6.5 / 10 + 8 / 10 + 9.5 / 12) / 3


def test_three_classes_macro_one_vs_rest_by_hand():
    for k, want in ((0, 6.5 / 10), (1, 8 / 10), (2, 9.5 / 12)):
        assert _mann_whitney(PROBS3[:, k], LABELS3 == k) == pytest.approx(want)
    m = classification_metrics(PROBS3, LABELS3, 3)
    # predictions 0 1 2 1 0 2 2: correct T T T F F F T
    assert m["accuracy"] == pytest.approx(4 / 7)
    # recalls: class 0 (samples 0, 5) 1/2, class 1 (1, 4) 1/2, class 2 (2, 3, 6) 2/3
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)
    assert m["auc"] == pytest.approx(AUC3)
    # a class with a single sample still counts: sample 4 relabelled 0 leaves class 1 with sample 1 only
    lab = np.array([0, 1, 2, 2, 0, 0, 2])
    want = sum(_mann_whitney(PROBS3[:, k], lab == k) for k in range(3)) / 3
    assert want != pytest.approx((_mann_whitney(PROBS3[:, 0], lab == 0) + _mann_whitney(PROBS3[:, 2], lab == 2)) / 2)
    assert auc_score(PROBS3, lab, 3) == pytest.approx(want)


def test_a_class_missing_from_the_labels_is_left_out_of_recall_and_auc():
    # a fourth class that no sample has and no sample is predicted as: same accuracy, recalls and AUC
    probs4 = np.concatenate([0.8 * PROBS3, np.full((7, 1), 0.2)], 1)
    m = classification_metrics(probs4, LABELS3, 4)
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)
    assert m["auc"] == pytest.approx(AUC3)
    # a middle class missing: classes 0 and 2 only, their own columns
    keep = LABELS3 != 1
    p, lab = PROBS3[keep], LABELS3[keep]
    want = (_mann_whitney(p[:, 0], lab == 0) + _mann_whitney(p[:, 2], lab == 2)) / 2
    assert auc_score(p, lab, 3) == pytest.approx(want)
    mm = classification_metrics(p, lab, 3)
    # kept samples 0 2 3 5 6 (labels 0 2 2 0 2), predictions 0 2 1 2 2: recall 0 = 1/2, recall 2 = 2/3
    assert mm["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert mm["accuracy"] == pytest.approx(3 / 5)


def test_a_predicted_class_absent_from_the_labels_lowers_accuracy_not_the_class_count():
    # sample 1 (label 1) predicted as class 3, which no label has: recall of class 1 drops to 0
    probs4 = np.concatenate([0.8 * PROBS3, np.full((7, 1), 0.2)], 1)
    probs4[1] = [0.1, 0.2, 0.1, 0.6]
    m = classification_metrics(probs4, LABELS3, 4)
    assert m["accuracy"] == pytest.approx(3 / 7)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)


def test_degenerate_label_sets():
    probs = np.array([[0.3, 0.7], [0.8, 0.2], [0.4, 0.6]])
    one = classification_metrics(probs, np.array([1, 1, 1]), 2)
    assert one["accuracy"] == pytest.approx(2 / 3) and one["balanced_accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(one["auc"])  # AUC needs both classes
    assert math.isnan(auc_score(PROBS3[LABELS3 == 2], LABELS3[LABELS3 == 2], 3))
    empty = classification_metrics(np.zeros((0, 2)), np.zeros(0, dtype=int), 2)
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["balanced_accuracy"]) and math.isnan(empty["auc"])
