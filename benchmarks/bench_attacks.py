"""Attack speed and strength benchmark (prints tables; not a test).

1. medrobust APGD-CE against the reference ``pyautoattack`` APGD-CE on the same classifier, data
   and budgets: robust accuracy of each and the time ratio (same process, interleaved runs).
2. The segmentation ensemble against its members, PGD-100 and the IMA authors' adaptation
   (APGD 5x100 on Dice+CE + 100-query Square): mean Dice, per-case wins, and time relative to
   PGD-100 measured in the same process.

    python benchmarks/bench_attacks.py                     # tiny models trained on the fly
    python benchmarks/bench_attacks.py --seg-checkpoint runs/quickstart/train/best.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from medrobust.attacks import build_attack  # noqa: E402
from medrobust.tasks import ClassificationTask, SegmentationTask  # noqa: E402
from medrobust.threat import ThreatModel  # noqa: E402


def _timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def bench_apgd(n: int, n_iter: int, repeats: int) -> None:
    from pyautoattack.autopgd_base import APGDAttack
    from models_fixtures import trained_cls

    model, x, y = trained_cls(n=max(n, 256))
    x, y = x[:n], y[:n]
    print(f"\n== APGD-CE: medrobust vs pyautoattack ({n} images 16x16, 4 classes, {n_iter} iterations, best of {repeats}) ==")
    print(f"{'norm':5s} {'eps':>6s} {'robust acc (ref)':>17s} {'robust acc (ours)':>18s} {'time ref s':>11s} {'time ours s':>12s} {'ratio ours/ref':>15s}")
    for norm, eps in (("Linf", 0.11), ("L2", 1.1)):
        ref = APGDAttack(model, n_iter=n_iter, norm=norm, eps=eps, loss="ce", seed=0, device="cpu")
        ours = build_attack({"name": "apgd", "n_iter": n_iter, "loss": "ce"}, ClassificationTask(4), ThreatModel(norm, (0.0, 1.0)))
        xr, tr = _timed(lambda: ref.perturb(x, y), repeats)
        xo, to = _timed(lambda: ours(model, x, y, eps).x_adv, repeats)
        with torch.no_grad():
            ar = float((model(xr).argmax(1) == y).float().mean())
            ao = float((model(xo).argmax(1) == y).float().mean())
        print(f"{norm:5s} {eps:6.3g} {ar:17.4f} {ao:18.4f} {tr:11.2f} {to:12.2f} {to / tr:15.2f}")


def _seg_setup(n_cases: int, checkpoint: str | None):
    if checkpoint:
        from medrobust.checkpoint import load_model_from_checkpoint
        from medrobust.config import DataConfig
        from medrobust.data import DataModule
        from medrobust.data.datasets import DataInfo

        model, ck = load_model_from_checkpoint(checkpoint)
        info = DataInfo.from_dict(ck["data_info"])
        dm = DataModule(DataConfig.model_validate(ck["config"]["data"]), "segmentation", info.label_map)
        ds = dm.dataset("test", train=False)
        idx = torch.linspace(0, len(ds) - 1, min(n_cases, len(ds))).round().long().unique()  # spread over the cases
        items = [ds[int(i)] for i in idx]
        x = torch.stack([it["image"] for it in items])
        y = torch.stack([it["label"] for it in items])
        return model.eval(), x, y, SegmentationTask(info.num_classes), f"checkpoint {checkpoint}"
    from models_fixtures import trained_seg

    model, x, y = trained_seg(2)
    return model, x, y, SegmentationTask(3), "tiny CNN on 32x32 phantoms"


def bench_ensemble(checkpoint: str | None, eps: float, n_iter: int, n_cases: int) -> None:
    model, x, y, task, what = _seg_setup(n_cases, checkpoint)
    threat = ThreatModel("L2", None)
    eps_in = eps * (x[0].numel() ** 0.5)
    with torch.no_grad():
        clean = task.score(model(x), y)
    print(f"\n== segmentation attacks ({what}; {len(x)} cases; L2 RMS {eps:g} = input {eps_in:.3g}) ==")
    specs = {
        "pgd-100": {"name": "pgd", "steps": n_iter},
        "ima_autoattack (5x100 + 100 sq)": {"name": "ima_autoattack", "n_iter": n_iter, "queries": n_iter},
        "seg_ensemble": {"name": "seg_ensemble", "n_iter": n_iter, "queries": n_iter},
    }
    results = {}
    for label, spec in specs.items():
        att = build_attack(spec, task, threat)
        res, t = _timed(lambda: att(model, x, y, eps_in))
        with torch.no_grad():
            d = task.score(model(res.x_adv), y)
        results[label] = (d, t, res)
    t_ref = results["pgd-100"][1]
    print(f"clean mean Dice {float(clean.mean()):.4f}")
    print(f"{'attack':34s} {'mean Dice':>10s} {'time s':>8s} {'time / PGD-100':>15s} {'fwd+bwd per case':>17s}")
    for label, (d, t, _) in results.items():
        cost = build_attack(specs[label], task, threat).cost()
        print(f"{label:34s} {float(d.mean()):10.4f} {t:8.2f} {t / t_ref:15.2f} {cost[0]:8.0f}+{cost[1]:<8.0f}")
    ens = results["seg_ensemble"]
    print("ensemble members (inside the ensemble):")
    for k, v in ens[2].extra.items():
        print(f"  {k:32s} mean Dice {float(v.mean()):.4f}")
    d_e, d_i, d_p = ens[0], results["ima_autoattack (5x100 + 100 sq)"][0], results["pgd-100"][0]
    print(f"cases where the ensemble is lower than IMA's adaptation: {int((d_e < d_i - 1e-9).sum())}/{len(d_e)}, "
          f"higher: {int((d_e > d_i + 1e-9).sum())}; lower than PGD-100: {int((d_e < d_p - 1e-9).sum())}, higher: {int((d_e > d_p + 1e-9).sum())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--n-iter", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seg-checkpoint", default=None)
    ap.add_argument("--seg-eps", type=float, default=0.05, help="L2 budget, per-voxel RMS units")
    ap.add_argument("--seg-cases", type=int, default=12, help="test slices / volumes, spread evenly over the test set")
    ap.add_argument("--skip-apgd", action="store_true", help="only the segmentation part")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not args.skip_apgd:
        bench_apgd(args.n, args.n_iter, args.repeats)
    bench_ensemble(args.seg_checkpoint, args.seg_eps, args.n_iter, args.seg_cases)


if __name__ == "__main__":
    main()
