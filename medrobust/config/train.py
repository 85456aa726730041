"""``medrobust train-seg`` / ``train-classify``: the training config and its sections."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, model_validator

from medrobust.config.common import (DataConfig, InferenceConfig, ModelConfig, SegLossConfig, Strict, SuccessConfig,
                                     ThreatConfig, refuse_threat_eps)

__all__ = ["ComputeBudgetConfig", "DistributedConfig", "OptimConfig", "ScheduleConfig", "TrainConfig", "ValAttackConfig"]


class OptimConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


class ScheduleConfig(Strict):
    name: Literal["none", "cosine", "poly", "step", "multistep"] = "none"
    warmup_epochs: int = 0
    milestones: list[int] = Field(default_factory=list)
    gamma: float = 0.1
    step_size: int = 30
    power: float = 0.9


class DistributedConfig(Strict):
    backend: Literal["auto", "gloo", "nccl"] = "auto"


class ValAttackConfig(Strict):
    """Robust validation during training: a cheap attack on the validation cases every ``val_every`` epochs.

    ``enabled: auto`` runs it for adversarial methods (those with a training budget) and not for
    standard training. The budget defaults to the method's own training budget and units (IMA:
    ``eps_max``); ``eps`` / ``units`` set another (e.g. the same budget for every method of a study).
    The attack defaults to APGD with the task loss (soft Dice + CE; CE for classifiers) and 5
    iterations; 2D models on volumes are attacked slice by slice, 3D models through sliding windows.
    Its forward and backward passes are logged (``val_attack_passes``) beside the training passes.
    """

    enabled: Union[bool, Literal["auto"]] = "auto"
    attack: Union[str, dict[str, Any]] = Field(default_factory=lambda: {"name": "apgd", "n_iter": 5, "loss": "auto"})
    eps: Optional[float] = Field(None, ge=0, description="budget; default the method's training budget")
    units: Optional[Literal["input", "rms", "native"]] = Field(None, description="units of eps; default the method's")
    max_cases: Optional[int] = Field(None, ge=1, description="attack only the first N validation cases (cost)")


class ComputeBudgetConfig(Strict):
    """Stop training after this much compute instead of (or before) ``epochs``.

    ``passes``: forward + backward passes through the network counted by the engine during
    training steps (validation attacks not included unless ``include_validation``). ``seconds``:
    wall-clock training time (validation excluded). ``epochs`` stays the upper bound and the length
    of the learning-rate schedule. The epoch in which the budget runs out stops at that step, is
    validated and checkpointed.
    """

    passes: Optional[int] = Field(None, ge=1)
    seconds: Optional[float] = Field(None, gt=0)
    include_validation: bool = False


class TrainConfig(Strict):
    """``medrobust train-seg`` / ``train-classify``."""

    task: Literal["segmentation", "classification"] = "segmentation"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: Union[str, dict[str, Any]] = "standard"
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    loss: SegLossConfig = Field(default_factory=SegLossConfig)
    success: SuccessConfig = Field(default_factory=SuccessConfig)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    val_batch_size: int = Field(32, ge=1)
    iterations_per_epoch: Optional[int] = Field(None, description="cap on optimiser steps per epoch (random subset)")
    optimizer: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    val_every: int = 1
    select_metric: Optional[str] = Field(None, description="validation metric that picks the best checkpoint; default "
                                         "the robust one (val_robust_dice / val_robust_acc) when a validation attack runs")
    val_attack: ValAttackConfig = Field(default_factory=ValAttackConfig)
    budget: ComputeBudgetConfig = Field(default_factory=ComputeBudgetConfig)
    init_from: Optional[str] = Field(None, description="start from the weights of this checkpoint (fine-tuning)")
    output_dir: str = "runs/train"
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    amp: Literal[False, "bf16"] = Field(False, description="bf16: training steps (including the attacks of adversarial "
                                        "methods) run the network under bfloat16 autocast, logits back to float32; "
                                        "validation follows inference.amp")

    @model_validator(mode="before")
    @classmethod
    def _refuse_eps(cls, data: Any) -> Any:
        return refuse_threat_eps(data, "training (the training budget is the method's own setting)",
                                 "set method: {name: ..., eps: ...} (see docs/methods.md)")

    @model_validator(mode="after")
    def _check_ignored(self) -> "TrainConfig":
        defaults = ThreatConfig()
        # non-default values only: a run's own config.yaml (which lists every key) stays valid
        ignored = sorted(k for k in ("budgets", "units") if getattr(self.threat, k) != getattr(defaults, k))
        if ignored:
            raise ValueError(f"threat.{ignored[0]} is not used by training (the training budget and its units are the "
                             f"method's own settings; budgets to evaluate belong in the evaluation config); remove it and "
                             f"set method: {{name: ..., eps: ..., units: ...}} (see docs/methods.md)")
        if self.inference.sliding_window is True:
            raise ValueError("inference.sliding_window has no effect in a training config yet (validation runs whole "
                             "cases); remove it, and set it in the evaluation config instead")
        return self

