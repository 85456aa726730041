"""Clinical-scale evaluation: whole volumes for 2D models, original grids, resumable and sharded runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import tiny_train_config
from medrobust.config import EvalConfig, TrainConfig, load_config
from medrobust.training.engine import train

ROOT = Path(__file__).resolve().parents[1]


def _volume_manifest(tmp: Path) -> Path:
    """Seven small NIfTI volumes (20 x 24 x 10) with a bright blob; the test case 'empty' has no foreground."""
    from medrobust.data.readers import write_nifti

    rng = np.random.default_rng(0)
    rows = ["case_id,image,label,split"]
    zz, yy, xx = np.meshgrid(np.arange(20), np.arange(24), np.arange(10), indexing="ij")
    for i, split in enumerate(["train"] * 4 + ["val", "test", "test"]):
        cid = "empty" if i == 6 else f"c{i}"
        lab = np.zeros((20, 24, 10), np.uint8)
        if cid != "empty":
            c = rng.integers(6, 14, 3)
            lab[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - min(c[2], 6)) ** 2) < 16] = 1
        img = (lab * 0.8 + rng.normal(0, 0.1, lab.shape)).astype(np.float32)
        write_nifti(img, np.eye(4), tmp / f"{cid}_img.nii.gz")
        write_nifti(lab, np.eye(4), tmp / f"{cid}_lab.nii.gz")
        rows.append(f"{cid},{cid}_img.nii.gz,{cid}_lab.nii.gz,{split}")
    (tmp / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp / "manifest.csv"


@pytest.fixture(scope="module")
def vol2d_ckpt(tmp_path_factory) -> Path:
    """A 2D model trained on foreground slices only of 3D volumes, padded to 32 x 32."""
    tmp = tmp_path_factory.mktemp("vol2d")
    man = _volume_manifest(tmp)
    cfg = tiny_train_config(tmp, epochs=2, data={"source": "manifest", "manifest": str(man), "dims": 2, "slice_axis": 2,
                                                 "foreground_slices_only": True, "phantom": None,
                                                 "preprocess": {"size": [32, 32], "intensity": {"kind": "none"}}})
    cfg["data"].pop("phantom")
    return train(load_config(TrainConfig, data=cfg)).best_checkpoint


def _eval_cfg(ck: Path, out: Path, **over) -> dict:
    d = {"checkpoint": str(ck), "output_dir": str(out), "split": "test", "batch_size": 4, "examples": 1,
         "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, 0.1]},
         "attacks": [{"name": "seg_ensemble", "n_iter": 4, "queries": 4}]}
    d.update(over)
    return d


def test_2d_models_are_scored_on_every_slice_of_whole_volumes(vol2d_ckpt: Path, tmp_path: Path):
    from medrobust.checkpoint import load_model_from_checkpoint
    from medrobust.data.readers import read_image
    from medrobust.evaluation.sweep import evaluate
    from medrobust.inference import build_predictor, predict_case
    from medrobust.tasks import hard_dice

    res = evaluate(load_config(EvalConfig, data=_eval_cfg(vol2d_ckpt, tmp_path / "ev", attacks=["white_noise"])))
    t = res.table
    clean = t[t.attack == "clean"]
    assert sorted(clean.case.unique()) == ["c5", "empty"]  # the empty case is reported, not dropped
    assert len(clean) == 2 * 10  # every slice of both volumes, not only slices with foreground
    assert res.summary["clean"]["case_dice"]["n"] == 2
    assert "every slice of every case" in res.summary["settings"]["grid"]
    # the case Dice pooled from the rows is the Dice of the whole volume on its own grid (no padding scored)
    model, ck = load_model_from_checkpoint(vol2d_ckpt)
    pred = build_predictor(model, [32, 32], None, "segmentation", ck["model_spec"])
    man = vol2d_ckpt.parents[1] / "manifest.csv"
    for case in ("c5", "empty"):
        img = read_image(str(man.parent / f"{case}_img.nii.gz")).as_tensor().float()
        lab = read_image(str(man.parent / f"{case}_lab.nii.gz"), as_label=True).as_tensor().long()
        seg = predict_case(pred, img, dims=2, slice_axis=2).argmax(0, keepdim=True)
        d_ref = float(hard_dice(seg, lab, 2)[0, 1])
        g = clean[clean.case == case]
        tp, fp, fn = g.tp_1.sum(), g.fp_1.sum(), g.fn_1.sum()
        assert tp + fp <= 20 * 24 * 10  # nothing predicted in padding is counted
        if 2 * tp + fp + fn == 0:
            assert np.isnan(d_ref)  # nothing to find, nothing found: 1 by the convention
        else:
            assert abs(2 * tp / (2 * tp + fp + fn) - d_ref) < 1e-9


def test_metrics_on_the_grid_before_resize(tmp_path: Path):
    from medrobust.data.datasets import list_cases
    from medrobust.config import DataConfig
    from medrobust.evaluation.sweep import evaluate

    data = {"phantom": {"n_cases": 8, "size": [40, 36], "n_structures": 1}, "preprocess": {"resize": [32, 32], "size": [32, 32]},
            "split": {"val_fraction": 0.25, "test_fraction": 0.25}}
    ck = train(load_config(TrainConfig, data=tiny_train_config(tmp_path, epochs=1, data=data))).best_checkpoint
    res = evaluate(load_config(EvalConfig, data=_eval_cfg(ck, tmp_path / "ev", attacks=["white_noise"])))
    clean = res.table[res.table.attack == "clean"]
    recs = {r.case_id: r for r in list_cases(load_config(DataConfig, data=tiny_train_config(tmp_path, data=data)["data"]), "segmentation")[0]}
    for _, r in clean.iterrows():
        n_fg = int((np.asarray(recs[r.case].label) > 0).sum())
        assert r.tp_1 + r.fn_1 == n_fg  # counted on the 40 x 36 label, not the 32 x 32 resized one
    assert "before the resize" in res.summary["settings"]["grid"]


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MEDROBUST_NO_PROGRESS="1")
    return subprocess.Popen([sys.executable, *args], cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _lines(p: Path) -> int:
    return sum(1 for _ in open(p, "rb")) if p.exists() else 0


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_results(vol2d_ckpt: Path, tmp_path: Path):
    """The issue's bar: an evaluation killed with SIGKILL and resumed writes the same results.csv."""
    base = _eval_cfg(vol2d_ckpt, tmp_path / "a", batch_size=2, attacks=[{"name": "seg_ensemble", "n_iter": 6, "queries": 6}])
    a = _run_cli(["-m", "medrobust.cli", "eval-seg", str(_write(base, tmp_path / "a.yaml"))])
    out_a = a.communicate(timeout=600)[0].decode()
    assert a.returncode == 0, out_a
    cfg_b = dict(base, output_dir=str(tmp_path / "b"))
    yb = _write(cfg_b, tmp_path / "b.yaml")
    b = _run_cli(["-m", "medrobust.cli", "eval-seg", str(yb)])
    rows = tmp_path / "b" / "partial" / "rows_rank0.jsonl"
    t0 = time.time()
    while _lines(rows) < 2 and b.poll() is None and time.time() - t0 < 300:
        time.sleep(0.02)
    b.send_signal(signal.SIGKILL)
    b.wait()
    assert not (tmp_path / "b" / "results.csv").exists(), "the run finished before it could be killed"
    done = _lines(rows)
    assert 2 <= done < 10  # 10 work items (20 slices, 2 per batch)
    c = _run_cli(["-m", "medrobust.cli", "eval-seg", str(yb), "--resume"])
    out_c = c.communicate(timeout=600)[0].decode()
    assert c.returncode == 0, out_c
    assert (tmp_path / "b" / "results.csv").read_bytes() == (tmp_path / "a" / "results.csv").read_bytes()
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("a", "b"))
    for s in (sa, sb):
        s.pop("time_s")
        s["settings"].pop("checkpoint")
    assert sa == sb
    ge = sa["gradient_evaluations"]["seg_ensemble"]
    assert 0 < ge["0.1"]["mean_per_case"] <= ge["nominal_per_case"]


@pytest.mark.slow
def test_resume_refuses_a_changed_config(vol2d_ckpt: Path, tmp_path: Path):
    from medrobust.errors import ConfigError
    from medrobust.evaluation.sweep import evaluate

    cfg = _eval_cfg(vol2d_ckpt, tmp_path / "ev", attacks=["white_noise"])
    evaluate(load_config(EvalConfig, data=cfg))
    with pytest.raises(ConfigError, match="different config"):
        evaluate(load_config(EvalConfig, data=dict(cfg, threat={"norm": "L2", "units": "rms", "budgets": [0.0, 0.3]})), resume=True)
    # resuming a finished run recomputes nothing and gives the same table
    before = (tmp_path / "ev" / "results.csv").read_bytes()
    again = evaluate(load_config(EvalConfig, data=cfg), resume=True)
    assert (tmp_path / "ev" / "results.csv").read_bytes() == before and len(again.table) > 0


@pytest.mark.slow
def test_torchrun_two_processes_match_one(vol2d_ckpt: Path, tmp_path: Path):
    """The issue's bar: sharded under torchrun (gloo, CPU), the same per-case Dice as one process."""
    base = _eval_cfg(vol2d_ckpt, tmp_path / "one", batch_size=3, device="cpu")
    one = _run_cli(["-m", "medrobust.cli", "eval-seg", str(_write(base, tmp_path / "one.yaml"))])
    out = one.communicate(timeout=600)[0].decode()
    assert one.returncode == 0, out
    two_cfg = _write(dict(base, output_dir=str(tmp_path / "two")), tmp_path / "two.yaml")
    two = _run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medrobust.cli", "eval-seg", str(two_cfg)])
    out2 = two.communicate(timeout=600)[0].decode()
    assert two.returncode == 0, out2
    shards = sorted(p.name for p in (tmp_path / "two" / "partial").glob("rows_rank*.jsonl"))
    assert shards == ["rows_rank0.jsonl", "rows_rank1.jsonl"]  # both processes did work
    a = pd.read_csv(tmp_path / "one" / "results.csv")
    b = pd.read_csv(tmp_path / "two" / "results.csv")
    pd.testing.assert_frame_equal(a, b)


def test_multichannel_phantoms():
    from medrobust.data.phantoms import phantom_cases

    one = phantom_cases(2, [16, 16, 8], 2, seed=3)
    two = phantom_cases(2, [16, 16, 8], 2, seed=3, channels=3)
    assert one[0].image.shape == (1, 16, 16, 8) and two[0].image.shape == (3, 16, 16, 8)
    np.testing.assert_array_equal(two[0].image[0], one[0].image[0])  # channel 0 is the single-channel phantom
    np.testing.assert_array_equal(two[0].label, one[0].label)
    fg = two[0].label > 0
    # channel 1 has inverted contrast (structures darker than channel 0 relative to background), channel 2 not
    c0 = two[0].image[0][fg].mean() - two[0].image[0][~fg].mean()
    c1 = two[0].image[1][fg].mean() - two[0].image[1][~fg].mean()
    c2 = two[0].image[2][fg].mean() - two[0].image[2][~fg].mean()
    assert np.sign(c1) == -np.sign(c0) and np.sign(c2) == np.sign(c0)


def test_margins_resume_after_a_torn_write(vol2d_ckpt: Path, tmp_path: Path):
    """A margins run cut after its first work item (plus a torn line) resumes to the same table."""
    from medrobust.config import MarginsConfig
    from medrobust.margins.run import run_margins

    cfg = {"checkpoint": str(vol2d_ckpt), "output_dir": str(tmp_path / "m"), "split": "test", "max_samples": 6, "batch_size": 2,
           "threat": {"norm": "L2", "units": "rms"}, "eps_max": 0.5, "attack": {"name": "pgd", "steps": 2},
           "bisection_steps": 2, "voxel_maps": False, "examples": 0}
    run_margins(load_config(MarginsConfig, data=cfg))
    full = (tmp_path / "m" / "margins.csv").read_bytes()
    rows = tmp_path / "m" / "partial" / "rows_rank0.jsonl"
    first = rows.read_bytes().splitlines(keepends=True)[0]
    rows.write_bytes(first + b'{"item": 1, "ids": ["torn')  # killed while writing item 1
    (tmp_path / "m" / "margins.csv").unlink()
    run_margins(load_config(MarginsConfig, data=cfg), resume=True)
    assert (tmp_path / "m" / "margins.csv").read_bytes() == full
    assert rows.read_bytes().startswith(first)  # item 0 was kept, not recomputed
