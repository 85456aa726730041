"""CLI and pipelines: one-sentence errors with exit status 2, data inspect, pipeline step wiring."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from click.testing import CliRunner

from conftest import tiny_train_config
from medrobust.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _one_sentence_error(res, pattern: str):
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]


def test_unknown_key_and_malformed_yaml(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("epochz: 3\n")
    _one_sentence_error(_run("train-seg", str(p)), r"unknown key 'epochz'; did you mean 'epochs'")
    p.write_text("epochs: [3\n")
    _one_sentence_error(_run("train-seg", str(p)), r"not valid YAML at line")
    _one_sentence_error(_run("train-seg", str(tmp_path / "missing.yaml")), "does not exist")


def test_wrong_task_and_missing_checkpoint(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("task: segmentation\n")
    _one_sentence_error(_run("train-classify", str(p)), "use `medrobust train-seg`")
    e = tmp_path / "e.yaml"
    e.write_text(f"checkpoint: {tmp_path / 'nope.pt'}\n")
    _one_sentence_error(_run("eval-seg", str(e)), r"checkpoint .*nope\.pt' does not exist")


def test_missing_data_root_is_one_sentence(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MEDROBUST_DATA_ROOT", str(tmp_path / "no_such_root"))
    p = tmp_path / "c.yaml"
    p.write_text("data: {source: manifest, manifest: '${data_root}/msd_hippocampus/dataset.json'}\n")
    _one_sentence_error(_run("train-seg", str(p)), r"no_such_root.*does not exist")


def test_data_inspect_reports_every_problem(tmp_path: Path):
    def nii(name, a, aff=np.eye(4)):
        nib.save(nib.Nifti1Image(a, aff), str(tmp_path / name))

    img = np.random.rand(8, 8, 4).astype(np.float32)
    lab = np.zeros((8, 8, 4), np.uint8)
    lab[2:4, 2:4, 1] = 1
    nii("ok.nii.gz", img)
    nii("ok_l.nii.gz", lab)
    nii("shape_l.nii.gz", np.zeros((8, 8, 3), np.uint8))
    nii("range_l.nii.gz", lab * 7)
    nii("empty_l.nii.gz", np.zeros((8, 8, 4), np.uint8))
    bad = img.copy()
    bad[0, 0, 0] = np.inf
    nii("nan.nii.gz", bad)
    nii("sp_l.nii.gz", lab, np.diag([2.0, 1, 1, 1]))
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    (tmp_path / "m.csv").write_text("case_id,image,label\n" + "\n".join([
        "ok,ok.nii.gz,ok_l.nii.gz", "shape,ok.nii.gz,shape_l.nii.gz", "range,ok.nii.gz,range_l.nii.gz",
        "empty,ok.nii.gz,empty_l.nii.gz", "nan,nan.nii.gz,ok_l.nii.gz", "spacing,ok.nii.gz,sp_l.nii.gz",
        "broken,broken.nii.gz,ok_l.nii.gz", "missing,gone.nii.gz,ok_l.nii.gz"]) + "\n")
    res = _run("data", "inspect", str(tmp_path / "m.csv"), "--labels", "0,1,2", "--csv", str(tmp_path / "t.csv"))
    assert res.exit_code == 1
    out = res.output
    for needle in ("shape: image shape", "range: label values [7]", "empty: empty mask", "nan: 1 NaN/inf",
                   "spacing: image spacing", "broken:", "missing:"):
        assert needle in out, (needle, out)
    assert "ok " not in [l[:3] for l in out.splitlines() if l.startswith("  - ")]
    assert (tmp_path / "t.csv").is_file()


def test_pipeline_runs_steps_and_wires_outputs(tmp_path: Path):
    train = tiny_train_config(tmp_path, epochs=1)
    del train["output_dir"]
    spec = {"name": "tiny", "output_dir": "out",
            "steps": [{"id": "train", "command": "train-seg", "config": train},
                      {"id": "ev", "command": "eval-seg",
                       "config": {"checkpoint": "${train.best_checkpoint}", "split": "val", "examples": 1,
                                  "threat": {"norm": "Linf", "budgets": [0.0, 0.1]},
                                  "attacks": [{"name": "white_noise", "draws": 2}, {"name": "pgd", "steps": 2}]}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    res = _run("run", str(tmp_path / "p.yaml"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "train" / "best.pt").is_file()
    assert (tmp_path / "out" / "ev" / "results.csv").is_file()
    assert "report.html" in res.output
    # re-running reuses the finished training step; the evaluation step whose config changed is refused
    # with the changed key (its old results are never silently replaced) unless --overwrite moves them aside
    before = (tmp_path / "out" / "ev" / "results.csv").read_bytes()
    refused = _run("run", str(tmp_path / "p.yaml"), "--set", "ev.threat.budgets=[0.0]")
    _one_sentence_error(refused, r"different config \(changed: threat\.budgets")
    assert (tmp_path / "out" / "ev" / "results.csv").read_bytes() == before
    again = _run("run", str(tmp_path / "p.yaml"), "--set", "ev.threat.budgets=[0.0]", "--overwrite")
    assert again.exit_code == 0, again.output
    moved = list((tmp_path / "out" / "ev").glob("old-*/results.csv"))
    assert len(moved) == 1 and moved[0].read_bytes() == before
    # a changed training step is refused with the diff, never silently reused
    changed = _run("run", str(tmp_path / "p.yaml"), "--set", "train.optimizer.lr=0.1")
    _one_sentence_error(changed, r"cannot be resumed.*optimizer\.lr: 0\.003 -> 0\.1")


def test_pipeline_bad_reference(tmp_path: Path):
    spec = {"steps": [{"id": "ev", "command": "eval-seg", "config": {"checkpoint": "${train.best_checkpoint}"}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    _one_sentence_error(_run("run", str(tmp_path / "p.yaml")), r"no earlier step has id 'train'")
    spec = {"steps": [{"id": "a", "command": "train-sge", "config": {}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    _one_sentence_error(_run("run", str(tmp_path / "p.yaml")), r"did you mean 'train-seg'")


def test_list_commands():
    for what, needle in (("models", "smp_unet"), ("methods", "standard"), ("attacks", "seg_ensemble")):
        res = _run("list", what)
        assert res.exit_code == 0 and needle in res.output
