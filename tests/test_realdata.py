"""Real public datasets from ../shared/datasets (MEDROBUST_DATA_ROOT): every reader and manifest
kind on real files, spacing kept, splits without leakage, and short trainings. They run in CI
(CI=true) and skip with a reason elsewhere when the data are absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import require_data
from medrobust.config import DataConfig, TrainConfig, load_config
from medrobust.data import DataModule

pytestmark = pytest.mark.realdata
REPO = Path(__file__).resolve().parents[1]


def _dm(task="segmentation", **kw) -> DataModule:
    return DataModule(DataConfig.model_validate(kw), task)


def test_hippocampus_msd_json_2d_slices_and_3d(tmp_path):
    root = require_data("msd_hippocampus")
    dm = _dm(source="manifest", manifest=str(root / "dataset.json"), dims=2, preprocess={"size": [48, 64]},
             split={"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}, max_cases=30)
    assert dm.label_map == {0: "background", 1: "Anterior", 2: "Posterior"}
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 21, "val": 3, "test": 6}
    ds = dm.dataset("train", train=False)
    ids = ds.ids()
    assert len(ids) == len(set(ids)) and all(":" in i for i in ids)
    train_cases = {i.split(":")[0] for i in ids}
    assert not train_cases & {c.case_id for c in dm.splits["test"]}
    c = ds.cases[0]
    assert c.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert abs(float(c.image.mean())) < 1e-4  # z-scored per case
    s = ds[0]
    assert s["image"].shape == (1, 48, 64) and set(torch.unique(s["label"]).tolist()) <= {0, 1, 2}
    dm3 = _dm(source="manifest", manifest=str(REPO / "data_manifests" / "msd_hippocampus.csv"), dims=3,
              preprocess={"size": [48, 64, 48]}, max_cases=6, split={"val_fraction": 0.2, "test_fraction": 0.0})
    assert dm3.dataset("train", train=False)[0]["image"].shape == (1, 48, 64, 48)


def test_nrrd_cases_keep_anisotropic_spacing():
    require_data("nrrd_cases")
    dm = _dm(source="manifest", manifest=str(REPO / "data_manifests" / "nrrd_cases.csv"),
             split={"val_fraction": 0.0, "test_fraction": 0.0})
    cases = {c.case_id: c for c in dm.prepared("train")}
    assert cases["brain1"].spacing == pytest.approx((0.78125, 0.78125, 6.5), rel=1e-4)
    assert cases["brain1"].image.shape == (1, 256, 256, 25)
    assert cases["breast1"].spacing == pytest.approx((0.664062, 0.664062, 2.1), rel=1e-4)
    assert dm.label_map == {0: "background", 1: "class_1"}
    resampled = _dm(source="manifest", manifest=str(REPO / "data_manifests" / "nrrd_cases.csv"),
                    preprocess={"spacing": [1.5, 1.5, 6.5], "orientation": "RAS"}, split={"val_fraction": 0.0, "test_fraction": 0.0})
    b = {c.case_id: c for c in resampled.prepared("train")}["brain1"]
    assert b.spacing == pytest.approx((1.5, 1.5, 6.5), rel=1e-3)
    assert b.image.shape[1] == pytest.approx(256 * 0.78125 / 1.5, abs=2)


@pytest.mark.parametrize("manifest,channels", [("ph2.csv", 3), ("drive.csv", 3), ("isbi2012.csv", 1)])
def test_2d_png_tiff_gif_manifests(manifest, channels):
    require_data(manifest.split(".")[0].replace("isbi2012", "isbi2012"))
    kw = dict(source="manifest", manifest=str(REPO / "data_manifests" / manifest), label_remap={255: 1},
              label_map={0: "background", 1: "foreground"}, max_cases=4, preprocess={"resize": [96, 96], "size": [96, 96],
              "intensity": {"kind": "scale", "factor": 1 / 255}}, split={"val_fraction": 0.25, "test_fraction": 0.0})
    dm = _dm(**kw)
    ds = dm.dataset("train", train=False)
    s = ds[0]
    assert s["image"].shape == (channels, 96, 96)
    assert float(s["image"].max()) <= 1.0 and set(torch.unique(s["label"]).tolist()) == {0, 1}
    assert dm.info(ds.cases).bounds == (0.0, 1.0)  # 8-bit sources give [0, 1] attack bounds
    from medrobust.errors import DataError

    with pytest.raises(DataError, match="label_remap"):
        _dm(**{**kw, "label_remap": None}).prepared("train")


def test_ph2_diagnosis_classification_and_drive_official_split():
    require_data("ph2")
    dm = _dm("classification", source="manifest", manifest=str(REPO / "data_manifests" / "ph2.csv"), class_column="diagnosis",
             preprocess={"resize": [64, 64], "intensity": {"kind": "scale", "factor": 1 / 255}})
    assert dm.dataset("train", train=False)[0]["label"].ndim == 0
    d = _dm(source="manifest", manifest=str(REPO / "data_manifests" / "drive.csv"), label_remap={255: 1},
            split={"val_fraction": 0.1})
    assert len(d.splits["test"]) == 20 and len(d.splits["train"]) + len(d.splits["val"]) == 20 and len(d.splits["val"]) == 2


@pytest.mark.parametrize("name,n_train,channels,dims,classes", [("pneumoniamnist", 4708, 1, 2, 2), ("retinamnist", 1080, 3, 2, 5),
                                                               ("breastmnist", 546, 1, 2, 2), ("adrenalmnist3d", 1188, 1, 3, 2)])
def test_medmnist_files(name, n_train, channels, dims, classes):
    root = require_data(name)
    dm = _dm("classification", source="medmnist", medmnist={"path": str(root / f"{name}.npz")},
             preprocess={"intensity": {"kind": "scale", "factor": 1 / 255}})
    assert len(dm.splits["train"]) == n_train
    ds = dm.dataset("val", train=False)
    s = ds[0]
    assert s["image"].shape == (channels, *([28] * dims)) and 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert dm.info(ds.cases).num_classes == classes and dm.info(ds.cases).bounds == (0.0, 1.0)


def test_data_inspect_on_real_manifests():
    require_data("msd_hippocampus")
    from medrobust.data.inspect import inspect_source

    rep = inspect_source(str(REPO / "data_manifests" / "msd_hippocampus.csv"), max_cases=8, allowed_labels=[0, 1, 2])
    assert rep.n_problems == 0 and len(rep.table) == 8
    bad = inspect_source(str(REPO / "data_manifests" / "isbi2012.csv"), max_cases=2, allowed_labels=[0, 1])
    assert any("label values [255]" in p for p in bad.problems)


@pytest.mark.slow
def test_short_hippocampus_2d_training_learns(tmp_path):
    require_data("msd_hippocampus")
    cfg = load_config(TrainConfig, data={
        "output_dir": str(tmp_path / "run"), "epochs": 3, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.003},
        "data": {"_base_": str(REPO / "configs" / "data" / "hippocampus_2d.yaml"), "max_cases": 40},
        "model": {"_base_": str(REPO / "configs" / "models" / "unet_2d_small.yaml")}})
    from medrobust.training.engine import train

    res = train(cfg)
    assert res.history[-1]["val_dice"] > 0.5, res.history


@pytest.mark.slow
def test_short_pneumoniamnist_training_and_autoattack_eval(tmp_path):
    root = require_data("pneumoniamnist")
    from medrobust.config import EvalConfig
    from medrobust.evaluation.sweep import evaluate
    from medrobust.training.engine import train

    cfg = load_config(TrainConfig, data={
        "task": "classification", "output_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 128,
        "data": {"source": "medmnist", "medmnist": {"path": str(root / "pneumoniamnist.npz")}, "max_cases": 1000,
                 "preprocess": {"intensity": {"kind": "scale", "factor": 1 / 255}}},
        "model": {"name": "small_cnn", "params": {"width": 16}}})
    res = train(cfg)
    assert res.history[-1]["val_auc"] > 0.8
    ev = evaluate(load_config(EvalConfig, data={
        "task": "classification", "checkpoint": str(res.best_checkpoint), "output_dir": str(tmp_path / "ev"), "max_samples": 64, "batch_size": 64,
        "threat": {"norm": "Linf", "budgets": [0.0, 0.0157]}, "attacks": [{"name": "autoattack", "square_queries": 100}]}))
    s = ev.summary
    assert s["attacks"]["autoattack"]["0.0157"]["accuracy"] <= s["clean"]["accuracy"]
    assert any("autoattack attacks: apgd-ce, fab, square" in f for f in s["flags"])  # binary: no DLR
    # eval-classify reproduces pyautoattack's own robust accuracy on the same images
    from pyautoattack import AutoAttack

    from medrobust.checkpoint import load_model_from_checkpoint
    from medrobust.config import DataConfig
    from medrobust.data import DataModule

    model, ck = load_model_from_checkpoint(res.best_checkpoint)
    ds = DataModule(DataConfig.model_validate(ck["config"]["data"]), "classification").dataset("test", train=False)
    x = torch.stack([ds[i]["image"] for i in range(64)])
    y = torch.stack([ds[i]["label"] for i in range(64)])
    ref = AutoAttack(model, version="custom", attacks=["apgd-ce", "fab", "square"], norm="Linf", eps=0.0157, seed=0, device="cpu")
    ref.square.n_queries = 100
    ref.apgd.n_restarts = ref.fab.n_restarts = 1  # the standard version's budget, as medrobust adapts it
    ref.logger.setLevel(40)
    x_adv, _ = ref.run_standard_evaluation(x, y, batch_size=500)
    with torch.no_grad():
        acc_ref = float((model(x_adv).argmax(1) == y).float().mean())
    assert s["attacks"]["autoattack"]["0.0157"]["accuracy"] == pytest.approx(acc_ref, abs=1e-9)
