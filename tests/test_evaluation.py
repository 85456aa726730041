"""Evaluation sweeps, metrics against MONAI, reports, margins and the compare step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_train_config
from medrobust.config import EvalConfig, MarginsConfig, TrainConfig, load_config
from medrobust.evaluation.metrics import normalised_auc, pooled_dice, segmentation_metrics
from medrobust.training.engine import train


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("segckpt")
    cfg = tiny_train_config(tmp, epochs=3, data={"phantom": {"n_cases": 16}})
    return train(load_config(TrainConfig, data=cfg)).best_checkpoint


def test_hd95_and_nsd_agree_with_monai_and_handle_empty_masks():
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    g = torch.Generator().manual_seed(1)
    tgt = torch.zeros(2, 24, 24, dtype=torch.long)
    tgt[:, 5:15, 6:16] = 1
    pred = tgt.clone()
    pred[:, 7:17, 6:18] = 1
    pred[1] = 0  # sample 1: the prediction misses everything
    spacing = torch.tensor([[0.5, 2.0], [1.0, 1.0]])
    m = segmentation_metrics(pred, tgt, 2, spacing, {"hd95", "nsd", "iou"}, nsd_tolerance=1.0)
    ref = compute_hausdorff_distance(F.one_hot(pred[:1], 2).movedim(-1, 1).float(), F.one_hot(tgt[:1], 2).movedim(-1, 1).float(),
                                     percentile=95, spacing=[[0.5, 2.0]])
    assert m["hd95"][0, 1] == pytest.approx(float(ref[0, 0]))
    refn = compute_surface_dice(F.one_hot(pred[:1], 2).movedim(-1, 1).float(), F.one_hot(tgt[:1], 2).movedim(-1, 1).float(),
                                class_thresholds=[1.0], spacing=[[0.5, 2.0]])
    assert m["nsd"][0, 1] == pytest.approx(float(refn[0, 0]))
    assert m["hd95"][1, 1] == pytest.approx(np.hypot(24, 24))  # total miss: the diagonal in mm, not NaN
    assert m["nsd"][1, 1] == 0.0 and m["dice"][1, 1] == 0.0
    c = m["counts"]
    assert pooled_dice(c)[1] == pytest.approx(2 * c[:, 1, 0].sum() / (2 * c[:, 1, 0].sum() + c[:, 1, 1].sum() + c[:, 1, 2].sum()))
    del g


def test_normalised_auc():
    assert normalised_auc([0, 1, 2], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert normalised_auc([0, 1, 2], [1.0, 0.5, 0.0]) == pytest.approx(0.5)


def test_segmentation_sweep_table_summary_and_outputs(seg_ckpt: Path, tmp_path: Path):
    cfg = load_config(EvalConfig, data={"checkpoint": str(seg_ckpt), "output_dir": str(tmp_path / "ev"), "split": "val",
                                        "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, 0.05, 0.2]},
                                        "attacks": [{"name": "white_noise", "draws": 3}, {"name": "pgd", "steps": 3},
                                                    {"name": "seg_ensemble", "n_iter": 3, "queries": 3}],
                                        "metrics": ["dice", "hd95"], "examples": 1, "save_nifti": True})
    from medrobust.evaluation.sweep import evaluate

    res = evaluate(cfg)
    t = pd.read_csv(res.run_dir / "results.csv")
    n = t[t.attack == "clean"].shape[0]
    assert len(t) == n * (1 + 3 * 3)  # clean + attacks x budgets
    assert set(t.columns) >= {"sample", "case", "budget", "eps_input", "eps_native", "eps_rms", "dice", "dice_organ_a", "tp_1", "hd95",
                              "dice_mean", "dice_worst", "member:apgd-segpgd"}
    rms = t[(t.attack == "pgd") & (t.budget == 0.05)]
    np.testing.assert_allclose(rms["eps_rms"], 0.05, rtol=1e-6)
    np.testing.assert_allclose(rms["eps_input"], 0.05 * 32, rtol=1e-5)  # sqrt(1 * 32 * 32)
    zero = t[t.budget == 0.0].groupby("sample")["dice"].nunique()
    assert (zero == 1).all()  # budget 0 is the clean score for every attack
    s = json.loads((res.run_dir / "summary.json").read_text())
    # summary.json recomputed from results.csv
    for a in ("pgd", "seg_ensemble", "white_noise"):
        for b in (0.05, 0.2):
            d = t[(t.attack == a) & (t.budget == b)]
            blk = s["attacks"][a][str(b)]
            assert blk["dice"]["mean"] == pytest.approx(d["dice"].mean()) and blk["dice"]["n"] == len(d)
            assert blk["dice"]["median"] == pytest.approx(d["dice"].median())
            tp, fp, fn = d["tp_1"].sum(), d["fp_1"].sum(), d["fn_1"].sum()
            assert blk["pooled_dice"]["organ_a"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    worst = t[(t.attack != "clean") & (t.budget == 0.2)].groupby("sample")["dice"].min()
    assert s["worst_case"]["0.2"]["dice"]["mean"] == pytest.approx(worst.mean())
    assert s["clean"]["dice"]["mean"] == pytest.approx(t[t.attack == "clean"]["dice"].mean())
    ens = s["attacks"]["seg_ensemble"]["0.2"]["dice"]["mean"]
    assert ens <= s["attacks"]["pgd"]["0.2"]["dice"]["mean"] + 0.05
    assert s["worst_case"]["0.2"]["dice"]["mean"] <= min(s["attacks"][a]["0.2"]["dice"]["mean"] for a in s["attacks"]) + 1e-9
    for f in ("report.html", "metric_vs_budget.png", "per_class_vs_budget.png", "distributions.png", "examples_seg_ensemble.png"):
        assert (res.run_dir / f).is_file(), f
    assert list((res.run_dir / "nifti").rglob("*_adv_image.nii.gz"))
    assert "seg_ensemble" in res.text_summary()


def test_native_units_and_fixed_bounds(seg_ckpt: Path, tmp_path: Path):
    import nibabel as nib

    from medrobust.evaluation.sweep import evaluate

    cfg = load_config(EvalConfig, data={"checkpoint": str(seg_ckpt), "output_dir": str(tmp_path / "ev"), "split": "val",
                                        "threat": {"norm": "Linf", "units": "native", "budgets": [0.0, 20.0, 1.0e6], "bounds": [-10.0, 10.0]},
                                        "attacks": [{"name": "fgsm"}], "examples": 0, "save_nifti": True})
    res = evaluate(cfg)
    t = res.table
    r = t[(t.attack == "fgsm") & (t.budget == 20.0)]
    np.testing.assert_allclose(r["eps_native"], 20.0, rtol=1e-6)  # 20 scanner units, a different input budget per case
    assert r["eps_input"].nunique() > 1
    assert list(res.summary["settings"]["bounds"]) == [-10.0, 10.0]
    # at a huge budget FGSM's sign step lands every voxel with a gradient on a bound: exactly -10 or 10, never beyond
    imgs = [np.asarray(nib.load(str(f)).dataobj) for f in (res.run_dir / "nifti").rglob("*_adv_image.nii.gz")]
    assert imgs
    v = np.concatenate([a.ravel() for a in imgs])
    assert v.min() == pytest.approx(-10.0) and v.max() == pytest.approx(10.0)
    assert np.isclose(np.abs(v), 10.0).mean() > 0.5


def test_3d_sliding_window_evaluation(tmp_path: Path):
    from medrobust.evaluation.sweep import evaluate

    cfg = tiny_train_config(tmp_path, epochs=1, data={"phantom": {"size": [24, 24, 16], "n_cases": 6}, "preprocess": {"size": [16, 16, 16]},
                                                     "split": {"val_fraction": 0.34, "test_fraction": 0.0}})
    ck = train(load_config(TrainConfig, data=cfg)).best_checkpoint
    ev = load_config(EvalConfig, data={"checkpoint": str(ck), "output_dir": str(tmp_path / "ev"), "split": "val",
                                       "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, 0.1]},
                                       "attacks": [{"name": "apgd", "n_iter": 2}], "examples": 1})
    res = evaluate(ev)
    assert res.summary["clean"]["dice"]["n"] == 2 and (res.run_dir / "examples_apgd.png").is_file()


def test_margins_command(seg_ckpt: Path, tmp_path: Path):
    from medrobust.margins.run import run_margins

    cfg = load_config(MarginsConfig, data={"checkpoint": str(seg_ckpt), "output_dir": str(tmp_path / "m"), "split": "val",
                                           "threat": {"norm": "L2", "units": "rms"}, "eps_max": 1.0, "bisection_steps": 4,
                                           "attack": {"name": "pgd", "steps": 3}, "voxel_steps": 4, "examples": 1,
                                           "success": {"threshold": 0.05, "reduction": "mean"}})
    res = run_margins(cfg)
    t = res.table
    assert ((t["margin"] >= 0) & (t["margin"] <= 1.0 + 1e-9)).all()
    assert (t.loc[~t["clean_success"], "margin"] == 0).all()
    assert res.summary["margin"]["min"] <= res.summary["margin"]["mean"]
    assert (res.run_dir / "margin_histogram.png").is_file() and list((res.run_dir / "voxel_maps").glob("*.npz"))
    arr = np.load(next((res.run_dir / "voxel_maps").glob("*.npz")))
    assert arr["logit_margin"].shape == arr["flip_budget"].shape == (32, 32)
    fin = arr["flip_budget"][np.isfinite(arr["flip_budget"])]
    assert (fin <= 1.0 + 1e-6).all()


def test_image_margin_bisection_finds_a_known_boundary():
    """A linear 1D classifier with boundary at distance 0.3 from the sample: margin = 0.3."""
    from medrobust.attacks import build_attack
    from medrobust.margins.image import image_margins
    from medrobust.tasks import ClassificationTask
    from medrobust.threat import ThreatModel

    lin = torch.nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        lin.bias.copy_(torch.tensor([-0.3, 0.3]))  # logits (x - 0.3, 0.3 - x): class 1 iff x < 0.3
    x = torch.tensor([[0.0]])
    y = torch.tensor([1])
    attack = build_attack({"name": "pgd", "steps": 10, "random_start": False}, ClassificationTask(2), ThreatModel("L2", None))
    m, cens, ok = image_margins(lin, ClassificationTask(2), attack, x, y, torch.tensor([1.0]), 16)
    assert bool(ok[0]) and not bool(cens[0]) and float(m[0]) == pytest.approx(0.3, abs=1e-3)


def test_compare_step(seg_ckpt: Path, tmp_path: Path):
    from medrobust.evaluation.compare import CompareConfig, run_compare
    from medrobust.evaluation.sweep import evaluate

    evs = {}
    for name in ("a", "b"):
        cfg = load_config(EvalConfig, data={"checkpoint": str(seg_ckpt), "output_dir": str(tmp_path / name), "split": "val",
                                            "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, 0.1]},
                                            "attacks": [{"name": "fgsm"}], "examples": 0})
        evs[name] = str(evaluate(cfg).run_dir)
    slow = tmp_path / "slow_train"  # a copy of the training log with every epoch twice as slow
    slow.mkdir()
    m = pd.read_csv(seg_ckpt.parent / "metrics.csv")
    m["time_train_s"] = 2 * m["time_train_s"]
    m.to_csv(slow / "metrics.csv", index=False)
    res = run_compare(CompareConfig(evals=evs, trains={"a": str(seg_ckpt.parent), "b": str(slow)}, output_dir=str(tmp_path / "cmp")), tmp_path)
    t = pd.read_csv(res.run_dir / "comparison.csv")
    assert set(t.method) == {"a", "b"} and set(t.budget) == {0.0, 0.1}
    assert (res.run_dir / "comparison.png").is_file() and "| a |" in (res.run_dir / "comparison.md").read_text()
    a, b = t[t.method == "a"].iloc[0], t[t.method == "b"].iloc[0]
    assert a.train_time_s == pytest.approx(pd.read_csv(seg_ckpt.parent / "metrics.csv")["time_train_s"].sum())
    assert a.time_per_epoch_vs_first == pytest.approx(1.0) and b.time_per_epoch_vs_first == pytest.approx(2.0)
    ev_a = json.loads((Path(evs["a"]) / "summary.json").read_text())
    assert t[(t.method == "a") & (t.budget == 0.1)]["robust"].iloc[0] == pytest.approx(ev_a["attacks"]["fgsm"]["0.1"]["dice"]["mean"])


def test_compare_timing_uses_fastest_epoch(tmp_path: Path):
    """A single epoch slowed by a busy machine must not distort the per-epoch time ratio."""
    from medrobust.evaluation.compare import _train_time

    d = tmp_path / "train"
    d.mkdir()
    pd.DataFrame({"epoch": [1, 2, 3, 4], "time_train_s": [30.0, 700.0, 31.0, 29.0]}).to_csv(d / "metrics.csv", index=False)
    total, per_epoch, n = _train_time(str(d))
    assert total == pytest.approx(790.0) and n == 4 and per_epoch == pytest.approx(29.0)
