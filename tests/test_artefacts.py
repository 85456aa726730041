"""Acquisition artefacts (issue #12): identity at severity 0, severity ordering, seeds, 3D and
multi-channel inputs, native units, the adversarial bias field, the preset and the sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrobust.attacks import ARTEFACTS, ATTACKS, build_attack, expand_presets
from medrobust.attacks.artefacts import BiasField, legendre_basis, random_bias_coefficients
from medrobust.data.phantoms import make_phantom
from medrobust.errors import ConfigError
from medrobust.tasks import build_task
from medrobust.threat import ThreatModel

TEN = ["bias_field", "gibbs", "kspace_spike", "rician_noise", "gaussian_blur", "contrast", "motion", "ghosting",
       "low_resolution", "adversarial_bias_field"]
RANDOM = [n for n in TEN if n not in ("gibbs", "gaussian_blur", "low_resolution", "adversarial_bias_field")]


def _phantoms(n: int = 6, size=(32, 32), channels: int = 1):
    """z-scored phantoms with their preprocessing record (x_in = s * x_native + o)."""
    xs, sc, of = [], [], []
    for i in range(n):
        chans = []
        s_c, o_c = [], []
        for c in range(channels):
            img, _ = make_phantom(i, size, n_structures=2, seed=c)
            m, s = float(img.mean()), float(img.std())
            chans.append(torch.from_numpy((img - m) / s).float())
            s_c.append(1 / s)
            o_c.append(-m / s)
        xs.append(torch.stack(chans))
        sc.append(s_c)
        of.append(o_c)
    nd = len(size)
    batch = {"id": [f"case{i}" for i in range(n)], "spacing": torch.ones(n, nd, dtype=torch.float64),
             "intensity_scale": torch.tensor(sc, dtype=torch.float64), "intensity_offset": torch.tensor(of, dtype=torch.float64)}
    return torch.stack(xs), batch


def _art(name: str, **kw):
    return build_attack({"name": name, **kw}, build_task("segmentation", 3), ThreatModel("L2", None))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def test_all_ten_registered_and_preset_expands():
    assert set(TEN) <= set(ATTACKS)
    assert set(ARTEFACTS) == set(TEN)
    assert expand_presets(["white_noise", "corruptions"]) == ["white_noise"] + TEN
    assert expand_presets([{"name": "corruptions", "draws": 2}])[0] == {"name": "bias_field", "draws": 2}


@pytest.mark.parametrize("name", TEN)
def test_severity_zero_is_identity_and_every_level_changes_the_image(name):
    x, batch = _phantoms(2)
    art = _art(name)
    assert torch.equal(art.corrupt(x, 0, batch), x)
    for s in (1, 5):
        y = art.corrupt(x, s, batch)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert (y - x).abs().max() > 1e-3, f"{name} at severity {s} left the image unchanged"


@pytest.mark.parametrize("name", [n for n in TEN if n != "adversarial_bias_field"])
def test_higher_severity_lowers_similarity_on_phantoms(name):
    x, batch = _phantoms(4)
    art = _art(name)
    draws = 1 if art.deterministic else 2
    sim = [np.mean([_corr(x, art.corrupt(x, s, batch, d)) for d in range(draws)]) for s in range(6)]
    assert sim[0] == pytest.approx(1.0)
    assert all(sim[k + 1] < sim[k] + 1e-4 for k in range(5)), f"{name}: similarity to clean by severity {sim}"
    assert sim[5] < sim[1] - 1e-3


@pytest.mark.parametrize("name", RANDOM)
def test_draws_reproducible_from_seed_and_independent_of_the_batch(name):
    x, batch = _phantoms(3)
    a = _art(name, seed=3).corrupt(x, 4, batch, draw=1)
    assert torch.equal(a, _art(name, seed=3).corrupt(x, 4, batch, draw=1))
    assert not torch.equal(a, _art(name, seed=4).corrupt(x, 4, batch, draw=1))
    assert not torch.equal(a, _art(name, seed=3).corrupt(x, 4, batch, draw=2))
    # a case gets the same artefact alone as inside a batch (seeded per case id)
    sub = {k: (v[1:2] if k != "id" else v[1:2]) for k, v in batch.items()}
    assert torch.allclose(_art(name, seed=3).corrupt(x[1:2], 4, sub, draw=1), a[1:2], atol=1e-5)


@pytest.mark.parametrize("name", TEN)
def test_3d_and_multichannel_inputs(name):
    x3, b3 = _phantoms(1, size=(16, 16, 12), channels=2)
    art = _art(name)
    y = art.corrupt(x3, 5, b3)
    assert y.shape == x3.shape and torch.isfinite(y).all()
    assert all((y[:, c] - x3[:, c]).abs().max() > 1e-3 for c in range(2))


def test_bias_field_multiplies_native_intensities():
    x, batch = _phantoms(2)
    y = _art("bias_field").corrupt(x, 5, batch)
    s = batch["intensity_scale"].reshape(2, 1, 1, 1).float()
    o = batch["intensity_offset"].reshape(2, 1, 1, 1).float()
    nat, nat_y = (x - o) / s, (y - o) / s
    ratio = nat_y / nat
    assert float(ratio.min()) > 0  # a positive field on scanner intensities
    # input units: the same field multiplies z-scores instead, a different image
    y_in = _art("bias_field", units="input").corrupt(x, 5, batch)
    assert torch.allclose(y_in / x, ratio, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(y_in, y, atol=1e-2)


def test_legendre_basis_matches_monai_field():
    for shape in ((9, 7), (5, 6, 4)):
        c = random_bias_coefficients(0.3, 3, len(shape), seed=1)
        ref = BiasField.field(shape, c).log()
        ours = torch.einsum("k...,k->...", legendre_basis(shape, 3), torch.as_tensor(c))
        assert torch.allclose(ours, ref, atol=1e-5)


def test_bad_severity_and_shape_are_config_errors():
    art = _art("gibbs")
    with pytest.raises(ConfigError, match="severity"):
        art.corrupt(torch.zeros(1, 1, 8, 8), 7)
    with pytest.raises(ConfigError, match="severity"):
        art.corrupt(torch.zeros(1, 1, 8, 8), 2.5)
    with pytest.raises(ConfigError, match="shaped"):
        art.corrupt(torch.zeros(8, 8), 1)
    with pytest.raises(ConfigError, match="severities"):
        _art("gibbs", severities=[0, 9])


def test_attack_call_reports_mean_and_worst_draws():
    from tests.models_fixtures import trained_seg

    model, _, y = trained_seg(2)
    x, batch = _phantoms(4)
    task = build_task("segmentation", 3)
    art = build_attack({"name": "rician_noise", "draws": 3}, task, ThreatModel("L2", None))
    assert torch.equal(art(model, x, y[:4], 0, batch=batch).x_adv, x)
    res = art(model, x, y[:4], 5, batch=batch)
    ex = res.extra
    assert (ex["score_worst"] <= ex["score_mean"] + 1e-9).all()
    with torch.no_grad():
        s = task.score(model(res.x_adv), y[:4]).double().cpu()
    assert torch.allclose(s, ex["score_worst"], atol=1e-6)


def test_adversarial_bias_field_is_at_least_as_damaging_as_random_fields():
    from tests.models_fixtures import trained_seg

    model, _, y = trained_seg(2)
    x, batch = _phantoms(6)
    y = y[:6]
    task = build_task("segmentation", 3)
    thr = ThreatModel("L2", None)
    with torch.no_grad():
        clean = task.score(model(x), y).double()
    for sev in (2, 5):
        rnd = build_attack({"name": "bias_field", "draws": 4}, task, thr)(model, x, y, sev, batch=batch)
        adv_att = build_attack({"name": "adversarial_bias_field", "draws": 4, "steps": 10}, task, thr)
        adv = adv_att(model, x, y, sev, batch=batch)
        with torch.no_grad():
            s_adv = task.score(model(adv.x_adv), y).double()
        assert (s_adv <= clean + 1e-9).all()
        assert (s_adv <= rnd.extra["score_worst"].double() + 1e-9).all()
        assert torch.allclose(adv.extra["random_worst_score"].double(), rnd.extra["score_worst"].double())
        # the field stays inside the severity's coefficient bound: log(field) within the sum of |bound * basis|
        bound = float(adv_att.level(sev))
        s = batch["intensity_scale"].reshape(6, 1, 1, 1).float()
        o = batch["intensity_offset"].reshape(6, 1, 1, 1).float()
        logf = ((adv.x_adv - o) / (x - o)).log()
        lim = bound * legendre_basis(x.shape[2:], 3)[1:].abs().sum(0)
        assert (logf[:, 0].abs() <= lim + 1e-3).all()
        del s
    # at the top severity the gradient search beats random sampling on average
    assert float(s_adv.mean()) < float(rnd.extra["score_worst"].mean())


@pytest.mark.slow
def test_sweep_and_card_with_artefacts_beside_budgets(tmp_path):
    """A tiny evaluation (white noise, PGD, two artefacts), margins and the robustness card."""
    import json

    import pandas as pd

    from conftest import tiny_train_config
    from medrobust.config import EvalConfig, MarginsConfig, TrainConfig, load_config
    from medrobust.evaluation.card import CardConfig, run_card
    from medrobust.evaluation.sweep import evaluate
    from medrobust.margins.run import run_margins
    from medrobust.training.engine import train

    ck = train(load_config(TrainConfig, data=tiny_train_config(tmp_path, epochs=2, data={"phantom": {"n_cases": 20}}))).best_checkpoint
    ev = load_config(EvalConfig, data={"checkpoint": str(ck), "output_dir": str(tmp_path / "ev"), "split": "val",
                                       "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, 0.1]},
                                       "attacks": [{"name": "white_noise", "draws": 2}, {"name": "pgd", "steps": 2},
                                                   {"name": "random_artefacts", "draws": 1, "severities": [1, 5]}],
                                       "examples": 1})
    res = evaluate(ev)
    t = pd.read_csv(res.run_dir / "results.csv")
    n = (t.attack == "clean").sum()
    assert len(t) == n * (1 + 2 * 2 + 9 * 3)  # clean + 2 attacks x 2 budgets + 9 artefacts x severities 0, 1, 5
    art = t[t.attack == "gaussian_blur"]
    assert sorted(art.severity.unique()) == [0, 1, 5] and art.eps_input.isna().sum() == 2 * n
    assert t[t.attack == "pgd"].severity.isna().all()
    s = json.loads((res.run_dir / "summary.json").read_text())
    assert set(s["attacks"]["motion"]) == {"0.0", "1.0", "5.0"} and "artefacts" in s
    assert set(s["worst_case"]) == {"0.0", "0.1"}  # artefact levels are not budgets
    for f in ("metric_vs_severity.png", "examples_motion.png", "report.html"):
        assert (res.run_dir / f).is_file(), f
    assert "Worst cases per artefact" in (res.run_dir / "report.html").read_text()
    mg = run_margins(load_config(MarginsConfig, data={"checkpoint": str(ck), "output_dir": str(tmp_path / "m"), "split": "val",
                                                      "threat": {"norm": "L2", "units": "rms"}, "eps_max": 1.0, "bisection_steps": 3,
                                                      "attack": {"name": "pgd", "steps": 2}, "voxel_maps": False,
                                                      "success": {"threshold": 0.05}}))
    card = run_card(CardConfig(evals={"standard": str(res.run_dir)}, margins={"standard": str(mg.run_dir)}, n_boot=200,
                               output_dir=str(tmp_path / "card")), tmp_path)
    assert set(card.correlation["artefact"]) == set(ARTEFACTS) - {"adversarial_bias_field"}
    for f in ("heatmap.png", "severity.png", "card.md", "report.html", "margin_correlation.csv"):
        assert (card.run_dir / f).is_file(), f
    heat = pd.read_csv(card.run_dir / "heatmap.csv", index_col=0)
    assert heat.loc["standard", "clean"] == pytest.approx(t[t.attack == "clean"].dice.mean())


def test_spearman_bootstrap_known_cases():
    from medrobust.evaluation.card import spearman_bootstrap

    a = np.arange(30, dtype=float)
    r = spearman_bootstrap(a, -a ** 3, n_boot=300)
    assert r["rho"] == pytest.approx(-1.0) and r["hi"] <= -0.99
    rng = np.random.default_rng(0)
    r = spearman_bootstrap(rng.normal(size=200), rng.normal(size=200), n_boot=300)
    assert r["lo"] < 0 < r["hi"] and abs(r["rho"]) < 0.2
    assert np.isnan(spearman_bootstrap([1, 2, 3], [1, 2, 3])["rho"])
    # slices of a case move together: resampling cases gives a wider interval than resampling slices
    case = np.repeat(np.arange(6), 10)
    u = np.repeat(rng.normal(size=6), 10) + 0.1 * rng.normal(size=60)
    v = np.repeat(rng.normal(size=6), 10) + 0.1 * rng.normal(size=60)
    flat, clus = spearman_bootstrap(u, v, n_boot=300), spearman_bootstrap(u, v, n_boot=300, groups=case)
    assert clus["n_groups"] == 6 and flat["n_groups"] == 60
    assert clus["hi"] - clus["lo"] > flat["hi"] - flat["lo"]
    few = spearman_bootstrap(u[:30], v[:30], n_boot=100, groups=case[:30])  # 3 cases: no interval
    assert np.isfinite(few["rho"]) and np.isnan(few["lo"])


def test_card_joins_evaluations_and_refuses_duplicate_attacks():
    import pandas as pd

    from medrobust.evaluation.card import _join_tables

    a = pd.DataFrame({"sample": ["s0", "s0"], "attack": ["clean", "pgd"], "budget": [0.0, 0.1], "dice": [0.9, 0.5]})
    b = pd.DataFrame({"sample": ["s0", "s0"], "attack": ["clean", "motion"], "budget": [0.0, 5.0], "dice": [0.9, 0.7],
                      "severity": [None, 5]})
    t = _join_tables([a, b], "m")
    assert list(t.attack) == ["clean", "pgd", "motion"]
    with pytest.raises(ConfigError, match="pgd"):
        _join_tables([a, a], "m")


@pytest.mark.parametrize("name", ["robustness_card_phantoms", "robustness_card_hippocampus_2d", "compare_phantoms",
                                  "compare_hippocampus_2d"])
def test_pipelines_with_artefacts_parse(name):
    from pathlib import Path

    from medrobust.pipelines import load_pipeline

    spec, _ = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.yaml")
    assert spec.steps[-1].command == "robustness-card"
    assert any("corruptions" in str(s.config) for s in spec.steps)
