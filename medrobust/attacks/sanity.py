"""Sanity flags as AutoAttack raises them (``flags_doc.md`` of fra31/auto-attack), for any task.

- ``softmax_output``: outputs look like probabilities, not logits (gradients then vanish);
- ``stochastic_model``: two forward passes in eval mode differ (randomised defence or dropout
  left on): use expectation over transformation, results vary between runs;
- ``zero_gradient``: some samples have an all-zero input gradient of the attack loss;
- ``black_box_beats_gradient``: the random-search member beat every gradient member on some
  cases (raised by the ensembles, :func:`medrobust.attacks.ensemble.blackbox_flags`).
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.tasks import Task


@torch.no_grad()
def model_flags(model: nn.Module, x: torch.Tensor, alpha: float = 1e-5) -> list[str]:
    flags = []
    was = model.training
    model.eval()
    try:
        a = model(x)
        b = model(x)
    finally:
        model.train(was)
    if (a - b).abs().max() > 1e-4 * (a.abs().max() + 1e-12):
        flags.append("stochastic_model: two forward passes in eval mode differ; the model is randomised "
                     "(results vary between runs; consider expectation over transformation)")
    if float(a.max()) < 1 + alpha and float(a.min()) > -alpha and bool(((a.sum(1) - 1).abs() < 1e-3).all()):
        flags.append("softmax_output: the model seems to return probabilities, not logits; remove the final "
                     "softmax so that attack gradients are reliable")
    return flags


def gradient_flags(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    xa = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = task.loss(model(xa), y).sum()
        (g,) = torch.autograd.grad(loss, xa)
    zero = g.reshape(g.shape[0], -1).abs().sum(1) == 0
    if zero.any():
        return [f"zero_gradient: {int(zero.sum())} of {len(zero)} samples have an all-zero input gradient; "
                f"gradient-based attacks may be unreliable for them"]
    return []
