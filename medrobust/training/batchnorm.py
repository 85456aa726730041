"""Batch coupling: when a sample's training-time verdict depends on the other samples of its batch.

In train mode a BatchNorm layer normalises with the statistics of the current batch, so the
prediction for one sample changes when *other* samples of the batch are perturbed. A method
that tests "is this sample still correct?" on train-mode outputs (IMA's crossing test and
bisection, IAAT's survival checks) then records batch artefacts: with a MONAI ResNet-10 at
initialisation and a batch of 70, about half of the samples whose margin is 0 (input
unchanged) were recorded as "crossed" by IMA in train mode, none in eval mode
(``tests/test_fidelity.py``). Instance, group and layer normalisation are per-sample and
unaffected; a BatchNorm without running statistics (``track_running_stats=False``) uses batch
statistics in eval mode too.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd


def batch_coupled(model: nn.Module, mode: str) -> bool:
    """Whether ``model``'s output for one sample depends on the other samples of the batch in ``mode``.

    Args:
        model: the network.
        mode: ``train`` or ``eval``.

    Returns:
        True when a BatchNorm layer uses batch statistics in that mode.
    """
    return any(isinstance(m, _BatchNorm) and (mode == "train" or not m.track_running_stats) for m in model.modules())


def mode_dependent(model: nn.Module) -> bool:
    """Whether train and eval mode can give different outputs (running statistics or dropout).

    Args:
        model: the network.

    Returns:
        True when the model has a normalisation layer with running statistics or a dropout layer.
    """
    return any((isinstance(m, _NormBase) and m.track_running_stats) or (isinstance(m, _DropoutNd) and m.p > 0)
               for m in model.modules())


def _methods(method: Any) -> list[Any]:
    out, m = [], method
    while m is not None and m not in out:
        out.append(m)
        m = getattr(m, "base", None)
    return out


def batch_coupling_flags(method: Any, model: nn.Module) -> list[str]:
    """Flags for a method whose success tests or attacks run on batch-coupled outputs.

    A method (or the base method it wraps) declares ``success_mode`` when it tests per-sample
    success during training, and has ``attack_mode`` in its params when it attacks.

    Args:
        method: a built training method.
        model: the network it trains.

    Returns:
        Zero or more one-sentence flags (``batchnorm_train_mode_success: ...`` or
        ``batchnorm_train_mode_attack: ...``).
    """
    flags: list[str] = []
    for m in _methods(method):
        success_mode = getattr(m, "success_mode", None)
        attack_mode = getattr(getattr(m, "params", None), "attack_mode", None)
        if success_mode is not None and batch_coupled(model, success_mode):
            flags.append(f"batchnorm_train_mode_success: {m.name} tests each sample's success in {success_mode} mode on a model "
                         f"with BatchNorm, so whether a sample 'crossed' or 'survived' depends on the other samples of its batch "
                         f"(per-sample margins / radii become batch artefacts); set success_mode: eval, or use instance / group norm.")
        elif attack_mode is not None and batch_coupled(model, attack_mode):
            flags.append(f"batchnorm_train_mode_attack: {m.name} attacks in {attack_mode} mode on a model with BatchNorm, so each "
                         f"sample's adversarial input depends on the other samples of its batch (the official choice; "
                         f"attack_mode: eval decouples them).")
    return flags
