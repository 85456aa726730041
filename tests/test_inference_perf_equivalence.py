"""The linear-time sliding windows of ``medrobust.inference`` (issue #10) give MONAI's numbers.

``CasePredictor`` used to call MONAI's ``sliding_window_inference``, whose gradient costs a
full-size tensor per window (quadratic in the volume). The replacement must give the same
logits and the same input gradients (max abs difference <= 1e-6) on cases with several windows,
batches of windows, padding of short sides, several cases per batch, with and without
checkpointing, and the same parameter gradients; and its backward must not allocate a full-size
tensor per window.
"""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from medrobust.inference import CasePredictor


def _unet3d(in_ch=2, out_ch=3):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, in_ch, out_ch, channels=(4, 8, 8), strides=(2, 2), num_res_units=0).eval()


def _monai(pred: CasePredictor, x: torch.Tensor) -> torch.Tensor:
    """What ``CasePredictor.forward`` computed before: MONAI's sliding windows over ``pred._window``."""
    out = sliding_window_inference(x, pred.roi_size, pred.sw_batch_size, pred._window, overlap=pred.overlap, mode="gaussian")
    return out.as_tensor() if hasattr(out, "as_tensor") else out


CASES = [  # (batch, spatial, roi, sw_batch_size, overlap, checkpoint)
    (1, (20, 18, 33), (16, 16, 16), 2, 0.25, True),   # 2 x 2 x 3 windows, batches of 2
    (2, (21, 12, 28), (8, 16, 16), 3, 0.5, False),    # two cases, a short side padded, odd batches
    (1, (24, 24, 20), (16, 16, 8), 1, 0.25, True),    # one window per call
]


@pytest.mark.parametrize("batch,spatial,roi,swb,overlap,ckpt", CASES)
def test_logits_and_input_gradients_equal_monai(batch, spatial, roi, swb, overlap, ckpt):
    net = _unet3d()
    pred = CasePredictor(net, list(roi), multiple=4, overlap=overlap, sw_batch_size=swb, checkpoint_windows=ckpt)
    torch.manual_seed(1)
    x = torch.randn(batch, 2, *spatial)
    w = torch.randn(batch, 3, *spatial)  # a loss that weighs every output voxel differently
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    out1, out2 = pred(x1), _monai(pred, x2)
    assert out1.shape == out2.shape == (batch, 3, *spatial)
    assert (out1 - out2).abs().max().item() <= 1e-6
    (g1,) = torch.autograd.grad((out1 * w).sum(), x1)
    (g2,) = torch.autograd.grad((out2 * w).sum(), x2)
    assert g2.abs().max() > 0
    # bit for bit: overlapping windows' gradients are summed in the order autograd sums MONAI's
    assert torch.equal(g1, g2)
    with torch.no_grad():  # the path without a graph gives the same logits
        assert (pred(x) - out2).abs().max().item() <= 1e-6


def test_2d_windows_equal_monai():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    pred = CasePredictor(net, [16, 16], multiple=2, overlap=0.25, sw_batch_size=4)
    x1 = torch.randn(3, 1, 40, 29, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out1, out2 = pred(x1), _monai(pred, x2)
    assert (out1 - out2).abs().max().item() <= 1e-6
    (g1,) = torch.autograd.grad(out1[:, 1].sum(), x1)
    (g2,) = torch.autograd.grad(out2[:, 1].sum(), x2)
    assert (g1 - g2).abs().max().item() <= 1e-6


def test_parameter_gradients_equal_monai():
    net = _unet3d()
    pred = CasePredictor(net, [16, 16, 16], multiple=4, overlap=0.25, sw_batch_size=2)
    x = torch.randn(1, 2, 20, 18, 33)
    grads = []
    for f in (pred, lambda v: _monai(pred, v)):
        net.zero_grad()
        (f(x) ** 2).mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() <= 1e-6


def test_backward_allocates_no_full_size_tensor_per_window():
    """The cause of the quadratic time: count full-size tensors created in backward."""
    net = _unet3d()
    pred = CasePredictor(net, [8, 8, 8], multiple=4, overlap=0.25, sw_batch_size=2)
    x = torch.randn(1, 2, 24, 24, 24, requires_grad=True)  # 4 x 4 x 4 = 64 windows
    out = pred(x)
    full = x[0, 0].numel()
    sizes: list[int] = []

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            r = func(*args, **(kwargs or {}))
            made = func.__name__.startswith(("zeros", "new_zeros", "empty", "clone", "new_empty"))
            if made and isinstance(r, torch.Tensor) and r.numel() >= full:
                sizes.append(r.numel())
            return r

    with Count():
        out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # MONAI's version makes two full-size tensors per window (64 windows: > 100); ours a handful
    assert len(sizes) <= 8, len(sizes)
