"""``medrobust margins``: per-case smallest breaking budget and per-voxel maps."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, model_validator

from medrobust.config.common import InferenceConfig, ModelConfig, Strict, SuccessConfig, ThreatConfig, refuse_threat_eps

__all__ = ["MarginsConfig"]


class MarginsConfig(Strict):
    """``medrobust margins``: per-case smallest budget that breaks each sample, and per-voxel maps."""

    task: Literal["segmentation", "classification"] = "segmentation"
    checkpoint: str
    model: Optional[ModelConfig] = Field(None, description="source and options when checkpoint is an nnU-Net folder, MONAI bundle or TorchScript file (detected when omitted)")
    data: Optional[dict[str, Any]] = None
    split: Literal["train", "val", "test", "all"] = "test"
    max_samples: Optional[int] = None
    threat: ThreatConfig = Field(default_factory=lambda: ThreatConfig(norm="L2"))
    attack: Union[str, dict[str, Any]] = Field(default_factory=lambda: {"name": "pgd", "steps": 20})
    eps_max: float = Field(10.0, gt=0)
    bisection_steps: int = Field(8, ge=1)
    success: Optional[SuccessConfig] = None
    voxel_maps: bool = True
    voxel_steps: int = Field(20, ge=1)
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/margins"
    save_nifti: bool = False
    examples: int = 4
    inference: InferenceConfig = Field(default_factory=InferenceConfig)

    @model_validator(mode="before")
    @classmethod
    def _refuse_eps(cls, data: Any) -> Any:
        return refuse_threat_eps(data, "margins (the search runs from 0 up to eps_max)", "set eps_max")

    @model_validator(mode="after")
    def _check_budgets(self) -> "MarginsConfig":
        if self.threat.budgets != ThreatConfig().budgets:  # the default stays valid (recorded configs list every key)
            raise ValueError("threat.budgets is not used by margins (the search runs from 0 up to eps_max); remove it "
                             "and set eps_max")
        return self
