"""``ThreatModel.within`` tolerances (medrobust/threat.py; issue #17): a point is inside the ball when
its norm (written out here with ``torch.linalg.vector_norm``) is at most ``eps * (1 + 1e-5) + atol``;
points just inside and just outside that edge, in float64 so the margins are exact."""

from __future__ import annotations

import pytest
import torch

from medrobust.threat import ThreatModel


def _at(norm: float, n: int = 4) -> torch.Tensor:
    d = torch.ones(1, n, dtype=torch.float64)
    return d * (norm / float(torch.linalg.vector_norm(d)))


def test_relative_and_absolute_tolerance_of_the_ball():
    tm = ThreatModel("L2", None)
    x = torch.zeros(1, 4, dtype=torch.float64)
    eps = torch.tensor([2.0], dtype=torch.float64)
    # relative only (atol 0): edge at 2 * (1 + 1e-5) = 2.00002
    assert tm.within(x + _at(2.0 * (1 + 0.5e-5)), x, eps, atol=0.0).tolist() == [True]
    assert tm.within(x + _at(2.0 * (1 + 2e-5)), x, eps, atol=0.0).tolist() == [False]
    # plus the absolute tolerance: edge at 2.00002 + 1e-3
    assert tm.within(x + _at(2.0 + 2e-5 + 0.9e-3), x, eps, atol=1e-3).tolist() == [True]
    assert tm.within(x + _at(2.0 + 2e-5 + 1.1e-3), x, eps, atol=1e-3).tolist() == [False]
    # the default atol is 1e-5: edge at 2.00003
    assert tm.within(x + _at(2.0 + 2.5e-5), x, eps).tolist() == [True]
    assert tm.within(x + _at(2.0 + 3.5e-5), x, eps).tolist() == [False]
    # Linf: the largest coordinate counts
    li = ThreatModel("Linf", None)
    d = torch.tensor([[0.1, -0.3 * (1 + 0.5e-5), 0.0, 0.2]], dtype=torch.float64)
    assert li.within(x + d, x, torch.tensor([0.3], dtype=torch.float64), atol=0.0).tolist() == [True]
    d[0, 1] = -0.3 * (1 + 2e-5)
    assert li.within(x + d, x, torch.tensor([0.3], dtype=torch.float64), atol=0.0).tolist() == [False]


def test_single_sample_batches():
    import math

    from medrobust.threat import budget_to_input

    x = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    # rms budget: eps_input = budget * sqrt(number of input elements of one sample) = 0.5 * sqrt(24)
    e = budget_to_input(0.5, "rms", "L2", {}, x)
    assert e.shape == (1,) and float(e[0]) == pytest.approx(0.5 * math.sqrt(24))
    tm = ThreatModel("L2", None)
    torch.manual_seed(0)
    eps = torch.tensor([0.7], dtype=torch.float64)
    for radius in ("ball", "sphere"):
        d = tm.random_delta(x, eps, radius)
        n = float(torch.linalg.vector_norm(d.reshape(-1)))
        assert d.shape == x.shape and n <= 0.7 + 1e-12
        if radius == "sphere":
            assert n == pytest.approx(0.7)


def test_bounds_tolerance_on_both_sides():
    tm = ThreatModel("Linf", (0.0, 1.0))
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    eps = torch.tensor([1.0], dtype=torch.float64)
    # atol 1e-3 around [0, 1]: the bounds themselves and points within atol of them are in
    for v, inside in ((0.0, True), (-0.5e-3, True), (-2e-3, False), (1.0, True), (1.0 + 0.5e-3, True), (1.0 + 2e-3, False)):
        xa = x.clone()
        xa[0, 1] = v
        assert tm.within(xa, x, eps, atol=1e-3).tolist() == [inside], v
    # exactly atol outside either bound is still inside (the tolerance is inclusive)
    for v in (0.0 - 1e-3, 1.0 + 1e-3):
        xa = x.clone()
        xa[0, 1] = v
        assert tm.within(xa, x, eps, atol=1e-3).tolist() == [True], v
