"""Acquisition artefacts (medrobust/attacks/artefacts.py) against independent oracles (issue #17):
the level table as documented in docs/evaluation.md, the spacing as pixels (sigma mm / spacing),
the intensity record shared by all channels, spike positions outside the k-space centre, and
contrast gammas on both sides of 1 within [r/2, r] recovered from the output."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from medrobust.attacks import ARTEFACTS, build_attack
from medrobust.data.phantoms import make_phantom
from medrobust.tasks import build_task
from medrobust.threat import ThreatModel

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"


def _art(name: str, **kw):
    return build_attack({"name": name, **kw}, build_task("segmentation", 3), ThreatModel("L2", None))


def _flat(v):
    return [float(a) for a in (sum((_flat(b) for b in v), []) if isinstance(v, (tuple, list)) else [v])]


def _doc_levels() -> dict[str, list[list[float]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `(\w+)` \|[^|]*\|" + r"([^|]*)\|" * 5, line)
        if m:
            rows[m.group(1)] = [[float(t) for t in re.findall(r"\d+(?:\.\d+)?", m.group(k))] for k in range(2, 7)]
    return rows


@pytest.mark.parametrize("name", [n for n in sorted(ARTEFACTS) if n != "adversarial_bias_field"])
def test_levels_are_the_documented_table(name):
    doc = _doc_levels()
    assert name in doc, f"{name} missing from the table in docs/evaluation.md"
    a = _art(name)
    assert [_flat(a.level(s)) for s in range(1, 6)] == doc[name]


def _image(size=(32, 32)):
    img, _ = make_phantom(0, size, n_structures=2, seed=0)
    return torch.from_numpy(img).float()[None, None]


def test_blur_sigma_is_in_mm_through_the_spacing():
    from monai.transforms import GaussianSmooth

    x = _image()
    a = _art("gaussian_blur")
    lvl = a.level(5)
    for sp in (1.0, 2.0):
        out = a.corrupt(x, 5, {"id": ["c"], "spacing": torch.tensor([[sp, sp]], dtype=torch.float64)})
        ref = GaussianSmooth(sigma=[lvl / sp, lvl / sp])(x[0].double())
        torch.testing.assert_close(out[0].double(), torch.as_tensor(ref, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    # no spacing in the batch: 1 mm
    torch.testing.assert_close(a.corrupt(x, 5, {"id": ["c"]}), a.corrupt(x, 5, None))


def test_a_scalar_intensity_record_applies_to_every_channel():
    # x_in = s * x_native + o with one (s, o) per sample; the field must multiply native intensities in both channels
    xn = torch.cat([_image(), 2 * _image()], 1).double() + 1.0
    s, o = 0.5, -3.0
    x_in = s * xn + o
    a = _art("bias_field", draws=1)
    rec = {"id": ["c"], "intensity_scale": torch.tensor([s], dtype=torch.float64),
           "intensity_offset": torch.tensor([o], dtype=torch.float64)}
    out = a.corrupt(x_in, 5, rec)
    native = a.corrupt(xn, 5, {"id": ["c"]})
    torch.testing.assert_close(out, s * native + o)
    assert not torch.allclose(out, a.corrupt(x_in, 5, {"id": ["c"]}))  # applying it to z-scores differs


def test_kspace_spikes_lie_outside_the_central_tenth(kspace_spy):
    seen = kspace_spy
    x = torch.rand(1, 1, 8, 8)
    a = _art("kspace_spike")
    for d in range(40):
        a.corrupt(x, 1, {"id": ["c"]}, draw=d)
    assert len(seen) == 40
    for loc in seen:  # centre 4 +- max(1, 8 // 10) = 1
        assert any(abs(l - 4) > 1 for l in loc), loc


def test_contrast_gamma_is_exp_plus_minus_u_with_u_in_half_r_to_r():
    # a ramp in [0, 1]: AdjustContrast keeps min and max and maps v -> v ** gamma; recover log gamma
    v = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)
    a = _art("contrast", draws=1)
    r = a.level(5)
    logs = []
    for d in range(30):
        out = a.corrupt(v, 5, {"id": ["c"]}, draw=d)
        i = 20
        g = math.log(float(out.reshape(-1)[i])) / math.log(float(v.reshape(-1)[i]))
        logs.append(math.log(g))
    assert all(r / 2 - 1e-3 <= abs(t) <= r + 1e-3 for t in logs), logs
    assert any(t > 0 for t in logs) and any(t < 0 for t in logs), logs


def test_severity_grid_and_levels_outside_one_to_five():
    from medrobust.errors import ConfigError

    assert _art("contrast", severities=[5, 3]).severity_grid() == [0, 3, 5]
    a = _art("contrast")
    for bad in (0, 6, 2.5, -1):
        with pytest.raises(ConfigError, match="not a level 1-5"):
            a.level(bad)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_motion_times_leave_the_centre_segment_unmoved(n):
    import numpy as np

    from medrobust.attacks.artefacts import _motion_times

    t = _motion_times(n)
    assert len(t) == n and np.all(np.diff(t) > 0) and 0 < t[0] and t[-1] < 1
    edges = np.concatenate([[0.0], t, [1.0]])
    k = int(np.searchsorted(edges, 0.5)) - 1  # the segment holding the k-space centre
    lo, hi = edges[k], edges[k + 1]
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo == pytest.approx(1 / (n + 1))
    # the moved segments on each side of it are equally wide
    left, right = np.diff(edges[: k + 1]), np.diff(edges[k + 1:])
    assert np.allclose(left, left[0]) and np.allclose(right, right[0])


def test_rician_noise_sd_is_the_level_times_the_foreground_intensity():
    # half the image at 5, half at 10 (the foreground: brighter than the mean 7.5): sd = level * 10 there
    x = torch.full((1, 1, 64, 64), 5.0)
    x[..., 32:] = 10.0
    a = _art("rician_noise", draws=1)
    out = a.corrupt(x, 5, {"id": ["c"]})
    sd = float(out[..., 32:].std())
    assert sd == pytest.approx(a.level(5) * 10.0, rel=0.1), sd
