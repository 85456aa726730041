"""Golden outputs: record attack, training-step and margin outputs with fixed seeds, or compare with a record.

A developer tool for refactors that must not change numbers (not a test). On tiny phantom models
(2D segmentation, 2D classification, one 3D segmentation) it records:

- PGD (worst case and last iterate), FGSM and APGD adversarial batches for Linf and L2 with
  per-sample budgets, one of them zero;
- one training step of every registered method (two steps: first and last epoch of four, so
  epoch-dependent switches are seen): the loss values, the parameters after the steps and the
  per-sample state after ``end_epoch`` (IMA's margins among them);
- the per-voxel flip budgets of :mod:`medrobust.margins.voxel`.

Usage::

    python benchmarks/golden_outputs.py --save runs/golden_before.pt
    python benchmarks/golden_outputs.py --compare runs/golden_before.pt   # exit 1 on any difference > --tol

Run from the repository root with ``PYTHONPATH=$PWD``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from medrobust.data.phantoms import make_phantom
from medrobust.tasks import ClassificationTask, SegmentationTask
from medrobust.threat import ThreatModel


def seg_model(dims: int, classes: int = 3) -> nn.Module:
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return nn.Sequential(conv(1, 4, 3, padding=1), bn(4), nn.ReLU(), conv(4, 4, 3, padding=1), nn.ReLU(), conv(4, classes, 1))


def cls_model(classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, classes))


def phantom_batch(n: int, size: tuple[int, ...], kind: str, classes: int = 3) -> dict:
    imgs, labs = [], []
    for i in range(n):
        img, lab = make_phantom(i, size, n_structures=classes - 1, seed=7)
        imgs.append(torch.as_tensor(img, dtype=torch.float32)[None])
        labs.append(torch.as_tensor(lab, dtype=torch.long)[None])
    x = torch.stack(imgs)
    lo = x.reshape(n, -1).amin(1).reshape(-1, *([1] * (x.ndim - 1)))
    hi = x.reshape(n, -1).amax(1).reshape(-1, *([1] * (x.ndim - 1)))
    x = (x - lo) / (hi - lo)
    y = torch.stack(labs) if kind == "segmentation" else torch.arange(n) % classes
    return {"image": x, "label": y, "id": [f"case_{i:03d}" for i in range(n)]}


def setting(name: str):
    torch.manual_seed(0)
    if name == "seg2d":
        return seg_model(2), SegmentationTask(3), phantom_batch(4, (16, 16), "segmentation")
    if name == "seg3d":
        return seg_model(3), SegmentationTask(3), phantom_batch(2, (8, 8, 8), "segmentation")
    return cls_model(), ClassificationTask(3), phantom_batch(4, (16, 16), "classification")


# ---------------------------------------------------------------------------------------------- attacks
def attack_outputs() -> dict[str, torch.Tensor]:
    from medrobust.attacks import build_attack

    out = {}
    specs = {"pgd": {"name": "pgd", "steps": 4, "restarts": 2}, "pgd_last": {"name": "pgd", "steps": 4, "return_best": False},
             "pgd_sphere_ce": {"name": "pgd", "steps": 3, "random_radius": "sphere", "loss": "ce"}, "fgsm": {"name": "fgsm"},
             "apgd": {"name": "apgd", "n_iter": 8}, "apgd_sched": {"name": "apgd", "n_iter": 10, "eps_schedule": [2, 1]},
             "apgd_dlr": {"name": "apgd", "n_iter": 6, "loss": "dlr"}, "noise": {"name": "white_noise"},
             "square": {"name": "random_search", "queries": 20}}
    for st in ("seg2d", "cls", "seg3d"):
        model, task, batch = setting(st)
        x, y = batch["image"], batch["label"]
        for norm, e in (("Linf", 0.06), ("L2", 0.8)):
            threat = ThreatModel(norm, (0.0, 1.0))
            eps = torch.tensor([e, 0.0, e / 2, e][: len(x)])
            for key, spec in specs.items():
                if st == "seg3d" and key not in ("pgd", "fgsm", "apgd"):
                    continue
                if key == "apgd_dlr" and st != "cls":
                    continue
                try:
                    atk = build_attack(spec, task, threat)
                except Exception as exc:  # noqa: BLE001 - an attack that does not exist here is skipped, loudly
                    print(f"skip {key}: {exc}", file=sys.stderr)
                    continue
                out[f"attack/{st}/{norm}/{key}"] = atk(model, x, y, eps).x_adv.detach().clone()
    return out


# ---------------------------------------------------------------------------------------------- methods
METHOD_PARAMS = {
    "standard": {}, "pgd_at": {"eps": 0.1, "steps": 3, "clean_weight": 0.3}, "trades": {"eps": 0.1, "steps": 3},
    "mart": {"eps": 0.1, "steps": 3}, "awp": {"base": {"name": "pgd_at", "eps": 0.1, "steps": 2}, "warmup_epochs": 0},
    "avg_margin": {"base": {"name": "pgd_at", "eps": 0.1, "steps": 2}, "mu": 0.5, "orth": 0.01},
    "advlc": {"eps": 0.1, "steps": 3, "random_start": True}, "fat": {"eps": 0.1, "steps": 4, "tau": 1},
    "free_at": {"eps": 0.05, "replays": 2}, "gairat": {"eps": 0.1, "steps": 3, "begin": 0.5},
    "iaat": {"steps": 3, "warmup_epochs": 1}, "ima": {"delta": 0.05, "eps_max": 0.3, "steps": 4, "bisection_steps": 3},
    "iseat": {"eps": 0.1, "steps": 3, "lam_start": 0.5}, "lbgat": {"eps": 0.1, "steps": 3, "beta": 1.0},
    "mma": {"d_max": 0.5, "steps": 3, "search_steps": 3}, "n_fgsm": {"eps": 0.1},
    "te": {"eps": 0.1, "steps": 3, "start_epoch": 1, "ramp_end_epoch": 2, "max_weight": 3.0},
}
EXTRA_RUNS = [("ima", "seg3d", "L2", {}), ("ima", "seg2d", "L2", {"success_mode": "train", "empty_dice": "zero"}),
              ("ima", "cls", "L2", {"bisection_steps": 0}), ("gairat", "seg2d", "L2", {"granularity": "voxel"}),
              ("mma", "seg2d", "Linf", {}), ("fat", "seg2d", "Linf", {}), ("pgd_at", "seg3d", "Linf", {})]


def train_cfg():
    from medrobust.config import TrainConfig

    return TrainConfig.model_validate({"output_dir": "unused", "epochs": 4, "batch_size": 4, "grad_clip": 1.0,
                                       "data": {"source": "phantom"}, "model": {"name": "unet"},
                                       "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}})


def method_outputs(name: str, st: str, norm: str, over: dict) -> dict[str, torch.Tensor]:
    from medrobust.training.base import StepContext, build_method
    from medrobust.training.state import SampleState

    model, task, batch = setting(st)
    threat = ThreatModel(norm, (0.0, 1.0))
    spec = {"name": name, **METHOD_PARAMS[name], **over}
    method = build_method(spec, task, threat, train_cfg())
    state = SampleState(batch["id"])
    method.setup(state, model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx = StepContext(model=model, raw_model=model, task=task, threat=threat, state=state, epoch=0, epochs=4, optimizer=opt)
    torch.manual_seed(1)
    out = {}
    for epoch in (0, 3):
        ctx.epoch = epoch
        model.train()
        method.start_epoch(ctx)
        res = method.compute(ctx, batch)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        method.after_step(ctx)
        method.end_epoch(ctx)
        out[f"loss_e{epoch}"] = res.loss.detach().double().reshape(1)
        for k, v in sorted(res.logs.items()):
            out[f"log_e{epoch}/{k}"] = torch.tensor([float(v)], dtype=torch.float64)
    out["params"] = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    out["buffers"] = torch.cat([b.detach().double().reshape(-1) for b in model.buffers()])
    for k, v in sorted(state.tensors.items()):
        out[f"state/{k}"] = v.detach().double().reshape(-1)
    return out


def all_method_outputs() -> dict[str, torch.Tensor]:
    from medrobust.training.base import METHODS
    from medrobust import training  # noqa: F401

    out = {}
    runs = [(n, st, norm, {}) for n in sorted(METHODS.names()) for st, norm in (("seg2d", "L2"), ("cls", "Linf"))] + EXTRA_RUNS
    for name, st, norm, over in runs:
        tag = f"method/{name}/{st}/{norm}" + ("/" + ",".join(f"{k}={v}" for k, v in over.items()) if over else "")
        for k, v in method_outputs(name, st, norm, over).items():
            out[f"{tag}/{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------- margins
def margin_outputs() -> dict[str, torch.Tensor]:
    from medrobust.margins.voxel import voxel_flip_budgets

    out = {}
    for st in ("seg2d", "seg3d"):
        model, task, batch = setting(st)
        for norm, e in (("Linf", 0.2), ("L2", 3.0)):
            threat = ThreatModel(norm, (0.0, 1.0))
            eps = torch.full((len(batch["image"]),), e)
            eps[1] = 0.0
            margin, flip = voxel_flip_budgets(model, task, threat, batch["image"], batch["label"], eps, 5)
            out[f"voxel/{st}/{norm}/margin"] = margin.double()
            out[f"voxel/{st}/{norm}/flip"] = flip.double()
    return out


def collect() -> dict[str, torch.Tensor]:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    return {**attack_outputs(), **all_method_outputs(), **margin_outputs()}


def compare(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor], tol: float) -> int:
    bad = 0
    keys = sorted(set(new) | set(old))
    width = max(len(k) for k in keys)
    print(f"{'entry':<{width}}  max_abs_diff")
    for k in keys:
        if k not in new or k not in old:
            print(f"{k:<{width}}  {'missing in new' if k not in new else 'missing in old'}")
            bad += 1
            continue
        a, b = new[k].double(), old[k].double()
        if a.shape != b.shape:
            print(f"{k:<{width}}  shape {tuple(a.shape)} vs {tuple(b.shape)}")
            bad += 1
            continue
        nan_same = bool((torch.isnan(a) == torch.isnan(b)).all())
        d = (a - b).abs()
        d = d[~torch.isnan(d)]
        m = float(d.max()) if d.numel() else 0.0
        flag = "" if (m <= tol and nan_same) else "   <-- DIFFERS" + ("" if nan_same else " (NaN pattern)")
        bad += bool(flag)
        print(f"{k:<{width}}  {m:.3e}{flag}")
    print(f"{len(keys)} entries, {bad} differ (tolerance {tol:g})")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", type=Path, help="write the outputs to this file")
    g.add_argument("--compare", type=Path, help="compare the outputs with this file")
    ap.add_argument("--tol", type=float, default=0.0, help="largest allowed absolute difference (default 0: bit for bit)")
    args = ap.parse_args()
    new = collect()
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.save.with_suffix(args.save.suffix + ".tmp")
        torch.save(new, tmp)
        tmp.replace(args.save)
        print(f"saved {len(new)} entries to {args.save}")
        return 0
    return 1 if compare(new, torch.load(args.compare, weights_only=True), args.tol) else 0


if __name__ == "__main__":
    sys.exit(main())
