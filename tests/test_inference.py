"""The whole-case predictor (medrobust.inference) and whole-volume validation in training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.inference import CasePredictor, ShapeError, build_predictor, predict_case, to_original_grid


def _unet3d(strides=(2, 2, 2)):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 2, 3, channels=(4, 8, 8, 8)[: len(strides) + 1], strides=strides, num_res_units=0).eval()


def test_predictor_takes_sizes_the_bare_network_cannot():
    net = _unet3d()
    x = torch.randn(1, 2, 35, 30, 45)  # 35, 45 not multiples of 8
    with pytest.raises(RuntimeError):
        net(x)
    pred = CasePredictor(net, [16, 16, 16], multiple=8, overlap=0.25, sw_batch_size=2)
    out = pred(x)
    assert out.shape == (1, 3, 35, 30, 45)
    # a small input is padded to the window and cut back; equal to padding by hand
    small = torch.randn(1, 2, 10, 12, 9)
    ref = net(torch.nn.functional.pad(small, (3, 4, 2, 2, 3, 3)))[:, :, 3:13, 2:14, 3:12]
    torch.testing.assert_close(pred(small), ref)
    # no window: padded to the network's divisibility
    whole = CasePredictor(net, None, multiple=8)
    assert whole(x).shape == (1, 3, 35, 30, 45)


def test_gradients_flow_through_sliding_windows():
    net = _unet3d()
    pred = CasePredictor(net, [16, 16, 16], multiple=8, checkpoint_windows=True)
    x = torch.randn(1, 2, 20, 18, 33, requires_grad=True)
    (g,) = torch.autograd.grad(pred(x)[:, 1].sum(), x)
    assert g.shape == x.shape and g.abs().sum() > 0 and torch.isfinite(g).all()
    # every voxel influences the output (windows cover the volume)
    assert (g.abs().sum(1) > 0).float().mean() > 0.99


def test_impossible_sizes_are_one_sentence():
    net = _unet3d()
    with pytest.raises(ShapeError, match=r"not divisible by 8.*\[16, 16, 16\]"):
        CasePredictor(net, [12, 16, 16], multiple=8)
    with pytest.raises(ShapeError, match="cannot take an input of shape"):
        CasePredictor(net, None, multiple=1)(torch.randn(1, 2, 9, 9, 9))
    with pytest.raises(ShapeError, match="3D inputs"):
        CasePredictor(net, [16, 16, 16], multiple=8)(torch.randn(1, 2, 16, 16))


def test_predict_case_slices_volumes_for_2d_models():
    class Probe(nn.Module):
        def forward(self, x):  # logits = [-x, x] on channel 0
            return torch.cat([-x[:, :1], x[:, :1]], 1)

    vol = torch.randn(1, 5, 7, 6)
    for ax in range(3):
        out = predict_case(CasePredictor(Probe(), [8, 8]), vol, dims=2, slice_axis=ax, batch_size=2)
        assert out.shape == (2, 5, 7, 6)
        torch.testing.assert_close(out[1], vol[0])
    with pytest.raises(ShapeError, match="data.dims"):
        predict_case(CasePredictor(Probe(), [8, 8]), torch.randn(1, 4, 4), dims=3)


def test_build_predictor_reads_spec_divisibility():
    spec = {"name": "unet", "params": {"strides": [2, 2]}}
    p = build_predictor(nn.Identity(), [16, 16], None, "segmentation", spec)
    assert isinstance(p, CasePredictor) and p.multiple == 4 and p.roi_size == [16, 16]
    assert build_predictor(nn.Identity(), [16, 16], None, "classification", spec).__class__ is nn.Identity


def test_to_original_grid():
    z = torch.zeros(1, 2, 4, 4)
    z[:, 1, :2] = 5.0
    up = to_original_grid(z, [8, 8])
    assert up.shape == (1, 2, 8, 8)
    assert (up.argmax(1)[0, :4] == 1).all() and (up.argmax(1)[0, 5:] == 0).all()
    assert to_original_grid(z, [4, 4]) is z


def test_3d_training_validates_whole_volumes_with_patches(tmp_path):
    """The issue's bar: 70 x 70 x 45 phantoms, 32^3 patches, whole-volume validation."""
    from conftest import tiny_train_config

    from medrobust.config import TrainConfig, load_config
    from medrobust.training.engine import train

    cfg = tiny_train_config(tmp_path, epochs=1, batch_size=2, iterations_per_epoch=2,
                            data={"phantom": {"size": [70, 70, 45], "n_cases": 5, "n_structures": 1},
                                  "preprocess": {"size": [32, 32, 32]}, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
                            model={"params": {"channels": [4, 8, 8], "strides": [2, 2]}},
                            inference={"overlap": 0.25, "sw_batch_size": 2})
    res = train(load_config(TrainConfig, data=cfg))
    row = res.history[-1]
    assert 0.0 <= row["val_dice"] <= 1.0 and row["val_loss"] > 0
