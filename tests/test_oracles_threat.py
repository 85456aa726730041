"""Independent oracles for medrobust.threat: norms from torch.linalg.vector_norm, bounds and units
worked out in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrobust.errors import ConfigError
from medrobust.threat import ThreatModel, budget_to_input, input_to_units, lp_norm, resolve_bounds


def _vn(t: torch.Tensor, norm: str) -> torch.Tensor:
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), ord=math.inf if norm == "Linf" else 2, dim=1)


def test_lp_norm_against_vector_norm():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(4, 2, 3, 5, generator=g) - 0.3
    d[1, 0, 0, 0] = -7.0  # the largest magnitude is negative
    for norm in ("Linf", "L2"):
        torch.testing.assert_close(lp_norm(d, norm), _vn(d, norm))
    assert lp_norm(d, "Linf")[1].item() == pytest.approx(7.0)


def test_threat_model_validation():
    with pytest.raises(ConfigError, match="norm 'L1'"):
        ThreatModel("L1")
    with pytest.raises(ConfigError, match="empty"):
        ThreatModel("L2", [1.0, 1.0])
    with pytest.raises(ConfigError, match="empty"):
        ThreatModel("L2", (2.0, 1.0))
    assert ThreatModel("Linf", [0, 3]).bounds == (0.0, 3.0)
    assert ThreatModel("Linf", None).bounds is None


def test_eps_tensor_scalar_per_sample_and_errors():
    tm = ThreatModel("L2")
    x = torch.zeros(3, 1, 2, 2)
    assert tm.eps_tensor(0.5, x).tolist() == [0.5, 0.5, 0.5]
    assert tm.eps_tensor(0.0, x).tolist() == [0.0, 0.0, 0.0]
    assert tm.eps_tensor(torch.tensor(0.25), x).tolist() == [0.25, 0.25, 0.25]
    src = torch.tensor([0.0, 1.0, 2.0])
    e = tm.eps_tensor(src, x)
    assert e.tolist() == [0.0, 1.0, 2.0]
    e[0] = 9.0
    assert src[0].item() == 0.0  # a copy, not a view of the caller's tensor
    with pytest.raises(ConfigError, match="2 per-sample budgets for a batch of 3"):
        tm.eps_tensor(torch.tensor([1.0, 2.0]), x)
    with pytest.raises(ConfigError, match=">= 0"):
        tm.eps_tensor(torch.tensor([1.0, -0.1, 2.0]), x)
    with pytest.raises(ConfigError, match="negative"):
        tm.eps_tensor(-0.01, x)


def test_limits_and_clip_for_fixed_none_and_per_image_bounds():
    x = torch.tensor([[[[0.2, -1.0], [3.0, 0.5]]], [[[1.0, 2.0], [1.5, 4.0]]]])  # (2, 1, 2, 2)
    assert ThreatModel("Linf", None).limits(x) is None
    over = x + 10.0
    assert torch.equal(ThreatModel("Linf", None).clip(over, None), over)
    tm = ThreatModel("Linf", (-0.5, 2.5))
    lo, hi = tm.limits(x)
    assert torch.all(lo == -0.5) and torch.all(hi == 2.5)
    c = tm.clip(x, tm.limits(x))
    np.testing.assert_allclose(c.numpy().ravel(), [0.2, -0.5, 2.5, 0.5, 1.0, 2.0, 1.5, 2.5])
    pi = ThreatModel("Linf", "per_image")
    lo, hi = pi.limits(x)
    np.testing.assert_allclose(lo.reshape(-1).numpy(), [-1.0, 1.0])
    np.testing.assert_allclose(hi.reshape(-1).numpy(), [3.0, 4.0])
    z = torch.full_like(x, -5.0)
    np.testing.assert_allclose(pi.clip(z, pi.limits(x)).reshape(2, -1)[:, 0].numpy(), [-1.0, 1.0])
    z = torch.full_like(x, 50.0)
    np.testing.assert_allclose(pi.clip(z, pi.limits(x)).reshape(2, -1)[:, 0].numpy(), [3.0, 4.0])


def test_project_linf_and_l2_with_per_sample_budgets():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 4, 4, generator=g)
    xa = x + torch.randn(3, 1, 4, 4, generator=g)
    eps = torch.tensor([0.1, 0.5, 0.0])
    p = ThreatModel("Linf", None).project(xa, x, eps)
    ref = x + torch.maximum(torch.minimum(xa - x, eps.view(-1, 1, 1, 1)), -eps.view(-1, 1, 1, 1))
    torch.testing.assert_close(p, ref)
    assert torch.equal(p[2], x[2])
    eps2 = torch.tensor([0.5, 100.0, 1.0])
    p2 = ThreatModel("L2", None).project(xa, x, eps2)
    n = _vn(p2 - x, "L2")
    assert n[0].item() == pytest.approx(0.5, rel=1e-5) and n[2].item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(p2[1], xa[1])  # already inside: unchanged
    # direction kept: the projected perturbation is a positive multiple of the original one
    cos = torch.nn.functional.cosine_similarity((p2 - x).reshape(3, -1), (xa - x).reshape(3, -1), dim=1)
    torch.testing.assert_close(cos, torch.ones(3))
    small = ThreatModel("L2", None).project(x + 0.05 * (xa - x), x, torch.tensor([0.01, 0.02, 0.03]))  # norms below 1
    torch.testing.assert_close(_vn(small - x, "L2"), torch.tensor([0.01, 0.02, 0.03]))
    # bounds applied after the ball
    tm = ThreatModel("L2", (0.0, 1.0))
    p3 = tm.project(xa, x, eps2, tm.limits(x))
    assert float(p3.min()) >= 0.0 and float(p3.max()) <= 1.0
    torch.testing.assert_close(p3[1], xa[1].clamp(0, 1))


def test_step_is_steepest_ascent_of_the_given_size():
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(2, 1, 3, 3, generator=g)
    size = torch.tensor([0.1, 0.3])
    s = ThreatModel("Linf").step(grad, size)
    torch.testing.assert_close(s, grad.sign() * size.view(-1, 1, 1, 1))
    s2 = ThreatModel("L2").step(grad, size)
    torch.testing.assert_close(_vn(s2, "L2"), size)
    torch.testing.assert_close(s2 / size.view(-1, 1, 1, 1), grad / _vn(grad, "L2").view(-1, 1, 1, 1))
    tiny = grad * 1e-4  # a small gradient still gives a full step
    torch.testing.assert_close(_vn(ThreatModel("L2").step(tiny, size), "L2"), size)


def test_random_delta_distribution():
    torch.manual_seed(0)
    n = 4000
    x = torch.zeros(n, 1, 2, 2)
    eps = torch.full((n,), 0.5)
    d = ThreatModel("Linf").random_delta(x, eps)
    assert float(d.abs().max()) <= 0.5
    assert float(d.mean()) == pytest.approx(0.0, abs=0.01)  # centred, not a corner
    assert float(d.min()) < -0.49 and float(d.max()) > 0.49
    assert float(d.var()) == pytest.approx(0.5 ** 2 / 3, rel=0.05)  # uniform on [-eps, eps]
    sph = ThreatModel("L2").random_delta(x, eps, "sphere")
    torch.testing.assert_close(_vn(sph, "L2"), eps)
    ball = ThreatModel("L2").random_delta(x, eps, "ball")
    r = _vn(ball, "L2") / 0.5
    assert float(r.max()) <= 1.0 + 1e-6
    assert float(r.mean()) == pytest.approx(4 / 5, abs=0.01)  # radius ~ U^(1/d), d = 4: E = d / (d + 1)
    assert float(ball.mean()) == pytest.approx(0.0, abs=0.01)


def test_within_checks_ball_and_bounds():
    x = torch.full((4, 1, 2, 2), 0.5)
    d = torch.zeros_like(x)
    d[:, 0, 0, 0] = torch.tensor([0.1, 0.1, 0.102, 0.1])
    d[3, 0, 1, 1] = 0.6  # leaves [0, 1]
    eps = torch.tensor([0.1, 0.2, 0.1, 1.0])
    ok = ThreatModel("Linf", (0.0, 1.0)).within(x + d, x, eps)
    assert ok.tolist() == [True, True, False, False]
    assert ThreatModel("Linf", None).within(x + d, x, eps).tolist() == [True, True, False, True]
    d2 = torch.zeros_like(x)
    d2[:, 0, 0, :] = 0.3  # L2 norm 0.3 * sqrt(2)
    e2 = torch.tensor([0.3 * math.sqrt(2), 0.3 * math.sqrt(2) * 0.99, 1.0, 0.3])
    assert ThreatModel("L2", None).within(x + d2, x, e2).tolist() == [True, False, True, False]


def test_budget_units_against_hand_values():
    x = torch.zeros(2, 3, 4, 5)  # C * N = 60
    batch = {"intensity_scale": torch.tensor([[0.5, -1.5, 1.0], [0.25, 0.25, 0.25]])}
    assert budget_to_input(0.3, "input", "Linf", batch, x).tolist() == pytest.approx([0.3, 0.3])
    assert budget_to_input(0.1, "rms", "L2", batch, x).tolist() == pytest.approx([0.1 * math.sqrt(60)] * 2)
    nat = budget_to_input(8.0, "native", "Linf", batch, x)
    assert nat.tolist() == pytest.approx([8.0 * 1.0, 8.0 * 0.25])  # |s| averaged over channels
    back = input_to_units(nat, batch, x)
    assert back["native"].tolist() == pytest.approx([8.0, 8.0])
    assert back["input"].tolist() == pytest.approx(nat.tolist())
    assert back["rms"].tolist() == pytest.approx([v / math.sqrt(60) for v in nat.tolist()])
    assert "native" not in input_to_units(nat, {}, x)
    with pytest.raises(ConfigError, match="L2 norm only"):
        budget_to_input(0.1, "rms", "Linf", batch, x)
    with pytest.raises(ConfigError, match="intensity_scale"):
        budget_to_input(0.1, "native", "L2", {}, x)
    with pytest.raises(ConfigError, match="'hu' are not known"):
        budget_to_input(0.1, "hu", "L2", batch, x)


def test_resolve_bounds():
    assert resolve_bounds("auto", (0.0, 1.0)) == (0.0, 1.0)
    assert resolve_bounds("auto", None) is None
    assert resolve_bounds("none", (0.0, 1.0)) is None
    assert resolve_bounds(None, (0.0, 1.0)) is None
    assert resolve_bounds("per_image", (0.0, 1.0)) == "per_image"
    assert resolve_bounds([-2, 5], (0.0, 1.0)) == (-2.0, 5.0)
