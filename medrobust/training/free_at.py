"""Free-AT: "Adversarial training for free!" (Shafahi et al., NeurIPS 2019), from the official
code (``ashafahi/free_adv_train`` ``free_train.py``, ``config.py``; PyTorch
``mahyarnajibi/FreeAdversarialTraining`` ``main_free.py``, ``configs.yml``).

One perturbation buffer ``delta`` (batch-shaped, zero at the start) that is never reset: it is
carried over the ``replays`` of a minibatch, into the next minibatch (slot i inherits the previous,
different image's delta) and across epochs (and it is saved with the method state, so a resumed
run continues with it). Each minibatch is replayed ``m = replays`` times; each replay is one
forward at ``x + delta`` (clipped to the data bounds), one backward that gives both the weight
gradient and the input gradient, one optimiser step with the weight gradient, and
``delta <- Proj_eps(delta + eps * step(grad_delta))`` (step = eps; Linf sign, L2 normalised).
The first m - 1 replays step the optimiser inside the method (with the training config's
gradient clipping); the last one is returned to the engine, which steps, and ``after_step``
updates delta from the gradient that backward left on it.

Defaults: m = 8 and eps = 8/255 (TF CIFAR; PyTorch ImageNet: m = 4, eps = 4/255). One epoch costs
m standard epochs: to match the compute of E standard epochs, train ``ceil(E / m)`` epochs (the
official code divides the epochs by m). Segmentation: the same with the task loss; delta has the
shape of one batch of 2D slices or 3D patches. Cost per step: m forward, m backward.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Optional

import torch
from pydantic import Field

from medrobust.threat import lp_norm
from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, register_method
from medrobust.training.common import average_and_clip_grads, eps_input

log = logging.getLogger(__name__)


class FreeATParams(MethodParams):
    eps: float = Field(8 / 255, ge=0, description="budget = step (in `units`)")
    units: Literal["input", "rms", "native"] = "input"
    replays: int = Field(8, ge=1, description="m: times each minibatch is replayed (official CIFAR 8, ImageNet 4)")


@register_method
class FreeAT(Method):
    name = "free_at"
    Params = FreeATParams
    description = "free AT: each minibatch replayed m times, one perturbation carried across replays and batches"

    def prepare(self) -> None:
        self.delta: Optional[torch.Tensor] = None
        self._pending: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def passes(self) -> tuple[float, float]:
        return (float(self.params.replays), float(self.params.replays))

    def _slot(self, x: torch.Tensor) -> torch.Tensor:
        """The carried delta for this batch: the first ``len(x)`` slots of the buffer (grown if needed)."""
        d = self.delta
        if d is not None and tuple(d.shape[1:]) != tuple(x.shape[1:]):
            log.warning("free_at: the input shape changed from %s to %s; the carried perturbation restarts at zero",
                        tuple(d.shape[1:]), tuple(x.shape[1:]))
            d = None
        if d is None:
            d = torch.zeros_like(x)
        elif d.shape[0] < x.shape[0]:
            d = torch.cat([d.to(x), torch.zeros_like(x[d.shape[0]:])], 0)
        self.delta = d.to(device=x.device, dtype=x.dtype)
        return self.delta[: x.shape[0]]

    def _forward(self, ctx: StepContext, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = delta.detach().requires_grad_(True)
        xa = self.threat.clip(x + d, self.threat.limits(x))
        return d, ctx.model(xa)

    def _update_delta(self, x: torch.Tensor, d: torch.Tensor, g: torch.Tensor, eps: torch.Tensor) -> None:
        with torch.no_grad():
            new = self.threat.project(x + d + self.threat.step(g, eps), x, eps, None) - x
            self.delta[: x.shape[0]] = new

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        p = self.params
        x, y = batch["image"], batch["label"]
        eps = eps_input(p, p.eps, batch, x, self.threat.norm)
        self._slot(x)
        for _ in range(p.replays - 1):
            d, logits = self._forward(ctx, x, self.delta[: x.shape[0]])
            loss = self.task.loss(logits, y).mean()
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._update_delta(x, d, d.grad, eps)
            self._sync_and_clip(ctx)
            ctx.optimizer.step()
        d, logits = self._forward(ctx, x, self.delta[: x.shape[0]])
        loss = self.task.loss(logits, y).mean()
        self._pending = (x.detach(), d, eps)
        return StepOutput(loss, {"loss_adv": float(loss.detach()),
                                 "delta_norm": float(lp_norm(self.delta[: x.shape[0]], self.threat.norm).mean())},
                          {"logits_adv": logits})

    def _sync_and_clip(self, ctx: StepContext) -> None:
        average_and_clip_grads([q for q in ctx.raw_model.parameters() if q.grad is not None], self.train_cfg)

    def after_step(self, ctx: StepContext) -> None:
        """The last replay's delta update, from the input gradient of the engine's backward."""
        if self._pending is None:
            return
        x, d, eps = self._pending
        self._pending = None
        if d.grad is not None:
            self._update_delta(x, d, d.grad, eps)

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta.detach().cpu()} if self.delta is not None else {}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("delta") is not None:
            self.delta = d["delta"].clone()
