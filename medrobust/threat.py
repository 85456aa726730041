"""The threat model: norm, budget (scalar or one per sample), intensity bounds and units.

A perturbation lives in the model's input space after preprocessing. Bounds are the range
perturbed inputs are clipped to: ``[0, 1]`` after a CT window, none for z-scored MRI (never
clip z-scored inputs to [0, 1]), or each image's own range (``per_image``).

Units of a budget:

- ``input``: model-input units;
- ``native``: scanner units (HU for CT) through the recorded affine ``x_in = s * x_native + o``,
  so ``eps_input = |s| * eps_native`` per sample (for z-score, ``s = 1 / std`` of that image);
- ``rms`` (L2): per-voxel root-mean-square, ``eps_L2 = eps_rms * sqrt(C * N_voxels)``, so that a
  budget means the same on a 32x32 slice and on a 96^3 volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch

from medrobust.errors import ConfigError

Bounds = Union[None, tuple[float, float], Literal["per_image"]]


def _view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a perturbation ``(B, ...) -> (B,)``."""
    flat = delta.reshape(delta.shape[0], -1)
    return torch.linalg.vector_norm(flat, ord=math.inf if norm == "Linf" else 2, dim=1)


@dataclass
class ThreatModel:
    """Norm and intensity bounds; budgets are passed per call (scalar or ``(B,)``).

    Args:
        norm: ``Linf`` or ``L2``.
        bounds: ``None`` (no clipping), ``(lo, hi)``, or ``"per_image"`` (each clean image's range).
    """

    norm: Literal["Linf", "L2"] = "L2"
    bounds: Bounds = None

    def __post_init__(self) -> None:
        if self.norm not in ("Linf", "L2"):
            raise ConfigError(f"norm '{self.norm}' is not supported; use Linf or L2.")
        if isinstance(self.bounds, (list, tuple)):
            lo, hi = float(self.bounds[0]), float(self.bounds[1])
            if not lo < hi:
                raise ConfigError(f"bounds {self.bounds} are empty; give [lo, hi] with lo < hi.")
            self.bounds = (lo, hi)

    # ---------------------------------------------------------------- budgets
    def eps_tensor(self, eps: Union[float, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Budget as a ``(B,)`` tensor on ``x``'s device."""
        if isinstance(eps, torch.Tensor):
            e = eps.to(device=x.device, dtype=x.dtype).reshape(-1)
            if e.numel() == 1:
                e = e.expand(x.shape[0])
            if e.numel() != x.shape[0]:
                raise ConfigError(f"got {e.numel()} per-sample budgets for a batch of {x.shape[0]}; give one per sample or a scalar.")
            if (e < 0).any():
                raise ConfigError("budgets must be >= 0.")
            return e.clone()
        if eps < 0:
            raise ConfigError(f"budget {eps} is negative; budgets must be >= 0.")
        return torch.full((x.shape[0],), float(eps), device=x.device, dtype=x.dtype)

    # ---------------------------------------------------------------- bounds
    def limits(self, x: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Lower / upper bound tensors broadcastable to ``x`` (None when unbounded)."""
        if self.bounds is None:
            return None
        if self.bounds == "per_image":
            flat = x.reshape(x.shape[0], -1)
            return _view(flat.amin(1), x), _view(flat.amax(1), x)
        lo, hi = self.bounds  # type: ignore[misc]
        return torch.full_like(x[:1], lo), torch.full_like(x[:1], hi)

    def clip(self, x_adv: torch.Tensor, limits: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        if limits is None:
            return x_adv
        return torch.maximum(torch.minimum(x_adv, limits[1]), limits[0])

    # ---------------------------------------------------------------- projection
    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor,
                limits: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """Project onto the ``eps`` ball around ``x`` and then into the bounds.

        For L2 the clip can only shrink the perturbation (bounds contain ``x``), so the result
        stays inside both sets.
        """
        delta = x_adv - x
        e = _view(eps, x)
        if self.norm == "Linf":
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            n = _view(lp_norm(delta, "L2"), x)
            delta = delta * torch.clamp(e / n.clamp_min(1e-12), max=1.0)
        return self.clip(x + delta, limits)

    def step(self, grad: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent step of per-sample size: sign for Linf, normalised gradient for L2."""
        s = _view(size, grad)
        if self.norm == "Linf":
            return s * grad.sign()
        n = _view(lp_norm(grad, "L2"), grad)
        return s * grad / n.clamp_min(1e-12)

    def random_delta(self, x: torch.Tensor, eps: torch.Tensor, radius: str = "ball") -> torch.Tensor:
        """A random perturbation: uniform in the Linf box, or uniform in (``ball``) / on (``sphere``) the L2 ball."""
        e = _view(eps, x)
        if self.norm == "Linf":
            return (2 * torch.rand_like(x) - 1) * e
        g = torch.randn_like(x)
        g = g / _view(lp_norm(g, "L2"), x).clamp_min(1e-12)
        if radius == "sphere":
            return g * e
        d = g[0].numel()
        r = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / d)
        return g * e * _view(r, x)

    def within(self, x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, atol: float = 1e-5) -> torch.Tensor:
        """Per-sample check that ``x_adv`` is inside the ball (relative tolerance) and the bounds."""
        n = lp_norm(x_adv - x, self.norm)
        ok = n <= eps.reshape(-1) * (1 + 1e-5) + atol
        lim = self.limits(x)
        if lim is not None:
            inb = ((x_adv >= lim[0] - atol) & (x_adv <= lim[1] + atol)).reshape(x.shape[0], -1).all(1)
            ok = ok & inb
        return ok


# ============================================================================ units
def budget_to_input(budget: float, units: str, norm: str, batch: dict, x: torch.Tensor) -> torch.Tensor:
    """Convert a budget in ``units`` to per-sample input-space budgets ``(B,)``.

    ``batch`` carries ``intensity_scale`` ``(B, C)`` from the preprocessing record.
    """
    b = x.shape[0]
    if units == "input":
        return torch.full((b,), float(budget), dtype=x.dtype, device=x.device)
    if units == "rms":
        if norm != "L2":
            raise ConfigError("rms budgets apply to the L2 norm only; use units: input or native for Linf.")
        return torch.full((b,), float(budget) * math.sqrt(x[0].numel()), dtype=x.dtype, device=x.device)
    if units == "native":
        scale = batch.get("intensity_scale")
        if scale is None:
            raise ConfigError("native-unit budgets need the preprocessing record (intensity_scale) of each sample; use units: input.")
        s = torch.as_tensor(scale, dtype=torch.float64).reshape(b, -1).abs().mean(1)
        return (float(budget) * s).to(device=x.device, dtype=x.dtype)
    raise ConfigError(f"budget units '{units}' are not known; use input, native or rms.")


def input_to_units(eps_input: torch.Tensor, batch: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Express per-sample input budgets in every unit: ``input``, ``native`` and ``rms``."""
    out = {"input": eps_input.detach().double().cpu()}
    scale = batch.get("intensity_scale")
    if scale is not None:
        s = torch.as_tensor(scale, dtype=torch.float64).reshape(x.shape[0], -1).abs().mean(1)
        out["native"] = out["input"] / s.clamp_min(1e-30)
    out["rms"] = out["input"] / math.sqrt(x[0].numel())
    return out


def resolve_bounds(spec, recorded: Optional[tuple[float, float]]) -> Bounds:
    """Turn a config value (``auto``, ``none``, ``per_image``, ``[lo, hi]``) into bounds."""
    if spec == "auto":
        return tuple(recorded) if recorded is not None else None
    if spec == "none" or spec is None:
        return None
    if spec == "per_image":
        return "per_image"
    return (float(spec[0]), float(spec[1]))
