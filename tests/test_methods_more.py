"""The competitors of IMA and the cheap single-step methods (mma, gairat, fat, lbgat, te, advlc,
free_at, n_fgsm): each method's own mechanism on a linear toy with a known boundary, and (slow)
2D training with exact resume and 3D training through the engine with the pass counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_train_config
from medrobust.checkpoint import load_checkpoint
from medrobust.config import TrainConfig, load_config
from medrobust.tasks import ClassificationTask, SegmentationTask
from medrobust.threat import ThreatModel
from medrobust.training.base import StepContext, build_method
from medrobust.training.state import SampleState

BOUNDARY = 0.3  # the toy classifier predicts class 1 where x1 > 0.3


class Linear2(nn.Module):
    """Two logits ``(0, 4 (x1 - 0.3))`` of the first coordinate: class 0 left of the boundary."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.f = nn.Linear(dim, 2)
        with torch.no_grad():
            self.f.weight.zero_()
            self.f.bias.zero_()
            self.f.weight[1, 0] = 4.0
            self.f.bias[1] = -4.0 * BOUNDARY

    def forward(self, x):
        return self.f(x)


def points(x1: list[float], dim: int = 2) -> torch.Tensor:
    x = torch.zeros(len(x1), dim)
    x[:, 0] = torch.tensor(x1)
    return x


def context(method, model, n: int, epoch: int = 0, epochs: int = 10, lr: float = 0.0):
    ids = [f"s{i}" for i in range(n)]
    state = SampleState(ids)
    method.setup(state, model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx = StepContext(model=model, raw_model=model, task=method.task, threat=method.threat, state=state, epoch=epoch,
                      epochs=epochs, optimizer=opt)
    return ctx, ids


# ----------------------------------------------------------------------------------- MMA
def test_mma_radii_lie_on_the_boundary():
    model = Linear2()
    m = build_method({"name": "mma", "d_max": 1.0, "min_eps": 0.1, "steps": 10, "search_steps": 12}, ClassificationTask(2),
                     ThreatModel("L2", None), None)
    x1 = [-0.2, -0.5, -1.0, 0.6]  # distances to the boundary 0.5, 0.8, 1.3; the last is misclassified
    x, y = points(x1), torch.zeros(4, dtype=torch.long)
    ctx, ids = context(m, model, 4)
    out = m.compute(ctx, {"image": x, "label": y, "id": ids})
    found = out.tensors["mma_eps"]
    assert torch.isnan(found[3])  # misclassified: not attacked, clean loss
    # eps* is measured along the PGD direction, which the random start may tilt: never below the distance
    assert bool((found[:2] >= torch.tensor([0.5, 0.8], dtype=torch.float64) - 2e-3).all()) and bool((found[:2] < 0.9).all())
    assert found[2] >= 1.0  # beyond d_max: the bisection ends above it ...
    assert out.tensors["mma_in_loss"].tolist() == [True, True, False, False]  # ... and the sample leaves the loss
    # the returned points lie on the boundary: just inside is correct, just outside wrong, along the search direction
    x_adv, radius = m.search(model, x[:2], y[:2], torch.full((2,), 0.1, dtype=torch.float64), torch.ones(2))
    torch.testing.assert_close(x_adv[:, 0], torch.full((2,), BOUNDARY), atol=2e-3, rtol=0)
    u = (x_adv - x[:2]) / radius.float()[:, None]
    with torch.no_grad():
        inside = model(x[:2] + (radius.float()[:, None] - 5e-3) * u).argmax(1)
        outside = model(x[:2] + (radius.float()[:, None] + 5e-3) * u).argmax(1)
    assert inside.tolist() == [0, 0] and outside.tolist() == [1, 1]
    # the state keeps eps* per sample for the next visit; the loss mixes clean (1/3) and MMA terms
    torch.testing.assert_close(ctx.state.get("mma_eps", ids[:2]), found[:2])
    assert float(ctx.state.get("mma_eps", ids[3:])) == 0.0
    out.loss.backward()
    assert model.f.weight.grad.abs().sum() > 0


def test_mma_second_visit_starts_from_the_stored_radius_and_shrinks_onto_the_boundary():
    model = Linear2()
    m = build_method({"name": "mma", "d_max": 1.0, "min_eps": 0.05, "steps": 10, "search_steps": 12}, ClassificationTask(2),
                     ThreatModel("L2", None), None)
    x, y = points([-0.2]), torch.zeros(1, dtype=torch.long)
    ctx, ids = context(m, model, 1)
    ctx.state.set("mma_eps", ids, torch.tensor([0.9]))  # PGD at 0.9 crosses: bracket [0, 0.9]
    out = m.compute(ctx, {"image": x, "label": y, "id": ids})
    assert 0.5 - 2e-3 <= float(out.tensors["mma_eps"][0]) < 0.6  # down from 0.9 to (about) the distance 0.5


# ----------------------------------------------------------------------------------- GAIRAT
def test_gairat_weight_formula():
    from medrobust.training.gairat import gair_weights

    kappa = torch.arange(11)
    w = gair_weights(kappa, 10, -1.0)
    raw = (1 + torch.tanh(-1.0 + 5 * (1 - 2 * kappa.float() / 10))) / 2
    torch.testing.assert_close(w, raw / raw.mean())
    assert float(w.mean()) == pytest.approx(1.0)
    assert bool((w[1:] < w[:-1]).all())  # more correct iterates (farther from the boundary) -> smaller weight
    assert bool((gair_weights(kappa, 10, float("inf")) == 1).all())


def test_gairat_weights_follow_kappa():
    from medrobust.training.gairat import gair_weights

    model = Linear2()
    spec = {"name": "gairat", "eps": 1.0, "steps": 5, "step_size": 0.2, "random_start": False, "begin": 0.5}
    m = build_method(spec, ClassificationTask(2), ThreatModel("L2", None), None)
    x, y = points([-0.05, -0.2, -0.4, -2.0]), torch.zeros(4, dtype=torch.long)  # distances 0.35, 0.5, 0.7, 2.3
    ctx, ids = context(m, model, 4, epoch=5, epochs=10)
    out = m.compute(ctx, {"image": x, "label": y, "id": ids})
    # iterate t sits 0.2 t along x1: correct while 0.2 t < distance, t = 0 .. 4
    assert out.tensors["kappa"].tolist() == [2, 3, 4, 5]
    torch.testing.assert_close(out.tensors["weights"], gair_weights(torch.tensor([2, 3, 4, 5]), 5, -1.0))
    # before the start epoch: plain AT (unit weights)
    ctx.epoch = 4
    early = m.compute(ctx, {"image": x, "label": y, "id": ids})
    assert bool((early.tensors["weights"] == 1).all())


def test_gairat_per_voxel_kappa_on_segmentation():
    m = build_method({"name": "gairat", "eps": 0.5, "steps": 3, "granularity": "voxel"}, SegmentationTask(2),
                     ThreatModel("L2", None), None)
    model = nn.Conv2d(1, 2, 1)
    x = torch.randn(2, 1, 4, 4)
    y = (x > 0).long()
    ctx, ids = context(m, model, 2)
    out = m.compute(ctx, {"image": x, "label": y, "id": ids})
    assert out.tensors["kappa"].shape == (2, 16) and int(out.tensors["kappa"].max()) <= 3
    assert torch.isfinite(out.loss)


# ----------------------------------------------------------------------------------- FAT
@pytest.mark.parametrize("tau,expected", [(0, [0.4, 1.0]), (1, [0.5, 1.0]), (3, [0.7, 1.0])])
def test_fat_stops_tau_steps_after_the_first_failure(tau, expected):
    model = Linear2()
    spec = {"name": "fat", "eps": 1.0, "steps": 10, "step_size": 0.1, "random_start": False, "omega": 0.0, "tau": tau,
            "dynamic_tau": False}
    m = build_method(spec, ClassificationTask(2), ThreatModel("L2", None), None)
    x, y = points([-0.05, -2.0]), torch.zeros(2, dtype=torch.long)  # the first crosses at 0.35, the second never
    ctx, ids = context(m, model, 2)
    x_adv, rule = m.generate(ctx, {"image": x, "label": y, "id": ids})
    moved = (x_adv - x)[:, 0]
    torch.testing.assert_close(moved, torch.tensor(expected), atol=1e-5, rtol=0)
    assert rule.steps_taken.tolist() == [round(expected[0] / 0.1), 10]


def test_fat_tau_grows_with_the_epochs():
    m = build_method({"name": "fat"}, ClassificationTask(2), ThreatModel("Linf", None), None)
    ctx, _ = context(m, Linear2(), 1, epochs=120)
    taus = []
    for e in (0, 49, 50, 89, 90, 119):
        ctx.epoch = e
        taus.append(m.tau_now(ctx))
    assert taus == [0, 0, 1, 1, 2, 2]


# ----------------------------------------------------------------------------------- TE
def test_te_ema_updates_only_from_the_start_epoch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3))
    m = build_method({"name": "te", "eps": 0.1, "steps": 2, "start_epoch": 2, "ramp_end_epoch": 4}, ClassificationTask(3),
                     ThreatModel("L2", None), None)
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 2])
    ctx, ids = context(m, model, 5)
    batch = {"image": x, "label": y, "id": ids[:3]}
    for e in (0, 1):
        ctx.epoch = e
        out = m.compute(ctx, batch)
        assert "te_ema" not in ctx.state.tensors and out.logs["te_weight"] == 0.0
    ctx.epoch = 2
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    model.train()
    out = m.compute(ctx, batch)
    ema = ctx.state.tensors["te_ema"]
    torch.testing.assert_close(ema[:3], 0.1 * p)  # one update from zero with momentum 0.9
    assert bool((ema[3:] == 0).all())  # samples not in the batch are untouched
    assert out.logs["te_weight"] == pytest.approx(300 * torch.exp(torch.tensor(-5.0)).item())
    m.compute(ctx, batch)
    torch.testing.assert_close(ctx.state.tensors["te_ema"][:3], 0.9 * 0.1 * p + 0.1 * p, atol=1e-6, rtol=1e-5)


def test_te_softmax_is_per_voxel_over_classes():
    m = build_method({"name": "te", "eps": 0.1, "steps": 1, "start_epoch": 0, "ramp_end_epoch": 0}, SegmentationTask(3),
                     ThreatModel("L2", None), None)
    logits = torch.randn(2, 3, 4, 4)
    soft = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    expected = ((torch.softmax(logits, 1) - soft) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(m.te_term(logits, soft, None), expected)
    model = nn.Conv2d(1, 3, 1)
    ctx, ids = context(m, model, 2)
    m.compute(ctx, {"image": torch.randn(2, 1, 4, 4), "label": torch.randint(0, 3, (2, 1, 4, 4)), "id": ids})
    ema = ctx.state.tensors["te_ema"]
    assert ema.shape == (2, 3, 4, 4)
    torch.testing.assert_close(ema.sum(1), torch.full((2, 4, 4), 0.1))  # per voxel, the classes sum to 1 - momentum


# ----------------------------------------------------------------------------------- LBGAT
def test_lbgat_clean_model_guides_the_robust_model():
    from medrobust.training.lbgat import guide_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    m = build_method({"name": "lbgat", "eps": 0.1, "steps": 2}, ClassificationTask(3), ThreatModel("Linf", None), None)
    ctx, ids = context(m, model, 4, lr=0.1)
    guide = m.guide
    assert guide is not model and not torch.equal(guide[0].weight, model[0].weight)  # own, fresh weights
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    batch = {"image": x, "label": y, "id": ids}
    out = m.compute(ctx, batch)
    za, zc = out.tensors["logits_adv"], out.tensors["logits_guide"]
    torch.testing.assert_close(torch.as_tensor(out.logs["guide_mse"]), ((za - zc) ** 2).mean().detach())
    torch.testing.assert_close(guide_loss(m.task, za, zc, y).mean(), ((za - zc) ** 2).mean())
    ctx.optimizer.zero_grad()
    out.loss.backward()
    assert model[0].weight.grad.abs().sum() > 0 and guide[0].weight.grad.abs().sum() > 0  # both sides of the MSE learn
    before = guide[0].weight.detach().clone()
    ctx.optimizer.step()
    m.after_step(ctx)
    assert not torch.equal(before, guide[0].weight) and guide[0].weight.grad is None
    # the guide and its optimiser survive a checkpoint round trip
    other = build_method({"name": "lbgat", "eps": 0.1, "steps": 2}, ClassificationTask(3), ThreatModel("Linf", None), None)
    other.setup(SampleState(ids), model)
    other.load_state_dict(m.state_dict())
    for a, b in zip(other.guide.parameters(), guide.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------- AdvLC
def test_advlc_regularises_the_top_tenth_of_per_voxel_logit_differences():
    from medrobust.training.advlc import top_logit_difference

    clean = torch.zeros(1, 2, 10)
    adv = torch.zeros(1, 2, 10)
    adv[0, 0] = torch.arange(10.0)  # differences 0..9 on class 0, 0 on class 1: 20 entries, the top 10% are 9 and 8
    assert float(top_logit_difference(adv, clean, 0.1)) == pytest.approx((9 + 8) / 10)
    assert float(top_logit_difference(adv, clean, 1.0)) == pytest.approx(45 / 10)
    torch.manual_seed(0)
    m = build_method({"name": "advlc", "eps": 0.2, "steps": 3}, SegmentationTask(2), ThreatModel("Linf", None), None)
    model = nn.Conv2d(1, 2, 3, padding=1)
    ctx, ids = context(m, model, 2)
    x = torch.randn(2, 1, 5, 5)
    out = m.compute(ctx, {"image": x, "label": (x > 0).long(), "id": ids})
    expected = top_logit_difference(out.tensors["logits_adv"], out.tensors["logits_clean"], 0.1)
    assert out.logs["logit_consistency"] == pytest.approx(float(expected.detach())) and float(expected.detach()) > 0


# ----------------------------------------------------------------------------------- Free-AT
class Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


def test_free_at_replays_the_minibatch_and_carries_the_perturbation():
    torch.manual_seed(0)
    model = Recorder(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)))
    m = build_method({"name": "free_at", "eps": 0.1, "replays": 3}, ClassificationTask(2), ThreatModel("Linf", None), None)
    ctx, ids = context(m, model, 4, lr=0.05)
    steps = []
    orig_step = ctx.optimizer.step
    ctx.optimizer.step = lambda *a, **k: (steps.append(1), orig_step(*a, **k))[1]
    xa, xb, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])

    def engine_step(x):
        out = m.compute(ctx, {"image": x, "label": y, "id": ids[:2]})
        ctx.optimizer.zero_grad()
        out.loss.backward()
        ctx.optimizer.step()
        m.after_step(ctx)

    engine_step(xa)
    assert len(model.seen) == 3 and len(steps) == 3  # m replays, one optimiser step each
    deltas = [s - xa for s in model.seen]
    assert torch.equal(deltas[0], torch.zeros_like(xa))  # the buffer starts at zero ...
    for d in deltas[1:]:  # ... each replay starts from the previous one's update (Linf step = eps: to the corners)
        torch.testing.assert_close(d.abs(), torch.full_like(d, 0.1))
    carried = m.delta.clone()
    assert float(carried.abs().max()) <= 0.1 + 1e-6 and float(carried.abs().max()) > 0
    engine_step(xb)
    torch.testing.assert_close(model.seen[3] - xb, carried)  # the next minibatch starts from the carried delta
    assert len(steps) == 6
    other = build_method({"name": "free_at", "eps": 0.1, "replays": 3}, ClassificationTask(2), ThreatModel("Linf", None), None)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.delta, m.delta)


# ----------------------------------------------------------------------------------- N-FGSM
def test_n_fgsm_perturbation_exceeds_the_radius_before_projection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 2))
    eps = 0.1
    x, y = torch.rand(8, 64) * 0.5 + 0.25, torch.randint(0, 2, (8,))
    m = build_method({"name": "n_fgsm", "eps": eps}, ClassificationTask(2), ThreatModel("Linf", (0.0, 1.0)), None)
    ctx, ids = context(m, model, 8)
    x_adv, _ = m.perturb(ctx, {"image": x, "label": y, "id": ids})
    d = (x_adv - x).abs()
    assert float(d.max()) > 2 * eps and float(d.max()) <= 3 * eps + 1e-6  # noise 2 eps + step eps, nothing cut
    assert float((d > eps + 1e-6).float().mean()) > 0.3
    clipped = build_method({"name": "n_fgsm", "eps": eps, "clip": 1.0}, ClassificationTask(2), ThreatModel("Linf", (0.0, 1.0)), None)
    xc, _ = clipped.perturb(ctx, {"image": x, "label": y, "id": ids})
    assert float((xc - x).abs().max()) <= eps + 1e-6
    # the data bounds still apply
    edge = torch.zeros(8, 64)
    xe, _ = m.perturb(ctx, {"image": edge, "label": y, "id": ids})
    assert float(xe.min()) >= 0.0


# ----------------------------------------------------------------------------------- engine
NEW = {
    "mma": {"name": "mma", "d_max": 0.3, "min_eps": 0.02, "units": "rms", "steps": 3, "search_steps": 4},
    "gairat": {"name": "gairat", "eps": 0.05, "units": "rms", "steps": 3, "begin": 0.5},
    "fat": {"name": "fat", "eps": 0.05, "units": "rms", "steps": 3, "dynamic_tau": False, "tau": 1},
    "lbgat": {"name": "lbgat", "eps": 0.05, "units": "rms", "steps": 3},
    "te": {"name": "te", "eps": 0.05, "units": "rms", "steps": 3, "start_epoch": 1, "ramp_end_epoch": 1},
    "advlc": {"name": "advlc", "eps": 0.05, "units": "rms", "steps": 3},
    "free_at": {"name": "free_at", "eps": 0.05, "units": "rms", "replays": 2},
    "n_fgsm": {"name": "n_fgsm", "eps": 0.05, "units": "rms"},
}
LOW_BAR = {"threshold": 0.05}  # so that the phantom slices count as correct early on (MMA, GAIRAT, FAT attack them)


STATEFUL = ["free_at", "lbgat", "mma", "te"]  # per-sample or method state that a resume must restore
SMALL_2D = {"phantom": {"size": [16, 16], "n_cases": 8}, "preprocess": {"size": [16, 16]}}


@pytest.mark.slow
@pytest.mark.parametrize("key", STATEFUL)
def test_stateful_method_trains_in_2d_and_resumes_exactly(tmp_path: Path, key):
    from medrobust.training.engine import train

    over = {"method": NEW[key], "epochs": 2, "success": LOW_BAR, "data": SMALL_2D}
    res = train(train_cfg(tmp_path / "full", over))
    part_cfg = train_cfg(tmp_path / "part", over)
    train(part_cfg, stop_after=1)
    resumed = train(part_cfg, resume=True)
    a, b = load_checkpoint(res.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    for k, v in a["sample_state"]["tensors"].items():
        assert torch.equal(v, b["sample_state"]["tensors"][k]), k
    assert a["method"]["state"].keys() == b["method"]["state"].keys()
    h = res.history[-1]
    assert h["forward_per_step"] == pytest.approx(h["nominal_forward_per_step"], rel=0.35)
    assert h["backward_per_step"] == pytest.approx(h["nominal_backward_per_step"], rel=0.35)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(NEW))
def test_new_method_trains_in_3d(tmp_path: Path, key):
    from medrobust.training.engine import train

    over = {"method": NEW[key], "epochs": 1, "success": {"threshold": 0.0},
            "data": {"phantom": {"size": [16, 16, 16], "n_cases": 5}, "preprocess": {"size": [16, 16, 16]}}}
    res = train(train_cfg(tmp_path, over))
    h = res.history[-1]
    assert h["steps"] > 0 and torch.isfinite(torch.tensor(h["train_loss"]))
    assert h["forward_per_step"] == pytest.approx(h["nominal_forward_per_step"], rel=0.35)
    assert h["backward_per_step"] == pytest.approx(h["nominal_backward_per_step"], rel=0.35)


CLS = {
    "mma": {"name": "mma", "d_max": 0.5, "min_eps": 0.05, "steps": 3, "search_steps": 4},
    "gairat": {"name": "gairat", "eps": 0.1, "steps": 3, "begin": 0.0},
    "fat": {"name": "fat", "eps": 0.1, "steps": 3},
    "lbgat": {"name": "lbgat", "eps": 0.1, "steps": 3, "beta": 6.0},
    "te": {"name": "te", "eps": 0.1, "steps": 3, "start_epoch": 0, "ramp_end_epoch": 1},
    "advlc": {"name": "advlc", "eps": 0.1, "steps": 3},
    "free_at": {"name": "free_at", "eps": 0.1, "replays": 2},
    "n_fgsm": {"name": "n_fgsm", "eps": 0.1},
}


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(CLS))
def test_new_method_trains_a_classifier(tmp_path: Path, key):
    from medrobust.training.engine import train

    over = {"method": CLS[key], "epochs": 1, "task": "classification", "model": {"name": "small_cnn", "params": {"width": 8}}}
    cfg = tiny_train_config(tmp_path, **over)
    cfg["model"]["params"] = {"width": 8}  # drop the U-Net parameters merged in from the base config
    res = train(load_config(TrainConfig, data=cfg))
    h = res.history[-1]
    assert h["steps"] > 0 and torch.isfinite(torch.tensor(h["train_loss"]))
    assert h["forward_per_step"] == pytest.approx(h["nominal_forward_per_step"], rel=0.35)


def train_cfg(path: Path, over: dict) -> TrainConfig:
    return load_config(TrainConfig, data=tiny_train_config(path, **over))


def test_list_methods_names_the_new_methods():
    from click.testing import CliRunner

    from medrobust.cli import main

    res = CliRunner().invoke(main, ["list", "methods"], catch_exceptions=False)
    assert res.exit_code == 0
    listed = {line.split()[0] for line in res.output.splitlines() if line.strip()}
    assert {"mma", "gairat", "fat", "lbgat", "te", "advlc", "free_at", "n_fgsm"} <= listed


@pytest.mark.parametrize("name", ["mma", "gairat", "fat", "lbgat", "te_seg", "advlc", "free_at", "n_fgsm"])
def test_method_config_files_build(name):
    import yaml

    spec = yaml.safe_load((Path(__file__).parents[1] / "configs" / "methods" / f"{name}.yaml").read_text())
    task = SegmentationTask(2) if name.endswith("_seg") else ClassificationTask(2)
    m = build_method(spec, task, ThreatModel("Linf", None), None)
    f, b = m.passes()
    assert f >= 2 and b >= 2


def test_mma_needs_d_max():
    from medrobust.errors import ConfigError

    with pytest.raises(ConfigError, match="method 'mma': required key 'd_max'"):
        build_method({"name": "mma"}, ClassificationTask(2), ThreatModel("L2", None), None)
