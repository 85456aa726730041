"""Acquisition artefacts (medrobust/attacks/artefacts.py) against oracles written out here (issue #17):
the motion parameters handed to TorchIO (magnitudes in [0.75 max, max], signs alternating between
movements with a random start per axis, rotation only about the singleton axis of a 2D image,
in-plane translations, the spacing in the image affine, movement times from the segment rule), and
the bias field rebuilt from its definition (seed = crc32 of ``seed|family|id|severity|draw``,
uniform coefficients without a constant term, Legendre polynomials written out) for both
``bias_field`` and the random start of ``adversarial_bias_field``."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.attacks import build_attack
from medrobust.tasks import build_task
from medrobust.threat import ThreatModel


def _art(name: str, **kw):
    return build_attack({"name": name, **kw}, build_task("segmentation", 3), ThreatModel("L2", None))


# ============================================================================ motion
@pytest.fixture
def motion_calls(monkeypatch):
    """Every call of ``torchio.Motion``: its arguments and the image it transforms (passed through)."""
    import torchio

    calls = []
    real = torchio.Motion

    class Spy:
        def __init__(self, degrees, translation, times, image_interpolation, **kw):
            self.rec = {"degrees": np.array(degrees, dtype=float), "translation": np.array(translation, dtype=float),
                        "times": np.array(times, dtype=float), "interp": image_interpolation}
            self.real = real(degrees=degrees, translation=translation, times=times, image_interpolation=image_interpolation, **kw)

        def __call__(self, img):
            self.rec["shape"] = tuple(img.data.shape)
            self.rec["affine"] = np.array(img.affine, dtype=float)
            out = self.real(img)
            self.rec["out"] = out.data.clone()
            calls.append(self.rec)
            return out

    monkeypatch.setattr(torchio, "Motion", Spy)
    return calls


def _expected_times(n: int) -> list[float]:
    # n + 1 k-space segments; the unmoved one [a, b] has width 1 / (n + 1) and is centred on 0.5;
    # (n + 1) // 2 movements evenly divide [0, a] (the last at a), the rest evenly divide [b, 1) (the first at b)
    w = 1 / (n + 1)
    a, b = 0.5 - w / 2, 0.5 + w / 2
    n_left = (n + 1) // 2
    n_right = n - n_left
    return [a * (j + 1) / n_left for j in range(n_left)] + [b + (1 - b) * j / n_right for j in range(n_right)]


def test_expected_times_by_hand():
    # n = 5: unmoved segment [5/12, 7/12]; three movements at 5/36, 10/36, 15/36, two at 7/12 and 7/12 + 5/24
    assert _expected_times(5) == pytest.approx([5 / 36, 10 / 36, 15 / 36, 7 / 12, 7 / 12 + 5 / 24])
    assert _expected_times(1) == pytest.approx([0.25])


@pytest.mark.parametrize("severity", [1, 2, 5])
def test_motion_2d_parameters_handed_to_torchio(motion_calls, severity):
    a = _art("motion")
    n, max_deg, max_mm = a.level(severity)
    x = torch.rand(1, 1, 12, 10)
    spacing = (0.5, 2.0)  # anisotropic: the affine must carry (0.5, 1, 2.0)
    out = a.corrupt(x, severity, {"id": ["c"], "spacing": torch.tensor([spacing], dtype=torch.float64)})
    assert len(motion_calls) == 1
    rec = motion_calls[0]
    deg, tr = rec["degrees"], rec["translation"]
    assert deg.shape == (n, 3) and tr.shape == (n, 3)
    # a 2D image is laid out (C, H, 1, W): rotation only about axis 1 (the singleton), translation only along 0 and 2
    assert rec["shape"] == (1, 12, 1, 10)
    assert np.all(deg[:, 0] == 0) and np.all(deg[:, 2] == 0) and np.all(tr[:, 1] == 0)
    assert np.all((np.abs(deg[:, 1]) >= 0.75 * max_deg - 1e-12) & (np.abs(deg[:, 1]) <= max_deg + 1e-12)), deg
    for ax in (0, 2):
        assert np.all((np.abs(tr[:, ax]) >= 0.75 * max_mm - 1e-12) & (np.abs(tr[:, ax]) <= max_mm + 1e-12)), tr
    # back and forth: each movement's sign is the opposite of the previous one's, per axis
    for col in (deg[:, 1], tr[:, 0], tr[:, 2]):
        assert np.all(np.sign(col[1:]) == -np.sign(col[:-1])), col
    np.testing.assert_allclose(rec["affine"], np.diag([0.5, 1.0, 2.0, 1.0]))
    np.testing.assert_allclose(rec["times"], _expected_times(n))
    assert rec["interp"] == "linear"
    # the result is TorchIO's output with the singleton axis removed
    torch.testing.assert_close(out[0], rec["out"][:, :, 0].to(out.dtype))


def test_motion_3d_moves_about_every_axis_with_the_volume_spacing(motion_calls):
    a = _art("motion")
    n, max_deg, max_mm = a.level(4)
    x = torch.rand(1, 1, 8, 6, 10)
    spacing = (0.7, 1.3, 2.9)
    out = a.corrupt(x, 4, {"id": ["v"], "spacing": torch.tensor([spacing], dtype=torch.float64)})
    rec = motion_calls[0]
    deg, tr = rec["degrees"], rec["translation"]
    assert rec["shape"] == (1, 8, 6, 10) and deg.shape == (n, 3)
    assert np.all((np.abs(deg) >= 0.75 * max_deg - 1e-12) & (np.abs(deg) <= max_deg + 1e-12)), deg
    assert np.all((np.abs(tr) >= 0.75 * max_mm - 1e-12) & (np.abs(tr) <= max_mm + 1e-12)), tr
    assert np.all(np.sign(deg[1:]) == -np.sign(deg[:-1])) and np.all(np.sign(tr[1:]) == -np.sign(tr[:-1]))
    # one sign per axis shared by rotation and translation (one back-and-forth movement)
    assert np.all(np.sign(deg) == np.sign(tr))
    np.testing.assert_allclose(rec["affine"], np.diag(list(spacing) + [1.0]))
    np.testing.assert_allclose(rec["times"], _expected_times(n))
    torch.testing.assert_close(out[0], rec["out"].to(out.dtype))


def test_motion_start_sign_is_random_per_axis(motion_calls):
    a = _art("motion")
    x = torch.rand(1, 1, 8, 8, 8)
    for d in range(12):
        a.corrupt(x, 3, {"id": ["v"]}, draw=d)
    first = np.array([c["degrees"][0] for c in motion_calls])  # (draws, 3)
    for ax in range(3):
        assert (first[:, ax] > 0).any() and (first[:, ax] < 0).any(), first


def test_motion_translation_in_mm_moves_fewer_pixels_at_a_coarser_spacing():
    # the same seeded movements in mm: at 4 mm per pixel the translations move a quarter as many pixels
    # as at 1 mm (the rotations are the same), so the corrupted image stays closer to the clean one
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 36, 36, generator=g), 3, 1, 1)  # smooth texture
    a = _art("motion")
    err = []
    for sp in (1.0, 4.0):
        y = a.corrupt(x, 5, {"id": ["c"], "spacing": torch.tensor([[sp, sp]], dtype=torch.float64)})
        err.append(float((y - x).abs().mean()))
    assert err[1] < 0.8 * err[0], err


# ============================================================================ bias field
def _legendre(k: int, t: np.ndarray) -> np.ndarray:
    return [np.ones_like(t), t, (3 * t**2 - 1) / 2, (5 * t**3 - 3 * t) / 2][k]


# MONAI RandBiasField's 2D coefficient order: the lower triangle of the (degree + 1)^2 matrix, row by row
ORDER_2D = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3)]


def _oracle_field(shape, bound: float, seed: int, sample_id: str, severity: int, draw: int) -> np.ndarray:
    s = zlib.crc32(f"{seed}|bias_field|{sample_id}|{severity}|{draw}".encode()) & 0x7FFFFFFF
    c = np.random.default_rng(s).uniform(-bound, bound, len(ORDER_2D))
    c[0] = 0.0  # no constant term
    u = np.linspace(-1, 1, shape[0])[:, None]
    v = np.linspace(-1, 1, shape[1])[None, :]
    log_f = sum(ck * _legendre(i, u) * _legendre(j, v) for ck, (i, j) in zip(c, ORDER_2D))
    return np.exp(log_f)


def test_bias_field_is_the_documented_field(monkeypatch):
    x = torch.rand(2, 1, 9, 7, dtype=torch.float64) + 0.5
    ids = ["a", "b"]
    for seed in (0, 3):
        a = _art("bias_field", seed=seed)
        for sev, draw in ((5, 0), (2, 3)):
            out = a.corrupt(x, sev, {"id": ids}, draw=draw)
            for i, sid in enumerate(ids):
                f = _oracle_field((9, 7), a.level(sev), seed, sid, sev, draw)
                np.testing.assert_allclose(out[i, 0].numpy(), x[i, 0].numpy() * f, rtol=1e-5)


class _Nearest(nn.Module):
    """Segmentation 'network' in three classes: the nearest of the levels 0, 1, 2 (sharp, so any field changes labels)."""

    def forward(self, x):
        return torch.cat([-20 * (x - k) ** 2 for k in (0.0, 1.0, 2.0)], 1)


def test_adversarial_bias_field_starts_from_the_bias_field_draws():
    # a ramp over the class boundaries: the clean prediction is the target (Dice 1), any field lowers it,
    # so with no gradient steps the result is the worse of the draws, which must be the bias_field draws
    task = build_task("segmentation", 3)
    thr = ThreatModel("L2", None)
    u = torch.linspace(0.05, 2.2, 16 * 12, dtype=torch.float32).reshape(1, 1, 16, 12)
    x = torch.cat([u, u.flip(-1)])
    ids = ["p", "q"]
    model = _Nearest()
    with torch.no_grad():
        y = model(x).argmax(1)
    for seed in (0, 5):
        adv = build_attack({"name": "adversarial_bias_field", "draws": 2, "steps": 0, "seed": seed}, task, thr)
        bound = adv.level(5)
        res = adv(model, x, y, 5, batch={"id": ids})
        fields = [[torch.as_tensor(_oracle_field((16, 12), bound, seed, sid, 5, d), dtype=torch.float32) for sid in ids] for d in range(2)]
        cand = [x * torch.stack(fd)[:, None] for fd in fields]
        with torch.no_grad():
            scores = torch.stack([task.score(model(c), y).double() for c in cand], 1)
        assert (scores < 1 - 1e-3).all(), scores  # every draw hurts: the test can tell draws apart
        assert not torch.allclose(scores[:, 0], scores[:, 1])
        torch.testing.assert_close(res.extra["random_mean_score"].double(), scores.mean(1), rtol=0, atol=1e-6)
        torch.testing.assert_close(res.extra["random_worst_score"].double(), scores.min(1).values, rtol=0, atol=1e-6)
        worst = scores.argmin(1)
        for i in range(2):
            torch.testing.assert_close(res.x_adv[i], cand[int(worst[i])][i], rtol=1e-5, atol=1e-5)


# ============================================================================ documented defaults and bounds
def test_defaults_are_the_documented_ones():
    # docs/evaluation.md: draws default 5 (deterministic artefacts one), levels 0-5 all evaluated,
    # adversarial_bias_field steps 20 with step 0.25 c
    a = _art("bias_field")
    assert a.params.draws == 5 and a.n_draws() == 5 and a.cost() == (6.0, 0.0)  # draws + the clean pass
    assert a.severity_grid() == [0, 1, 2, 3, 4, 5]
    g = _art("gibbs")
    assert g.n_draws() == 1 and g.cost() == (2.0, 0.0)
    adv = _art("adversarial_bias_field")
    assert adv.params.steps == 20 and adv.params.step_size == 0.25
    assert adv.cost() == (5 + 20 + 1.0, 20.0)  # draws + steps + the clean pass; steps need gradients
    assert _art("adversarial_bias_field", draws=2, steps=3).cost() == (6.0, 3.0)


def test_parameter_bounds():
    from medrobust.errors import ConfigError

    assert _art("contrast", severities=[0, 5]).severity_grid() == [0, 5]
    for bad in ([6], [-1], []):
        with pytest.raises(ConfigError, match="severities"):
            _art("contrast", severities=bad)
    assert _art("bias_field", draws=1).n_draws() == 1
    with pytest.raises(ConfigError, match="draws"):
        _art("bias_field", draws=0)
    assert _art("adversarial_bias_field", step_size=0.5, steps=0).params.step_size == 0.5
    with pytest.raises(ConfigError, match="step_size"):
        _art("adversarial_bias_field", step_size=0.0)
    with pytest.raises(ConfigError, match="steps"):
        _art("adversarial_bias_field", steps=-1)


def _coefficients(shape, bound: float, seed: int, sample_id: str, severity: int, draw: int) -> np.ndarray:
    s = zlib.crc32(f"{seed}|bias_field|{sample_id}|{severity}|{draw}".encode()) & 0x7FFFFFFF
    c = np.random.default_rng(s).uniform(-bound, bound, len(ORDER_2D))
    c[0] = 0.0
    return c


def _basis(shape) -> torch.Tensor:
    u = np.linspace(-1, 1, shape[0])[:, None]
    v = np.linspace(-1, 1, shape[1])[None, :]
    return torch.as_tensor(np.stack([_legendre(i, u) * _legendre(j, v) for i, j in ORDER_2D]), dtype=torch.float64)


def test_adversarial_bias_field_step_is_a_projected_sign_ascent_on_the_coefficients():
    # one step from the random draw: c1 = clip(c0 + step_size * c * sign(d loss / d c0), -c, c), constant term
    # untouched; the last candidate the model sees is x * exp(sum c1_k B_k), and its coefficients are
    # recovered here by least squares on the Legendre basis written out above
    task = build_task("segmentation", 3)
    shape = (16, 12)
    x = torch.linspace(0.05, 2.2, 16 * 12, dtype=torch.float64).reshape(1, 1, *shape)

    class Seen(_Nearest):
        def __init__(self):
            super().__init__()
            self.inputs = []

        def forward(self, z):
            self.inputs.append(z.detach().clone())
            return super().forward(z)

    model = Seen()
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = build_attack({"name": "adversarial_bias_field", "draws": 1, "steps": 1, "step_size": 0.25}, task, ThreatModel("L2", None))
    bound = adv.level(5)
    model.inputs.clear()
    adv(model, x, y, 5, batch={"id": ["p"]})
    assert len(model.inputs) == 4  # clean, the draw, the draw again with gradients, the stepped field
    basis = _basis(shape)
    c0 = torch.as_tensor(_coefficients(shape, bound, 0, "p", 5, 0))
    torch.testing.assert_close(model.inputs[1], x * torch.einsum("k,khw->hw", c0, basis).exp(), rtol=1e-6, atol=1e-6)
    c = c0.clone().requires_grad_(True)
    loss = task.loss(_Nearest()(x * torch.einsum("k,khw->hw", c, basis).exp()), y).sum()
    (g,) = torch.autograd.grad(loss, c)
    want = (c0 + 0.25 * bound * g.sign()).clamp(-bound, bound)
    want[0] = 0.0
    logf = (model.inputs[3] / x)[0, 0].log().reshape(-1)
    got = torch.linalg.lstsq(basis[1:].reshape(9, -1).T, logf[:, None]).solution[:, 0]
    clear = g[1:].abs() > 1e-6 * float(g[1:].abs().max())  # components whose gradient sign is unambiguous
    assert int(clear.sum()) >= 6
    torch.testing.assert_close(got[clear], want[1:][clear], rtol=0, atol=1e-6)
    assert (got.abs() <= bound + 1e-9).all() and (got.abs() < bound - 1e-3).any()  # projected, not all at the bound


def test_adversarial_bias_field_does_not_move_without_a_gradient():
    # a piecewise-constant 'network' (class = round(x)): the loss has zero gradient everywhere, so
    # sign(0) = 0 and every step leaves the coefficients where the random draw put them
    class Rounded(nn.Module):
        def __init__(self):
            super().__init__()
            self.inputs = []

        def forward(self, z):
            self.inputs.append(z.detach().clone())
            r = torch.round(z)
            return torch.cat([-20 * (r - k) ** 2 for k in (0.0, 1.0, 2.0)], 1)

    task = build_task("segmentation", 3)
    x = torch.linspace(0.05, 2.2, 16 * 12, dtype=torch.float64).reshape(1, 1, 16, 12)
    model = Rounded()
    with torch.no_grad():
        y = model(x).argmax(1)
    model.inputs.clear()
    adv = build_attack({"name": "adversarial_bias_field", "draws": 1, "steps": 3}, task, ThreatModel("L2", None))
    res = adv(model, x, y, 5, batch={"id": ["p"]})
    assert len(model.inputs) == 1 + 1 + 3 + 1  # clean, the draw, three steps, the final candidate
    for seen in model.inputs[2:]:
        assert torch.equal(seen, model.inputs[1])
    with torch.no_grad():
        s_draw = task.score(model(model.inputs[1]), y)
    assert float(s_draw) < 1.0  # the draw hurts, so it is the result
    assert torch.equal(res.x_adv, model.inputs[1])


def test_kspace_spikes_may_share_a_central_coordinate(kspace_spy):
    # a spike is refused only when it lies in the central band along EVERY axis (that is the k-space
    # centre); one coordinate in the band and the other outside is a valid off-centre spike
    seen = kspace_spy
    a = _art("kspace_spike")
    x = torch.rand(1, 1, 8, 8)
    for d in range(30):
        a.corrupt(x, 1, {"id": ["c"]}, draw=d)
    central = [tuple(abs(v - 4) <= 1 for v in loc) for loc in seen]  # band: 4 +- max(1, 8 // 10)
    assert not any(all(c) for c in central)  # never the centre itself
    assert any(any(c) for c in central), seen  # but a central row or column does occur


def test_foreground_reference_by_hand():
    from medrobust.attacks.artefacts import _fg_reference

    x = torch.tensor([[0.0, 0.0, 0.0, 10.0],  # mean magnitude 2.5: foreground {10} -> 10
                      [-4.0, 0.0, 0.0, 0.0],  # magnitudes: mean 1, foreground {4} -> 4
                      [1.0, 5.0, 7.0, 3.0],  # mean 4: foreground {5, 7} -> 6
                      [2.0, 2.0, 2.0, 2.0],  # nothing above the mean: the mean, 2
                      [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # all zero: the floor 1e-12
    torch.testing.assert_close(_fg_reference(x), torch.tensor([10.0, 4.0, 6.0, 2.0, 1e-12], dtype=torch.float64))


def test_kspace_spike_intensity_is_relative_to_the_kspace_maximum(monkeypatch):
    # a positive image: the largest k-space magnitude is the DC term, the sum of the image; MONAI takes the
    # spike intensity as a log magnitude, so k_intensity = log(rel * sum)
    import monai.transforms as mt

    seen = []
    real = mt.KSpaceSpikeNoise

    def spy(loc, k_intensity):
        seen.append(list(k_intensity))
        return real(loc=loc, k_intensity=k_intensity)

    monkeypatch.setattr(mt, "KSpaceSpikeNoise", spy)
    a = _art("kspace_spike")
    x = torch.full((1, 2, 8, 8), 0.5)
    x[0, 1] = 2.0
    for sev in (1, 5):
        seen.clear()
        a.corrupt(x, sev, {"id": ["c"]})
        n, rel = a.level(sev)
        assert seen == [[pytest.approx(np.log(rel * 32.0))] * n, [pytest.approx(np.log(rel * 128.0))] * n]


def test_an_unusable_intensity_record_is_ignored():
    # a record with a zero scale, or with neither one value nor one per channel, cannot map back to
    # scanner units: the artefact is then applied to the model input as it is
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64) + 0.5
    a = _art("bias_field", draws=1)
    plain = a.corrupt(x, 5, {"id": ["c"]})
    for scale, offset in (([0.0], [1.0]), ([0.5, 2.0], [0.1, 0.2]), ([0.5, 0.0, 2.0], [0.1, 0.2, 0.3])):
        rec = {"id": ["c"], "intensity_scale": torch.tensor([scale], dtype=torch.float64),
               "intensity_offset": torch.tensor([offset], dtype=torch.float64)}
        torch.testing.assert_close(a.corrupt(x, 5, rec), plain)
    # a usable per-channel record changes the result (the control)
    rec = {"id": ["c"], "intensity_scale": torch.tensor([[0.5, 2.0, 1.5]], dtype=torch.float64),
           "intensity_offset": torch.tensor([[-1.0, 0.2, 0.3]], dtype=torch.float64)}
    assert not torch.allclose(a.corrupt(x, 5, rec), plain)
