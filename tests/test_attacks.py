"""Attack invariants: budget and bounds, zero budget, ensemble <= members, monotonicity, noise
statistics, model mode, seeds; APGD against the reference pyautoattack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.attacks import build_attack
from medrobust.tasks import ClassificationTask, SegmentationTask
from medrobust.threat import ThreatModel, budget_to_input, input_to_units
from models_fixtures import TinySeg, trained_cls, trained_seg


def lp_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm written independently of medrobust.threat (torch.linalg.vector_norm)."""
    return torch.linalg.vector_norm(d.reshape(d.shape[0], -1), ord=float("inf") if norm == "Linf" else 2, dim=1)


def mean_fg_dice(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Mean foreground hard Dice per sample, written out (absent-from-both classes skipped; none left: 1)."""
    p = logits.argmax(1).reshape(logits.shape[0], -1)
    t = y.reshape(y.shape[0], -1)
    out = []
    for i in range(p.shape[0]):
        ds = [2 * int(((p[i] == c) & (t[i] == c)).sum()) / den for c in range(1, k)
              if (den := int((p[i] == c).sum()) + int((t[i] == c).sum()))]
        out.append(sum(ds) / len(ds) if ds else 1.0)
    return torch.tensor(out, dtype=torch.float64)

ATTACKS = [
    "fgsm",
    {"name": "pgd", "steps": 4},
    {"name": "pgd", "steps": 3, "loss": "segpgd"},
    {"name": "pgd", "steps": 3, "loss": "cospgd"},
    {"name": "apgd", "n_iter": 6, "loss": "masked_ce", "eps_schedule": [2.0, 1.5, 1.0], "iter_fractions": [0.3, 0.3, 0.4]},
    {"name": "apgd", "n_iter": 5, "loss": "js"},
    {"name": "random_search", "queries": 8},
    {"name": "white_noise", "draws": 4},
    {"name": "seg_ensemble", "n_iter": 4, "queries": 4},
    {"name": "ima_autoattack", "n_iter": 3, "queries": 3},
]


def _name(a):
    return a if isinstance(a, str) else f"{a['name']}-{a.get('loss', '')}"


@pytest.mark.parametrize("spec", ATTACKS, ids=_name)
@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0), "per_image"])
def test_segmentation_attacks_stay_in_budget_and_bounds(spec, norm, bounds):
    torch.manual_seed(0)
    model = TinySeg(2).eval()
    x = torch.rand(3, 1, 16, 16)
    y = torch.randint(0, 3, (3, 1, 16, 16))
    task, threat = SegmentationTask(3), ThreatModel(norm, bounds)
    eps = torch.tensor([0.05, 0.1, 0.2]) if norm == "Linf" else torch.tensor([0.3, 0.6, 1.2])
    res = build_attack(spec, task, threat)(model, x, y, eps)
    n = lp_norm(res.x_adv - x, norm)
    assert bool((n <= eps * (1 + 1e-5) + 1e-6).all()), (n, eps)
    if bounds == (0.0, 1.0):
        assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    if bounds == "per_image":
        lo = x.reshape(3, -1).min(1).values
        hi = x.reshape(3, -1).max(1).values
        assert bool((res.x_adv.reshape(3, -1).min(1).values >= lo - 1e-7).all())
        assert bool((res.x_adv.reshape(3, -1).max(1).values <= hi + 1e-7).all())
    zero = build_attack(spec, task, threat)(model, x, y, 0.0)
    assert torch.equal(zero.x_adv, x)


@pytest.mark.parametrize("spec", ["fgsm", {"name": "pgd", "steps": 3}, {"name": "apgd", "n_iter": 5},
                                  {"name": "apgd", "n_iter": 4, "loss": "dlr"}, {"name": "random_search", "queries": 10},
                                  {"name": "white_noise", "draws": 3}], ids=_name)
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_classification_attacks_in_budget(spec, norm):
    model, x, y = trained_cls()
    x, y = x[:16], y[:16]
    threat = ThreatModel(norm, (0.0, 1.0))
    eps = 0.1 if norm == "Linf" else 1.0
    res = build_attack(spec, ClassificationTask(4), threat)(model, x, y, eps)
    assert bool((lp_norm(res.x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


def test_3d_attacks_and_sliding_window():
    from medrobust.inference import CasePredictor

    model, x, y = trained_seg(3)
    net = CasePredictor(model, [8, 8, 8], 1, overlap=0.25, sw_batch_size=2)
    task, threat = SegmentationTask(3), ThreatModel("L2", None)
    with torch.no_grad():
        lg = net(x[:2])
        clean = mean_fg_dice(lg, y[:2], 3)
        ce_clean = torch.nn.functional.cross_entropy(lg, y[:2, 0], reduction="none").mean((1, 2, 3))
    for spec in ({"name": "apgd", "n_iter": 4, "stop_at_floor": False}, {"name": "random_search", "queries": 4}):
        res = build_attack(spec, task, threat)(net, x[:2], y[:2], 2.0)
        assert bool((lp_norm(res.x_adv - x[:2], "L2") <= 2.0 + 1e-5).all())
        with torch.no_grad():
            la = net(res.x_adv)
            adv = mean_fg_dice(la, y[:2], 3)
            ce_adv = torch.nn.functional.cross_entropy(la, y[:2, 0], reduction="none").mean((1, 2, 3))
        assert bool((adv <= clean + 1e-9).all())  # never better for the model than the clean input
        if spec["name"] == "apgd":  # this weak 3D model scores Dice ~0 through the window (the floor, so stopping there is off): the loss must rise
            assert bool((ce_adv > 1.05 * ce_clean).all()), (ce_adv, ce_clean)


def test_ensemble_is_never_weaker_than_any_member_on_any_case():
    model, x, y = trained_seg(2)
    task, threat = SegmentationTask(3), ThreatModel("L2", None)
    ens = build_attack({"name": "seg_ensemble", "n_iter": 8, "queries": 8, "seed": 3}, task, threat)
    res = ens(model, x, y, 1.5)
    with torch.no_grad():
        d_ens = mean_fg_dice(model(res.x_adv), y, 3)
        clean = mean_fg_dice(model(x), y, 3)
    assert float(d_ens.mean()) < float(clean.mean()) - 0.1
    for i, m in enumerate(ens.members):
        spec = {"name": m.name, **m.params.model_dump()}
        assert spec["seed"] == 3 + i
        alone = build_attack(spec, task, threat)(model, x, y, 1.5)
        with torch.no_grad():
            d_m = mean_fg_dice(model(alone.x_adv), y, 3)
        torch.testing.assert_close(d_m, res.extra[f"member:{m.label}"].double())  # reproducible alone
        assert bool((d_ens <= d_m + 1e-9).all()), (m.label, d_ens, d_m)


def test_stronger_attacks_never_score_higher_on_average():
    model, x, y = trained_seg(2)
    task, threat = SegmentationTask(3), ThreatModel("L2", None)
    with torch.no_grad():
        clean = float(task.score(model(x), y).mean())

    def mean_dice(spec, eps):
        r = build_attack(spec, task, threat)(model, x, y, eps)
        with torch.no_grad():
            return float(task.score(model(r.x_adv), y).mean())

    pgd5, pgd20 = mean_dice({"name": "pgd", "steps": 5}, 1.0), mean_dice({"name": "pgd", "steps": 20}, 1.0)
    assert pgd20 <= pgd5 + 1e-6 and pgd5 < clean - 0.02
    small, big = mean_dice({"name": "apgd", "n_iter": 10}, 0.5), mean_dice({"name": "apgd", "n_iter": 10}, 2.0)
    assert big <= small <= clean + 1e-6
    assert big < clean - 0.05  # the attack does something on a trained model


def test_white_noise_statistics_match_definition():
    from medrobust.attacks.noise import WhiteNoise, WhiteNoiseParams

    x = torch.zeros(4000, 1, 8, 8)
    eps = torch.full((4000,), 0.3)
    lin = WhiteNoise(WhiteNoiseParams(), SegmentationTask(2), ThreatModel("Linf", None)).sample(x, eps)
    assert float(lin.abs().max()) <= 0.3
    assert float(lin.mean()) == pytest.approx(0.0, abs=3e-3)
    assert float(lin.var()) == pytest.approx(0.3 ** 2 / 3, rel=0.02)  # U[-e, e]
    l2 = WhiteNoise(WhiteNoiseParams(), SegmentationTask(2), ThreatModel("L2", None)).sample(x, eps)
    torch.testing.assert_close(lp_norm(l2, "L2"), eps)  # exactly on the L2 sphere
    assert float(l2.mean()) == pytest.approx(0.0, abs=2e-3)
    assert float(l2.var()) == pytest.approx(0.3 ** 2 / 64, rel=0.03)  # isotropic direction
    one = WhiteNoise(WhiteNoiseParams(one_sided=True), SegmentationTask(2), ThreatModel("Linf", None)).sample(x, eps)
    assert float(one.min()) >= 0


def test_white_noise_reports_mean_and_worst_over_draws():
    model, x, y = trained_seg(2)
    task = SegmentationTask(3)
    res = build_attack({"name": "white_noise", "draws": 6}, task, ThreatModel("L2", None))(model, x, y, 3.0)
    e = res.extra
    assert bool((e["score_worst"] <= e["score_mean"] + 1e-12).all())
    with torch.no_grad():
        torch.testing.assert_close(task.score(model(res.x_adv), y).double(), e["score_worst"].double())


def test_model_mode_grads_and_rng_are_left_alone():
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    m.train()
    m[1].eval()  # a caller's mixed mode must survive too
    stats = m[1].running_mean.clone()
    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    state = torch.get_rng_state()
    build_attack({"name": "pgd", "steps": 2, "seed": 7}, SegmentationTask(3), ThreatModel("Linf", None))(m, x, y, 0.1)
    assert m.training and not m[1].training
    assert torch.equal(m[1].running_mean, stats)
    assert all(p.grad is None and p.requires_grad for p in m.parameters())
    assert torch.equal(torch.get_rng_state(), state)
    a = build_attack({"name": "pgd", "steps": 2, "seed": 7}, SegmentationTask(3), ThreatModel("Linf", None))(m, x, y, 0.1)
    b = build_attack({"name": "pgd", "steps": 2, "seed": 7}, SegmentationTask(3), ThreatModel("Linf", None))(m, x, y, 0.1)
    assert torch.equal(a.x_adv, b.x_adv)


def test_budget_units():
    x = torch.zeros(2, 1, 10, 10)
    batch = {"intensity_scale": torch.tensor([[0.5], [0.25]])}
    assert budget_to_input(0.1, "rms", "L2", batch, x).tolist() == pytest.approx([1.0, 1.0])
    native = budget_to_input(8.0, "native", "Linf", batch, x)
    assert native.tolist() == pytest.approx([4.0, 2.0])
    back = input_to_units(native, batch, x)
    assert back["native"].tolist() == pytest.approx([8.0, 8.0])


def test_apgd_matches_reference_pyautoattack():
    """medrobust APGD-CE vs pyautoattack APGD-CE, same model, data and budget: robust accuracy within 2 points."""
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y = trained_cls()
    x, y = x[:256], y[:256]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    for norm, eps in (("Linf", 0.11), ("L2", 1.1)):
        ref = APGDAttack(model, n_iter=50, norm=norm, eps=eps, loss="ce", seed=0, device="cpu")
        x_ref = ref.perturb(x, y)
        with torch.no_grad():
            acc_ref = float((model(x_ref).argmax(1) == y).float().mean())
        ours = build_attack({"name": "apgd", "n_iter": 50, "loss": "ce"}, ClassificationTask(4), ThreatModel(norm, (0.0, 1.0)))
        x_ours = ours(model, x, y, eps).x_adv
        with torch.no_grad():
            acc_ours = float((model(x_ours).argmax(1) == y).float().mean())
        assert 0.1 < acc_ref < clean - 0.05, f"budget {eps} does not separate: clean {clean}, robust {acc_ref}"
        assert abs(acc_ours - acc_ref) <= 0.02, (norm, acc_ours, acc_ref)


def test_autoattack_wrapper_reproduces_reference_and_adapts_to_classes():
    from pyautoattack import AutoAttack as Ref

    from medrobust.attacks.autoattack import attacks_for_classes

    assert attacks_for_classes(2) == (["apgd-ce", "fab", "square"], 0)
    assert attacks_for_classes(3)[0] == ["apgd-ce", "apgd-dlr", "fab", "square"]
    assert attacks_for_classes(12) == (["apgd-ce", "apgd-t", "fab-t", "square"], 9)
    model, x, y = trained_cls()
    x, y = x[:48], y[:48]
    spec = {"name": "autoattack", "square_queries": 50, "apgd_iter": 20, "seed": 0}
    ours = build_attack(spec, ClassificationTask(4), ThreatModel("Linf", (0.0, 1.0)))(model, x, y, 0.08).x_adv
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    ref = Ref(model, version="standard", norm="Linf", eps=0.08, seed=0, device="cpu")
    # APGD built with 20 iterations, as pyautoattack's constructor computes the step-size schedule
    ref.apgd = APGDAttack(model, n_iter=20, norm="Linf", n_restarts=1, eps=0.08, seed=0, rho=.75, device="cpu", logger=ref.logger)
    ref.apgd_targeted = APGDAttack_targeted(model, n_iter=20, norm="Linf", n_restarts=1, eps=0.08, seed=0, rho=.75,
                                            device="cpu", logger=ref.logger)
    ref.apgd_targeted.n_target_classes = ref.fab.n_target_classes = 3
    ref.square.n_queries = 50
    ref.logger.setLevel(40)
    x_ref, _ = ref.run_standard_evaluation(x, y, batch_size=500)
    with torch.no_grad():
        a_ours = float((model(ours).argmax(1) == y).float().mean())
        a_ref = float((model(x_ref).argmax(1) == y).float().mean())
    assert a_ours == a_ref


def test_sanity_flags():
    from medrobust.attacks.sanity import gradient_flags, model_flags

    x = torch.rand(2, 1, 8, 8)
    soft = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Softmax(dim=1))
    assert any(f.startswith("softmax_output") for f in model_flags(soft, x))

    class Noisy(nn.Module):
        def forward(self, x):
            return torch.cat([x, torch.rand_like(x), -x], 1)

    assert any(f.startswith("stochastic_model") for f in model_flags(Noisy(), x))

    class Flat(nn.Module):
        def forward(self, x):
            return torch.round(x * 0).repeat(1, 3, 1, 1) + torch.tensor([1.0, 0, 0]).reshape(1, 3, 1, 1)

    y = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    assert any(f.startswith("zero_gradient") for f in gradient_flags(Flat(), SegmentationTask(3), x, y))
    assert not model_flags(TinySeg(2).eval(), x)
