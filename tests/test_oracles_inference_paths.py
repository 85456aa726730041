"""The whole-case predictor (medrobust/inference.py) against oracles written out here (issue #17):
which path an input takes (an input the size of the window runs once, unblended), how often the
network runs when windows are checkpointed (recomputed in backward) or not, the gradient of an
identity-like network through blended windows (exactly one everywhere), the defaults of
``predict_case`` (32 slices per pass, the first spatial axis, no graph), and what
``build_predictor`` returns for each task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from medrobust.inference import CasePredictor, ShapeError, build_predictor, predict_case


class Recorder(nn.Module):
    """Two-class 'network': logits (w x, -w x) of the first channel (w = 1, a parameter); records input shapes."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return torch.cat([self.w * x[:, :1], -self.w * x[:, :1]], 1)


def test_an_input_the_size_of_the_window_runs_once_without_blending():
    m = Recorder()
    p = CasePredictor(m, roi_size=[16, 12], multiple=4)
    x = torch.randn(1, 1, 16, 12, requires_grad=True)
    out = p(x)
    out.sum().backward()
    assert m.shapes == [(1, 1, 16, 12)]  # one forward, not recomputed in backward (no window checkpoint)
    assert torch.equal(out[:, 0], x[:, 0].detach())  # bit-exact: no Gaussian blending
    # a smaller input is padded (symmetric zeros) to the window, then cut back
    m2 = Recorder()
    y = torch.randn(1, 1, 11, 12)
    out2 = CasePredictor(m2, roi_size=[16, 12], multiple=4)(y)
    assert m2.shapes == [(1, 1, 16, 12)] and torch.equal(out2[:, 0], y[:, 0])


def test_checkpointed_windows_rerun_the_network_in_backward_and_others_do_not():
    x = torch.randn(1, 1, 40, 40)
    calls = {}
    for ckpt in (False, True):
        m = Recorder()
        xi = x.clone().requires_grad_(True)
        p = CasePredictor(m, roi_size=[16, 16], sw_batch_size=16, checkpoint_windows=ckpt)
        out = p(xi)
        n_forward = len(m.shapes)
        (g,) = torch.autograd.grad(out[:, 0].sum(), xi)  # autograd.grad, as the attacks call it
        calls[ckpt] = (n_forward, len(m.shapes))
        # out[:, 0] is a normalised blend of copies of x, so d sum(out) / dx = 1 at every pixel
        torch.testing.assert_close(g, torch.ones_like(g), rtol=1e-5, atol=1e-5)
    assert calls[False][0] == calls[False][1] >= 1  # no recomputation
    assert calls[True][1] == 2 * calls[True][0]  # every window batch recomputed once
    # without a graph (no grad), checkpointing changes nothing: one pass per window batch
    m = Recorder()
    with torch.no_grad():
        CasePredictor(m, roi_size=[16, 16], sw_batch_size=16, checkpoint_windows=True)(x)
    assert len(m.shapes) == calls[True][0]


def test_default_multiple_is_one():
    m = Recorder()
    CasePredictor(m)(torch.randn(1, 1, 13, 7))
    assert m.shapes == [(1, 1, 13, 7)]
    assert CasePredictor(Recorder()).describe()["multiple"] == 1 and CasePredictor(Recorder(), multiple=0).multiple == 1


def test_predict_case_defaults_32_slices_first_axis_no_graph():
    vol = torch.randn(1, 40, 3, 2)
    m = Recorder()
    out = predict_case(CasePredictor(m), vol, 2)
    assert [s[0] for s in m.shapes] == [32, 8] and all(s[1:] == (1, 3, 2) for s in m.shapes)
    torch.testing.assert_close(out[0], vol[0])
    assert not out.requires_grad  # the network has a parameter, yet no graph without grad=True
    g = predict_case(CasePredictor(Recorder()), vol, 2, grad=True)
    assert g.requires_grad
    whole = predict_case(CasePredictor(Recorder()), torch.randn(1, 6, 5), 2)
    assert not whole.requires_grad and whole.shape == (2, 6, 5)


def test_predict_case_middle_slice_axis():
    vol = torch.randn(2, 3, 4, 5)  # two channels: slicing along the channel axis would be wrong
    m = Recorder()
    out = predict_case(CasePredictor(m), vol, 2, slice_axis=1, batch_size=3)
    assert m.shapes == [(3, 2, 3, 5), (1, 2, 3, 5)]
    torch.testing.assert_close(out[0], vol[0])
    torch.testing.assert_close(out[1], -vol[0])


def test_build_predictor_per_task_and_settings():
    cls = nn.Linear(3, 2)
    assert build_predictor(cls, None) is not cls  # segmentation by default: wrapped
    assert build_predictor(cls, None, None, "classification") is cls
    assert build_predictor(cls, None, SimpleNamespace(), "classification") is cls  # settings without amp: off
    from medrobust.amp import AmpModel
    from medrobust.config import InferenceConfig

    amp = build_predictor(cls, None, InferenceConfig(amp="bf16"), "classification")
    assert isinstance(amp, AmpModel)
    assert build_predictor(amp, None, InferenceConfig(amp="bf16"), "classification") is amp  # not wrapped twice
    seg = Recorder()
    p = build_predictor(seg, [16, 8])
    assert isinstance(p, CasePredictor) and p.model is seg and p.roi_size == [16, 8] and p.multiple == 1
    assert build_predictor(p, [32, 32]) is p
    assert build_predictor(seg, [16, 8], InferenceConfig(roi_size=[8, 8])).roi_size == [8, 8]
    assert build_predictor(seg, None).roi_size is None
    # a spec the registry cannot read (e.g. an external model source without a name): no divisibility, multiple 1
    ext = build_predictor(seg, [15, 7], None, "segmentation", {"source": "torchscript"})
    assert ext.multiple == 1 and ext.roi_size == [15, 7]
    q = build_predictor(seg, [16, 8], SimpleNamespace(roi_size=None, overlap=0.5, sw_batch_size=2, sliding_window=False,
                                                      checkpoint_windows=False))
    assert q.describe() == {"roi_size": [16, 8], "multiple": 1, "overlap": 0.5, "sw_batch_size": 2, "sliding_window": False,
                            "checkpoint_windows": False, "amp": False}


def test_network_errors_become_shape_errors_except_out_of_memory():
    class Fails(nn.Module):
        def __init__(self, msg):
            super().__init__()
            self.msg = msg

        def forward(self, x):
            raise RuntimeError(self.msg)

    long = "x" * 150 + "ABCDEFGHIJKLMNOPQRST" + "\nsecond line"
    with pytest.raises(ShapeError) as e:
        CasePredictor(Fails(long))(torch.zeros(1, 1, 4, 4))
    text = str(e.value)
    assert ("(" + "x" * 150 + "ABCDEFGHIJ)") in text  # the first line, cut at 160 characters
    assert "second line" not in text and "(1, 1, 4, 4)" in text
    with pytest.raises(RuntimeError, match="out of memory") as e2:
        CasePredictor(Fails("CUDA out of memory. Tried to allocate 2 GiB"))(torch.zeros(1, 1, 4, 4))
    assert not isinstance(e2.value, ShapeError)


def test_small_inputs_with_sliding_window_true_and_false():
    # True: like "auto", an input no larger than the window is padded to the window;
    # False: inputs run whole, padded only to the network's multiple (here 1: as they are)
    m = Recorder()
    CasePredictor(m, roi_size=[16, 16], sliding_window=True)(torch.randn(1, 1, 10, 12))
    assert m.shapes == [(1, 1, 16, 16)]
    m2 = Recorder()
    out = CasePredictor(m2, roi_size=[16, 16], sliding_window=False)(torch.randn(1, 1, 10, 12))
    assert m2.shapes == [(1, 1, 10, 12)] and out.shape == (1, 2, 10, 12)


def test_an_input_larger_than_the_window_along_one_side_only_uses_windows():
    m = Recorder()
    x = torch.randn(1, 1, 40, 10)
    out = CasePredictor(m, roi_size=[16, 16], sw_batch_size=1)(x)
    assert len(m.shapes) > 1 and all(s[2:] == (16, 16) for s in m.shapes), m.shapes
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=1e-5, atol=1e-5)
