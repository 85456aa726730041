"""``medrobust eval-seg`` / ``eval-classify``: attacks x budgets over a dataset."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, model_validator

from medrobust.config.common import InferenceConfig, ModelConfig, Strict, SuccessConfig, ThreatConfig, refuse_threat_eps

__all__ = ["EvalConfig"]


class EvalConfig(Strict):
    """``medrobust eval-seg`` / ``eval-classify``: attacks x budgets over a dataset."""

    task: Literal["segmentation", "classification"] = "segmentation"
    checkpoint: str
    model: Optional[ModelConfig] = Field(None, description="source and options when checkpoint is an nnU-Net folder, MONAI bundle or TorchScript file (detected when omitted)")
    data: Optional[dict[str, Any]] = Field(None, description="overrides merged into the checkpoint's data config")
    split: Literal["train", "val", "test", "all"] = "test"
    max_samples: Optional[int] = None
    threat: ThreatConfig = Field(default_factory=lambda: ThreatConfig(budgets=[0.0, 0.5, 1.0]))
    attacks: list[Union[str, dict[str, Any]]] = Field(default_factory=lambda: ["white_noise"])
    metrics: list[Literal["dice", "hd95", "nsd", "iou"]] = Field(default_factory=lambda: ["dice"])
    nsd_tolerance_mm: float = Field(1.0, gt=0.0, description="surface-distance tolerance of NSD, in mm")
    success: Optional[SuccessConfig] = None
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/eval"
    examples: int = Field(4, ge=0, description="number of example figures to draw")
    save_nifti: bool = False
    save_adversarial: bool = False
    inference: InferenceConfig = Field(default_factory=InferenceConfig)

    @model_validator(mode="before")
    @classmethod
    def _refuse_eps(cls, data: Any) -> Any:
        return refuse_threat_eps(data, "evaluation", "list the budgets to evaluate in threat.budgets")
