"""``Task.reduce`` with fractional mask weights (medrobust/tasks.py; issue #17): the mask is a
weight, so the plain mean is sum(w q) / sum(w) and the class-balanced mean averages, over the
classes with positive weight, sum(w_c q) / sum(w_c); worked out by hand for weights summing to less
than one, where a wrong floor on the denominator would show. Also TP / FP / FN of a batch whose size
differs from the image sides, and classification labels as one column per sample."""

from __future__ import annotations

import numpy as np
import torch

from medrobust.tasks import SegmentationTask


def test_reduce_with_fractional_weights_by_hand():
    t = SegmentationTask(3)
    y = torch.tensor([[0, 0, 1, 1, 2, 2]])
    q = torch.tensor([[2.0, 4.0, 6.0, 8.0, 10.0, 12.0]])
    w = torch.tensor([[0.1, 0.3, 0.2, 0.0, 0.1, 0.1]])  # total 0.8
    # plain: (0.2 + 1.2 + 1.2 + 1.0 + 1.2) / 0.8 = 4.8 / 0.8
    np.testing.assert_allclose(t.reduce(q, y, mask=w).numpy(), [4.8 / 0.8])
    # class 0: (0.2 + 1.2) / 0.4 = 3.5; class 1: 1.2 / 0.2 = 6; class 2: (1.0 + 1.2) / 0.2 = 11
    np.testing.assert_allclose(t.reduce(q, y, class_balanced=True, mask=w).numpy(), [(3.5 + 6 + 11) / 3])
    # a class whose weights are all 0 is absent: class 2 dropped -> (3.5 + 6) / 2
    w2 = torch.tensor([[0.1, 0.3, 0.2, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(t.reduce(q, y, class_balanced=True, mask=w2).numpy(), [(3.5 + 6) / 2])
    # all weights 0: 0, not NaN
    assert t.reduce(q, y, mask=torch.zeros_like(w)).tolist() == [0.0]


def test_counts_and_classification_labels_with_batch_size_unlike_the_image_side():
    from medrobust.tasks import ClassificationTask, confusion_counts

    # one sample of 2 x 3 (batch size differs from every side): class 1 TP 2 (0,1),(1,2); FP 1 (0,0); FN 1 (1,0);
    # class 0 TP 2 (0,2),(1,1); FP 1 (1,0); FN 1 (0,0)
    pred = torch.tensor([[[1, 1, 0], [0, 0, 1]]])
    tgt = torch.tensor([[[0, 1, 0], [1, 0, 1]]])
    c = confusion_counts(pred, tgt, 2)
    assert c.shape == (1, 2, 3)
    assert c[0, 1].tolist() == [2.0, 1.0, 1.0] and c[0, 0].tolist() == [2.0, 1.0, 1.0]
    # classification labels: one element per sample, as a (B, 1) long column
    lab = ClassificationTask(3).label_elements(torch.tensor([2.0, 0.0, 1.0]))
    assert lab.dtype == torch.long and lab.tolist() == [[2], [0], [1]]
