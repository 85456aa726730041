"""The method interface: how a training method plugs into the engine.

A method computes the loss of a batch from the model, the task contract, the threat model and
its own per-sample state; the engine does the backward pass and the optimiser step. Methods
register with :func:`register_method` and are chosen with ``method:`` in the training config
(a name, or a mapping with ``name`` and the method's parameters).

Every method states its nominal cost per step as ``(forwards, backwards)`` (``passes``); the
engine counts the real forward and backward passes through the network and logs both.
"""

from __future__ import annotations

import logging

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from medrobust.config import check_params, plugin_spec
from medrobust.registry import Registry
from medrobust.tasks import Task
from medrobust.threat import ThreatModel
from medrobust.training.state import SampleState

log = logging.getLogger(__name__)


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass
class StepContext:
    """What a method sees at each step.

    ``model`` is the network used for the training forward (DDP-wrapped when distributed);
    ``raw_model`` is the plain network, used for attacks (no gradient synchronisation);
    ``state`` is the per-sample state of the training set; ``epoch`` counts from 0.
    """

    model: nn.Module
    raw_model: nn.Module
    task: Task
    threat: ThreatModel
    state: SampleState
    epoch: int
    epochs: int
    optimizer: torch.optim.Optimizer
    step: int = 0
    run_dir: Optional[Any] = None
    is_main: bool = True


@dataclass
class StepOutput:
    """The loss to minimise, scalars to log, and tensors other methods may reuse
    (``logits_clean`` / ``logits_adv``, e.g. for the average-margin regulariser)."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base class. Subclasses set ``name``, ``Params`` and implement :meth:`compute`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    description: ClassVar[str] = ""
    #: ``"pgd"`` (PGD's default: CE, segmentation Dice + CE) or ``"margin"`` (soft logit margin for
    #: classifiers, Dice + CE for segmentation): build ``self.attack_loss`` from the ``attack_loss``
    #: setting, whose ``auto`` means this default; ``None``: the method builds no attack loss.
    auto_attack_loss: ClassVar[Optional[str]] = None

    def __init__(self, params: MethodParams, task: Task, threat: ThreatModel, train_cfg: Any = None) -> None:
        """Args:
            params: the method's checked settings.
            task: the task contract; threat: the threat model.
            train_cfg: the whole training config (read by the methods that step their own
                parameters: gradient clipping, the guide model's optimiser), or ``None``.
        """
        self.params = params
        self.task = task
        self.threat = threat
        self.train_cfg = train_cfg
        if self.auto_attack_loss is not None:
            from medrobust.attacks.losses import get_loss
            from medrobust.attacks.pgd import default_loss

            name = params.attack_loss  # type: ignore[attr-defined]
            if name == "auto":
                name = "slm" if self.auto_attack_loss == "margin" and task.kind == "classification" else default_loss(task.kind)
            self.attack_loss = get_loss(name, task)
        self.prepare()

    def prepare(self) -> None:
        """Build what the method derives from its settings (called at the end of ``__init__``)."""

    # ---- cost ------------------------------------------------------------------------
    def passes(self) -> tuple[float, float]:
        """Nominal (forward, backward) passes per training step, for the cost log."""
        return (1.0, 1.0)

    # ---- lifecycle -------------------------------------------------------------------
    def setup(self, state: SampleState, model: nn.Module) -> None:
        """Register per-sample state (called once, before any resume)."""

    def start_epoch(self, ctx: StepContext) -> None:
        pass

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        raise NotImplementedError

    def after_step(self, ctx: StepContext) -> None:
        """Called after ``optimizer.step()`` (e.g. AWP removes its weight perturbation)."""

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        """Update per-sample state at the end of an epoch; return values to log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        pass


METHODS: Registry[type[Method]] = Registry("training method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a training method under its ``name``.

    Raises:
        ConfigError: another method already has that name.
    """
    return METHODS.add(cls.name, cls)


def build_method(spec: Any, task: Task, threat: ThreatModel, train_cfg: Any) -> Method:
    from medrobust import training  # noqa: F401  (registers the built-in methods)

    name, params = plugin_spec(spec, "method")
    cls = METHODS.lookup(name)  # ConfigError "unknown training method 'x'; did you mean 'y'?"
    p = check_params(cls.Params, params, f"method '{name}'")
    method = cls(p, task, threat, train_cfg)
    for w in method_warnings(method):
        log.warning("%s", w)
    return method


def method_warnings(method: "Method") -> list[str]:
    """Settings that make a method something else than its name says (recorded in summary.json)."""
    p = method.params
    out = []
    for key in ("eps", "eps_max", "eps0"):
        if method.name != "standard" and getattr(p, key, None) == 0:
            out.append(f"method '{method.name}' has {key}: 0, so its adversarial examples are the clean inputs and it "
                       f"trains like 'standard'; set a positive {key} to train adversarially.")
    return out


class PassCounter:
    """Counts forward passes through a module and backward passes through its output.

    A backward pass is counted when autograd reaches the module's output tensor (input-gradient
    passes of attacks and parameter-gradient passes of training alike).
    """

    def __init__(self, model: nn.Module) -> None:
        self.forward = 0
        self.backward = 0
        self._h = model.register_forward_hook(self._fwd)

    def _fwd(self, _m: nn.Module, _inp: Any, out: Any) -> None:
        self.forward += 1
        t = out if isinstance(out, torch.Tensor) else None
        if t is not None and t.requires_grad:
            t.register_hook(self._bwd)

    def _bwd(self, grad: torch.Tensor) -> None:
        self.backward += 1

    def reset(self) -> None:
        self.forward = 0
        self.backward = 0

    def remove(self) -> None:
        self._h.remove()


def method_summary(method: Method) -> dict[str, Any]:
    f, b = method.passes()
    out = {"name": method.name, "params": method.params.model_dump(), "passes_per_step": {"forward": f, "backward": b}}
    options = getattr(method, "describe_options", None)
    if callable(options):
        out["options"] = options()  # effective values of options left null (per-task or per-base defaults)
    warnings = method_warnings(method)
    if warnings:
        out["warnings"] = warnings
    return out
