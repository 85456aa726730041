"""Small trained models for attack tests (seconds on a CPU; cached per test session)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.data.phantoms import make_phantom


def phantom_batch(n: int, size=(32, 32), seed: int = 0, n_structures: int = 2):
    xs, ys = [], []
    for i in range(n):
        img, lab = make_phantom(i, size, n_structures=n_structures, seed=seed)
        img = (img - img.mean()) / img.std()
        xs.append(torch.from_numpy(img)[None])
        ys.append(torch.from_numpy(lab)[None])
    return torch.stack(xs).float(), torch.stack(ys).long()


class TinySeg(nn.Module):
    def __init__(self, dims: int = 2, k: int = 3, w: int = 8):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.net = nn.Sequential(conv(1, w, 3, padding=1), nn.ReLU(), conv(w, w, 3, padding=2, dilation=2), nn.ReLU(),
                                 conv(w, w, 3, padding=4, dilation=4), nn.ReLU(), conv(w, k, 1))

    def forward(self, x):
        return self.net(x)


@functools.lru_cache(maxsize=None)
def trained_seg(dims: int = 2, steps: int = 150):
    torch.manual_seed(0)
    size = (32, 32) if dims == 2 else (16, 16, 16)
    x, y = phantom_batch(24, size)
    m = TinySeg(dims)
    opt = torch.optim.Adam(m.parameters(), 0.01)
    for _ in range(steps):
        loss = F.cross_entropy(m(x), y[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), x[:8], y[:8]


class TinyCNN(nn.Module):
    def __init__(self, k: int = 4):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, k))

    def forward(self, x):
        return self.f(x)


@functools.lru_cache(maxsize=None)
def trained_cls(k: int = 4, n: int = 512, steps: int = 200):
    """A classifier on [0, 1] images: class = which quadrant holds a bright blob (plus noise)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
    for i in range(n):
        q = int(y[i])
        r, c = (q // 2) * 8, (q % 2) * 8
        x[i, 0, r + 2:r + 6, c + 2:c + 6] += 0.5
    x = x.clamp(0, 1)
    torch.manual_seed(0)
    m = TinyCNN(k)
    opt = torch.optim.Adam(m.parameters(), 0.01)
    for _ in range(steps):
        idx = torch.randint(0, n, (64,), generator=g)
        loss = F.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), x, y


@functools.lru_cache(maxsize=None)
def phantom_seg():
    """TinySeg trained for ~2 s on 24x24 phantoms with Dice + CE; (model, x, y) of 6 of its training images.

    The model is frozen (no parameter gradients) and the global RNG is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x, y = phantom_batch(12, (24, 24))
        m = TinySeg(2)
        from medrobust.tasks import SegmentationTask

        task = SegmentationTask(3)
        opt = torch.optim.Adam(m.parameters(), 0.01)
        for _ in range(120):
            loss = task.loss(m(x), y).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m, x[:6], y[:6]
