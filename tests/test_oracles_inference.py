"""The whole-case predictor (medrobust/inference.py) against independent oracles (issue #17):
which shapes the network actually sees, interpolation values worked out by hand, the defaults
shared with ``InferenceConfig``, and the shape combinations that must be refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.config import InferenceConfig
from medrobust.errors import ConfigError
from medrobust.inference import CasePredictor, ShapeError, build_predictor, predict_case, to_original_grid


class Recorder(nn.Module):
    """Two-class 'network': logits (x, -x) of the first channel; records every input shape."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return torch.cat([x[:, :1], -x[:, :1]], 1)


def test_inputs_larger_than_the_window_go_through_windows_of_the_window_size():
    m = Recorder()
    p = CasePredictor(m, roi_size=[16, 16], sliding_window="auto", sw_batch_size=1)
    x = torch.randn(1, 1, 40, 40)
    out = p(x)
    assert out.shape == (1, 2, 40, 40)
    assert len(m.shapes) > 1 and all(s[2:] == (16, 16) for s in m.shapes), m.shapes
    # an identity-like network gives the input back under any blending
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=1e-5, atol=1e-5)
    # no window: one padded pass to the multiple, padding cut off
    m2 = Recorder()
    out2 = CasePredictor(m2, roi_size=None, multiple=8)(torch.randn(1, 1, 20, 13))
    assert m2.shapes == [(1, 1, 24, 16)] and out2.shape == (1, 2, 20, 13)
    # sliding_window False: whole input, padded only to the multiple, even when larger than the window
    m3 = Recorder()
    CasePredictor(m3, roi_size=[16, 16], multiple=8, sliding_window=False)(torch.randn(1, 1, 40, 36))
    assert m3.shapes == [(1, 1, 40, 40)]


def test_sw_batch_size_bounds_and_defaults_match_the_config():
    CasePredictor(Recorder(), sw_batch_size=1)  # the smallest valid batch
    with pytest.raises(ConfigError, match="sw_batch_size"):
        CasePredictor(Recorder(), sw_batch_size=0)
    cfg = InferenceConfig()
    d = CasePredictor(Recorder()).describe()
    assert d["sw_batch_size"] == cfg.sw_batch_size and d["overlap"] == cfg.overlap
    assert d["sliding_window"] == cfg.sliding_window and d["checkpoint_windows"] == cfg.checkpoint_windows
    assert build_predictor(Recorder(), [16, 16]).describe()["sw_batch_size"] == cfg.sw_batch_size
    # sw_batch_size windows per call: 9 windows of 16 on 40 x 40 at overlap 0.25 -> calls of at most 4
    m = Recorder()
    CasePredictor(m, roi_size=[16, 16], sw_batch_size=4)(torch.randn(1, 1, 40, 40))
    assert max(s[0] for s in m.shapes) == 4


def test_predict_case_refuses_dimension_mismatches():
    p = CasePredictor(Recorder())
    for dims, image in ((2, torch.randn(1, 4, 4, 4, 4)), (1, torch.randn(1, 4, 4, 4)), (3, torch.randn(1, 4, 4))):
        with pytest.raises(ShapeError, match="cannot predict"):
            predict_case(p, image, dims)
    vol = torch.randn(1, 3, 5, 6)
    m = Recorder()
    out = predict_case(CasePredictor(m), vol, 2, batch_size=2)  # default: slices along the first spatial axis
    torch.testing.assert_close(out[0], vol[0])
    assert [s[1:] for s in m.shapes] == [(1, 5, 6)] * 2 and sum(s[0] for s in m.shapes) == 3
    m2 = Recorder()
    out2 = predict_case(CasePredictor(m2), vol, 2, slice_axis=2, batch_size=8)
    torch.testing.assert_close(out2[0], vol[0])
    assert m2.shapes == [(6, 1, 3, 5)]


def test_to_original_grid_is_half_pixel_linear_interpolation():
    # a ramp [0, 1] on 2 pixels resampled to 4: centres at -0.25, 0.25, 0.75, 1.25 (clamped) -> 0, .25, .75, 1
    logits = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    out = to_original_grid(logits, [1, 4])
    torch.testing.assert_close(out.view(-1), torch.tensor([0.0, 0.25, 0.75, 1.0]))
    vol = torch.tensor([0.0, 1.0]).view(1, 1, 1, 1, 2)
    torch.testing.assert_close(to_original_grid(vol, [1, 1, 4]).view(-1), torch.tensor([0.0, 0.25, 0.75, 1.0]))
    same = torch.randn(1, 2, 3, 3)
    assert to_original_grid(same, [3, 3]) is same


def test_padding_helpers_and_predictor_settings():
    from medrobust.inference import pad_to, unpad

    x = torch.randn(1, 1, 5, 7)
    same, pads = pad_to(x, None)
    assert same is x and pads == [(0, 0), (0, 0)] and unpad(x, pads).shape == x.shape
    xp, pads = pad_to(x, [8, 8])
    assert pads == [(1, 2), (0, 1)] and xp.shape == (1, 1, 8, 8)
    torch.testing.assert_close(unpad(xp, pads), x)
    assert float(xp.abs().sum()) == pytest.approx(float(x.abs().sum()))  # zero padding
    # multiple 1: the network sees the input as it is
    m = Recorder()
    CasePredictor(m, roi_size=None, multiple=1)(torch.randn(1, 1, 13, 7))
    assert m.shapes == [(1, 1, 13, 7)]
    CasePredictor(Recorder(), overlap=0.0)  # 0 overlap is allowed, 1 is not
    with pytest.raises(ConfigError, match="overlap"):
        CasePredictor(Recorder(), overlap=1.0)
    with pytest.raises(ShapeError, match="not divisible by 2"):
        CasePredictor(Recorder(), roi_size=[15, 16], multiple=2)
