"""Attacks that do not waste work: APGD stops cases at the floor, ensemble members skip them."""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import build_attack
from medrobust.tasks import SegmentationTask
from medrobust.threat import ThreatModel
from models_fixtures import trained_seg


def _run(model, x, y, eps, **kw):
    task, threat = SegmentationTask(3), ThreatModel("L2", None)
    ens = build_attack({"name": "seg_ensemble", "n_iter": 8, "queries": 8, "seed": 1, **kw}, task, threat)
    res = ens(model, x, y, eps)
    with torch.no_grad():
        return task.score(model(res.x_adv), y).double(), res.extra["grad_evals"], ens


@pytest.mark.slow
def test_early_stop_spends_less_and_finds_the_same_dice():
    model, x, y = trained_seg(2)
    eps = torch.tensor([0.05, 0.05, 30.0, 30.0][: len(x)] + [30.0] * max(0, len(x) - 4))  # two cases broken to Dice 0 at once
    d_full, g_full, ens = _run(model, x, y, eps, early_stop=False,
                               members=[{"name": "apgd", "loss": l, "n_iter": 8, "stop_at_floor": False} for l in ("dice_ce", "dice")])
    d_stop, g_stop, _ = _run(model, x, y, eps,
                             members=[{"name": "apgd", "loss": l, "n_iter": 8} for l in ("dice_ce", "dice")])
    nominal = ens.cost()[1]
    torch.testing.assert_close(g_full, torch.full_like(g_full, nominal))  # without early stop: exactly the nominal cost
    at_floor = d_full <= 1e-12
    assert bool(at_floor.any()) and bool((~at_floor).any())
    # the ensemble is never weaker: same Dice on every case (cases at the floor stay at 0)
    torch.testing.assert_close(d_stop, d_full, atol=1e-6, rtol=0)
    assert bool((g_stop[at_floor] < nominal).all())  # effort saved where nothing was left to find
    assert bool((g_stop <= nominal).all())


def test_apgd_counts_gradients_and_stops_at_floor():
    model, x, y = trained_seg(2)
    task, threat = SegmentationTask(3), ThreatModel("L2", None)
    big = torch.full((len(x),), 30.0)
    run = build_attack({"name": "apgd", "loss": "dice_ce", "n_iter": 10}, task, threat)(model, x, y, big)
    full = build_attack({"name": "apgd", "loss": "dice_ce", "n_iter": 10, "stop_at_floor": False}, task, threat)(model, x, y, big)
    assert bool((full.extra["grad_evals"] == 11).all())
    assert float(run.extra["grad_evals"].sum()) < float(full.extra["grad_evals"].sum())
    with torch.no_grad():
        assert bool((task.score(model(run.x_adv), y) <= task.score(model(full.x_adv), y) + 1e-9).all())
