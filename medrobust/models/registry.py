"""One registry to build any model by name, in the style of timm's ``create_model``.

Segmentation: MONAI ``UNet`` (``unet``), ``BasicUNet`` (``basic_unet``), ``DynUNet``
(``dynunet``), ``SegResNet`` (``segresnet``) for 2D and 3D; segmentation-models-pytorch
``Unet`` (``smp_unet``) and ``UnetPlusPlus`` (``smp_unetplusplus``) for 2D, with a named encoder
and **no pretrained weights unless** ``encoder_weights`` is set explicitly.

Classification: MONAI ``DenseNet121`` (``densenet121``), MONAI ResNets (``resnet10``,
``resnet18``, ``resnet34``) for 2D and 3D, and ``small_cnn``, a compact CNN for 28x28
MedMNIST images (also 3D).

A *spec* is the fully resolved description ``{name, spatial_dims, in_channels, out_channels,
params}`` that every checkpoint stores, so the same network is rebuilt at evaluation.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from medrobust.errors import CheckpointError, ConfigError
from medrobust.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    task: str  # "segmentation" | "classification"
    dims: tuple[int, ...]
    defaults: dict[str, Any]
    description: str
    multiple: Optional[Callable[[dict[str, Any]], int]] = None  # params -> required input-size multiple


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, task: str, dims: tuple[int, ...], defaults: dict[str, Any], description: str,
                   multiple: Optional[Callable[[dict[str, Any]], int]] = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder ``f(spatial_dims, in_channels, out_channels, **params) -> nn.Module``.

    Args:
        name: the model's name in configs (``model.name``).
        task: ``segmentation`` or ``classification`` (metadata ``task``).
        dims: the spatial dimensions it supports (metadata ``dims``).
        defaults: the params filled in when a config leaves them out.
        description: one line for ``medrobust list models``.
        multiple: ``params -> k``: input sizes must be divisible by ``k`` (None: any size).

    Returns:
        The decorator (it returns the builder unchanged).

    Raises:
        ConfigError: another model already has that name.
    """

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(name, ModelEntry(builder, task, tuple(dims), dict(defaults), description, multiple), task=task, dims=tuple(dims))
        return builder

    return deco


def _levels_multiple(p: dict[str, Any]) -> int:
    return int(math.prod(int(s) if not isinstance(s, (list, tuple)) else int(max(s)) for s in p.get("strides", [2, 2, 2])))


def _smp_multiple(p: dict[str, Any]) -> int:
    return 2 ** int(p.get("encoder_depth", 5))


@register_model("unet", "segmentation", (2, 3),
                {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2, "norm": "instance"},
                "MONAI UNet (residual units)", multiple=_levels_multiple)
def _unet(spatial_dims, in_channels, out_channels, **kw):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kw)


@register_model("basic_unet", "segmentation", (2, 3), {"features": [16, 16, 32, 64, 128, 16]}, "MONAI BasicUNet",
                multiple=lambda p: 16)
def _basic_unet(spatial_dims, in_channels, out_channels, **kw):
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kw)


@register_model("dynunet", "segmentation", (2, 3), {"levels": 4, "filters": [16, 32, 64, 128], "norm_name": "instance", "res_block": True},
                "MONAI DynUNet (nnU-Net-like)", multiple=lambda p: 2 ** (int(p.get("levels", 4)) - 1))
def _dynunet(spatial_dims, in_channels, out_channels, levels: int = 4, **kw):
    from monai.networks.nets import DynUNet

    kernel = [[3] * spatial_dims] * levels
    strides = [[1] * spatial_dims] + [[2] * spatial_dims] * (levels - 1)
    kw.setdefault("kernel_size", kernel)
    kw.setdefault("strides", strides)
    kw.setdefault("upsample_kernel_size", strides[1:])
    if kw.get("deep_supervision"):
        raise ConfigError("dynunet with deep_supervision returns several outputs, which medrobust's losses and attacks do not take; set deep_supervision: false.")
    return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kw)


@register_model("segresnet", "segmentation", (2, 3), {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]},
                "MONAI SegResNet", multiple=lambda p: 2 ** (len(p.get("blocks_down", [1, 2, 2, 4])) - 1))
def _segresnet(spatial_dims, in_channels, out_channels, **kw):
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kw)


def _smp(arch: str):
    def build(spatial_dims, in_channels, out_channels, **kw):
        import segmentation_models_pytorch as smp

        cls = getattr(smp, arch)
        return cls(in_channels=in_channels, classes=out_channels, **kw)

    return build


register_model("smp_unet", "segmentation", (2,),
               {"encoder_name": "resnet18", "encoder_weights": None, "encoder_depth": 4, "decoder_channels": [128, 64, 32, 16]},
               "segmentation-models-pytorch Unet (named encoder, no pretrained download by default)", multiple=_smp_multiple)(_smp("Unet"))
register_model("smp_unetplusplus", "segmentation", (2,),
               {"encoder_name": "resnet18", "encoder_weights": None, "encoder_depth": 4, "decoder_channels": [128, 64, 32, 16]},
               "segmentation-models-pytorch UnetPlusPlus", multiple=_smp_multiple)(_smp("UnetPlusPlus"))


@register_model("densenet121", "classification", (2, 3), {}, "MONAI DenseNet121")
def _densenet121(spatial_dims, in_channels, out_channels, **kw):
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kw)


def _resnet(depth: int):
    def build(spatial_dims, in_channels, out_channels, **kw):
        from monai.networks import nets

        fn = getattr(nets, f"resnet{depth}")
        return fn(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=out_channels, **kw)

    return build


for _depth in (10, 18, 34):
    register_model(f"resnet{_depth}", "classification", (2, 3), {}, f"MONAI ResNet-{_depth}")(_resnet(_depth))
del _depth


class SmallCNN(nn.Module):
    """A compact CNN for small images (28x28 MedMNIST, 28^3 volumes): 4 conv layers, 2 pools, 2 FC.

    Input ``(B, C, *spatial)``; output logits ``(B, out_channels)``. Works for any input size
    (adaptive pooling before the classifier).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, width: int = 32,
                 hidden: int = 128, norm: str = "batch", dropout: float = 0.0) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        adapt = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d

        def norm_layer(c: int) -> nn.Module:
            if norm == "batch":
                return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(c)
            if norm == "group":
                return nn.GroupNorm(min(8, c), c)
            if norm == "none":
                return nn.Identity()
            raise ConfigError(f"small_cnn norm '{norm}' is not one of batch, group, none.")

        def block(ci: int, co: int) -> list[nn.Module]:
            return [conv(ci, co, 3, padding=1), norm_layer(co), nn.ReLU(inplace=True)]

        w = width
        self.features = nn.Sequential(*block(in_channels, w), *block(w, w), pool(2), *block(w, 2 * w), *block(2 * w, 2 * w),
                                      pool(2), adapt(4 if spatial_dims == 2 else 2))
        flat = 2 * w * (16 if spatial_dims == 2 else 8)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(hidden, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("small_cnn", "classification", (2, 3), {"width": 32, "hidden": 128, "norm": "batch"},
                "compact CNN for 28x28 MedMNIST (and 28^3)")
def _small_cnn(spatial_dims, in_channels, out_channels, **kw):
    return SmallCNN(spatial_dims, in_channels, out_channels, **kw)


def list_models(task: str | None = None, pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally of one task and matching a shell pattern."""
    return MODELS.names(pattern, task=task)


def _entry(name: str) -> ModelEntry:
    return MODELS.lookup(name)  # ConfigError "unknown model 'x'; did you mean 'y'?"


def resolve_spec(name: str, spatial_dims: int, in_channels: int, out_channels: int, task: str,
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a model choice against the task and data and return the full spec (defaults filled in)."""
    entry = _entry(name)
    if entry.task != task:
        others = ", ".join(list_models(task))
        raise ConfigError(f"model '{name}' is a {entry.task} model but the task is {task}; choose one of {others}.")
    if spatial_dims not in entry.dims:
        raise ConfigError(f"model '{name}' supports {' and '.join(f'{d}D' for d in entry.dims)} inputs, not {spatial_dims}D; pick a 2D/3D model such as unet.")
    merged = dict(entry.defaults)
    merged.update(params or {})
    return {"name": name, "spatial_dims": int(spatial_dims), "in_channels": int(in_channels),
            "out_channels": int(out_channels), "params": merged}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build the network described by a spec (see :func:`resolve_spec`)."""
    if spec.get("source", "registry") != "registry":  # nnU-Net / MONAI bundle architectures (medrobust.models.sources)
        from medrobust.models.sources import build_from_spec

        return build_from_spec(spec)
    entry = _entry(spec["name"])
    params = dict(spec.get("params") or {})
    sig = inspect.signature(entry.builder)
    try:
        return entry.builder(spec["spatial_dims"], spec["in_channels"], spec["out_channels"], **params)
    except ConfigError:
        raise
    except TypeError as exc:
        text = str(exc)
        if "unexpected keyword argument" in text:
            bad = text.split("'")[1] if "'" in text else text
            raise ConfigError(f"model '{spec['name']}' does not take the parameter '{bad}'; remove it from model.params "
                              f"(see the {entry.description} documentation).") from None
        raise ConfigError(f"model '{spec['name']}' could not be built with params {params} ({text}); fix model.params.") from None
    except (ValueError, AssertionError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"model '{spec['name']}' could not be built with params {params} ({exc}); fix model.params.") from None
    finally:
        del sig


def create_model(name: str, spatial_dims: int, in_channels: int, out_channels: int, task: str | None = None,
                 **params: Any) -> nn.Module:
    """Build any registered model by name: ``create_model("unet", 2, 1, 3)``."""
    task = task or _entry(name).task
    return build_model(resolve_spec(name, spatial_dims, in_channels, out_channels, task, params))


def required_multiple(spec: dict[str, Any]) -> int:
    """Input sizes must be divisible by this for the network's down/up-sampling to line up."""
    entry = MODELS.get(spec["name"])
    if entry is None or entry.multiple is None:
        return 1
    return int(entry.multiple(spec.get("params") or {}))


def check_input_size(spec: dict[str, Any], size: list[int] | None) -> None:
    if size is None:
        return
    m = required_multiple(spec)
    if m > 1 and any(s % m for s in size):
        fixed = [int(math.ceil(s / m) * m) for s in size]
        raise ConfigError(f"model '{spec['name']}' needs input sizes divisible by {m}, but data.preprocess.size is {list(size)}; "
                          f"set it to {fixed}.")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning key / shape mismatches into one sentence (a checkpoint of another model)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected and {len(shape)} mis-shaped tensors"
                  + (f", e.g. '{(shape or missing or unexpected)[0]}'" if (shape or missing or unexpected) else ""))
        raise CheckpointError(f"checkpoint '{source}' holds weights of a different model ({detail}); use the checkpoint trained with this model spec.")
    model.load_state_dict(state)
