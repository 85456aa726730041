"""Model sources: nnU-Net v2 trained-model folders, MONAI bundles and TorchScript files.

Everything is built offline: a tiny nnU-Net folder (hand-written plans, network from nnU-Net's own
``get_network_from_plans``, checkpoint in nnU-Net's format) and a tiny bundle. Fidelity is checked
against the sources' own predictors (``nnUNetPredictor``, the bundle's inference config), and the
round trip (fine-tune with medrobust, write back, predict with the source's own code) end to end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from nnunet_fixtures import bundle_predict, make_bundle, make_nnunet_folder, medrobust_predict, nnunet_predict  # noqa: E402

from medrobust.config import deep_merge  # noqa: E402
from medrobust.errors import CheckpointError, ConfigError  # noqa: E402

NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA")


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    old = {k: os.environ.get(k) for k in NNUNET_ENV}
    tmp = tmp_path_factory.mktemp("nnunet")
    folder, raw = make_nnunet_folder(tmp, n_cases=3)
    yield folder, raw, tmp
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _compare_with_nnunet(folder: Path, raw: Path, params=None):
    from medrobust.models.sources import load_external

    ext = load_external(folder, "nnunetv2", params or {}, "segmentation")
    files = sorted(str(p) for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
    ref = nnunet_predict(folder, files, mirroring=(params or {}).get("mirroring", True))
    mine = medrobust_predict(ext.model, deep_merge(ext.data_defaults, {"source": "manifest", "manifest": str(raw)}),
                             ext.data_info["label_map"])
    agree, dprob, fg = [], [], []
    for f, (seg, prob) in zip(files, ref):
        m = mine[Path(f).name.replace("_0000.nii.gz", "")]
        assert m.shape == prob.shape
        agree.append(float((m.argmax(0) == seg).mean()))
        dprob.append(float(np.abs(m - prob).max()))
        fg.append(float((seg > 0).mean()))
    return ext, np.array(agree), np.array(dprob), np.array(fg)


def test_list_sources_cli():
    from click.testing import CliRunner

    from medrobust.cli import main

    res = CliRunner().invoke(main, ["list", "sources"])
    assert res.exit_code == 0
    for name in ("registry", "nnunetv2", "monai_bundle", "torchscript"):
        assert name in res.output


def test_detect_source(nnunet_env, tmp_path):
    from medrobust.models.sources import detect_source

    folder, raw, _ = nnunet_env
    assert detect_source(folder) == "nnunetv2"
    assert detect_source(raw) is None
    b, _ = make_bundle(tmp_path, n_cases=1)
    assert detect_source(b) == "monai_bundle"
    m = torch.jit.script(torch.nn.Conv2d(1, 2, 1))
    torch.jit.save(m, str(tmp_path / "m.ts"))
    assert detect_source(tmp_path / "m.ts") == "torchscript"
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    assert detect_source(tmp_path / "plain.pt") is None


def test_nnunet_clean_predictions_match_nnunet_predictor(nnunet_env):
    """medrobust through the plans' preprocessing and its own windows = nnUNetPredictor (2d, ZScore, mirroring)."""
    folder, raw, _ = nnunet_env
    ext, agree, dprob, fg = _compare_with_nnunet(folder, raw)
    assert fg.min() > 0.02  # the tiny model predicts structures, so the comparison means something
    assert agree.min() >= 0.999, agree  # measured: 1.0, 1.0, 0.99991, 1.0 (one voxel of 46080 differs)
    assert dprob.max() < 0.05, dprob  # measured <= 0.004 here, <= 0.037 for 3d (nnU-Net accumulates in float16)
    assert ext.description["folder"] == str(folder.resolve())
    assert ext.description["mirroring"] == [0, 1]
    assert ext.data_defaults["dims"] == 2 and ext.data_defaults["preprocess"]["intensity"]["kind"] == "zscore"


def test_nnunet_fold_ensemble_matches(nnunet_env, tmp_path):
    """Two folds (the second with shifted weights): averaged logits, as nnUNetPredictor averages them."""
    import shutil

    from medrobust.models.sources import load_external

    folder, raw, _ = nnunet_env
    two = tmp_path / folder.name
    shutil.copytree(folder, two)
    (two / "fold_1").mkdir()
    ck = torch.load(two / "fold_0" / "checkpoint_final.pth", weights_only=False)
    g = torch.Generator().manual_seed(1)
    ck["network_weights"] = {k: (v + 0.2 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
                             for k, v in ck["network_weights"].items()}
    torch.save(ck, two / "fold_1" / "checkpoint_final.pth")
    ext = load_external(two, "nnunetv2", {"folds": [0, 1], "mirroring": False}, "segmentation")
    assert len(ext.model.networks) == 2 and ext.description["folds"] == [0, 1]
    files = sorted(str(p) for p in (raw / "imagesTr").glob("*_0000.nii.gz"))[:1]
    seg, prob = nnunet_predict(two, files, mirroring=False, folds=(0, 1))[0]
    mine = next(iter(medrobust_predict(ext.model, deep_merge(ext.data_defaults, {"source": "manifest", "manifest": str(raw),
                                                                                   "max_cases": 1}), ext.data_info["label_map"]).values()))
    assert float(np.abs(mine - prob).max()) < 0.05
    assert float((mine.argmax(0) == seg).mean()) >= 0.999
    single = load_external(folder, "nnunetv2", {"mirroring": False}, "segmentation")
    one = next(iter(medrobust_predict(single.model, deep_merge(single.data_defaults, {"source": "manifest", "manifest": str(raw),
                                                                                        "max_cases": 1}), single.data_info["label_map"]).values()))
    assert float(np.abs(one - prob).max()) > 0.05  # the second fold matters


def test_nnunet_axis_mapping_is_needed(nnunet_env):
    """The same comparison with the axes left in medrobust's order fails: the test can tell."""
    from medrobust.models.sources import load_external

    folder, raw, _ = nnunet_env
    ext = load_external(folder, "nnunetv2", {"mirroring": False}, "segmentation")
    ext.model.perm, ext.model.inv = [0, 1], [0, 1]
    files = sorted(str(p) for p in (raw / "imagesTr").glob("*_0000.nii.gz"))[:1]
    ref = nnunet_predict(folder, files, mirroring=False)
    mine = medrobust_predict(ext.model, deep_merge(ext.data_defaults, {"source": "manifest", "manifest": str(raw), "max_cases": 1}),
                             ext.data_info["label_map"])
    prob = ref[0][1]
    assert float(np.abs(next(iter(mine.values())) - prob).max()) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("configuration,scheme,transpose", [("3d", "CTNormalization", (0, 1, 2)),
                                                            ("2d", "ZScoreNormalization", (1, 0, 2))])
def test_nnunet_other_configurations_match(tmp_path, configuration, scheme, transpose):
    """3d with CT normalisation (clip + fingerprint z-score), and a 2d plan with transpose_forward."""
    old = {k: os.environ.get(k) for k in NNUNET_ENV}
    try:
        folder, raw = make_nnunet_folder(tmp_path, configuration=configuration, scheme=scheme, transpose=transpose, steps=60)
        ext, agree, dprob, _ = _compare_with_nnunet(folder, raw)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert agree.min() >= 0.999, agree
    assert dprob.max() < 0.05, dprob
    if scheme == "CTNormalization":
        w = ext.data_defaults["preprocess"]["intensity"]
        assert w["kind"] == "window" and w["clip"] and w["b_min"] < 0 < w["b_max"]


def test_nnunet_checkpoint_safety(nnunet_env, tmp_path):
    import argparse
    import shutil

    from medrobust.models.sources.nnunetv2 import load_nnunet_checkpoint

    folder, _, _ = nnunet_env
    ck = load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")  # NumPy scalars: allow-listed
    assert isinstance(ck["_best_ema"], np.floating)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    ck = torch.load(bad / "fold_0" / "checkpoint_final.pth", weights_only=False)
    ck["extra"] = argparse.Namespace(a=1)
    torch.save(ck, bad / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(CheckpointError, match="trusted: true"):
        load_nnunet_checkpoint(bad / "fold_0" / "checkpoint_final.pth")
    assert load_nnunet_checkpoint(bad / "fold_0" / "checkpoint_final.pth", trusted=True)["extra"].a == 1


def test_nnunet_bad_folders(nnunet_env, tmp_path):
    from medrobust.models.sources import load_external

    folder, raw, _ = nnunet_env
    with pytest.raises(CheckpointError, match="not an nnU-Net trained-model folder"):
        load_external(raw, "nnunetv2", {}, "segmentation")
    with pytest.raises(CheckpointError, match="fold_3"):
        load_external(folder, "nnunetv2", {"folds": [3]}, "segmentation")
    with pytest.raises(ConfigError, match="unknown key"):
        load_external(folder, "nnunetv2", {"fold": 0}, "segmentation")


def test_missing_nnunet_says_what_to_install(monkeypatch):
    import sys

    from medrobust.models.sources.nnunetv2 import require_nnunet

    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    with pytest.raises(ConfigError, match=r"pip install medrobust\[nnunet\]"):
        require_nnunet()


def test_eval_and_margins_accept_nnunet_folder(nnunet_env, tmp_path):
    from medrobust.config import EvalConfig, MarginsConfig, load_config
    from medrobust.evaluation.sweep import evaluate
    from medrobust.margins.run import run_margins

    folder, raw, _ = nnunet_env
    data = {"source": "manifest", "manifest": str(raw), "split": {"val_fraction": 0.0, "test_fraction": 0.5}}
    cfg = load_config(EvalConfig, data={"checkpoint": str(folder), "model": {"source": "nnunetv2", "params": {"mirroring": False}},
                                        "data": data, "max_samples": 4, "threat": {"norm": "Linf", "units": "native", "budgets": [0.0, 20.0]},
                                        "attacks": [{"name": "white_noise", "draws": 2}], "examples": 0, "batch_size": 4,
                                        "output_dir": str(tmp_path / "eval")})
    res = evaluate(cfg)
    src = res.summary["settings"]["model_source"]
    assert src["source"] == "nnunetv2" and src["folder"] == str(folder.resolve()) and src["folds"] == [0]
    assert src["plans"] == "nnUNetPlans" and src["configuration"] == "2d"
    assert "model source" in (tmp_path / "eval" / "report.html").read_text()
    t = res.table
    clean = t[t.attack == "clean"]
    assert len(clean) == 4 and clean.dice.mean() > 0.3
    noisy = t[(t.attack != "clean") & (t.budget > 0)]
    # 20 native units through the case's z-score: eps_input = 20 / sigma_case (sigma of phantoms ~ 200-300)
    assert ((noisy.eps_native - 20.0).abs() < 1e-6).all() and (noisy.eps_input < 0.2).all() and (noisy.eps_input > 0.02).all()
    # the detected source (no model block) gives the same clean rows
    cfg2 = cfg.model_copy(update={"model": None, "output_dir": str(tmp_path / "eval2")})
    cfg2.model = None
    res2 = evaluate(cfg2)
    assert res2.summary["settings"]["model_source"]["mirroring"] == [0, 1]
    mcfg = load_config(MarginsConfig, data={"checkpoint": str(folder), "model": {"source": "nnunetv2", "params": {"mirroring": False}},
                                            "data": data, "max_samples": 2, "threat": {"norm": "Linf", "units": "native"},
                                            "eps_max": 200.0, "attack": {"name": "pgd", "steps": 2}, "bisection_steps": 2,
                                            "voxel_maps": False, "examples": 0, "output_dir": str(tmp_path / "margins")})
    mres = run_margins(mcfg)
    assert mres.summary["model_source"]["source"] == "nnunetv2" and len(mres.table) == 2


@pytest.mark.slow
def test_nnunet_round_trip(nnunet_env, tmp_path):
    """Fine-tune an nnU-Net model with IMA, hand it back, and predict with nnUNetPredictor."""
    from medrobust.checkpoint import load_model_from_checkpoint
    from medrobust.config import TrainConfig, load_config
    from medrobust.training.engine import train

    folder, raw, _ = nnunet_env
    cfg = load_config(TrainConfig, data={
        "init_from": str(folder), "model": {"params": {"mirroring": True}},
        "data": {"source": "manifest", "manifest": str(raw), "split": {"val_fraction": 0.25, "test_fraction": 0.0}},
        "method": {"name": "ima", "delta": 0.05, "eps_max": 0.3, "units": "rms", "steps": 2, "bisection_steps": 2}, "threat": {"norm": "L2"},
        "epochs": 1, "batch_size": 2, "iterations_per_epoch": 2, "optimizer": {"name": "sgd", "lr": 0.05},
        "output_dir": str(tmp_path / "ft")})
    res = train(cfg)
    out = res.exported
    assert out is not None and out.name == "nnUNetTrainer_medrobust_ima__nnUNetPlans__2d"
    assert json.loads((out / "plans.json").read_text()) == json.loads((folder / "plans.json").read_text())
    assert (out / "dataset.json").is_file() and (out / "fold_0" / "checkpoint_final.pth").is_file()
    ck_new = torch.load(out / "fold_0" / "checkpoint_final.pth", weights_only=True)  # plain content: safe load
    ck_old = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert ck_new["trainer_name"] == "nnUNetTrainer" and ck_new["medrobust"]["method"] == "ima"
    changed = [k for k in ck_old["network_weights"] if not torch.equal(ck_old["network_weights"][k], ck_new["network_weights"][k])]
    assert changed, "fine-tuning did not change any weight"
    model, ck = load_model_from_checkpoint(res.best_checkpoint)
    files = sorted(str(p) for p in (raw / "imagesTr").glob("*_0000.nii.gz"))[:2]
    ref = nnunet_predict(out, files)
    data_cfg = deep_merge(ck["config"]["data"], {"preprocess": {"size": None}, "max_cases": 2, "split": {"val_fraction": 0.0}})
    mine = medrobust_predict(model, data_cfg, ck["data_info"]["label_map"])
    for f, (seg, prob) in zip(files, ref):
        m = mine[Path(f).name.replace("_0000.nii.gz", "")]
        assert float((m.argmax(0) == seg).mean()) >= 0.999
        assert float(np.abs(m - prob).max()) < 0.05


# ============================================================================ MONAI bundle
def test_bundle_matches_its_own_inference_config(tmp_path):
    from medrobust.models.sources import load_external

    b, ds = make_bundle(tmp_path)
    ext = load_external(b, "monai_bundle", {}, "segmentation")
    assert ext.data_defaults["preprocess"]["intensity"] == {"kind": "window", "a_min": 0.0, "a_max": 1000.0, "b_min": 0.0,
                                                            "b_max": 1.0, "clip": True}
    assert ext.description["roi_size"] == [32, 32] and ext.description["inferer"] == "SlidingWindowInferer"
    spec = json.loads(ds.read_text())
    files = [str(ds.parent / it["image"]) for it in spec["training"]]
    ref = bundle_predict(b, files)
    mine = medrobust_predict(ext.model, deep_merge(ext.data_defaults, {"source": "manifest", "manifest": str(ds)}),
                             ext.data_info["label_map"])
    for f, prob in zip(files, ref):
        m = mine[Path(f).name.replace(".nii.gz", "")]
        assert m.shape == prob.shape
        assert float(np.abs(m - prob).max()) < 1e-4
        assert float((m.argmax(0) == prob.argmax(0)).mean()) == 1.0


def test_bundle_with_code_needs_trust(tmp_path):
    from medrobust.models.sources import load_external

    b, _ = make_bundle(tmp_path, n_cases=1, expression=True)
    with pytest.raises(ConfigError, match="trusted: true"):
        load_external(b, "monai_bundle", {}, "segmentation")
    assert load_external(b, "monai_bundle", {"trusted": True}, "segmentation").spec["source"] == "monai_bundle"


@pytest.mark.slow
def test_bundle_round_trip(tmp_path):
    from medrobust.checkpoint import load_model_from_checkpoint
    from medrobust.config import TrainConfig, load_config
    from medrobust.training.engine import train

    b, ds = make_bundle(tmp_path, n_cases=4)
    cfg = load_config(TrainConfig, data={
        "init_from": str(b), "data": {"source": "manifest", "manifest": str(ds), "split": {"val_fraction": 0.25, "test_fraction": 0.0}},
        "method": {"name": "pgd_at", "eps": 0.01}, "threat": {"norm": "Linf"}, "epochs": 1, "batch_size": 2, "iterations_per_epoch": 2,
        "optimizer": {"name": "adam", "lr": 0.01}, "output_dir": str(tmp_path / "ft")})
    res = train(cfg)
    out = res.exported
    assert out is not None and (out / "models" / "model.pt").is_file()
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["version"] == "0.1.1" and "pgd_at" in meta["changelog"]["0.1.1"]
    old = torch.load(b / "models" / "model.pt", weights_only=True)
    new = torch.load(out / "models" / "model.pt", weights_only=True)
    assert set(old) == set(new) and any(not torch.equal(old[k], new[k]) for k in old)
    spec = json.loads(ds.read_text())
    files = [str(ds.parent / it["image"]) for it in spec["training"]]
    ref = bundle_predict(out, files)
    model, ck = load_model_from_checkpoint(res.best_checkpoint)
    mine = medrobust_predict(model, deep_merge(ck["config"]["data"], {"preprocess": {"size": None}}), ck["data_info"]["label_map"])
    for f, prob in zip(files, ref):
        assert float(np.abs(mine[Path(f).name.replace(".nii.gz", "")] - prob).max()) < 1e-4


# ============================================================================ TorchScript
def test_torchscript_model_with_config_preprocessing(tmp_path):
    from monai.networks.nets import UNet

    from medrobust.data.phantoms import write_phantom_dataset
    from medrobust.models.sources import load_external

    ds = write_phantom_dataset(str(tmp_path / "ph"), 2, [32, 32], n_structures=2)
    net = UNet(2, 1, 3, channels=[8, 16], strides=[2], num_res_units=0).eval()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 32, 32)), str(tmp_path / "net.ts"))
    data = {"source": "manifest", "manifest": ds, "dims": 2, "preprocess": {"intensity": {"kind": "zscore"}}}
    with pytest.raises(ConfigError, match="labels"):
        load_external(tmp_path / "net.ts", "torchscript", {}, "segmentation", {k: v for k, v in data.items()})
    ext = load_external(tmp_path / "net.ts", "torchscript", {"labels": {0: "bg", 1: "a", 2: "b"}}, "segmentation", data)
    mine = medrobust_predict(ext.model, {**data, "label_map": {0: "bg", 1: "a", 2: "b"}}, ext.data_info["label_map"])
    from medrobust.data.readers import read_image

    img = read_image(str(Path(ds).parent / "imagesTr" / "phantom_000.nii.gz")).float()
    x = (img - img.mean()) / img.std(unbiased=False)
    with torch.no_grad():
        ref = torch.softmax(net(x[None].as_tensor()), 1)[0].numpy()
    assert float(np.abs(mine["phantom_000"] - ref).max()) < 1e-4
    with pytest.raises(ConfigError, match="cannot be fine-tuned"):
        from medrobust.config import TrainConfig, load_config
        from medrobust.models.sources.training import prepare_source_training

        prepare_source_training(load_config(TrainConfig, data={"init_from": str(tmp_path / "net.ts"), "output_dir": str(tmp_path / "x")}))
