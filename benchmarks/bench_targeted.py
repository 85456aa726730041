"""Does a targeted member (CE towards background on foreground voxels) strengthen the segmentation ensemble?

Trains a small 2D U-Net on phantoms (standard, then PGD-AT fine-tuning: an adversarially trained
model, where the issue reported the gap), then compares per case, at equal cost:

- ``current``: the default ``seg_ensemble`` (APGD x {Dice+CE, Dice, balanced masked CE, SegPGD},
  ``n_iter`` each, + random search);
- ``targeted``: the same four losses plus ``fg_to_bg``, with ``4 (n_iter + 3) / 5 - 3`` iterations each
  (the same number of gradient evaluations), + random search.

Prints mean Dice per budget, how many cases each finds lower, and the mean gap.

    nice -n 10 python benchmarks/bench_targeted.py --out /tmp/bench_targeted
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_targeted")
    ap.add_argument("--n-iter", type=int, default=20)
    ap.add_argument("--budgets", type=float, nargs="*", default=[0.1, 0.2, 0.3])
    a = ap.parse_args()
    from medrobust.config import EvalConfig, TrainConfig, load_config
    from medrobust.evaluation.sweep import evaluate
    from medrobust.training.engine import train

    out = Path(a.out)
    data = {"source": "phantom", "phantom": {"n_cases": 48, "size": [48, 48], "n_structures": 3},
            "preprocess": {"size": [48, 48], "intensity": {"kind": "zscore"}}, "split": {"val_fraction": 0.15, "test_fraction": 0.25}}
    model = {"name": "unet", "params": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}}
    std = out / "standard" / "best.pt"
    if not std.exists():
        train(load_config(TrainConfig, data={"output_dir": str(out / "standard"), "data": data, "model": model, "epochs": 6,
                                             "batch_size": 8, "optimizer": {"name": "adam", "lr": 0.003}}))
    rob = out / "pgd_at" / "best.pt"
    if not rob.exists():
        train(load_config(TrainConfig, data={"output_dir": str(out / "pgd_at"), "data": data, "model": model, "epochs": 3,
                                             "batch_size": 8, "optimizer": {"name": "adam", "lr": 0.001}, "threat": {"norm": "L2"},
                                             "method": {"name": "pgd_at", "eps": 0.15, "units": "rms", "steps": 3, "step_size": 0.4},
                                             "init_from": str(std)}))
    losses = ["dice_ce", "dice", "masked_ce_bal", "segpgd"]
    sched = {"eps_schedule": [2.0, 1.5, 1.0], "iter_fractions": [0.3, 0.3, 0.4]}
    n5 = max(1, (4 * (a.n_iter + 3)) // 5 - 3)  # 5 members x (n5 + 3) <= 4 x (n_iter + 3) gradients (3 radius stages)
    current = {"name": "seg_ensemble", "label": "current", "n_iter": a.n_iter, "queries": a.n_iter}
    targeted = {"name": "ensemble", "label": "targeted", "members": [
        *({"name": "apgd", "loss": l, "n_iter": n5, **sched} for l in losses + ["fg_to_bg"]),
        {"name": "random_search", "queries": a.n_iter}]}
    for name, ck in (("standard", std), ("pgd_at", rob)):
        res = evaluate(load_config(EvalConfig, data={
            "checkpoint": str(ck), "output_dir": str(out / f"eval_{name}"), "split": "test", "examples": 0,
            "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, *a.budgets]}, "attacks": [current, targeted]}))
        t = res.table
        print(f"== {name} model ({t[t.attack == 'clean'].shape[0]} test cases), clean Dice "
              f"{res.summary['clean']['dice']['mean']:.4f}")
        for b in a.budgets:
            c = t[(t.attack == "current") & (t.budget == b)].set_index("sample")["dice"]
            g = t[(t.attack == "targeted") & (t.budget == b)].set_index("sample")["dice"].reindex(c.index)
            ge = res.summary["gradient_evaluations"]
            print(f"budget {b:g}: mean Dice current {c.mean():.4f}, targeted {g.mean():.4f}; targeted lower on {(g < c - 1e-9).sum()}, "
                  f"higher on {(g > c + 1e-9).sum()} of {len(c)} cases; mean gap {np.mean(c - g):+.4f}; "
                  f"grad evals/case {ge['current'][str(b)]['mean_per_case']:.1f} vs {ge['targeted'][str(b)]['mean_per_case']:.1f} "
                  f"(nominal {ge['current']['nominal_per_case']:.0f} vs {ge['targeted']['nominal_per_case']:.0f})")


if __name__ == "__main__":
    main()
