"""Training methods checked against properties a wrong method fails (issue #17), not only a falling loss.

On a toy classification problem in the style of Tsipras et al. (2019): one robust feature
(``x_0 = y`` with probability 0.9) and many weak, non-robust features (``x_j ~ N(eta * y, 1)``).
A standard model leans on the weak features and loses nearly everything under an Linf budget of
``2 * eta``; PGD-AT, TRADES, MART, AWP, ISEAT and avg-margin + PGD-AT trained for the same steps
must keep clearly more robust accuracy (measured by a PGD written in this file).
Plus per-method invariants: PGD-AT's training inputs lie in the budget (norm written out here),
differ from the clean ones and raise the loss; TRADES' KL term is >= 0, its inner maximisation
raises the KL, and beta = 0 leaves exactly the clean loss. Everything is seeded and takes seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.tasks import ClassificationTask
from medrobust.threat import ThreatModel
from medrobust.training.base import StepContext, build_method
from medrobust.training.state import SampleState

D, ETA, EPS = 40, 0.25, 0.5  # eps = 2 * eta flips every weak feature's mean


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    s = 2.0 * y - 1.0  # +-1
    flip = torch.rand(n, generator=g) < 0.1
    x0 = torch.where(flip, -s, s)
    weak = ETA * s[:, None] + torch.randn(n, D, generator=g)
    return torch.cat([x0[:, None], weak], 1), y


def _ctx(method, model, ids, threat):
    state = SampleState(ids)
    method.setup(state, model)
    opt = torch.optim.Adam(model.parameters(), 0.02)
    return StepContext(model=model, raw_model=model, task=ClassificationTask(2), threat=threat, state=state, epoch=0,
                       epochs=1, optimizer=opt, run_dir=None)


def _independent_pgd(model, x, y, eps, steps=20):
    """A plain Linf PGD (sign steps of eps/4, start at x, projection by clamping) written here."""
    xa = x.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = (x + (xa.detach() + 0.25 * eps * g.sign() - x).clamp(-eps, eps)).detach()
    return xa


def _train(spec, steps=150, seed=0):
    x, y = _data(512, seed=1)
    ids = [f"s{i}" for i in range(len(y))]
    torch.manual_seed(seed)
    model = nn.Linear(D + 1, 2)
    threat = ThreatModel("Linf", None)
    method = build_method(spec, ClassificationTask(2), threat, None)
    ctx = _ctx(method, model, ids, threat)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randperm(len(y), generator=g)[:128]
        out = method.compute(ctx, {"image": x[idx], "label": y[idx], "id": [ids[i] for i in idx]})
        ctx.optimizer.zero_grad()
        out.loss.backward()
        ctx.optimizer.step()
    return model


def _accuracies(model):
    xt, yt = _data(1000, seed=2)
    model.eval()
    with torch.no_grad():
        clean = (model(xt).argmax(1) == yt).float().mean().item()
    xa = _independent_pgd(model, xt, yt, EPS)
    assert float((xa - xt).abs().amax()) <= EPS + 1e-6
    with torch.no_grad():
        robust = (model(xa).argmax(1) == yt).float().mean().item()
    return clean, robust


@pytest.fixture(scope="module")
def standard_accuracies():
    return _accuracies(_train({"name": "standard"}))


@pytest.mark.parametrize("spec", [
    {"name": "pgd_at", "eps": EPS, "units": "input", "steps": 5},
    {"name": "trades", "eps": EPS, "units": "input", "steps": 5, "beta": 6.0},
    {"name": "mart", "eps": EPS, "units": "input", "steps": 5},
    {"name": "awp", "base": {"name": "pgd_at", "eps": EPS, "units": "input", "steps": 5}},
    {"name": "iseat", "eps": EPS, "units": "input", "steps": 5},
    {"name": "avg_margin", "base": {"name": "pgd_at", "eps": EPS, "units": "input", "steps": 5}},
], ids=["pgd_at", "trades", "mart", "awp", "iseat", "avg_margin+pgd_at"])
def test_adversarial_training_buys_robust_accuracy_a_standard_model_lacks(spec, standard_accuracies):
    std_clean, std_rob = standard_accuracies
    clean, rob = _accuracies(_train(spec))
    # the standard model is accurate but not robust (it relies on the weak features) ...
    assert std_clean > 0.9 and std_rob < 0.35, (std_clean, std_rob)
    # ... the adversarially trained one keeps most of the robust feature's 90 % under the same attack
    assert rob > 0.7 and rob > std_rob + 0.35, (rob, std_rob)
    assert clean > 0.7, clean


def _batch(n=64, seed=3):
    x, y = _data(n, seed)
    return {"image": x, "label": y, "id": [f"b{i}" for i in range(n)]}


def _fixed_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D + 1, 16), nn.Tanh(), nn.Linear(16, 2))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_at_training_inputs_lie_in_the_budget_differ_from_clean_and_raise_the_loss(norm):
    eps = EPS if norm == "Linf" else 2.0
    threat = ThreatModel(norm, None)
    method = build_method({"name": "pgd_at", "eps": eps, "units": "input", "steps": 5}, ClassificationTask(2), threat, None)
    model = _fixed_model()
    batch = _batch()
    ctx = _ctx(method, model, batch["id"], threat)
    torch.manual_seed(1)
    x_adv = method.generate(ctx, batch)["x_adv"]
    x = batch["image"]
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else torch.sqrt((d ** 2).sum(1))
    assert bool((size <= eps * (1 + 1e-5)).all()), size.max()
    # 5 steps of eps/4 from a random start: the inputs move, most of the way to the budget
    assert float(size.min()) > 0.3 * eps, size.min()
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        l_clean = ce(model(x), batch["label"], reduction="none")
        l_adv = ce(model(x_adv), batch["label"], reduction="none")
    assert float(l_adv.mean()) > float(l_clean.mean()) + 0.05 and float((l_adv > l_clean).float().mean()) > 0.9
    # the outer loss is the task loss on those inputs (Madry: adversarial-only by default)
    out = method.objective(ctx, batch, {"x_adv": x_adv}, model)
    torch.testing.assert_close(out.loss.detach(), l_adv.mean())


def test_trades_kl_is_nonnegative_ascended_and_beta_zero_is_the_clean_loss():
    threat = ThreatModel("Linf", None)
    task = ClassificationTask(2)
    model = _fixed_model()
    batch = _batch()
    x, y = batch["image"], batch["label"]
    ce = nn.functional.cross_entropy
    for beta in (6.0, 0.0):
        method = build_method({"name": "trades", "eps": EPS, "units": "input", "steps": 5, "beta": beta}, task, threat, None)
        ctx = _ctx(method, model, batch["id"], threat)
        torch.manual_seed(1)
        x_adv = method.generate(ctx, batch)["x_adv"]
        assert float((x_adv - x).abs().amax()) <= EPS * (1 + 1e-5)
        out = method.objective(ctx, batch, {"x_adv": x_adv}, model)
        with torch.no_grad():
            p, q = model(x).softmax(1), model(x_adv).softmax(1)
            kl = (p * (p.log() - q.log())).sum(1)  # KL(clean || adversarial) per sample, written out
            nat = ce(model(x), y)
        assert bool((kl >= -1e-6).all())
        assert out.logs["kl"] == pytest.approx(float(kl.mean()), rel=1e-4, abs=1e-6)
        assert out.logs["kl"] > 1e-3  # the inner maximisation found a point the model treats differently
        torch.testing.assert_close(out.loss.detach(), nat + beta * kl.mean(), rtol=1e-5, atol=1e-6)
        # at x' = x the KL vanishes
        same = method.objective(ctx, batch, {"x_adv": x.clone()}, model)
        assert abs(same.logs["kl"]) < 1e-6
    # beta = 0: exactly the clean loss
    torch.testing.assert_close(out.loss.detach(), nat)
    # the KL after the inner maximisation exceeds the KL at the start's noise scale
    with torch.no_grad():
        xn = x + 0.001 * torch.randn_like(x)
        p, qn = model(x).softmax(1), model(xn).softmax(1)
        kl_noise = float((p * (p.log() - qn.log())).sum(1).mean())
    assert out.logs["kl"] > 10 * kl_noise + 1e-4
