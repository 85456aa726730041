"""Training: the engine and one module per method (imported here so that they register)."""

from medrobust.training import standard  # noqa: F401
from medrobust.training.base import METHODS, Method, MethodParams, StepContext, StepOutput, build_method, register_method
from medrobust.training.state import SampleState

__all__ = ["METHODS", "Method", "MethodParams", "SampleState", "StepContext", "StepOutput", "build_method", "register_method"]
