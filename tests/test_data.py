"""Phantoms, preprocessing record, slicing with stable ids, augmentation seeding, bad-input checks."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medrobust.config import DataConfig
from medrobust.data import DataModule, make_phantom
from medrobust.data.phantoms import phantom_cases
from medrobust.errors import DataError


def test_phantoms_are_deterministic_with_several_structures():
    a_img, a_lab = make_phantom(3, (48, 40), seed=1)
    b_img, b_lab = make_phantom(3, (48, 40), seed=1)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = make_phantom(4, (48, 40), seed=1)
    assert not np.array_equal(a_img, c_img)
    assert set(np.unique(a_lab)) == {0, 1, 2, 3}
    img3, lab3 = make_phantom(0, (32, 32, 24), n_structures=5)
    assert img3.shape == (32, 32, 24) and lab3.max() >= 3
    # noise and bias field: the organ's intensities are not constant
    assert a_img[a_lab == 1].std() > 10


def test_classification_phantoms_have_both_classes():
    cases = phantom_cases(40, [32, 32], task="classification")
    labels = [c.class_label for c in cases]
    assert 10 < sum(labels) < 30


def _dm(tmp_path, **kw) -> DataModule:
    cfg = DataConfig.model_validate({"source": "phantom", "phantom": {"n_cases": 10, "size": [24, 20, 16]}, **kw})
    return DataModule(cfg, "segmentation")


def test_slices_have_stable_ids_and_foreground_filter(tmp_path):
    dm = _dm(tmp_path, dims=2, slice_axis=2, preprocess={"size": [24, 24]}, split={"val_fraction": 0.2, "test_fraction": 0.0})
    ds = dm.dataset("train", train=False)
    ids = ds.ids()
    assert len(ids) == len(set(ids))
    assert all(":" in i for i in ids)
    for i in range(len(ds)):
        assert int((ds[i]["label"] > 0).sum()) > 0  # foreground-only slices
    s = ds[0]
    assert s["image"].shape == (1, 24, 24) and s["label"].shape == (1, 24, 24)
    assert s["spacing"].shape == (2,)
    all_ds = dm.dataset("train", train=False, foreground_only=False)
    assert len(all_ds) == 16 * len(all_ds.cases) > len(ds)


def test_augmentation_is_seeded_by_epoch_and_sample():
    dm = _dm(None, preprocess={"size": [24, 20, 16]}, augment={"flip_prob": 0.5, "affine_prob": 0.5, "intensity_scale": 0.1})
    ds = dm.dataset("train", train=True, seed=5)
    a = ds[1]["image"].clone()
    assert torch.equal(a, ds[1]["image"])
    seen = {bool(torch.equal(a, (ds.set_epoch(e), ds[1]["image"])[1])) for e in range(1, 6)}
    assert False in seen  # other epochs give other draws


def test_intensity_record_window_and_zscore(tmp_path: Path):
    a = np.linspace(-200, 300, 8 * 8 * 4).reshape(8, 8, 4).astype(np.float32)
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image((a > 0).astype(np.uint8), np.eye(4)), str(tmp_path / "ct_seg.nii.gz"))
    (tmp_path / "m.csv").write_text("case_id,image,label\na,ct.nii.gz,ct_seg.nii.gz\nb,ct.nii.gz,ct_seg.nii.gz\n")
    cfg = DataConfig.model_validate({"source": "manifest", "manifest": str(tmp_path / "m.csv"),
                                     "preprocess": {"intensity": {"kind": "window", "a_min": -100, "a_max": 100}},
                                     "split": {"val_fraction": 0.0, "test_fraction": 0.0}})
    dm = DataModule(cfg, "segmentation")
    c = dm.prepared("train")[0]
    assert float(c.image.min()) == 0.0 and float(c.image.max()) == 1.0
    assert c.intensity_scale[0] == pytest.approx(1 / 200)
    # the record maps native -> input exactly inside the window
    x_native = 50.0
    assert c.intensity_scale[0] * x_native + c.intensity_offset[0] == pytest.approx(0.75)
    info = dm.info([c])
    assert info.bounds == (0.0, 1.0)
    cfg2 = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"intensity": cfg.preprocess.intensity.model_copy(update={"kind": "zscore"})})})
    dm2 = DataModule(cfg2, "segmentation")
    c2 = dm2.prepared("train")[0]
    assert float(c2.image.mean()) == pytest.approx(0.0, abs=1e-5)
    assert 1 / c2.intensity_scale[0] == pytest.approx(float(a.std()), rel=1e-4)
    assert dm2.info([c2]).bounds is None


def _case_files(tmp_path: Path, img: np.ndarray, lab: np.ndarray, lab_aff=None) -> str:
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / "i.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.eye(4) if lab_aff is None else lab_aff), str(tmp_path / "l.nii.gz"))
    (tmp_path / "m.csv").write_text("image,label\ni.nii.gz,l.nii.gz\n")
    return str(tmp_path / "m.csv")


def _load(man: str, **kw):
    cfg = DataConfig.model_validate({"source": "manifest", "manifest": man, "split": {"val_fraction": 0.0, "test_fraction": 0.0}, **kw})
    return DataModule(cfg, "segmentation").prepared("train")


def test_bad_inputs_give_one_clear_sentence(tmp_path: Path):
    img = np.random.rand(8, 8, 4).astype(np.float32)
    with pytest.raises(DataError, match=r"image shape \(8, 8, 4\) and label shape \(8, 8, 3\) differ"):
        _load(_case_files(tmp_path, img, np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(DataError, match="spacing"):
        _load(_case_files(tmp_path, img, np.zeros((8, 8, 4), np.uint8), np.diag([2.0, 1, 1, 1])))
    lab = np.zeros((8, 8, 4), np.uint8)
    lab[2:4, 2:4, 1] = 255
    with pytest.raises(DataError, match=r"label values \[255\].*label_remap: \{255: 1\}"):
        _load(_case_files(tmp_path, img, lab), label_map={0: "bg", 1: "fg"})
    ok = _load(_case_files(tmp_path, img, lab), label_map={0: "bg", 1: "fg"}, label_remap={255: 1})
    assert set(torch.unique(ok[0].label).tolist()) == {0, 1}
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN/inf"):
        _load(_case_files(tmp_path, bad, np.zeros((8, 8, 4), np.uint8)))


def test_missing_data_root_is_named(tmp_path: Path):
    cfg = DataConfig.model_validate({"source": "manifest", "manifest": str(tmp_path / "nope" / "dataset.json")})
    with pytest.raises(DataError, match="does not exist"):
        DataModule(cfg, "segmentation")


def test_multimodal_4d_nifti_msd_style(tmp_path: Path):
    """MSD multi-modal volumes (x, y, z, modality) become channel-first, each channel z-scored."""
    import json

    tr = []
    for i in range(3):
        a = np.random.rand(12, 10, 8, 2).astype(np.float32) * np.array([100.0, 5.0], dtype=np.float32)
        lab = np.zeros((12, 10, 8), np.uint8)
        lab[3:6, 3:6, 2:5] = 1
        nib.save(nib.Nifti1Image(a, np.diag([0.6, 0.6, 3.6, 1])), str(tmp_path / f"p{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.diag([0.6, 0.6, 3.6, 1])), str(tmp_path / f"p{i}_seg.nii.gz"))
        tr.append({"image": f"p{i}.nii.gz", "label": f"p{i}_seg.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "gland"}, "training": tr}))
    cfg = DataConfig.model_validate({"source": "manifest", "manifest": str(tmp_path / "dataset.json"), "preprocess": {"size": [16, 16, 8]},
                                     "split": {"val_fraction": 0.0, "test_fraction": 0.0}})
    dm = DataModule(cfg, "segmentation")
    ds = dm.dataset("train", train=False)
    s = ds[0]
    assert s["image"].shape == (2, 16, 16, 8) and s["label"].shape == (1, 16, 16, 8)
    assert s["spacing"].tolist() == pytest.approx([0.6, 0.6, 3.6])
    c = ds.cases[0]
    assert c.intensity_scale.shape == (2,) and c.intensity_scale[1] > 10 * c.intensity_scale[0]
    assert dm.info(ds.cases).in_channels == 2
