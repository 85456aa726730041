"""Training: the engine and one module per method (imported here so that they register)."""

from medrobust.training import avg_margin, awp, iaat, ima, iseat, mart, pgd_at, standard, trades  # noqa: F401
from medrobust.training import advlc, fat, free_at, gairat, lbgat, mma, n_fgsm, te  # noqa: F401
from medrobust.training.base import METHODS, Method, MethodParams, StepContext, StepOutput, build_method, register_method
from medrobust.training.state import SampleState

__all__ = ["METHODS", "Method", "MethodParams", "SampleState", "StepContext", "StepOutput", "build_method", "register_method"]
