"""Attack objects: built from settings, called on ``(model, x, y, eps)``; nothing else to learn.

Every attack is written against the task contract, so it works for classification and for 2D
and 3D segmentation. Conventions shared by all attacks:

- the budget ``eps`` is a scalar or one value per sample (input units, see :mod:`medrobust.threat`);
- the result always lies in the ``eps`` ball and the intensity bounds of the threat model;
- the attacker's objective per sample is the task score (accuracy 0/1 or Dice), lower is
  better, ties broken by a higher loss; every attack keeps the worst case it has seen and
  starts from the clean input, so it never returns something *better* for the model than the
  clean image, and a zero budget returns the input unchanged;
- randomness comes from the attack's own ``seed`` only (the global RNG is restored after), so an
  attack run alone and inside an ensemble draws the same numbers;
- the model runs in eval mode (``model_mode: train`` to override) and its mode is restored
  afterwards; parameter gradients are never accumulated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Literal, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from medrobust.registry import Registry
from medrobust.tasks import Task
from medrobust.threat import ThreatModel
from medrobust.utils import fork_rng


class AttackParams(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    seed: Optional[int] = 0  # None: draw from the global RNG (training attacks; resumable through its state)
    model_mode: Literal["eval", "train"] = "eval"
    label: Optional[str] = None  # display name in reports


@dataclass
class AttackResult:
    """``x_adv`` plus per-sample extras (e.g. white-noise mean / worst scores, ensemble members)."""

    x_adv: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    queries: Optional[torch.Tensor] = None


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Set train / eval mode for a block and restore each submodule's own mode afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for m, t in saved:
            m.training = t


@contextlib.contextmanager
def frozen_params(model: nn.Module) -> Iterator[None]:
    """Disable parameter gradients during an attack (input gradients only), then restore."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in flags:
            p.requires_grad_(r)


class WorstCase:
    """Per-sample worst case for the model: lowest score, then highest loss."""

    def __init__(self, x: torch.Tensor, score: torch.Tensor, loss: torch.Tensor) -> None:
        self.x = x.detach().clone()
        self.score = score.detach().double().clone()
        self.loss = loss.detach().double().clone()

    def update(self, x: torch.Tensor, score: torch.Tensor, loss: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Offer candidates (for the samples ``idx``, default all); returns which improved."""
        s, l = score.detach().double(), loss.detach().double()
        if idx is None:
            idx = torch.arange(self.x.shape[0], device=self.x.device)
        cur_s, cur_l = self.score[idx], self.loss[idx]
        better = (s < cur_s - 1e-12) | ((s <= cur_s + 1e-12) & (l > cur_l))
        if better.any():
            sel = idx[better]
            self.x[sel] = x.detach()[better]
            self.score[sel] = s[better]
            self.loss[sel] = l[better]
        return better


class Attack:
    """Base class: subclasses set ``name``, ``Params``, ``description`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[AttackParams]] = AttackParams
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "white-box"
    tasks: ClassVar[tuple[str, ...]] = ("segmentation", "classification")

    def __init__(self, params: AttackParams, task: Task, threat: ThreatModel) -> None:
        self.params = params
        self.task = task
        self.threat = threat
        if task.kind not in self.tasks:
            from medrobust.errors import ConfigError

            raise ConfigError(f"attack '{self.name}' works for {' and '.join(self.tasks)} only, not {task.kind}.")

    @property
    def label(self) -> str:
        return self.params.label or self.name

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Union[float, torch.Tensor]) -> AttackResult:
        x = x.detach()
        e = self.threat.eps_tensor(eps, x)
        with model_mode(model, self.params.model_mode), frozen_params(model), fork_rng(self.params.seed):
            if bool((e == 0).all()):
                return AttackResult(x.clone())
            res = self.run(model, x, y, e)
        # final guarantee: inside the ball and the bounds (guards against numerical drift)
        res.x_adv = self.threat.project(res.x_adv, x, e, self.threat.limits(x)).detach()
        return res

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> AttackResult:
        raise NotImplementedError

    def cost(self) -> tuple[float, float]:
        """Nominal (forward, backward) passes per sample."""
        return (0.0, 0.0)

    # ---- shared helpers --------------------------------------------------------------
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """No-grad ``(logits, score, task loss)`` at ``x``."""
        with torch.no_grad():
            logits = model(x)
            return logits, self.task.score(logits, y), self.task.loss(logits, y)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, **self.params.model_dump()}


ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: Optional[type[Attack]] = None, **meta: Any):
    """Class decorator: register an attack under its ``name`` (its ``tasks`` and ``kind`` become metadata).

    ``@register_attack`` (family ``adversarial``) or ``@register_attack(family="artefact")``; a second attack with a taken
    name raises :class:`~medrobust.errors.ConfigError`.
    """

    meta.setdefault("family", "adversarial")

    def deco(c: type[Attack]) -> type[Attack]:
        return ATTACKS.add(c.name, c, tasks=tuple(c.tasks), kind=c.kind, **meta)

    return deco(cls) if cls is not None else deco


def worst_of_draws(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Any, draws: int,
                   draw: Callable[[int], torch.Tensor]) -> AttackResult:
    """Score ``draws`` random perturbations ``draw(i)`` of ``x``; keep each sample's worst.

    Returns:
        The worst draw per sample, with ``extra`` holding the mean, sd and worst score over draws.
    """
    with torch.no_grad():
        logits0 = model(x)
        best = WorstCase(x, torch.full((x.shape[0],), float("inf"), device=x.device), task.loss(logits0, y))
        scores = []
        for i in range(draws):
            xa = draw(i)
            logits = model(xa)
            s = task.score(logits, y)
            scores.append(s.double())
            best.update(xa, s, task.loss(logits, y))
    st = torch.stack(scores, 1)
    extra = {"score_mean": st.mean(1).cpu(), "score_sd": st.std(1, unbiased=False).cpu(), "score_worst": st.min(1).values.cpu()}
    return AttackResult(best.x, extra=extra)
