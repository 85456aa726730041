"""Attack losses (to be maximised), per sample ``(B,)``, for classification and 2D / 3D segmentation.

All losses see the task's per-element view (``(B, C, N)`` logits, ``(B, N)`` labels; N = 1 for
classifiers), so each is written once:

- ``ce``: mean cross-entropy;  ``dice_ce``: the task loss (soft Dice + CE; CE for classifiers);
- ``dice``: soft Dice loss only (segmentation);
- ``slm``: soft logit margin ``logsumexp_{j!=y} z_j - z_y`` (IMA's default attack loss);
- ``margin``: ``max_{j!=y} z_j - z_y`` (CW-style);
- ``dlr``: Croce & Hein's difference-of-logits-ratio (needs >= 3 classes);
- ``segpgd``: SegPGD (Gu et al.): CE of correct elements weighted ``1 - lambda_t``, of wrong
  ones ``lambda_t``, ``lambda_t = t / (2 T)``;
- ``cospgd``: CosPGD (Agnihotri et al.): CE weighted by the detached cosine similarity between
  the softmax and the one-hot label;
- ``masked_ce`` / ``masked_ce_bal``: SEA's CE over still-correct elements only (the balanced one
  averages within ground-truth classes first);
- ``js``: SEA's Jensen-Shannon divergence between softmax and one-hot label.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from medrobust.errors import ConfigError
from medrobust.registry import Registry
from medrobust.tasks import Task, margin_from_logits, soft_logit_margin

LossFn = Callable[[Task, torch.Tensor, torch.Tensor, int, int], torch.Tensor]

LOSSES: Registry[LossFn] = Registry("attack loss", cutoff=0.6)
_BOTH = ("segmentation", "classification")
_SEG = ("segmentation",)


def register_loss(name: str, tasks: tuple[str, ...] = _BOTH) -> Callable[[LossFn], LossFn]:
    """Decorator: register an attack loss ``f(task, logits, y, t, T) -> (B,)`` under ``name``.

    Args:
        name: the name used in configs (``loss: <name>``).
        tasks: the task kinds the loss works for (metadata ``tasks``).

    Returns:
        The decorator (it returns the function unchanged).
    """
    return LOSSES.register(name=name, tasks=tuple(tasks))


@register_loss("ce")
def _ce(task, logits, y, t, T):
    return task.reduce(task.elementwise_ce(logits, y), y)


@register_loss("dice_ce")
def _dice_ce(task, logits, y, t, T):
    return task.loss(logits, y)


@register_loss("dice", _SEG)
def _dice(task, logits, y, t, T):
    if task.kind != "segmentation":
        raise ConfigError("the 'dice' attack loss is for segmentation; use ce, dlr or slm for classifiers.")
    return task.soft_dice_loss(logits, y)


@register_loss("slm")
def _slm(task, logits, y, t, T):
    z, yy = task.elements(logits, y)
    return task.reduce(soft_logit_margin(z, yy), y)


@register_loss("margin")
def _margin(task, logits, y, t, T):
    z, yy = task.elements(logits, y)
    return task.reduce(-margin_from_logits(z, yy), y)


def dlr_elements(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DLR per element. ``z``: (B, C, N); ``y``: (B, N)."""
    zs, _ = z.sort(dim=1)
    zy = z.gather(1, y.unsqueeze(1)).squeeze(1)
    top_is_y = (z.argmax(1) == y).to(z.dtype)
    other = zs[:, -2] * top_is_y + zs[:, -1] * (1 - top_is_y)
    return -(zy - other) / (zs[:, -1] - zs[:, -3] + 1e-12)


@register_loss("dlr")
def _dlr(task, logits, y, t, T):
    if logits.shape[1] < 3:
        raise ConfigError(f"the DLR loss needs at least 3 classes, the model has {logits.shape[1]}; use ce or slm.")
    z, yy = task.elements(logits, y)
    return task.reduce(dlr_elements(z, yy), y)


@register_loss("segpgd", _SEG)
def _segpgd(task, logits, y, t, T):
    z, yy = task.elements(logits, y)
    ce = F.cross_entropy(z, yy, reduction="none")
    lam = t / (2.0 * max(T, 1))
    correct = (z.argmax(1) == yy).to(ce.dtype).detach()
    return ((1 - lam) * correct * ce + lam * (1 - correct) * ce).mean(1)


@register_loss("cospgd", _SEG)
def _cospgd(task, logits, y, t, T):
    z, yy = task.elements(logits, y)
    ce = F.cross_entropy(z, yy, reduction="none")
    p = torch.softmax(z, 1)
    onehot = F.one_hot(yy, z.shape[1]).permute(0, 2, 1).to(p.dtype)
    cos = F.cosine_similarity(p, onehot, dim=1).detach()
    return (cos * ce).mean(1)


@register_loss("masked_ce", _SEG)
def _masked_ce(task, logits, y, t, T, balanced: bool = False):
    z, yy = task.elements(logits, y)
    ce = F.cross_entropy(z, yy, reduction="none")
    mask = (z.argmax(1) == yy).to(ce.dtype).detach()
    if balanced:
        return task.reduce(ce * mask, y, class_balanced=True)
    return (ce * mask).mean(1)


@register_loss("js", _SEG)
def _js(task, logits, y, t, T):
    z, yy = task.elements(logits, y)
    p = torch.softmax(z, 1)
    q = F.one_hot(yy, z.shape[1]).permute(0, 2, 1).to(p.dtype)
    m = 0.5 * (p + q)
    kl_pm = (p * (torch.log(p.clamp_min(1e-12)) - torch.log(m.clamp_min(1e-12)))).sum(1)
    kl_qm = (q * (torch.log(q.clamp_min(1e-12)) - torch.log(m.clamp_min(1e-12)))).sum(1)
    return (0.5 * (kl_pm + kl_qm) / math.log(2)).mean(1)


@register_loss("fg_to_bg", _SEG)
def _fg_to_bg(task, logits, y, t, T):
    """Targeted: cross-entropy towards background on the ground-truth foreground voxels (maximised = pushed to background)."""
    if task.kind != "segmentation":
        raise ConfigError("the 'fg_to_bg' attack loss is for segmentation; use ce, dlr or slm for classifiers.")
    z, yy = task.elements(logits, y)
    fg = (yy > 0).to(z.dtype)
    ce_bg = F.cross_entropy(z, torch.zeros_like(yy), reduction="none")
    return -(ce_bg * fg).sum(1) / fg.sum(1).clamp_min(1.0)


register_loss("masked_ce_bal", _SEG)(lambda task, lg, y, t, T: _masked_ce(task, lg, y, t, T, balanced=True))
SEG_ONLY = {n for n in LOSSES if "classification" not in LOSSES.meta(n)["tasks"]}


def get_loss(name: str, task: Task) -> LossFn:
    fn = LOSSES.lookup(name)  # ConfigError "unknown attack loss 'x'; did you mean 'y'?"
    if name in SEG_ONLY and task.kind != "segmentation":
        raise ConfigError(f"attack loss '{name}' is a segmentation loss; use ce, dice_ce, slm, margin or dlr for classifiers.")
    return fn


def dlr_targeted(z: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR for classifiers (needs >= 4 classes). ``z``: (B, C)."""
    zs, _ = z.sort(dim=1)
    u = torch.arange(z.shape[0], device=z.device)
    return -(z[u, y] - z[u, target]) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)
