"""What bad input gets: the table below is the documentation (linked from docs/user_guide.md "Errors").

Every row is one careless-user input: a config, a data set, a checkpoint, an output folder or a
command line that is wrong in one way. Each row asserts that the command

- exits with status 2,
- prints exactly one ``error:`` line, one sentence, naming the problem (the row's pattern), and no
  traceback,
- leaves every file that existed before (inputs, earlier results, a finished training run)
  byte-identical.

The CLI runs in-process through click's ``CliRunner``; two tiny checkpoints (segmentation and
classification) are trained once for the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from conftest import tiny_train_config
from medrobust.cli import main


# ============================================================================ shared artefacts
@dataclass
class Shared:
    root: Path
    seg_cfg: dict  # the config the segmentation run was trained with
    seg_run: Path
    seg_ckpt: Path
    cls_ckpt: Path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    from medrobust.config import TrainConfig, load_config
    from medrobust.training.engine import train

    root = tmp_path_factory.mktemp("bad_inputs_shared")
    seg = tiny_train_config(root, epochs=1, batch_size=8, output_dir=str(root / "seg_run"),
                            data={"phantom": {"n_cases": 8, "size": [16, 16]}, "preprocess": {"size": [16, 16]}},
                            model={"params": {"channels": [4, 8], "strides": [2], "num_res_units": 0}})
    res = train(load_config(TrainConfig, data=seg, base_dir=root))
    cls = tiny_train_config(root, epochs=1, batch_size=8, task="classification", output_dir=str(root / "cls_run"),
                            data={"phantom": {"n_cases": 8, "size": [16, 16]}, "preprocess": {"size": [16, 16]}})
    cls["model"] = {"name": "small_cnn", "params": {"width": 4}}
    res_c = train(load_config(TrainConfig, data=cls, base_dir=root))
    return Shared(root, seg, res.run_dir, res.best_checkpoint, res_c.best_checkpoint)


class W:
    """One row's workspace: its own folder ``d`` plus the shared artefacts."""

    def __init__(self, shared: Shared, d: Path) -> None:
        self.s = shared
        self.d = d

    def yaml(self, name: str, data) -> str:
        p = self.d / name
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(p)

    def text(self, name: str, text: str) -> str:
        p = self.d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return str(p)

    def nii(self, name: str, arr, spacing=(1.0, 1.0, 1.0)) -> str:
        p = self.d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(arr), np.diag(list(spacing) + [1.0])), str(p))
        return str(p)

    def png(self, name: str, arr) -> str:
        p = self.d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(p)
        return str(p)

    def train(self, **over) -> dict:
        """A valid tiny training config (dict) writing into this row's folder."""
        from medrobust.config import deep_merge

        base = {k: v for k, v in self.s.seg_cfg.items() if k != "output_dir"}
        return deep_merge({**base, "output_dir": str(self.d / "run")}, over)

    def train_cls(self, **over) -> dict:
        """A valid tiny classification config (a classifier, so that only the row's own fault is wrong)."""
        cfg = self.train(task="classification", **over)
        cfg["model"] = {"name": "small_cnn", "params": {"width": 4}}
        return cfg

    def eval(self, **over) -> dict:
        from medrobust.config import deep_merge

        return deep_merge({"checkpoint": str(self.s.seg_ckpt), "split": "val", "examples": 0, "output_dir": str(self.d / "ev"),
                           "threat": {"budgets": [0.0]}}, over)

    def seg_manifest(self, labels: list, images: list | None = None, extra_cols: dict | None = None, n: int = 4,
                     kind: str = "nii") -> str:
        """A CSV manifest of ``n`` small cases whose label arrays are ``labels[i]`` (or built from values)."""
        rows = []
        rng = np.random.default_rng(0)
        for i in range(n):
            lab = labels[i] if i < len(labels) else labels[-1]
            img = images[i] if images and i < len(images) else rng.random(np.asarray(lab).shape).astype(np.float32)
            if kind == "png":
                ip, lp = self.png(f"data/img{i}.png", (np.asarray(img) * 255) if np.asarray(img).dtype != np.uint8 else img), \
                    self.png(f"data/lab{i}.png", lab)
            else:
                ip, lp = self.nii(f"data/img{i}.nii.gz", np.asarray(img, dtype=np.float32)), \
                    self.nii(f"data/lab{i}.nii.gz", np.asarray(lab, dtype=np.uint8))
            row = {"image": ip, "label": lp}
            for k, vals in (extra_cols or {}).items():
                row[k] = vals[i]
            rows.append(row)
        cols = list(rows[0])
        text = ",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows)
        return self.text("data/m.csv", text)

    def manifest_train(self, manifest: str, **data) -> list[str]:
        cfg = self.train(data={"source": "manifest", "manifest": manifest, "phantom": None, "preprocess": {"size": [16, 16]},
                               **data})
        cfg["data"].pop("phantom")
        return ["train-seg", self.yaml("t.yaml", cfg)]


def _mask(values=(0, 1), shape=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, dtype=np.uint8)
    m[4:12, 4:12] = values[1]
    if len(values) > 2:
        m[6:9, 6:9] = values[2]
    m[0, 0] = values[0]
    return m + 0 * rng.integers(0, 1, shape).astype(np.uint8)


def _jpeg_mask(shape=(16, 16), seed=0):
    """What a JPEG-compressed 0/255 mask holds: values 0-8 and 247-255."""
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 9, shape)
    m[4:12, 4:12] = rng.integers(247, 256, (8, 8))
    return m.astype(np.uint8)


# ============================================================================ the table
@dataclass
class Row:
    id: str
    family: str
    setup: Callable[[W], list[str]]
    expect: str


def _cfg(w: W, data) -> list[str]:
    return ["train-seg", w.yaml("c.yaml", data)]


def _evalcfg(w: W, cmd: str = "eval-seg", **over) -> list[str]:
    return [cmd, w.yaml("e.yaml", w.eval(**over))]


def _resume_changed(w: W, **over) -> list[str]:
    from medrobust.config import deep_merge

    cfg = deep_merge(w.s.seg_cfg, over)
    return ["train-seg", w.yaml("r.yaml", cfg), "--resume"]


def _lock_held(w: W) -> list[str]:
    out = w.d / "ev"
    out.mkdir()
    (out / ".medrobust.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                      "command": "eval-seg", "started": "2026-01-01T10:00:00"}))
    return _evalcfg(w)


def _marked(w: W, folder: str, command: str, config: dict, files=("results.csv",)) -> Path:
    from medrobust.outputs import write_marker

    out = w.d / folder
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, command, config)
    for f in files:
        (out / f).write_text("precious results\n")
    return out


def _eval_into_other_eval(w: W) -> list[str]:
    from medrobust.config import EvalConfig, load_config

    old = load_config(EvalConfig, data=w.eval(threat={"budgets": [0.0, 0.5]}), base_dir=w.d).model_dump(mode="json")
    _marked(w, "ev", "eval-seg", old)
    return _evalcfg(w)


def _npz_object(w: W) -> list[str]:
    p = w.d / "obj.npz"
    np.savez(p, train_images=np.array([{"a": 1}], dtype=object), train_labels=np.zeros((1, 1)),
             val_images=np.zeros((1, 8, 8)), val_labels=np.zeros((1, 1)), test_images=np.zeros((1, 8, 8)),
             test_labels=np.zeros((1, 1)))
    cfg = w.train_cls(data={"source": "medmnist", "medmnist": {"path": str(p)}})
    return ["train-classify", w.yaml("c.yaml", cfg)]


def _npz_manifest(w: W, ref: str) -> list[str]:
    for i in range(4):
        np.savez(w.d / f"s{i}.npz", vol=np.random.rand(16, 16).astype(np.float32), seg=_mask())
    m = w.text("m.csv", "image,label\n" + "".join(f"s{i}.npz{ref},s{i}.npz#seg\n" for i in range(4)))
    return w.manifest_train(m)


def _rgb_eval(w: W) -> list[str]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        ip = w.png(f"rgb/img{i}.png", rng.integers(0, 255, (16, 16, 3)))
        lp = w.png(f"rgb/lab{i}.png", _mask())
        rows.append(f"{ip},{lp},test")
    m = w.text("rgb/m.csv", "image,label,split\n" + "\n".join(rows) + "\n")
    return _evalcfg(w, split="test", data={"source": "manifest", "manifest": m, "dims": None,
                                           "preprocess": {"size": [16, 16], "intensity": {"kind": "scale"}}})


def _pipeline(w: W, steps, *extra) -> list[str]:
    return ["run", w.yaml("p.yaml", {"name": "p", "output_dir": "out", "steps": steps}), *extra]


def _skip_if_root(w: W) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    ro = w.d / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return _evalcfg(w, output_dir=str(ro / "ev"))


ROWS: list[Row] = [
    # ------------------------------------------------------------------ config files
    Row("config-is-nifti", "config", lambda w: ["train-seg", w.nii("x.nii.gz", np.zeros((4, 4, 4), np.float32))], r"binary file, not YAML"),
    Row("config-is-png", "config", lambda w: ["train-seg", w.png("x.png", np.zeros((4, 4)))], r"binary file, not YAML"),
    Row("config-is-folder", "config", lambda w: ["train-seg", str(w.d)], r"is a folder; give the path of a YAML file"),
    Row("config-missing", "config", lambda w: ["train-seg", str(w.d / "nope.yaml")], r"nope\.yaml' does not exist"),
    Row("config-empty", "config", lambda w: ["train-seg", w.text("c.yaml", "")], r"is empty"),
    Row("config-only-comments", "config", lambda w: ["eval-seg", w.text("c.yaml", "# nothing\n")], r"is empty"),
    Row("config-is-list", "config", lambda w: ["train-seg", w.text("c.yaml", "- epochs: 3\n")], r"must hold a mapping"),
    Row("config-bad-yaml", "config", lambda w: ["train-seg", w.text("c.yaml", "epochs: [3\n")], r"not valid YAML at line 2"),
    Row("config-duplicate-key", "config", lambda w: ["train-seg", w.text("c.yaml", "epochs: 1\nbatch_size: 2\nepochs: 3\n")],
        r"key 'epochs' appears twice \(lines 1 and 3\)"),
    Row("config-duplicate-nested-key", "config",
        lambda w: ["train-seg", w.text("c.yaml", "data:\n  dims: 2\n  dims: 3\n")], r"key 'dims' appears twice"),
    Row("config-typo-top", "config", lambda w: _cfg(w, w.train(epochz=3)), r"unknown key 'epochz'; did you mean 'epochs'"),
    Row("config-typo-nested", "config", lambda w: _cfg(w, w.train(data={"preprocess": {"sise": [8, 8]}})),
        r"unknown key 'data\.preprocess\.sise'; did you mean 'data\.preprocess\.size'"),
    Row("config-wrong-type", "config", lambda w: _cfg(w, w.train(epochs="three")), r"invalid value for 'epochs' \(got 'three'\)"),
    Row("config-zero-epochs", "config", lambda w: _cfg(w, w.train(epochs=0)), r"invalid value for 'epochs'"),
    Row("train-threat-eps", "config", lambda w: _cfg(w, w.train(threat={"eps": 0.03})),
        r"threat\.eps is not used by training.*method: \{name"),
    Row("train-threat-eps-negative", "config", lambda w: _cfg(w, w.train(threat={"eps": -5})),
        r"threat\.eps is not used by training.*method: \{name"),
    Row("train-threat-budgets", "config", lambda w: _cfg(w, w.train(threat={"budgets": [0.1]})), r"threat\.budgets is not used by training"),
    Row("train-threat-units", "config", lambda w: _cfg(w, w.train(threat={"units": "rms"})),
        r"threat\.units is not used by training.*method: \{name: \.\.\., eps: \.\.\., units"),
    Row("eval-threat-eps", "config", lambda w: _evalcfg(w, threat={"budgets": [0.0], "eps": 0.1}),
        r"threat\.eps is not used by evaluation; remove it and list the budgets to evaluate in threat\.budgets"),
    Row("margins-threat-eps", "config", lambda w: ["margins", w.yaml("m.yaml", {"checkpoint": str(w.s.seg_ckpt), "threat": {"eps": 0.5}})],
        r"threat\.eps is not used by margins.*set eps_max"),
    Row("margins-threat-budgets", "config",
        lambda w: ["margins", w.yaml("m.yaml", {"checkpoint": str(w.s.seg_ckpt), "threat": {"budgets": [0.0, 0.1]}})],
        r"threat\.budgets is not used by margins.*set eps_max"),
    Row("model-param-typo", "config", lambda w: _cfg(w, w.train(model={"params": {"stridez": [2]}})),
        r"model 'unet' does not take the parameter 'stridez'"),
    Row("unknown-model", "config", lambda w: _cfg(w, w.train(model={"name": "unet3"})), r"unknown model 'unet3'; did you mean"),
    Row("eval-attack-param-typo", "config", lambda w: _evalcfg(w, attacks=[{"name": "pgd", "stepz": 3}]),
        r"attack 'pgd': unknown key 'stepz'; did you mean 'steps'"),
    Row("margins-attack-param-typo", "config",
        lambda w: ["margins", w.yaml("m.yaml", {"checkpoint": str(w.s.seg_ckpt), "attack": {"name": "pgd", "stepz": 3}})],
        r"attack 'pgd': unknown key 'stepz'; did you mean 'steps'"),
    Row("val-attack-param-typo", "config",
        lambda w: _cfg(w, w.train(method={"name": "pgd_at", "eps": 0.1}, val_attack={"attack": {"name": "apgd", "n_iterz": 2}})),
        r"attack 'apgd': unknown key 'n_iterz'; did you mean 'n_iter'"),
    Row("train-sliding-window", "config", lambda w: _cfg(w, w.train(inference={"sliding_window": True})),
        r"inference\.sliding_window has no effect in a training config"),
    Row("unknown-method", "config", lambda w: _cfg(w, w.train(method="pgd-at")), r"unknown training method 'pgd-at'; did you mean 'pgd_at'"),
    Row("method-param-typo", "config", lambda w: _cfg(w, w.train(method={"name": "pgd_at", "epz": 1})),
        r"method 'pgd_at': unknown key 'epz'; did you mean 'eps'"),
    Row("split-fractions", "config", lambda w: _cfg(w, w.train(data={"split": {"val_fraction": 0.6, "test_fraction": 0.5}})),
        r"split fractions must be in \[0, 1\)"),
    Row("window-without-bounds", "config", lambda w: _cfg(w, w.train(data={"preprocess": {"intensity": {"kind": "window"}}})),
        r"needs a_min and a_max"),
    Row("manifest-source-without-manifest", "config", lambda w: _cfg(w, w.train(data={"source": "manifest"})),
        r"data\.manifest is not set"),
    Row("base-cycle", "config", lambda w: ["train-seg", w.text("c.yaml", "_base_: c.yaml\nepochs: 1\n")], r"includes itself"),
    Row("set-without-equals", "config", lambda w: _cfg(w, w.train()) + ["--set", "epochs"], r"override 'epochs' has no '='"),
    Row("set-empty-key", "config", lambda w: _cfg(w, w.train()) + ["--set", "data..dims=2"], r"empty key part"),
    Row("wrong-task-command", "config", lambda w: ["train-classify", w.yaml("c.yaml", w.train(task="segmentation"))],
        r"use `medrobust train-seg`"),
    Row("eval-missing-checkpoint-key", "config", lambda w: ["eval-seg", w.yaml("e.yaml", {"split": "val"})],
        r"required key 'checkpoint' is missing"),
    Row("eval-bounds-exclude-images", "config", lambda w: _evalcfg(w, threat={"budgets": [0.0], "bounds": [5.0, 6.0]}),
        r"outside threat\.bounds \[?\(?5\.0, 6\.0"),
    Row("eval-negative-nsd", "config", lambda w: _evalcfg(w, nsd_tolerance_mm=-1), r"invalid value for 'nsd_tolerance_mm' \(got -1\)"),
    Row("eval-unknown-metric", "config", lambda w: _evalcfg(w, metrics=["dise"]), r"invalid value for 'metrics\.0'"),
    Row("eval-train-key", "config", lambda w: _evalcfg(w, epochs=3), r"unknown key 'epochs'"),
    # ------------------------------------------------------------------ command line
    Row("cli-unknown-option", "cli", lambda w: _cfg(w, w.train()) + ["--bogus"], r"no such option '--bogus'"),
    Row("cli-unknown-command", "cli", lambda w: ["trian-seg"], r"no such command 'trian-seg'; did you mean 'train-seg'\?"),
    Row("cli-resume-and-overwrite", "cli", lambda w: _cfg(w, w.train()) + ["--resume", "--overwrite"], r"contradict each other"),
    Row("phantoms-zero-cases", "cli", lambda w: ["data", "phantoms", str(w.d / "ph"), "--cases", "0"], r"--cases must be at least 1"),
    Row("phantoms-size-letters", "cli", lambda w: ["data", "phantoms", str(w.d / "ph"), "--size", "a,b"],
        r"--size must be comma-separated integers"),
    Row("phantoms-size-one-value", "cli", lambda w: ["data", "phantoms", str(w.d / "ph"), "--size", "32"], r"--size must be 2 or 3"),
    Row("phantoms-cases-not-int", "cli", lambda w: ["data", "phantoms", str(w.d / "ph"), "--cases", "x"],
        r"invalid value for '--cases'"),
    Row("inspect-labels-not-int", "cli", lambda w: ["data", "inspect", w.seg_manifest([_mask()]), "--labels", "0,x"],
        r"--labels must be comma-separated integers"),
    Row("inspect-remap-bad-yaml", "cli", lambda w: ["data", "inspect", w.seg_manifest([_mask()]), "--label-remap", "{255: 1"],
        r"--label-remap must be a YAML mapping"),
    Row("inspect-missing-source", "cli", lambda w: ["data", "inspect", str(w.d / "none.csv")], r"does not exist"),
    Row("run-only-unknown-step", "cli", lambda w: _pipeline(w, [{"id": "ev", "command": "eval-seg", "config": w.eval()}], "--only", "evl"),
        r"--only 'evl' is not a step.*did you mean 'ev'"),
    # ------------------------------------------------------------------ pipelines
    Row("pipeline-unknown-command", "pipeline", lambda w: _pipeline(w, [{"id": "a", "command": "eval-sge", "config": {}}]),
        r"unknown command 'eval-sge'; did you mean 'eval-seg'"),
    Row("pipeline-duplicate-ids", "pipeline",
        lambda w: _pipeline(w, [{"id": "a", "command": "eval-seg", "config": {}}, {"id": "a", "command": "eval-seg", "config": {}}]),
        r"duplicate step ids"),
    Row("pipeline-bad-reference", "pipeline",
        lambda w: _pipeline(w, [{"id": "ev", "command": "eval-seg", "config": {"checkpoint": "${train.best_checkpoint}"}}]),
        r"no earlier step has id 'train'"),
    Row("pipeline-override-without-step", "pipeline",
        lambda w: _pipeline(w, [{"id": "ev", "command": "eval-seg", "config": w.eval()}], "--set", "epochs=2"),
        r"must start with a step id"),
    Row("pipeline-empty-train-step", "pipeline", lambda w: _pipeline(w, [{"id": "train", "command": "train-seg", "config": {}}]),
        r"step 'train': the training config is empty"),
    Row("pipeline-duplicate-key", "pipeline", lambda w: ["run", w.text("p.yaml", "name: a\nname: b\nsteps: []\n")], r"appears twice"),
    # ------------------------------------------------------------------ data
    Row("manifest-missing-file", "data", lambda w: w.manifest_train(w.text("m.csv", f"image,label\n{w.d}/no.nii.gz,{w.d}/no_l.nii.gz\n")),
        r"no\.nii\.gz' listed in m\.csv row 2 does not exist"),
    Row("manifest-no-image-column", "data", lambda w: w.manifest_train(w.text("m.csv", "img,label\na,b\n")), r"has no 'image' column"),
    Row("manifest-bad-extension", "data", lambda w: w.manifest_train(w.text("m.txt", "x")), r"unsupported extension '\.txt'"),
    Row("manifest-partial-split", "data",
        lambda w: w.manifest_train(w.seg_manifest([_mask()], extra_cols={"split": ["train", "", "test", "val"]})),
        r"row\(s\) 3 leave it blank"),
    Row("manifest-bad-split-value", "data",
        lambda w: w.manifest_train(w.seg_manifest([_mask()], extra_cols={"split": ["training", "train", "test", "val"]})),
        r"has split 'training'; use train, val or test"),
    Row("manifest-duplicate-case-id", "data",
        lambda w: w.manifest_train(w.seg_manifest([_mask()], extra_cols={"case_id": ["a", "b", "a", "c"]})), r"case id 'a' appears twice"),
    Row("manifest-same-image-two-splits", "data",
        lambda w: w.manifest_train(w.text("m2.csv", Path(w.seg_manifest(
            [_mask()], extra_cols={"split": ["train", "train", "val", "test"], "case_id": ["a", "b", "c", "d"]}))
            .read_text().replace("img3.nii.gz", "img0.nii.gz"))),
        r"img0\.nii\.gz' is listed for case 'a' \(train\) and case 'd' \(test\)"),
    Row("manifest-copied-image-two-splits", "data",
        lambda w: (w.seg_manifest([_mask()], extra_cols={"split": ["train", "train", "val", "test"]}),
                   (w.d / "data/img3.nii.gz").write_bytes((w.d / "data/img0.nii.gz").read_bytes()),
                   w.manifest_train(str(w.d / "data/m.csv")))[-1],
        r"identical content"),
    Row("label-stray-value", "data",
        lambda w: w.manifest_train(w.seg_manifest([_mask(), _mask(), _mask((0, 1, 7)), _mask()],
                                                  extra_cols={"split": ["train", "train", "train", "val"]})),
        r"class\(es\) \[2, 3, 4, 5, 6\] occur in no training case while label 7 occurs in 1 case"),
    Row("label-remap-gap", "data", lambda w: w.manifest_train(w.seg_manifest([_mask((0, 255))]), label_remap={255: 3}),
        r"class\(es\) \[1, 2\] occur in no training case"),
    Row("label-0-255", "data", lambda w: w.manifest_train(w.seg_manifest([_mask((0, 255))])),
        r"label_remap: \{255: 1\}, or data\.label_threshold: 128"),
    Row("label-jpeg-mask", "data", lambda w: w.manifest_train(w.seg_manifest([_jpeg_mask(seed=i) for i in range(4)])),
        r"JPEG-compressed binary mask: set data\.label_threshold: 128"),
    Row("label-map-too-small", "data", lambda w: w.manifest_train(w.seg_manifest([_mask((0, 1, 2))]), label_map={0: "bg", 1: "a"}),
        r"label values \[2\] outside the label map \[0, 1\]"),
    Row("image-nan", "data",
        lambda w: w.manifest_train(w.seg_manifest([_mask()], images=[np.full((16, 16), np.nan, np.float32)]
                                                  + [np.full((16, 16), i, np.float32) for i in range(1, 4)])),
        r"has 256 NaN/inf image voxels"),
    Row("image-label-shape", "data",
        lambda w: w.manifest_train(w.seg_manifest([_mask()], images=[np.full((12, 16), i, np.float32) for i in range(4)])),
        r"image shape \(12, 16\) and label shape \(16, 16\) differ"),
    Row("label-rgb-differing", "data",
        lambda w: w.manifest_train(w.seg_manifest([np.stack([_mask(), _mask() * 0, _mask()], -1)], kind="png")),
        r"differing colour channels"),
    Row("npz-object-array", "data", _npz_object, r"holds Python objects"),
    Row("npz-without-array-name", "data", lambda w: _npz_manifest(w, ""), r"name the array in the manifest as 's0\.npz#<array>'"),
    Row("npz-unknown-array", "data", lambda w: _npz_manifest(w, "#volume"), r"has no array 'volume' \(it has \['vol', 'seg'\]\)"),
    Row("medmnist-missing-arrays", "data",
        lambda w: (np.savez(w.d / "m.npz", train_images=np.zeros((2, 8, 8))),
                   ["train-classify", w.yaml("c.yaml", w.train_cls(data={"source": "medmnist",
                                                                         "medmnist": {"path": str(w.d / "m.npz")}}))])[1],
        r"lacks the arrays"),
    Row("classification-no-class-column", "data",
        lambda w: ["train-classify", w.yaml("c.yaml", {**w.train_cls(), "data": {
            "source": "manifest", "manifest": w.seg_manifest([_mask()])}})], r"set data\.class_column"),
    Row("missing-data-root", "data",
        lambda w: _cfg(w, {"data": {"source": "manifest", "manifest": "${data_root}/nothing/dataset.json", "root": str(w.d / "noroot")}}),
        r"noroot/nothing/dataset\.json' does not exist"),
    # ------------------------------------------------------------------ checkpoints
    Row("checkpoint-missing", "checkpoint", lambda w: _evalcfg(w, checkpoint=str(w.d / "nope.pt")), r"nope\.pt' does not exist"),
    Row("checkpoint-empty-folder", "checkpoint", lambda w: (os.mkdir(w.d / "folder"), _evalcfg(w, checkpoint=str(w.d / "folder")))[1],
        r"is a folder without best\.pt or last\.pt"),
    Row("checkpoint-truncated", "checkpoint",
        lambda w: (Path(w.d / "t.pt").write_bytes(w.s.seg_ckpt.read_bytes()[:2000]), _evalcfg(w, checkpoint=str(w.d / "t.pt")))[1],
        r"could not be loaded safely.*corrupt, truncated"),
    Row("checkpoint-text-file", "checkpoint", lambda w: _evalcfg(w, checkpoint=w.text("x.pt", "hello")),
        r"could not be loaded safely \(not a complete PyTorch zip archive\)"),
    Row("checkpoint-foreign", "checkpoint",
        lambda w: (torch.save({"state_dict": {}}, w.d / "f.pt"), _evalcfg(w, checkpoint=str(w.d / "f.pt")))[1],
        r"is not a medrobust checkpoint"),
    Row("checkpoint-pickled-object", "checkpoint",
        lambda w: (torch.save({"format": "medrobust-checkpoint/1", "x": Path("/")}, w.d / "evil.pt"),
                   _evalcfg(w, checkpoint=str(w.d / "evil.pt")))[1],
        r"could not be loaded safely \(it holds Python objects other than tensors"),
    Row("checkpoint-wrong-task", "checkpoint", lambda w: _evalcfg(w, "eval-classify"), r"use `medrobust eval-seg`"),
    Row("margins-on-classifier", "checkpoint",
        lambda w: ["margins", w.yaml("m.yaml", {"checkpoint": str(w.s.cls_ckpt), "output_dir": str(w.d / "mg")})],
        r"set task: classification in the margins config"),
    Row("dims-override-mismatch", "checkpoint", lambda w: _evalcfg(w, data={"dims": 3}), r"data\.dims is 3 but checkpoint .* 2D model"),
    Row("rgb-images-one-channel-model", "checkpoint", _rgb_eval, r"has 3 image channel\(s\) but checkpoint .* takes 1"),
    Row("init-from-missing", "checkpoint", lambda w: _cfg(w, w.train(init_from=str(w.d / "nope.pt"))), r"nope\.pt' does not exist"),
    # ------------------------------------------------------------------ output folders and runs
    Row("output-dir-is-file", "output", lambda w: _evalcfg(w, output_dir=w.text("afile", "x")), r"is a file, not a folder"),
    Row("output-dir-under-file", "output", lambda w: _evalcfg(w, output_dir=str(Path(w.text("afile", "x")) / "ev")),
        r"cannot be created because .*afile' is a file"),
    Row("output-dir-read-only", "output", _skip_if_root, r"is not writable"),
    Row("eval-into-user-files", "output", lambda w: (w.text("ev/notes.txt", "mine"), _evalcfg(w))[1],
        r"already holds files that medrobust did not write \('notes\.txt'\)"),
    Row("eval-into-other-eval", "output", _eval_into_other_eval, r"different config \(changed: threat\.budgets: \[0\.0, 0\.5\] -> \[0\.0\]\)"),
    Row("eval-into-train-run", "output", lambda w: _evalcfg(w, output_dir=str(w.s.seg_run)), r"holds the output of `medrobust train-seg`"),
    Row("train-into-eval-folder", "output", lambda w: (_marked(w, "run", "eval-seg", {"x": 1}), _cfg(w, w.train()))[1],
        r"holds the output of `medrobust eval-seg`"),
    Row("train-into-user-files", "output", lambda w: (w.text("run/data.csv", "mine"), _cfg(w, w.train()))[1],
        r"did not write \('data\.csv'\)"),
    Row("phantoms-into-dataset", "output", lambda w: (w.text("ds/imagesTr/case1.nii.gz", "mine"), ["data", "phantoms", str(w.d / "ds")])[1],
        r"did not write \('imagesTr'\)"),
    Row("margins-into-eval", "output",
        lambda w: (_marked(w, "mg", "eval-seg", {"x": 1}),
                   ["margins", w.yaml("m.yaml", {"checkpoint": str(w.s.seg_ckpt), "output_dir": str(w.d / "mg")})])[1],
        r"holds the output of `medrobust eval-seg`"),
    Row("second-writer-lock", "output", _lock_held, r"is in use by `medrobust eval-seg` \(pid \d+"),
    Row("train-finished-run-again", "output", lambda w: ["train-seg", w.yaml("r.yaml", w.s.seg_cfg)],
        r"already holds a finished run \(pass --resume"),
    Row("resume-changed-lr", "output", lambda w: _resume_changed(w, optimizer={"lr": 0.1}),
        r"cannot be resumed with this one \(changed: optimizer\.lr: 0\.003 -> 0\.1; only epochs may change"),
    Row("resume-changed-method", "output", lambda w: _resume_changed(w, method="trades"), r"changed: method: \"standard\" -> \"trades\""),
    Row("resume-changed-data-seed", "output", lambda w: _resume_changed(w, data={"split": {"seed": 3}}), r"changed: data\.split\.seed: 0 -> 3"),
    Row("resume-nothing-there", "output", lambda w: _cfg(w, w.train()) + ["--resume"], r"cannot resume: .*last\.pt' does not exist"),
]


# ============================================================================ the test
def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _one_sentence(line: str) -> bool:
    body = re.sub(r"'[^']*'|`[^`]*`|\"[^\"]*\"", "q", line)  # quoted file names and values
    return body.rstrip().endswith((".", "?")) and not re.search(r"[.!?]\s+[A-Z]", body)


def test_table_is_large_and_covers_every_family():
    assert len(ROWS) >= 60
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert {r.family for r in ROWS} >= {"config", "cli", "pipeline", "data", "checkpoint", "output"}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, shared: Shared, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = row.setup(W(shared, tmp_path))
    before = _snapshot(tmp_path, shared.root)
    res = CliRunner().invoke(main, argv, catch_exceptions=True)
    tb = "".join(traceback.format_exception(*res.exc_info)) if res.exc_info and not isinstance(res.exception, SystemExit) else ""
    assert not tb, tb
    assert res.exit_code == 2, res.output
    err = res.stderr
    assert "Traceback" not in res.output
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert re.search(row.expect, lines[0]), lines[0]
    assert _one_sentence(lines[0]), lines[0]
    after = _snapshot(tmp_path, shared.root)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed or removed: {changed}"
