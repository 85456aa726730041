"""Manifests (CSV, MSD dataset.json, MONAI datalist, nnU-Net raw), splits without leakage, k-fold."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medrobust.config import SplitConfig
from medrobust.data.manifests import CaseRecord, load_manifest
from medrobust.data.phantoms import write_phantom_dataset
from medrobust.data.splits import split_cases
from medrobust.errors import DataError


def _nii(path: Path, shape=(8, 8, 4), value=None, rng=None):
    a = np.zeros(shape, np.int16) if value is None else np.full(shape, value, np.int16)
    if rng is not None:
        a = rng.integers(0, 3, size=shape).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(path))


def test_csv_manifest_with_data_root_split_and_classes(tmp_path: Path, monkeypatch):
    root = tmp_path / "root"
    for i in range(3):
        _nii(root / "ds" / f"img{i}.nii.gz")
        _nii(root / "ds" / f"lab{i}.nii.gz")
    man = tmp_path / "m.csv"
    man.write_text("case_id,image,label,split,grade\n"
                   + "".join(f"c{i},${{data_root}}/ds/img{i}.nii.gz,${{data_root}}/ds/lab{i}.nii.gz,{s},{i % 2}\n"
                             for i, s in enumerate(["train", "val", "test"])))
    monkeypatch.setenv("MEDROBUST_DATA_ROOT", str(root))
    m = load_manifest(str(man), class_column="grade")
    assert [c.case_id for c in m.cases] == ["c0", "c1", "c2"]
    assert [c.split for c in m.cases] == ["train", "val", "test"]
    assert [c.class_label for c in m.cases] == [0, 1, 0]
    assert Path(m.cases[0].image[0]).exists()
    # the same manifest with another data root points elsewhere, and the missing file is named
    with pytest.raises(DataError, match=r"img0\.nii\.gz.*does not exist"):
        load_manifest(str(man), data_root=str(tmp_path / "elsewhere"))


def test_csv_errors(tmp_path: Path):
    _nii(tmp_path / "a.nii.gz")
    (tmp_path / "noimage.csv").write_text("file,label\na.nii.gz,\n")
    with pytest.raises(DataError, match="no 'image' column"):
        load_manifest(str(tmp_path / "noimage.csv"))
    (tmp_path / "dup.csv").write_text("case_id,image\nx,a.nii.gz\nx,a.nii.gz\n")
    with pytest.raises(DataError, match="appears twice"):
        load_manifest(str(tmp_path / "dup.csv"))
    (tmp_path / "split.csv").write_text("image,split\na.nii.gz,training\n")
    with pytest.raises(DataError, match="use train, val or test"):
        load_manifest(str(tmp_path / "split.csv"))


def test_msd_dataset_json(tmp_path: Path):
    path = write_phantom_dataset(str(tmp_path / "msd"), n_cases=4, size=[16, 16, 8])
    m = load_manifest(path)
    assert len(m.cases) == 4 and all(c.split is None for c in m.cases)
    assert m.label_map == {0: "background", 1: "organ_a", 2: "organ_b", 3: "lesion"}
    assert load_manifest(str(tmp_path / "msd")).cases[0].case_id == "phantom_000"  # a folder with dataset.json


def test_monai_datalist_with_validation_split(tmp_path: Path):
    for n in ("a", "b", "c"):
        _nii(tmp_path / f"{n}.nii.gz")
        _nii(tmp_path / f"{n}_seg.nii.gz")
    spec = {"training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}, {"image": "b.nii.gz", "label": "b_seg.nii.gz"}],
            "validation": [{"image": "c.nii.gz", "label": "c_seg.nii.gz"}], "test": ["c.nii.gz"]}
    (tmp_path / "dl.json").write_text(json.dumps(spec))
    m = load_manifest(str(tmp_path / "dl.json"))
    assert [(c.case_id, c.split) for c in m.cases] == [("a", "train"), ("b", "train"), ("c", "val")]
    splits = split_cases(m.cases, SplitConfig())
    assert [c.case_id for c in splits["val"]] == ["c"]


def test_nnunet_raw_folder_multichannel(tmp_path: Path):
    for cid in ("BRATS_001", "BRATS_002"):
        _nii(tmp_path / "imagesTr" / f"{cid}_0000.nii.gz")
        _nii(tmp_path / "imagesTr" / f"{cid}_0001.nii.gz")
        _nii(tmp_path / "labelsTr" / f"{cid}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "tumour": 1}, "file_ending": ".nii.gz"}))
    m = load_manifest(str(tmp_path))
    assert [c.case_id for c in m.cases] == ["BRATS_001", "BRATS_002"]
    assert len(m.cases[0].image) == 2 and m.label_map == {0: "background", 1: "tumour"}
    (tmp_path / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(DataError, match="no label"):
        load_manifest(str(tmp_path))


def _cases(n):
    return [CaseRecord(case_id=f"case{i:03d}", image=[f"x{i}"]) for i in range(n)]


def test_split_is_deterministic_and_disjoint():
    cases = _cases(50)
    a = split_cases(cases, SplitConfig(seed=3, val_fraction=0.2, test_fraction=0.2))
    b = split_cases(list(reversed(cases)), SplitConfig(seed=3, val_fraction=0.2, test_fraction=0.2))
    assert {k: [c.case_id for c in v] for k, v in a.items()} == {k: [c.case_id for c in v] for k, v in b.items()}
    ids = [set(c.case_id for c in a[k]) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(len(s) for s in ids) == 50 and len(ids[2]) == 10 and len(ids[1]) == 10
    c = split_cases(cases, SplitConfig(seed=4, val_fraction=0.2, test_fraction=0.2))
    assert [x.case_id for x in c["test"]] != [x.case_id for x in a["test"]]


def test_kfold_covers_every_non_test_case_once():
    cases = _cases(23)
    vals, tests = [], None
    for f in range(5):
        s = split_cases(cases, SplitConfig(seed=0, test_fraction=0.2, folds=5, fold=f))
        vals += [c.case_id for c in s["val"]]
        t = [c.case_id for c in s["test"]]
        tests = tests or t
        assert t == tests  # the test split does not depend on the fold
        assert not set(c.case_id for c in s["train"]) & set(c.case_id for c in s["val"])
    assert sorted(vals) == sorted(c.case_id for c in cases if c.case_id not in tests)
