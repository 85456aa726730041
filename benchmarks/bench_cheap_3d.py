"""Cheap robust 3D training: robust Dice against training compute for standard, PGD-AT, Free-AT
and N-FGSM on 3D phantoms, with a catastrophic-overfitting check after every epoch.

    python benchmarks/bench_cheap_3d.py                       # 3D phantoms 24^3, 6 epochs
    python benchmarks/bench_cheap_3d.py --size 16 --epochs 6 --cases 20
    python benchmarks/bench_cheap_3d.py --data hippocampus --cases 120 --epochs 4   # MSD Hippocampus 3D volumes

Each method trains one epoch at a time (the engine's exact resume); after each epoch the last
checkpoint is evaluated on the validation volumes, clean and under L2 PGD-10 (per-pixel RMS
budget = the training budget, eval mode, 1 restart). Catastrophic overfitting (CO) is flagged
when the PGD Dice falls from at least 0.1 to below ``--co-floor`` times that (and below 0.1) while
the clean Dice holds (a model that never was robust, e.g. standard training, cannot collapse). Free-AT trains ``ceil(epochs / m)`` epochs (matched compute, as the
official code). Prints one row per method and epoch; nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from medrobust.config import EvalConfig, TrainConfig, load_config
from medrobust.evaluation.sweep import evaluate
from medrobust.training.engine import train


def methods(eps: float, m: int) -> dict:
    return {
        "standard": "standard",
        "pgd_at (K=5)": {"name": "pgd_at", "eps": eps, "units": "rms", "steps": 5, "step_size": 0.3},
        f"free_at (m={m})": {"name": "free_at", "eps": eps, "units": "rms", "replays": m},
        "n_fgsm (k=2)": {"name": "n_fgsm", "eps": eps, "units": "rms"},
    }


def robust_dice(ckpt: Path, out: Path, eps: float) -> tuple[float, float]:
    cfg = load_config(EvalConfig, data={
        "task": "segmentation", "checkpoint": str(ckpt), "split": "val", "output_dir": str(out), "examples": 0,
        "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, eps]},
        "attacks": [{"name": "pgd", "steps": 10, "step_size": 0.25}]})
    t = evaluate(cfg).table
    clean = float(t[t["budget"] == 0.0]["dice"].mean())
    adv = float(t[t["budget"] == eps]["dice"].mean())
    return clean, adv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--eps", type=float, default=0.15, help="training and attack budget, L2 per-pixel RMS")
    ap.add_argument("--replays", type=int, default=4)
    ap.add_argument("--co-floor", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--data", choices=["phantoms", "hippocampus"], default="phantoms",
                    help="hippocampus: MSD Task04 whole volumes (configs/data/hippocampus_3d.yaml settings; "
                         "--cases = the first N cases; needs ../shared/datasets or MEDROBUST_DATA_ROOT)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    size = [args.size] * 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, method in methods(args.eps, args.replays).items():
            epochs = math.ceil(args.epochs / args.replays) if label.startswith("free_at") else args.epochs
            data = {"phantom": {"n_cases": args.cases, "size": size}, "preprocess": {"size": size},
                    "split": {"val_fraction": 0.25, "test_fraction": 0.0}}
            if args.data == "hippocampus":
                data = {"source": "manifest", "manifest": "${data_root}/msd_hippocampus/dataset.json", "dims": 3,
                        "max_cases": args.cases, "preprocess": {"size": [48, 64, 48], "intensity": {"kind": "zscore"}},
                        "split": {"seed": 0, "val_fraction": 0.25, "test_fraction": 0.0}}
            cfg = load_config(TrainConfig, data={
                "output_dir": str(Path(tmp) / label.split()[0]), "epochs": epochs, "batch_size": 4, "method": method,
                "data": data,
                "model": {"name": "unet", "params": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
                "optimizer": {"name": "adam", "lr": args.lr}, "threat": {"norm": "L2"}})
            compute, prev_adv = 0.0, None
            for e in range(epochs):
                t0 = time.perf_counter()
                res = train(cfg, resume=e > 0, stop_after=1)
                h = res.history[-1]
                compute += h["steps"] * (h["forward_per_step"] + 2 * h["backward_per_step"]) / 3  # in standard steps
                clean, adv = robust_dice(res.last_checkpoint, Path(tmp) / f"eval_{label.split()[0]}_{e}", args.eps)
                co = prev_adv is not None and prev_adv >= 0.1 and adv < args.co_floor * prev_adv and adv < 0.1 and clean > 0.3
                rows.append((label, e + 1, compute, h["time_train_s"], clean, adv, co, time.perf_counter() - t0))
                prev_adv = adv
                print(f"{label:18s} epoch {e + 1}: clean {clean:.3f}  PGD-10 {adv:.3f}  compute {compute:.0f} std steps"
                      f"{'  CO' if co else ''}", flush=True)
    what = "MSD Hippocampus 3D volumes (48 x 64 x 48)" if args.data == "hippocampus" else f"3D phantoms {size}"
    print(f"\n{what}, {args.cases} cases, L2 eps {args.eps} RMS; compute = passes in standard-step units "
          "((F + 2B) / 3 per step, summed)")
    print(f"{'method':18s} {'epoch':>5s} {'compute':>8s} {'train s':>8s} {'clean Dice':>10s} {'PGD-10 Dice':>11s} {'CO':>3s}")
    for label, e, c, ts, cl, ad, co, _ in rows:
        print(f"{label:18s} {e:5d} {c:8.0f} {ts:8.1f} {cl:10.3f} {ad:11.3f} {'yes' if co else '':>3s}")


if __name__ == "__main__":
    main()
