"""The data package after the split: sources, preparation helpers, slice layout, the kept import path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrobust.config import DataConfig, load_config
from medrobust.data.dataset import MedDataset, affine_spacing, prepare_case
from medrobust.data.manifests import CaseRecord
from medrobust.data.samplers import SliceLayout
from medrobust.data.sources import list_cases
from medrobust.errors import DataError


def test_old_import_path_serves_the_same_objects():
    import medrobust.data as pkg
    import medrobust.data.datasets as old
    from medrobust.data import dataset, labels, samplers, sources

    for name in old.__all__:
        obj = getattr(old, name)
        homes = [m for m in (dataset, labels, samplers, sources) if getattr(m, name, None) is obj]
        assert homes, f"{name} is not the object of the module it lives in"
    for name in ("DataModule", "DataInfo", "PreparedCase", "ShapeBucketBatchSampler", "ShardedShuffleSampler", "collate"):
        assert getattr(pkg, name) is getattr(old, name)


def test_affine_spacing_reads_column_norms_and_fills_missing_axes():
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])  # a 90 degree rotation keeps the spacings
    aff = np.eye(4)
    aff[:2, :2] = rot @ np.diag([0.5, 2.0])
    aff[2, 2] = 3.0
    assert affine_spacing(aff, 3) == pytest.approx((0.5, 2.0, 3.0))
    assert affine_spacing(aff, 2) == pytest.approx((0.5, 2.0))
    aff[2, 2] = 0.0  # a degenerate axis reads as 1 mm, not 0
    assert affine_spacing(aff, 3)[2] == 1.0
    assert affine_spacing(np.eye(3) * 2.0, 3) == pytest.approx((2.0, 2.0, 1.0))  # a 2D affine: the third axis is 1 mm


def test_slice_layout_whole_cases_slices_and_refusal():
    lay = SliceLayout(2, slice_axis=2)
    assert lay.sliced("a", 3) is True and lay.sliced("a", 2) is False
    assert SliceLayout(3).sliced("a", 3) is False
    with pytest.raises(DataError, match="case 'b' is 2D but the model takes 3D"):
        SliceLayout(3).sliced("b", 2)
    label = torch.zeros(1, 4, 5, 6, dtype=torch.long)
    label[0, 1, 2, 1] = 1
    label[0, 3, 0, 4] = 2
    assert lay.slice_indices(label, 6, foreground_only=True) == [1, 4]
    assert lay.slice_indices(label, 6, foreground_only=False) == list(range(6))
    assert SliceLayout(2, slice_axis=0).slice_indices(label, 4, True) == [1, 3]
    img = torch.arange(2 * 4 * 5 * 6).reshape(2, 4, 5, 6)
    assert torch.equal(lay.take(img, 4), img[:, :, :, 4]) and lay.take(None, 0) is None
    assert lay.slice_spacing((1.0, 2.0, 3.0)) == (1.0, 2.0)


def test_foreground_slices_of_volumes_match_a_direct_count():
    cfg = load_config(DataConfig, data={"source": "phantom", "phantom": {"n_cases": 2, "size": [16, 16, 8]}, "dims": 2,
                                        "slice_axis": 2, "foreground_slices_only": True})
    recs, _ = list_cases(cfg, "segmentation")
    cases = [prepare_case(r, cfg, "segmentation") for r in recs]
    ds = MedDataset(cases, cfg, "segmentation", train=False, dims=2)
    want = [(ci, s) for ci, c in enumerate(cases) for s in range(c.label.shape[3]) if bool((c.label[0, :, :, s] > 0).any())]
    assert ds.samples == want and 0 < len(want) < 16
    assert ds.dims == 2 and ds.sample_id(0) == f"{cases[want[0][0]].case_id}:{want[0][1]}"
    full = MedDataset(cases, cfg, "segmentation", train=False, dims=2, foreground_only=False)
    assert len(full) == 16


def test_max_cases_keeps_every_given_split():
    recs = [CaseRecord(f"c{i:02d}", np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.int64), split=sp)
            for i, sp in enumerate(["train"] * 5 + ["val"] * 3 + ["test"] * 3)]
    from medrobust.data import sources

    assert [r.case_id for r in sources._first_cases(recs, 2)] == ["c00", "c01", "c05", "c06", "c08", "c09"]
    recs[0].split = None  # not every case has a split: the first n by id
    assert [r.case_id for r in sources._first_cases(recs, 3)] == ["c00", "c01", "c02"]


def test_prepare_case_thresholds_remaps_and_refuses_bad_labels():
    img = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    lab = np.zeros((8, 8), np.int64)
    lab[2:5, 2:5] = 250
    lab[6:, 6:] = 10
    cfg = load_config(DataConfig, data={"label_threshold": 128, "preprocess": {"intensity": {"kind": "none"}}})
    pc = prepare_case(CaseRecord("a", img, lab, spacing=(0.5, 2.0)), cfg, "segmentation")
    assert pc.label.shape == (1, 8, 8) and int(pc.label.sum()) == 9 and pc.spacing == pytest.approx((0.5, 2.0))
    cfg = load_config(DataConfig, data={"label_remap": {250: 1, 10: 2}, "preprocess": {"intensity": {"kind": "none"}}})
    pc = prepare_case(CaseRecord("a", img, lab), cfg, "segmentation")
    assert sorted(torch.unique(pc.label).tolist()) == [0, 1, 2] and int((pc.label == 2).sum()) == 4
    with pytest.raises(DataError, match="case 'b' .* non-integer label values"):
        prepare_case(CaseRecord("b", img, lab.astype(np.float64) + 0.5, source="x.csv"), cfg, "segmentation")
    with pytest.raises(DataError, match="case 'c' .* label shape"):
        prepare_case(CaseRecord("c", img, lab[:4]), cfg, "segmentation")
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="1 NaN/inf image voxels"):
        prepare_case(CaseRecord("d", bad, lab), cfg, "segmentation")
