"""The right behaviour behind the refusals of test_bad_inputs.py: what works, and what gets recorded.

Output folders (marker, --overwrite moves aside, lock), resume with extended epochs, a run that
never finished an epoch can be re-run, label threshold / contiguous label ids / .npz arrays,
inspect says what training will do, all-test manifests evaluate with split: all, a run folder
as checkpoint, method eps 0 recorded as a warning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from conftest import tiny_train_config
from medrobust.cli import main
from medrobust.config import DataConfig, TrainConfig, load_config
from medrobust.errors import ConfigError
from medrobust import outputs


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _tiny(tmp_path: Path, **over) -> dict:
    return tiny_train_config(tmp_path, epochs=1, batch_size=8, **{
        "data": {"phantom": {"n_cases": 6, "size": [16, 16]}, "preprocess": {"size": [16, 16]}},
        "model": {"params": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}, **over})


# ============================================================================ output folders
def test_claim_marks_refuses_and_overwrite_moves_aside(tmp_path: Path):
    out = tmp_path / "ev"
    cfg = {"a": 1, "b": {"c": 2}, "device": "cpu"}
    outputs.claim_output_dir(out, "eval-seg", cfg)
    marker = json.loads((out / outputs.MARKER).read_text())
    assert marker["command"] == "eval-seg" and marker["config_hash"] == outputs.config_hash(cfg)
    assert "device" not in marker["config"]  # runtime keys do not identify a run
    (out / "results.csv").write_text("old")
    outputs.release_output_dir(out)
    assert not (out / outputs.LOCK).exists()
    # same command and config (device aside): allowed; another config: refused with the changed key
    outputs.claim_output_dir(out, "eval-seg", {**cfg, "device": "cuda"})
    outputs.release_output_dir(out)
    with pytest.raises(ConfigError, match=r"changed: b\.c: 2 -> 3"):
        outputs.claim_output_dir(out, "eval-seg", {"a": 1, "b": {"c": 3}})
    with pytest.raises(ConfigError, match="holds the output of `medrobust eval-seg`"):
        outputs.claim_output_dir(out, "margins", cfg)
    assert (out / "results.csv").read_text() == "old" and not (out / outputs.LOCK).exists()
    with outputs.overwrite_mode():
        outputs.claim_output_dir(out, "margins", cfg)
    old = list(out.glob("old-*"))
    assert len(old) == 1 and (old[0] / "results.csv").read_text() == "old" and (old[0] / outputs.MARKER).is_file()
    assert json.loads((out / outputs.MARKER).read_text())["command"] == "margins"
    outputs.release_output_dir(out)


def test_lock_of_a_dead_process_is_taken_over_and_a_live_one_refuses(tmp_path: Path):
    import socket
    import subprocess
    import sys

    out = tmp_path / "o"
    out.mkdir()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (out / outputs.LOCK).write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(), "command": "eval-seg"}))
    outputs.acquire_lock(out, "eval-seg")  # dead pid: taken over
    assert json.loads((out / outputs.LOCK).read_text())["pid"] == os.getpid()
    outputs.release_output_dir(out)
    (out / outputs.LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "command": "train-seg",
                                                "started": "t0"}))
    with pytest.raises(ConfigError, match=rf"in use by `medrobust train-seg` \(pid {os.getppid()}"):
        outputs.acquire_lock(out, "eval-seg")


@pytest.mark.slow
def test_resume_may_extend_epochs_and_records_it(tmp_path: Path):
    cfg = _tiny(tmp_path)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert _run("train-seg", str(p)).exit_code == 0
    res = _run("train-seg", str(p), "--resume", "--set", "epochs=2")
    assert res.exit_code == 0, res.output
    marker = json.loads((tmp_path / "run" / outputs.MARKER).read_text())
    assert "epochs changed from 1 to 2" in marker["history"][-1]["event"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["epochs"] == 2
    # the run's own config.yaml (every key spelled out) is a valid config to resume with
    same = _run("train-seg", str(tmp_path / "run" / "config.yaml"), "--resume")
    assert same.exit_code == 0, same.output
    assert json.loads((tmp_path / "run" / "status.json").read_text())["epoch"] == 2
    # --overwrite on a finished run moves it aside and trains afresh
    again = _run("train-seg", str(p), "--overwrite")
    assert again.exit_code == 0, again.output
    old = list((tmp_path / "run").glob("old-*"))
    assert len(old) == 1 and (old[0] / "best.pt").is_file() and (tmp_path / "run" / "best.pt").is_file()


def test_run_that_finished_no_epoch_can_be_rerun_or_resumed(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_tiny(tmp_path, select_metric="val_dise")))
    bad = _run("train-seg", str(p))
    assert bad.exit_code == 2 and "select_metric 'val_dise'" in bad.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
    p.write_text(yaml.safe_dump(_tiny(tmp_path)))
    ok = _run("train-seg", str(p), "--resume")  # nothing to resume: starts from epoch 0 instead of failing
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "run" / "best.pt").is_file()


def test_interrupt_message_depends_on_the_command(monkeypatch, tmp_path: Path):
    from medrobust import cli

    assert "--resume" in cli._interrupted_message("train-seg")
    assert "--resume" not in cli._interrupted_message("eval-seg") and "incomplete" in cli._interrupted_message("eval-seg")


# ============================================================================ data
def _nii(p: Path, a, spacing=(1.0, 1.0, 1.0)):
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(a), np.diag(list(spacing) + [1.0])), str(p))
    return str(p)


def _manifest(tmp_path: Path, labels: list[np.ndarray], split=None) -> str:
    rows = []
    for i, lab in enumerate(labels):
        img = _nii(tmp_path / f"img{i}.nii.gz", np.random.default_rng(i).random(lab.shape).astype(np.float32))
        lp = _nii(tmp_path / f"lab{i}.nii.gz", lab.astype(np.int16))
        rows.append(f"{img},{lp}" + (f",{split[i]}" if split else ""))
    (tmp_path / "m.csv").write_text("image,label" + (",split" if split else "") + "\n" + "\n".join(rows) + "\n")
    return str(tmp_path / "m.csv")


def _dm(manifest: str, **data):
    from medrobust.data.datasets import DataModule

    cfg = DataConfig.model_validate({"source": "manifest", "manifest": manifest, **data})
    return DataModule(cfg, "segmentation")


def test_label_threshold_binarises_jpeg_masks(tmp_path: Path):
    rng = np.random.default_rng(0)
    labs = []
    for _ in range(4):
        m = rng.integers(0, 9, (12, 12))
        m[3:9, 3:9] = rng.integers(247, 256, (6, 6))
        labs.append(m)
    dm = _dm(_manifest(tmp_path, labs), label_threshold=128)
    cases = dm.prepared("train")
    assert dm.label_map == {0: "background", 1: "class_1"}
    assert int(cases[0].label.sum()) == 36 and set(cases[0].label.unique().tolist()) == {0, 1}


def test_non_contiguous_label_ids_map_to_channels_and_back(tmp_path: Path):
    labs = []
    for i in range(4):
        m = np.zeros((12, 12), np.int16)
        m[2:6, 2:6] = 2
        m[7:10, 7:10] = 255
        m[0, 0] = 41
        labs.append(m)
    dm = _dm(_manifest(tmp_path, labs), label_map={0: "bg", 2: "wm", 41: "csf", 255: "other"})
    cases = dm.prepared("train")
    assert dm.label_map == {0: "bg", 1: "wm", 2: "csf", 3: "other"} and dm.label_values == [0, 2, 41, 255]
    lab = cases[0].label[0]
    assert int((lab == 1).sum()) == 16 and int((lab == 3).sum()) == 9 and int(lab[0, 0]) == 2
    info = dm.info(cases)
    assert info.num_classes == 4
    from medrobust.data.datasets import DataInfo

    back = DataInfo.from_dict(info.to_dict())
    assert back.label_values == [0, 2, 41, 255]
    # evaluation rebuilds the same mapping from the checkpoint's record
    from medrobust.data.datasets import DataModule

    cfg = DataConfig.model_validate({"source": "manifest", "manifest": str(tmp_path / "m.csv")})
    ev = DataModule(cfg, "segmentation", label_map=back.label_map, label_values=back.label_values)
    assert int((ev.prepared("all")[0].label == 3).sum()) == 9


def test_inferred_label_map_is_logged_with_case_counts(tmp_path: Path, caplog):
    labs = [np.pad(np.ones((4, 4), np.int16) * (1 + (i % 2)), 4) for i in range(4)]
    with caplog.at_level("INFO", logger="medrobust"):
        dm = _dm(_manifest(tmp_path, labs, split=["train"] * 4), split={"val_fraction": 0.0})
        dm.prepared("train")
    assert "0 background (4 cases), 1 class_1 (2 cases), 2 class_2 (2 cases)" in caplog.text


def test_npz_named_arrays_with_spacing(tmp_path: Path):
    for i in range(4):
        seg = np.zeros((10, 10, 6), np.uint8)
        seg[2:6, 2:6, 1:4] = 1
        np.savez(tmp_path / f"s{i}.npz", vol=np.random.rand(10, 10, 6).astype(np.float32), seg=seg,
                 spacing=np.array([0.5, 0.5, 2.0]))
    (tmp_path / "m.csv").write_text("image,label\n" + "".join(f"s{i}.npz#vol,s{i}.npz#seg\n" for i in range(4)))
    dm = _dm(str(tmp_path / "m.csv"))
    c = dm.prepared("train")[0]
    assert c.case_id.startswith("s") and c.image.shape == (1, 10, 10, 6) and c.spacing == (0.5, 0.5, 2.0)
    assert int(c.label.sum()) == 48


def test_all_test_manifest_evaluates_with_split_all(tmp_path: Path):
    labs = [np.pad(np.ones((4, 4), np.int16), 4) for _ in range(3)]
    dm = _dm(_manifest(tmp_path, labs, split=["test"] * 3))
    assert len(dm.prepared("all")) == 3 and len(dm.splits["test"]) == 3 and dm.splits["train"] == []


def test_inspect_runs_training_label_checks(tmp_path: Path):
    labs = [np.pad(np.full((4, 4), 255, np.int16), 4) for _ in range(3)]
    m = _manifest(tmp_path, labs)
    res = _run("data", "inspect", m)
    assert res.exit_code == 1
    assert "training would refuse these labels" in res.output and "label_threshold" in res.output
    assert "no problems found" not in res.output
    res2 = _run("data", "inspect", m, "--label-remap", "{255: 1}")
    assert res2.exit_code == 0, res2.output
    assert "training: infers a 2-class label map" in res2.output
    res3 = _run("data", "inspect", m, "--labels", "0,1")
    rows = [ln for ln in res3.output.splitlines() if ln.strip().startswith("img")]
    assert rows and all(ln.rstrip().endswith("problem") for ln in rows), res3.output


def test_run_folder_is_accepted_as_checkpoint(tmp_path: Path):
    from medrobust.checkpoint import load_checkpoint
    from medrobust.training.engine import train

    res = train(load_config(TrainConfig, data=_tiny(tmp_path), base_dir=tmp_path))
    assert load_checkpoint(res.run_dir)["model_spec"] == load_checkpoint(res.best_checkpoint)["model_spec"]


def test_method_eps_zero_is_a_recorded_warning(tmp_path: Path):
    from medrobust.tasks import build_task
    from medrobust.threat import ThreatModel
    from medrobust.training.base import build_method, method_summary

    task = build_task("segmentation", 3)
    m = build_method({"name": "pgd_at", "eps": 0.0}, task, ThreatModel("L2", None), None)
    assert any("eps: 0" in w for w in method_summary(m)["warnings"])
    ok = build_method({"name": "pgd_at", "eps": 0.5}, task, ThreatModel("L2", None), None)
    assert "warnings" not in method_summary(ok)
