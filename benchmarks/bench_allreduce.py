"""Gradient all-reduce overhead of multi-process training: per-parameter calls vs buckets.

Run under torchrun (gloo on CPU, NCCL on GPUs):

    torchrun --standalone --nproc_per_node 2 benchmarks/bench_allreduce.py

Prints, for the default 2D U-Net of the hippocampus pipeline, the time of one training step
(forward + backward, batch 8 of 64 x 64) and of the gradient all-reduce done per parameter (one
call per tensor) and in 25 MiB buckets (medrobust's ``allreduce_grads``), median of the repeats.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist


def main(reps: int = 10) -> None:
    from monai.networks.nets import UNet

    from medrobust.training.engine import Dist, allreduce_grads

    dist.init_process_group("gloo")
    d = Dist(rank=dist.get_rank(), world_size=dist.get_world_size())
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)
    x = torch.randn(8, 1, 64, 64)
    step, per_param, bucketed = [], [], []
    n_buckets = 0
    for _ in range(reps):
        net.zero_grad()
        t0 = time.perf_counter()
        net(x).square().mean().backward()
        step.append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        for p in net.parameters():
            dist.all_reduce(p.grad)
            p.grad /= d.world_size
        per_param.append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        n_buckets = allreduce_grads(net, d)
        bucketed.append(time.perf_counter() - t0)
    if d.rank == 0:
        n_params = sum(1 for _ in net.parameters())
        s, a, b = (statistics.median(v) for v in (step, per_param, bucketed))
        print(f"{d.world_size} processes, {n_params} parameter tensors, {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M values")
        print(f"training step (forward + backward): {s * 1000:.1f} ms")
        print(f"all-reduce per parameter ({n_params} calls): {a * 1000:.1f} ms ({a / s:.1%} of a step)")
        print(f"all-reduce in buckets ({n_buckets} calls):   {b * 1000:.1f} ms ({b / s:.1%} of a step)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
