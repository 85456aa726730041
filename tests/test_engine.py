"""Training engine: loss goes down, exact resume after a kill, run-folder protection, safe checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_train_config
from medrobust.checkpoint import load_checkpoint, load_model_from_checkpoint
from medrobust.config import TrainConfig, load_config
from medrobust.errors import CheckpointError, ConfigError
from medrobust.training.engine import train


def test_standard_training_lowers_the_loss_and_writes_a_run_folder(tmp_path: Path):
    cfg = load_config(TrainConfig, data=tiny_train_config(tmp_path, epochs=4))
    res = train(cfg)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.9 * losses[0]
    assert res.history[-1]["val_dice"] > res.history[0]["val_dice"]  # the metric improves, not only the loss
    for f in ("best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "config.yaml", "summary.json", "training_curves.png"):
        assert (res.run_dir / f).is_file(), f
    assert json.loads((res.run_dir / "status.json").read_text())["state"] == "finished"
    ck = load_checkpoint(res.best_checkpoint)  # weights_only=True inside
    assert ck["data_info"]["label_map"] == {0: "background", 1: "organ_a", 2: "organ_b", 3: "lesion"}
    assert ck["data_info"]["preprocess"]["intensity"]["kind"] == "zscore"
    assert "sample_state" in ck and "optimizer" in ck["train_state"]
    assert res.history[-1]["forward_per_step"] == 1.0 and res.history[-1]["backward_per_step"] == 1.0


def test_3d_and_classification_training(tmp_path: Path):
    cfg3 = tiny_train_config(tmp_path / "a", epochs=1, data={"phantom": {"size": [16, 16, 16], "n_cases": 6}, "preprocess": {"size": [16, 16, 16]}})
    h3 = train(load_config(TrainConfig, data=cfg3)).history[-1]
    assert 0.0 <= h3["val_dice"] <= 1.0 and h3["val_loss"] > 0  # NaN fails both
    cls = tiny_train_config(tmp_path / "b", epochs=2, task="classification", model={"name": "small_cnn", "params": {"width": 8}})
    del cls["model"]["params"]["channels"], cls["model"]["params"]["strides"], cls["model"]["params"]["num_res_units"]
    h = train(load_config(TrainConfig, data=cls)).history[-1]
    assert {"val_acc", "val_bacc", "val_auc"} <= set(h)


def test_run_folder_is_protected(tmp_path: Path):
    cfg = load_config(TrainConfig, data=tiny_train_config(tmp_path, epochs=1))
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(cfg)
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(load_config(TrainConfig, data=tiny_train_config(tmp_path / "other", epochs=1)), resume=True)
    more = load_config(TrainConfig, data=tiny_train_config(tmp_path, epochs=2))
    assert len(train(more, resume=True).history) == 2


def test_foreign_checkpoints_are_rejected(tmp_path: Path):
    res = train(load_config(TrainConfig, data=tiny_train_config(tmp_path, epochs=1)))
    with pytest.raises(CheckpointError, match="classification"):
        load_model_from_checkpoint(res.best_checkpoint, expect_task="classification")
    other = tiny_train_config(tmp_path / "x", epochs=1, init_from=str(res.best_checkpoint),
                              model={"params": {"channels": [4, 8, 16]}})
    with pytest.raises(CheckpointError, match="different spec"):
        train(load_config(TrainConfig, data=other))
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(CheckpointError, match="not a medrobust checkpoint"):
        load_checkpoint(bad)
    evil = tmp_path / "evil.pt"
    import argparse

    torch.save({"format": "medrobust-checkpoint/1", "obj": argparse.Namespace(cmd="rm -rf /")}, evil)
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        load_checkpoint(evil)


def _cli_train(cfg_path: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, MEDROBUST_NO_PROGRESS="1")
    return subprocess.Popen([sys.executable, "-m", "medrobust.cli", "train-seg", str(cfg_path), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_exact_resume_after_kill(tmp_path: Path):
    """Train 3 epochs in one go == train, SIGKILL during epoch 3, resume; weights equal on the CPU."""
    base = tiny_train_config(tmp_path, epochs=3, data={"phantom": {"n_cases": 16}, "augment": {"flip_prob": 0.5, "intensity_scale": 0.1}},
                             optimizer={"name": "sgd", "lr": 0.05}, schedule={"name": "cosine"})
    a = dict(base, output_dir=str(tmp_path / "a"))
    b = dict(base, output_dir=str(tmp_path / "b"), epochs=3)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(b))
    pa = _cli_train(tmp_path / "a.yaml")
    assert pa.wait(300) == 0, pa.stdout.read()
    # b: kill the process once epoch 2 is checkpointed (while it works on epoch 3)
    slow = dict(b, iterations_per_epoch=None)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(slow))
    pb = _cli_train(tmp_path / "b.yaml")
    status = tmp_path / "b" / "status.json"
    t0 = time.time()
    while time.time() - t0 < 300:
        if status.exists():
            try:
                if json.loads(status.read_text()).get("epoch", 0) >= 2:
                    break
            except json.JSONDecodeError:
                pass
        if pb.poll() is not None:
            break
        time.sleep(0.05)
    if pb.poll() is None:
        pb.send_signal(signal.SIGKILL)
        pb.wait()
    ck = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ck["train_state"]["epoch"] in (2, 3)
    pr = _cli_train(tmp_path / "b.yaml", "--resume")
    assert pr.wait(300) == 0, pr.stdout.read()
    wa = load_checkpoint(tmp_path / "a" / "last.pt")["model_state"]
    wb = load_checkpoint(tmp_path / "b" / "last.pt")["model_state"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=f"tensor {k} differs after resume")
    ha = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    hb = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])
    assert ha["val_dice"] == hb["val_dice"]


def test_stop_and_resume_in_process_is_exact(tmp_path: Path):
    base = tiny_train_config(tmp_path, epochs=3, data={"augment": {"flip_prob": 0.5}})
    full = train(load_config(TrainConfig, data=dict(base, output_dir=str(tmp_path / "full"))))
    part = load_config(TrainConfig, data=dict(base, output_dir=str(tmp_path / "part")))
    train(part, stop_after=1)
    resumed = train(part, resume=True)
    wa = load_checkpoint(full.last_checkpoint)["model_state"]
    wb = load_checkpoint(resumed.last_checkpoint)["model_state"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_torchrun_two_processes_merge_per_sample_state(tmp_path: Path):
    """The engine under torchrun (gloo, CPU): ranks shard the data, rank 0 writes, IMA margins of
    the samples seen by either rank end up in the checkpoint."""
    cfg = tiny_train_config(tmp_path, epochs=2, method={"name": "ima", "delta": 0.02, "eps_max": 0.3, "units": "rms",
                                                        "steps": 3, "bisection_steps": 3})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, MEDROBUST_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
                           "-m", "medrobust.cli", "train-seg", str(tmp_path / "c.yaml")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    margins = ck["sample_state"]["tensors"]["ima_margin"]
    assert len(margins) == 8 and bool((margins != 0.02).all()), margins  # both shards' updates merged
