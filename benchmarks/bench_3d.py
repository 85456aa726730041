"""3D benchmark: time per attack iteration and peak memory on synthetic multi-channel volumes.

Evaluates one synthetic case per size through the whole-case predictor (sliding windows of the
training patch, window activations recomputed in backward) under APGD (one member of the
segmentation ensemble; the ensemble costs members x iterations of the same unit), and prints,
per size, voxels, seconds per gradient evaluation (one attack iteration), seconds per
million voxels and the process's peak resident memory. Each size runs in a fresh process so its
peak memory is its own.

    nice -n 10 python benchmarks/bench_3d.py                       # 3 sizes up to 240 x 240 x 155
    python benchmarks/bench_3d.py --sizes 64,64,40 --iters 2        # one size
    python benchmarks/bench_3d.py --device cuda --amp               # bfloat16 autocast on a GPU

Time should grow linearly in voxels (the number of windows does); memory stays bounded by the
window, not the volume, plus a few copies of the volume (input, perturbation, gradient, logits).
Besides wall-clock time it prints the process's CPU time per iteration, which on a shared machine
measures the work rather than the scheduler (with one thread, ``OMP_NUM_THREADS=1``; with more
threads it is the sum over threads).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(size: list[int], channels: int, iters: int, patch: int, device: str, amp: bool, sw_batch: int,
        monai_windows: bool = False) -> dict:
    import torch
    from monai.networks.nets import UNet

    from medrobust.attacks import build_attack
    from medrobust.inference import CasePredictor
    from medrobust.tasks import build_task
    from medrobust.threat import ThreatModel

    if monai_windows:  # the path before issue #10's fix: MONAI's sliding_window_inference (quadratic backward)
        import medrobust.inference as mi

        def _monai(*args, **kwargs):
            raise mi._OtherGrid()

        mi.sliding_windows = _monai
    torch.manual_seed(0)
    net = UNet(3, channels, 4, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1).to(device).eval()
    pred = CasePredictor(net, [patch] * 3, multiple=8, overlap=0.25, sw_batch_size=sw_batch, checkpoint_windows=True,
                         amp="bf16" if amp else False)  # the inference.amp setting
    x = torch.randn(1, channels, *size, device=device)
    y = torch.zeros(1, 1, *size, dtype=torch.long, device=device)
    c = [s // 2 for s in size]
    y[0, 0, c[0] - 10:c[0] + 10, c[1] - 10:c[1] + 10, c[2] - 8:c[2] + 8] = 1
    y[0, 0, c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] - 3:c[2] + 3] = 2
    task = build_task("segmentation", 4, None, None)
    attack = build_attack({"name": "apgd", "loss": "dice_ce", "n_iter": iters, "stop_at_floor": False}, task, ThreatModel("L2", None))
    with torch.no_grad():  # warm-up (allocator, kernels), not timed
        pred(x[..., : min(size[-1], patch)])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.time(), time.process_time()
    res = attack(pred, x, y, 0.05 * (x.numel() ** 0.5))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt, ct = time.time() - t0, time.process_time() - c0
    grads = float(res.extra["grad_evals"].sum())
    from monai.data.utils import dense_patch_slices

    from medrobust.inference import _scan_interval

    image = [max(s, patch) for s in size]
    windows = len(dense_patch_slices(image, [patch] * 3, _scan_interval(image, [patch] * 3, 0.25)))
    out = {"size": size, "channels": channels, "voxels": int(x[0, 0].numel()), "patch": patch, "windows": windows,
           "grad_evals": grads, "s_per_iteration": dt / grads, "s_per_iteration_per_Mvoxel": dt / grads / (x[0, 0].numel() / 1e6),
           "cpu_s_per_iteration": ct / grads,
           "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "device": device, "amp": amp,
           "monai_windows": monai_windows}
    if device.startswith("cuda"):
        out["peak_gpu_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=["64,64,40", "128,128,80", "240,240,155"])
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2, help="APGD iterations (each costs one gradient evaluation)")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--sw-batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (inference.amp: bf16)")
    ap.add_argument("--monai-windows", action="store_true",
                    help="MONAI's sliding_window_inference as before issue #10 (for comparison; its backward is quadratic)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per size before giving up")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        size = [int(v) for v in a._child.split(",")]
        print(json.dumps(one(size, a.channels, a.iters, a.patch, a.device, a.amp, a.sw_batch, a.monai_windows)))
        return
    rows = []
    for s in a.sizes:
        cmd = [sys.executable, __file__, "--_child", s, "--channels", str(a.channels), "--iters", str(a.iters),
               "--patch", str(a.patch), "--sw-batch", str(a.sw_batch), "--device", a.device]
        cmd += (["--amp"] if a.amp else []) + (["--monai-windows"] if a.monai_windows else [])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            print(f"{s}: did not finish within {a.timeout:.0f} s", flush=True)
            continue
        if p.returncode != 0:
            print(f"{s}: failed\n{p.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{'x'.join(map(str, r['size'])):>12s}  {r['channels']} ch  {r['voxels'] / 1e6:7.3f} Mvox  {r['windows']:4d} windows  "
              f"{r['s_per_iteration']:8.2f} s/iteration  {r['s_per_iteration_per_Mvoxel']:7.2f} s/iter/Mvox  "
              f"CPU {r['cpu_s_per_iteration']:8.2f} s/iteration  "
              f"peak RSS {r['peak_rss_GiB']:.2f} GiB" + (f"  peak GPU {r['peak_gpu_GiB']:.2f} GiB" if "peak_gpu_GiB" in r else ""),
              flush=True)
    if len(rows) >= 2:
        import numpy as np

        v = np.array([r["voxels"] for r in rows], float)
        for name, key in (("wall-clock", "s_per_iteration"), ("process CPU", "cpu_s_per_iteration")):
            t = np.array([r[key] for r in rows], float)
            slope = np.polyfit(np.log(v), np.log(t), 1)[0]
            print(f"{name} time per iteration grows as voxels^{slope:.2f} (1.0 = linear)")


if __name__ == "__main__":
    main()
