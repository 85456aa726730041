"""Mixed precision (bfloat16 autocast) for evaluation, attacks and training; off by default.

``amp: bf16`` runs the network's forward under ``torch.autocast(device_type=<cpu|cuda>,
dtype=torch.bfloat16)`` and casts the logits back to float32, so losses, attack steps, metrics
and the input gradients' accumulation stay in float32. ``amp: false`` (the default) leaves the
forward untouched (bit-identical results). The effect on attack strength is measured in
docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from medrobust.errors import ConfigError

AMP_CHOICES = (False, "bf16")


def check_amp(amp: Any) -> Any:
    """Validate an ``amp`` setting.

    Args:
        amp: ``False`` / ``None`` (off) or ``"bf16"``.

    Returns:
        ``False`` or ``"bf16"``.

    Raises:
        ConfigError: any other value.
    """
    if amp is None or amp is False:
        return False
    if amp == "bf16":
        return "bf16"
    raise ConfigError(f"amp must be false or bf16, got {amp!r}; set amp: bf16 for bfloat16 autocast or amp: false.")


def amp_forward(model: nn.Module, x: torch.Tensor, amp: Any) -> torch.Tensor:
    """``model(x)``, under bfloat16 autocast when ``amp`` is ``"bf16"``, with float32 logits.

    Args:
        model: the network.
        x: its input.
        amp: ``False`` or ``"bf16"``.

    Returns:
        The output (float32 when autocast ran).
    """
    if not amp:
        return model(x)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
        out = model(x)
    return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


class AmpModel(nn.Module):
    """``forward(x)``: ``model(x)`` under bfloat16 autocast, logits back in float32 (classifiers).

    Args:
        model: the network.
        amp: ``False`` or ``"bf16"``.
    """

    def __init__(self, model: nn.Module, amp: Any = "bf16") -> None:
        super().__init__()
        self.model = model
        self.amp = check_amp(amp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return amp_forward(self.model, x, self.amp)


@contextlib.contextmanager
def autocast_forward(model: nn.Module, amp: Any) -> Iterator[None]:
    """Within the block, ``model``'s forward runs under bfloat16 autocast with float32 outputs.

    Used around training steps: every call of ``model`` (including ``functional_call`` and the
    attacks of adversarial methods) is affected, and nothing else (losses stay float32). No-op
    when ``amp`` is false.

    Args:
        model: the network (its instance ``forward`` is patched and restored).
        amp: ``False`` or ``"bf16"``.
    """
    if not check_amp(amp):
        yield
        return
    had = "forward" in model.__dict__
    old = model.__dict__.get("forward")
    inner = model.forward

    def fwd(*args: Any, **kwargs: Any) -> Any:
        dev = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            out = inner(*args, **kwargs)
        return out.float() if torch.is_tensor(out) and out.is_floating_point() else out

    model.forward = fwd  # type: ignore[method-assign]
    try:
        yield
    finally:
        if had:
            model.forward = old  # type: ignore[method-assign]
        else:
            del model.forward
