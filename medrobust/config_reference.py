"""Generate ``docs/config_reference.md`` from the config schemas (every key, type, default, one line).

Run ``python -m medrobust.config_reference`` to rewrite the file; ``tests/test_config_reference.py``
fails when the file is stale or a key has no description. A key's line is its pydantic
``Field(description=...)`` when it has one, else the entry in :data:`DESCRIPTIONS` below.
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "config_reference.md"

#: one line per key for fields declared without a description, as ``Class.field``
DESCRIPTIONS: dict[str, str] = {
    "ModelConfig.source": "where the network comes from: registry (default), nnunetv2 (trained-model folder), monai_bundle or torchscript (`medrobust list sources`)",
    "TrainConfig.val_attack": "robust validation: a cheap attack on the validation cases every val_every epochs (default for adversarial methods)",
    "ValAttackConfig.enabled": "auto (adversarial methods only), true or false",
    "ValAttackConfig.attack": "the validation attack: a name or {name: ..., params}; default APGD, 5 iterations, the task loss",
    "TrainConfig.budget": "matched compute: stop training after this many forward + backward passes or seconds (epochs is then a cap)",
    "ComputeBudgetConfig.passes": "stop after this many forward + backward passes (the engine's counter)",
    "ComputeBudgetConfig.seconds": "stop after this many seconds of training",
    "ComputeBudgetConfig.include_validation": "count the robust validation attack's passes in the budget",
    "CompareConfig.confidence": "confidence level of the paired bootstrap intervals (default 0.95)",
    # ---- train
    "TrainConfig.task": "segmentation or classification (set by the command: train-seg / train-classify)",
    "TrainConfig.data": "where the cases come from and how they become model inputs (see data below)",
    "TrainConfig.model": "the network, from the model registry (`medrobust list models`)",
    "TrainConfig.method": "training method: a name, or {name: ..., params} (`medrobust list methods`, docs/methods.md)",
    "TrainConfig.threat": "norm and intensity bounds used by adversarial methods (their budget is the method's eps)",
    "TrainConfig.loss": "segmentation loss weights (Dice + CE per sample)",
    "TrainConfig.success": "when a segmentation sample counts as correct (Dice threshold)",
    "TrainConfig.epochs": "number of epochs; may be raised on --resume (recorded)",
    "TrainConfig.batch_size": "training batch size (samples per optimiser step)",
    "TrainConfig.val_batch_size": "batch size of validation inference",
    "TrainConfig.optimizer": "optimiser and learning rate",
    "TrainConfig.schedule": "learning-rate schedule over epochs",
    "TrainConfig.grad_clip": "clip the gradient norm to this value (None: no clipping)",
    "TrainConfig.seed": "seed of weights, sampler order, augmentation and the split draw",
    "TrainConfig.device": "auto, cpu, cuda or cuda:N",
    "TrainConfig.num_workers": "DataLoader worker processes",
    "TrainConfig.val_every": "validate every N epochs (and after the last)",
    "TrainConfig.output_dir": "run folder (relative to the config file); refused if it holds something else unless --overwrite",
    "TrainConfig.distributed": "process-group settings when launched with torchrun",
    "TrainConfig.inference": "recorded for later use; sliding_window is refused here until validation uses it",
    # ---- data
    "DataConfig.source": "phantom (embedded synthetic data), manifest, or medmnist",
    "DataConfig.phantom": "settings of the synthetic phantoms (source: phantom)",
    "DataConfig.medmnist": "the MedMNIST file (source: medmnist)",
    "DataConfig.slice_axis": "axis along which 3D volumes are sliced for 2D models",
    "DataConfig.foreground_slices_only": "train 2D models only on slices that hold foreground",
    "DataConfig.label_map": "label id -> name; ids need not be contiguous (e.g. FreeSurfer), they map to channels 0..K-1 and back",
    "DataConfig.preprocess": "deterministic preprocessing, recorded in the checkpoint",
    "DataConfig.augment": "training-time augmentation",
    "DataConfig.split": "how cases are split into train / val / test",
    "DataConfig.cache": "keep prepared cases in memory",
    "PhantomConfig.n_cases": "number of phantom cases",
    "PhantomConfig.size": "spatial size (2 values: 2D, 3 values: 3D)",
    "PhantomConfig.n_structures": "number of labelled structures (1-5)",
    "PhantomConfig.noise": "Rician noise level (fraction of the tissue intensity)",
    "PhantomConfig.bias": "strength of the smooth bias field",
    "PhantomConfig.seed": "seed of the phantom shapes and noise",
    "PhantomConfig.task": "segmentation, or classification (lesion present or not)",
    "PreprocessConfig.intensity": "intensity normalisation (its affine map gives native-unit budgets)",
    "IntensityConfig.kind": "none, zscore, window (CT), minmax or scale",
    "IntensityConfig.a_min": "window: lower input intensity (e.g. HU)",
    "IntensityConfig.a_max": "window: upper input intensity",
    "IntensityConfig.b_min": "window / minmax: output value of the lower end",
    "IntensityConfig.b_max": "window / minmax: output value of the upper end",
    "IntensityConfig.clip": "window: clip outside [a_min, a_max]",
    "IntensityConfig.nonzero": "zscore: statistics over non-zero voxels only",
    "IntensityConfig.factor": "scale: multiply intensities by this (1/255 for 8-bit images)",
    "AugmentConfig.flip_prob": "probability of a random flip",
    "AugmentConfig.flip_axes": "spatial axes that may be flipped (None: all)",
    "AugmentConfig.rotate90_prob": "probability of a random 90-degree rotation",
    "AugmentConfig.affine_prob": "probability of a random affine (rotation + scaling)",
    "AugmentConfig.rotate_range": "affine rotation range in radians",
    "AugmentConfig.scale_range": "affine scaling range (fraction)",
    "AugmentConfig.intensity_scale": "random intensity scaling factor range",
    "AugmentConfig.intensity_shift": "random intensity shift range",
    "AugmentConfig.noise_std": "standard deviation of random Gaussian noise",
    "AugmentConfig.gamma_prob": "probability of a random gamma (contrast) change",
    "SplitConfig.seed": "seed of the split draw",
    "SplitConfig.val_fraction": "fraction of cases for validation",
    "SplitConfig.test_fraction": "fraction of cases held out for testing",
    "SplitConfig.fold": "which fold is validation in k-fold cross-validation",
    # ---- model / task / threat
    "ModelConfig.name": "registry name (`medrobust list models`)",
    "ModelConfig.spatial_dims": "2 or 3 (default: from the data)",
    "ModelConfig.in_channels": "input channels (default: from the data)",
    "ModelConfig.out_channels": "output channels (default: number of classes)",
    "ModelConfig.params": "constructor arguments of the model",
    "ThreatConfig.norm": "Linf or L2",
    "ThreatConfig.budgets": "budgets to evaluate (evaluation only), in `units`",
    "ThreatConfig.units": "input (model-input units), native (scanner / HU units) or rms (L2 per voxel)",
    "ThreatConfig.bounds": "clip perturbed inputs: auto, none, per_image or [lo, hi]",
    "SegLossConfig.dice_weight": "weight of 1 - soft Dice",
    "SegLossConfig.ce_weight": "weight of cross-entropy",
    "SegLossConfig.include_background": "include the background class in the Dice term",
    "SegLossConfig.smooth": "smoothing constant of the soft Dice",
    "SuccessConfig.threshold": "a sample is correct while its Dice is at least this",
    "SuccessConfig.reduction": "mean or max of the per-class Dice compared with the threshold",
    "OptimConfig.name": "sgd, adam or adamw",
    "OptimConfig.lr": "learning rate",
    "OptimConfig.momentum": "SGD momentum",
    "OptimConfig.nesterov": "SGD Nesterov momentum",
    "OptimConfig.weight_decay": "weight decay",
    "ScheduleConfig.name": "none, cosine, poly, step or multistep",
    "ScheduleConfig.warmup_epochs": "linear warm-up epochs",
    "ScheduleConfig.milestones": "multistep: epochs where the rate is multiplied by gamma",
    "ScheduleConfig.gamma": "step / multistep: rate multiplier",
    "ScheduleConfig.step_size": "step: epochs between multiplications",
    "ScheduleConfig.power": "poly: exponent",
    "DistributedConfig.backend": "auto, gloo or nccl",
    "InferenceConfig.sliding_window": "run the model in windows: true, false or auto (when inputs exceed the training size)",
    "InferenceConfig.roi_size": "window size (default: the training input size)",
    "InferenceConfig.overlap": "window overlap fraction",
    "InferenceConfig.sw_batch_size": "windows per forward pass",
    # ---- evaluation
    "EvalConfig.task": "segmentation or classification (set by the command)",
    "EvalConfig.checkpoint": "checkpoint file, or a run folder (its best.pt is used)",
    "EvalConfig.split": "which split of the data to evaluate: train, val, test or all",
    "EvalConfig.max_samples": "evaluate only the first N samples",
    "EvalConfig.threat": "norm, budgets, units and bounds of the sweep",
    "EvalConfig.attacks": "attacks: names or {name: ..., params} (`medrobust list attacks`)",
    "EvalConfig.metrics": "segmentation metrics: dice, hd95, nsd, iou",
    "EvalConfig.success": "override the checkpoint's success rule",
    "EvalConfig.batch_size": "evaluation batch size",
    "EvalConfig.seed": "seed of the attacks",
    "EvalConfig.device": "auto, cpu, cuda or cuda:N",
    "EvalConfig.output_dir": "results folder; refused if it holds something else unless --overwrite",
    "EvalConfig.save_nifti": "write adversarial images and predictions (original label ids) as NIfTI",
    "EvalConfig.save_adversarial": "keep adversarial inputs",
    "EvalConfig.inference": "sliding-window inference settings",
    # ---- margins
    "MarginsConfig.task": "segmentation or classification (must match the checkpoint)",
    "MarginsConfig.checkpoint": "checkpoint file, or a run folder (its best.pt is used)",
    "MarginsConfig.data": "overrides merged into the checkpoint's data config",
    "MarginsConfig.split": "which split to use: train, val, test or all",
    "MarginsConfig.max_samples": "use only the first N samples",
    "MarginsConfig.threat": "norm, units and bounds of the margin search",
    "MarginsConfig.attack": "attack used inside the bisection",
    "MarginsConfig.eps_max": "largest budget searched (margins above it are censored)",
    "MarginsConfig.bisection_steps": "bisection steps per sample",
    "MarginsConfig.success": "override the checkpoint's success rule",
    "MarginsConfig.voxel_maps": "also compute per-voxel flip budgets (segmentation)",
    "MarginsConfig.voxel_steps": "gradient steps of the per-voxel search",
    "MarginsConfig.batch_size": "batch size",
    "MarginsConfig.seed": "seed of the attack",
    "MarginsConfig.device": "auto, cpu, cuda or cuda:N",
    "MarginsConfig.output_dir": "results folder; refused if it holds something else unless --overwrite",
    "MarginsConfig.save_nifti": "write voxel maps as NIfTI",
    "MarginsConfig.examples": "number of example heat maps to draw",
    "MarginsConfig.inference": "sliding-window inference settings",
    # ---- compare / pipelines
    "CompareConfig.evals": "method name -> evaluation run folder",
    "CompareConfig.trains": "method name -> training run folder (for training time)",
    "CompareConfig.attack": "attack to compare, or worst_case over attacks",
    "CompareConfig.output_dir": "folder of the comparison table and plot",
    "CompareConfig.title": "title of the plot and table",
    "PipelineSpec.name": "pipeline name (default output folder runs/<name>)",
    "PipelineSpec.description": "free text",
    "PipelineSpec.output_dir": "each step writes to output_dir/<step id> unless its config sets output_dir",
    "PipelineSpec.steps": "the steps, run in order",
    "StepSpec.id": "unique step id; later steps refer to its outputs as ${id.key}",
    "StepSpec.command": "train-seg, train-classify, eval-seg, eval-classify, margins or compare",
    "StepSpec.config": "the command's config: an inline mapping or a path to a YAML file",
    "StepSpec.set": "overrides key.sub=value applied to this step",
}


def _roots() -> list[tuple[str, type[BaseModel]]]:
    from medrobust.config import EvalConfig, MarginsConfig, TrainConfig
    from medrobust.evaluation.compare import CompareConfig
    from medrobust.pipelines import PipelineSpec

    return [("train-seg / train-classify", TrainConfig), ("eval-seg / eval-classify", EvalConfig),
            ("margins", MarginsConfig), ("compare (pipeline step)", CompareConfig), ("pipeline files (`medrobust run`)", PipelineSpec)]


def _submodel(ann: Any) -> type[BaseModel] | None:
    from medrobust.config import unwrap_model

    return unwrap_model(ann)


def _type_name(ann: Any) -> str:
    if isinstance(ann, str):
        return ann
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        parts = [a for a in args if a is not type(None)]
        inner = " \\| ".join(_type_name(a) for a in parts)
        return f"{inner} \\| null" if len(parts) < len(args) else inner
    if origin in (list, tuple):
        return f"list[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict:
        return f"map[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(ann, type):
        return {"str": "str", "int": "int", "float": "float", "bool": "bool"}.get(ann.__name__, ann.__name__)
    return str(ann).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    text = json.dumps(value, default=str)
    return f"`{text}`" if len(text) <= 40 else f"`{text[:37]}...`"


def describe(cls: type[BaseModel], name: str) -> str:
    f = cls.model_fields[name]
    return (f.description or DESCRIPTIONS.get(f"{cls.__name__}.{name}", "")).replace("|", "\\|").replace("\n", " ")


def undocumented() -> list[str]:
    """``Class.field`` of every key that has no one-line description."""
    out, seen = [], set()

    def walk(cls: type[BaseModel]) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for n, f in cls.model_fields.items():
            if not describe(cls, n):
                out.append(f"{cls.__name__}.{n}")
            sub = _submodel(f.annotation)
            if sub is not None:
                walk(sub)

    for _, cls in _roots():
        walk(cls)
    return out


def render() -> str:
    """The whole reference as Markdown."""
    lines = ["# Config reference", "",
             "Generated from the config schemas by `python -m medrobust.config_reference`; do not edit by hand",
             "(`tests/test_config_reference.py` fails when this file is stale). Every config rejects unknown",
             "keys with a did-you-mean; paths are relative to the YAML file that holds them; `--set key.sub=value`",
             "overrides any key. Method and attack parameters are listed by `medrobust list methods` / `list attacks`",
             "and documented in docs/methods.md and docs/evaluation.md.", ""]
    for title, root in _roots():
        lines += [f"## {title}", ""]
        seen: set = set()
        queue: list[tuple[str, type[BaseModel]]] = [("", root)]
        while queue:
            prefix, cls = queue.pop(0)
            if (prefix, cls) in seen:
                continue
            seen.add((prefix, cls))
            heading = f"`{prefix.rstrip('.')}`" if prefix else "top level"
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            lines += [f"### {heading} ({cls.__name__})", ""]
            if doc and not doc.startswith("A base class") and not doc.startswith("Usage docs"):
                lines += [doc, ""]
            lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
            subs = []
            for n, f in cls.model_fields.items():
                lines.append(f"| `{prefix}{n}` | {_type_name(f.annotation)} | {_default(f)} | {describe(cls, n)} |")
                sub = _submodel(f.annotation)
                if sub is not None:
                    subs.append((f"{prefix}{n}.", sub))
            lines.append("")
            queue = subs + queue
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (default) or check (``--check``) docs/config_reference.md."""
    argv = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if "--check" in argv:
        ok = DOC_PATH.is_file() and DOC_PATH.read_text() == text
        print("docs/config_reference.md is up to date" if ok else "docs/config_reference.md is stale; run python -m medrobust.config_reference")
        return 0 if ok else 1
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
