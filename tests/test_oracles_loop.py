"""The one projected-gradient loop (medrobust.attacks.loop) against hand-computed iterates.

On a linear model ``z = w . x`` with objective ``z`` the input gradient is ``w`` everywhere, so
every iterate is known in closed form: ``x_t = proj(x_0 + t alpha dir(w))`` with ``dir`` the sign
(Linf) or ``w / ||w||`` (L2). The hooks (observer, masks, last-iterate scoring, jitter, mode,
frozen parameters) are checked by what they see and what they change.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.attacks.loop import projected_gradient
from medrobust.threat import ThreatModel


class Lin(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.bn = nn.BatchNorm1d(1)  # only to see the mode
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return (x.reshape(x.shape[0], -1) * self.w).sum(1, keepdim=True)


def _case():
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.5, 0.5, 0.5, 0.5], [0.1, 0.9, 0.3, 0.7]])
    return Lin(w), w, x


def _objective(logits, t):
    return logits[:, 0]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_iterates_are_k_steps_of_the_given_size_along_the_ascent_direction(norm):
    model, w, x = _case()
    threat = ThreatModel(norm, None)
    direction = w.sign() if norm == "Linf" else w / w.norm()
    eps = torch.tensor([10.0, 10.0, 10.0])  # never binding
    alpha = torch.tensor([0.01, 0.02, 0.03])
    for k in (1, 3):
        out = projected_gradient(model, threat, x, eps, alpha, k, _objective)
        expected = x + k * alpha[:, None] * direction
        torch.testing.assert_close(out, expected)
    # descent would lower the objective: the loop ascends
    assert bool((model(out)[:, 0] > model(x)[:, 0]).all())


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_per_sample_budgets_zero_budget_and_bounds(norm):
    model, w, x = _case()
    eps = torch.tensor([0.05, 0.0, 0.2])
    out = projected_gradient(model, ThreatModel(norm, None), x, eps, torch.full((3,), 0.1), 4, _objective)
    if norm == "Linf":
        torch.testing.assert_close(out, x + eps[:, None] * w.sign())
    else:
        torch.testing.assert_close(out, x + eps[:, None] * w / w.norm())
    assert torch.equal(out[1], x[1])  # a zero budget keeps the sample exactly
    clipped = projected_gradient(model, ThreatModel(norm, (0.0, 1.0)), x, torch.full((3,), 5.0), torch.full((3,), 1.0), 3, _objective)
    assert float(clipped.min()) >= 0.0 and float(clipped.max()) <= 1.0
    if norm == "Linf":  # far beyond the budget: every coordinate at the bound its gradient points to
        torch.testing.assert_close(clipped, (w.sign() > 0).float().expand_as(x))


def test_start_is_projected_and_observer_sees_every_iterate_before_its_step():
    model, w, x = _case()
    threat = ThreatModel("Linf", None)
    eps, alpha = torch.full((3,), 0.3), torch.full((3,), 0.1)
    start = x + 1.0  # outside the ball: projected to x + eps
    seen = []

    def observe(t, xa, logits, loss):
        seen.append((t, xa.clone(), logits.clone(), loss.clone(), torch.is_grad_enabled(), xa.requires_grad))

    model.calls = 0
    out = projected_gradient(model, threat, x, eps, alpha, 2, _objective, start, observe=observe)
    assert [s[0] for s in seen] == [0, 1] and model.calls == 2
    x0 = x + eps[:, None]
    torch.testing.assert_close(seen[0][1], x0)
    torch.testing.assert_close(seen[1][1], threat.project(x0 + alpha[:, None] * w.sign(), x, eps))
    torch.testing.assert_close(seen[0][2][:, 0], seen[0][3])  # logits and objective of that iterate
    assert not any(s[4] or s[5] for s in seen)  # observers run without gradient on detached iterates
    seen.clear()
    model.calls = 0
    out2 = projected_gradient(model, threat, x, eps, alpha, 2, _objective, start, observe=observe, evaluate_last=True)
    assert [s[0] for s in seen] == [0, 1, 2] and model.calls == 3
    torch.testing.assert_close(seen[2][1], out2)
    torch.testing.assert_close(out, out2)


def test_mask_freezes_samples_and_the_loop_ends_when_none_is_active():
    model, w, x = _case()
    threat = ThreatModel("L2", None)
    eps, alpha = torch.full((3,), 10.0), torch.full((3,), 0.1)
    d = w / w.norm()

    def only_first_two_steps_of_sample_0(t, xa, logits, loss):
        return torch.tensor([t < 2, True, False])

    out = projected_gradient(model, threat, x, eps, alpha, 4, _objective, observe=only_first_two_steps_of_sample_0)
    torch.testing.assert_close(out, x + torch.tensor([2.0, 4.0, 0.0])[:, None] * 0.1 * d)
    model.calls = 0
    out = projected_gradient(model, threat, x, eps, alpha, 4, _objective, observe=lambda t, *a: torch.zeros(3, dtype=torch.bool))
    assert model.calls == 1 and torch.equal(out, x)


def test_jitter_mode_and_frozen_parameters():
    model, w, x = _case()
    threat = ThreatModel("Linf", None)
    eps, alpha = torch.full((3,), 10.0), torch.full((3,), 0.1)
    modes = []
    model.train()
    torch.manual_seed(3)
    out = projected_gradient(model, threat, x, eps, alpha, 1, _objective, jitter=0.5,
                             observe=lambda t, *a: modes.append((model.training, model.w.requires_grad)), mode="eval")
    torch.manual_seed(3)
    noise = 0.5 * torch.randn_like(x)
    torch.testing.assert_close(out, x + alpha[:, None] * w.sign() + noise)
    assert modes == [(False, False)]  # eval mode, parameters frozen during the loop
    assert model.training and model.w.requires_grad and model.w.grad is None  # restored, nothing accumulated


def test_no_jitter_draws_no_random_numbers():
    model, w, x = _case()
    state = torch.get_rng_state()
    projected_gradient(model, ThreatModel("Linf", None), x, torch.full((3,), 1.0), torch.full((3,), 0.1), 3, _objective)
    assert torch.equal(torch.get_rng_state(), state)  # training attacks draw from the global RNG: nothing extra


def test_worst_of_draws_keeps_the_worst_and_reports_mean_sd_worst():
    from medrobust.attacks.base import worst_of_draws
    from medrobust.tasks import ClassificationTask

    # two classes, logit 1 - logit 0 = x; label 1: correct (score 1) iff x > 0
    class Two(nn.Module):
        def forward(self, x):
            v = x.reshape(x.shape[0], -1)[:, :1]
            return torch.cat([torch.zeros_like(v), v], 1)

    x = torch.tensor([[1.0], [2.0]])
    y = torch.tensor([1, 1])
    shifts = [torch.tensor([[0.5], [-3.0]]), torch.tensor([[-2.0], [0.5]]), torch.tensor([[0.2], [0.1]])]
    res = worst_of_draws(Two(), x, y, ClassificationTask(2), 3, lambda i: x + shifts[i])
    # scores per draw: sample 0: 1, 0, 1; sample 1: 0, 1, 1
    s = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(res.extra["score_mean"], s.mean(1))
    torch.testing.assert_close(res.extra["score_sd"], torch.tensor([(2 / 9) ** 0.5, (2 / 9) ** 0.5], dtype=torch.float64))
    torch.testing.assert_close(res.extra["score_worst"], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(res.x_adv, torch.tensor([[-1.0], [-1.0]]))  # the misclassifying draw of each sample
