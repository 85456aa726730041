"""Time per training epoch of every method relative to standard training, beside the ratio its
pass count predicts (one backward = two forwards), measured in one process on the same data.

    python benchmarks/bench_methods.py               # 2D phantoms, small U-Net
    python benchmarks/bench_methods.py --dims 3
    python benchmarks/bench_methods.py --methods pgd_at free_at n_fgsm --cases 24 --epochs 2

Prints a table; nothing is asserted (timings belong here, not in tests). Run it on a quiet
machine: each method's time is its fastest epoch after the first, the ratio is to standard
training measured in the same process, and the predicted ratio is (F + 2B) / 3 from the measured
passes per step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from medrobust.config import TrainConfig, load_config
from medrobust.training.engine import train

ADV = {"eps": 0.1, "units": "rms", "steps": 5, "step_size": 0.3}
METHODS = {
    "standard": "standard",
    "pgd_at (K=5)": {"name": "pgd_at", **ADV},
    "trades (K=5)": {"name": "trades", **ADV},
    "mart (K=5)": {"name": "mart", **ADV},
    "awp+pgd_at (K=5)": {"name": "awp", "base": {"name": "pgd_at", **ADV}},
    "iaat (K=5, after warm-up)": {"name": "iaat", "eps0": 0.1, "gamma": 0.024, "steps": 5, "alpha_min": 0.01, "warmup_epochs": 0, "units": "rms"},
    "ima (K=5, NB=5)": {"name": "ima", "delta": 0.02, "eps_max": 0.3, "units": "rms", "steps": 5, "bisection_steps": 5},
    "iseat (K=5, lambda on)": {"name": "iseat", **ADV, "lam_start": 0.0},
    "avg_margin": {"name": "avg_margin"},
    "mma (K=5, NB=5)": {"name": "mma", "d_max": 0.3, "min_eps": 0.02, "units": "rms", "steps": 5, "search_steps": 5},
    "gairat (K=5)": {"name": "gairat", **ADV, "begin": 0.0},
    "fat (K<=5, tau=2)": {"name": "fat", **ADV, "tau": 2, "dynamic_tau": False},
    "lbgat (K=5)": {"name": "lbgat", **ADV},
    "te (K=5, EMA on)": {"name": "te", **ADV, "start_epoch": 0, "ramp_end_epoch": 0},
    "advlc (K=5)": {"name": "advlc", **ADV},
    "free_at (m=4)": {"name": "free_at", "eps": 0.1, "units": "rms", "replays": 4},
    "n_fgsm": {"name": "n_fgsm", "eps": 0.1, "units": "rms"},
}

# Success threshold 0 for the methods whose attack cost depends on it: every slice counts as
# correct, so MMA searches every sample and FAT never stops early (their upper-bound cost).
FULL_ATTACK = {"mma": 0.0, "fat": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--cases", type=int, default=80)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time epochs by the process's CPU time with one thread (for a machine shared with other jobs)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 64 in 2D, 32 in 3D)")
    ap.add_argument("--methods", nargs="*", default=None, help="labels' first words to run (standard always runs)")
    args = ap.parse_args()
    torch.set_num_threads(1 if args.cpu_time else 2)
    side = args.size or (64 if args.dims == 2 else 32)
    size = [side] * args.dims
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        chosen = {k: v for k, v in METHODS.items()
                  if k == "standard" or args.methods is None or k.split()[0] in args.methods}
        for label, method in chosen.items():
            cfg = load_config(TrainConfig, data={
                "output_dir": str(Path(tmp) / label.split()[0]), "epochs": args.epochs, "batch_size": 8, "method": method,
                "data": {"phantom": {"n_cases": args.cases, "size": size}, "preprocess": {"size": size},
                         "split": {"val_fraction": 0.1, "test_fraction": 0.0}},
                "model": {"name": "unet"}, "val_every": 1000,
                "success": {"threshold": FULL_ATTACK.get(label.split()[0], 0.6)}})
            t = time.perf_counter()
            res = train(cfg)
            wall = time.perf_counter() - t
            h = res.history[-1]
            key = "cpu_train_s" if args.cpu_time else "time_train_s"
            per_epoch = min(r[key] for r in res.history[1:])  # fastest epoch after the first: least disturbed
            rows.append((label, per_epoch, h["forward_per_step"], h["backward_per_step"], h["nominal_forward_per_step"],
                         h["nominal_backward_per_step"], wall))
    ref = rows[0][1]
    ref_units = rows[0][2] + 2 * rows[0][3]
    print(f"\n{args.dims}D phantoms {size}, batch 8, {args.cases} cases, small U-Net; fastest epoch after the first"
          f"{' (process CPU time, 1 thread)' if args.cpu_time else ''}")
    print(f"{'method':28s} {'s/epoch':>8s} {'measured ratio':>15s} {'predicted ratio':>16s} {'F/step':>7s} {'B/step':>7s} {'nominal F+B':>12s}")
    for label, t, f, b, fn, bn, _ in rows:
        pred = (f + 2 * b) / ref_units
        print(f"{label:28s} {t:8.2f} {t / ref:15.2f} {pred:16.2f} {f:7.1f} {b:7.1f} {fn:6.0f}+{bn:<5.0f}")


if __name__ == "__main__":
    main()
