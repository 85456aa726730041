"""Margins: per-image smallest breaking budgets (bisection on attack success), per-voxel margin
maps (logit margin, and the budget at which each voxel flips along an attack path), statistics."""

from medrobust.margins.image import image_margins
from medrobust.margins.voxel import voxel_flip_budgets

__all__ = ["image_margins", "voxel_flip_budgets"]
