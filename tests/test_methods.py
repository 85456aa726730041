"""Robust-training methods: hand-worked rules (IAAT, ISEAT ranks, average-margin value and
gradient, IMA margins and bisection), the IMA toy gap, and for every method: 2D and 3D training
with a falling loss and exact resume, per-sample state included. Properties that a wrong method
fails (robust accuracy against a standard model, budgets, TRADES' KL) are in test_oracles_methods.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_train_config
from medrobust.checkpoint import load_checkpoint
from medrobust.config import TrainConfig, load_config
from medrobust.tasks import ClassificationTask, SegmentationTask
from medrobust.training.avg_margin import AvgMargin, AvgMarginParams, ramp
from medrobust.training.iaat import iaat_update
from medrobust.training.ima import bisect, ima_update_margin
from medrobust.training.iseat import rank_weights
from medrobust.training.engine import train


def test_iaat_rule_on_hand_worked_cases():
    e = torch.tensor([0.10, 0.10, 0.10, 0.10, 0.00])
    ok_cur = torch.tensor([True, True, False, True, False])
    ok_hi = torch.tensor([True, False, False, True, False])
    clean = torch.tensor([True, True, True, False, True])
    out = iaat_update(e, ok_cur, ok_hi, clean, gamma=0.02, beta=0.1)
    # survives e+g -> 0.12; survives e only -> 0.10; fails both -> 0.08; clean wrong -> 0; e-g below 0 -> 0
    expected = 0.1 * torch.tensor([0.12, 0.10, 0.08, 0.0, 0.0]) + 0.9 * e
    torch.testing.assert_close(out, expected)
    capped = iaat_update(torch.tensor([1.0]), torch.tensor([True]), torch.tensor([True]), torch.tensor([True]), 0.5, 1.0, eps_max=1.2)
    assert float(capped) == pytest.approx(1.2)


def test_iseat_weights_are_the_ranks():
    v = torch.tensor([0.3, -1.0, 2.0, 0.5])
    torch.testing.assert_close(rank_weights(v), torch.tensor([2, 1, 4, 3]) / 4.0)


def test_average_margin_value_and_gradient():
    # alpha = z_y - max_{j != y} z_j; R = clamp(tau - alpha, 0, tau)
    tau = 5.0
    z = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0], [9.0, 1.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0])
    task = ClassificationTask(3)
    m = AvgMargin(AvgMarginParams(tau=tau, mu=1.0), task, None, None)
    r = m.regulariser(z, y)
    torch.testing.assert_close(r, torch.tensor([3.0, 5.0, 0.0]))  # alpha = 2, -2, 7
    r.sum().backward()
    g = z.grad
    torch.testing.assert_close(g[0], torch.tensor([-1.0, 1.0, 0.0]))  # slope -1 on z_y, +1 on the runner-up
    torch.testing.assert_close(g[1], torch.zeros(3))  # misclassified: flat
    torch.testing.assert_close(g[2], torch.zeros(3))  # beyond tau: flat
    assert float(ramp(torch.tensor(-2.0), tau, "final_code")) == 2.0  # released-code variant
    # segmentation: per voxel, class-balanced
    seg = SegmentationTask(2)
    zz = torch.zeros(1, 2, 1, 4)
    zz[0, 1, 0, 0] = 2.0  # voxel 0 (class 1) margin 2 -> R = 3; voxels 1..3 (class 0) margin 0 -> R = 5
    yy = torch.tensor([[[[1, 0, 0, 0]]]])
    mb = AvgMargin(AvgMarginParams(tau=tau), seg, None, None)
    torch.testing.assert_close(mb.regulariser(zz, yy), torch.tensor([(3.0 + 5.0) / 2]))


def test_ima_margin_rule():
    E = torch.tensor([0.5, 0.5, 0.5, 0.5, 2.95])
    E_new = torch.tensor([0.5, 0.3, 0.5, 0.5, 2.95])
    no_b = torch.tensor([True, False, True, True, True])
    correct = torch.tensor([True, True, False, True, True])
    visited = torch.tensor([True, True, True, False, True])
    out = ima_update_margin(E, E_new, no_b, correct, visited, delta=0.1, eps_max=3.0)
    torch.testing.assert_close(out, torch.tensor([0.6, 0.3, 0.5, 0.5, 3.0]))


def test_bisection_lands_on_the_boundary():
    # boundary at x1 = 0.3: correct for x1 < 0.3
    success = lambda x: x[:, 0] < 0.3  # noqa: E731
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0]])
    mid = bisect(success, a, b, 12, "midpoint")
    inside = bisect(success, a, b, 12, "inside")
    assert abs(float(mid[0, 0]) - 0.3) < 1e-3 and float(inside[0, 0]) < 0.3 and 0.3 - float(inside[0, 0]) < 1e-3


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x):
        return self.f(x)


@pytest.mark.slow
def test_ima_toy_gap_margins_level_off_at_half_the_gap():
    """Two classes on x1 in [-2, -1] and [0.2, 1.2] (gap 1.2, midpoint -0.4): IMA margins of the
    samples next to the gap level off near half the gap and the boundary sits near the middle."""
    from medrobust.threat import ThreatModel
    from medrobust.training.base import StepContext, build_method
    from medrobust.training.state import SampleState

    g = torch.Generator().manual_seed(0)
    n = 200
    y = torch.arange(n) % 2
    x1 = torch.where(y == 0, -2.0 + torch.rand(n, generator=g), 0.2 + torch.rand(n, generator=g))
    x = torch.stack([x1, 2 * torch.rand(n, generator=g) - 1], 1)
    ids = [f"p{i}" for i in range(n)]
    torch.manual_seed(0)
    model = MLP()
    task = ClassificationTask(2)
    threat = ThreatModel("L2", None)
    method = build_method({"name": "ima", "delta": 0.05, "eps_max": 3.0, "steps": 20, "attack_mode": "eval"}, task, threat, None)
    state = SampleState(ids)
    method.setup(state, model)
    opt = torch.optim.Adam(model.parameters(), 0.01)
    ctx = StepContext(model=model, raw_model=model, task=task, threat=threat, state=state, epoch=0, epochs=60, optimizer=opt,
                      run_dir=None)
    near = ((x1 > -1.15) & (y == 0)) | ((x1 < 0.35) & (y == 1))
    history = []
    for epoch in range(60):
        ctx.epoch = epoch
        method.start_epoch(ctx)
        perm = torch.randperm(n, generator=g)
        for k in range(0, n, 50):
            idx = perm[k:k + 50]
            out = method.compute(ctx, {"image": x[idx], "label": y[idx], "id": [ids[i] for i in idx]})
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        method.end_epoch(ctx)
        history.append(state.tensors["ima_margin"][near].median().item())
    # the margins of the samples next to the gap level off near half the gap (0.6) ...
    assert 0.35 < history[-1] < 0.85, history[-10:]
    assert abs(history[-1] - history[-11]) < 0.12, history[-12:]
    # ... and the learned boundary (on x2 = 0) sits near the middle of the gap (-0.4)
    grid = torch.stack([torch.linspace(-1.0, 0.2, 241), torch.zeros(241)], 1)
    with torch.no_grad():
        pred = model(grid).argmax(1)
    boundary = float(grid[(pred == 1).nonzero()[0, 0], 0])
    assert -0.65 < boundary < -0.15, boundary


METHODS = {
    "pgd_at": {"name": "pgd_at", "eps": 0.05, "units": "rms", "steps": 3},
    "trades": {"name": "trades", "eps": 0.05, "units": "rms", "steps": 3},
    "mart": {"name": "mart", "eps": 0.05, "units": "rms", "steps": 3},
    "awp": {"name": "awp", "base": {"name": "pgd_at", "eps": 0.05, "units": "rms", "steps": 3}},
    "iaat": {"name": "iaat", "eps0": 0.05, "gamma": 0.02, "alpha_min": 0.005, "units": "rms", "warmup_epochs": 1, "steps": 3},
    "ima": {"name": "ima", "delta": 0.02, "eps_max": 0.3, "units": "rms", "steps": 4, "bisection_steps": 4, "success_threshold": 0.3},
    "iseat": {"name": "iseat", "eps": 0.05, "units": "rms", "steps": 3, "lam_start": 0.25},
    "avg_margin": {"name": "avg_margin"},
    "avg_margin+pgd_at": {"name": "avg_margin", "base": {"name": "pgd_at", "eps": 0.05, "units": "rms", "steps": 2}},
}


@pytest.mark.parametrize("key", sorted(METHODS))
def test_every_method_trains_in_2d_and_resumes_exactly(tmp_path: Path, key):
    over = {"method": METHODS[key], "epochs": 4, "data": {"augment": {"flip_prob": 0.5}}}
    full = train(load_config(TrainConfig, data=tiny_train_config(tmp_path / "full", **over)))
    losses = [h["train_loss"] for h in full.history]
    assert losses[-1] < losses[0], losses
    part_cfg = load_config(TrainConfig, data=tiny_train_config(tmp_path / "part", **over))
    train(part_cfg, stop_after=2)
    resumed = train(part_cfg, resume=True)
    a, b = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    assert a["sample_state"]["ids"] == b["sample_state"]["ids"]
    for k, v in a["sample_state"]["tensors"].items():
        assert torch.equal(v, b["sample_state"]["tensors"][k]), k
    f_nom, b_nom = full.history[-1]["nominal_forward_per_step"], full.history[-1]["nominal_backward_per_step"]
    assert full.history[-1]["forward_per_step"] == pytest.approx(f_nom, rel=0.35)
    assert full.history[-1]["backward_per_step"] == pytest.approx(b_nom, rel=0.35)


@pytest.mark.parametrize("key", ["pgd_at", "trades", "mart", "awp", "iaat", "ima", "iseat", "avg_margin"])
def test_every_method_trains_in_3d(tmp_path: Path, key):
    over = {"method": METHODS[key], "epochs": 3, "data": {"phantom": {"size": [16, 16, 16], "n_cases": 8}, "preprocess": {"size": [16, 16, 16]}}}
    res = train(load_config(TrainConfig, data=tiny_train_config(tmp_path, **over)))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses


def test_ima_state_is_written_per_epoch(tmp_path: Path):
    res = train(load_config(TrainConfig, data=tiny_train_config(tmp_path, epochs=2, method=METHODS["ima"])))
    assert (res.run_dir / "margins" / "epoch_001.csv").is_file() and (res.run_dir / "margins" / "epoch_002.csv").is_file()
    assert (res.run_dir / "margins_over_epochs.png").is_file()
    ck = load_checkpoint(res.last_checkpoint)
    assert "ima_margin" in ck["sample_state"]["tensors"]
    assert len(ck["sample_state"]["ids"]) == len(ck["sample_state"]["tensors"]["ima_margin"])


def test_method_config_errors():
    from medrobust.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'trades'"):
        load_config(TrainConfig, data=tiny_train_config(Path("/tmp"), method="trade"))
        from medrobust.training.base import build_method

        build_method("trade", None, None, None)
    from medrobust.training.base import build_method

    with pytest.raises(ConfigError, match="did you mean 'trades'"):
        build_method("trade", ClassificationTask(2), None, None)
    with pytest.raises(ConfigError, match=r"method 'ima': required key 'delta'"):
        build_method({"name": "ima", "eps_max": 1.0}, ClassificationTask(2), None, None)
    with pytest.raises(ConfigError, match=r"unknown key 'betta'; did you mean 'beta'"):
        build_method({"name": "trades", "betta": 1.0}, ClassificationTask(2), None, None)
