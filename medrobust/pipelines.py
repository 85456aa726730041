"""Pipeline YAML files: a list of steps, each a CLI command's config.

```yaml
name: quickstart
output_dir: ../runs/quickstart        # relative to this file; each step writes to output_dir/<id>
steps:
  - id: train
    command: train-seg                # train-seg, train-classify, eval-seg, eval-classify, margins, compare, robustness-card, shell
    config: {epochs: 5, data: {...}}  # inline mapping, or a path to a YAML config file
    set: ["optimizer.lr=0.01"]        # optional overrides
  - id: eval
    command: eval-seg
    config:
      checkpoint: ${train.best_checkpoint}   # outputs of earlier steps feed later ones
```

Seeds: ``seeds: [0, 1, 2]`` at the top repeats every training, evaluation and margins step once
per seed (``per_seed: false`` on a step opts out; ``per_seed: true`` opts a compare step in). Each
repetition sets the step's ``seed`` and writes to ``<output_dir>/seed<N>``; a reference from a
per-seed step to another per-seed step means the same seed's output, and a reference from any
other step (e.g. ``compare``'s ``evals: {pgd_at: ${eval_pgd_at.run_dir}}``) becomes the list of
the seeds' outputs, in the order of ``seeds``.

A ``shell`` step runs an outside tool (e.g. nnU-Net's CLI): ``config: {run: "nnUNetv2_train ...",
env: {nnUNet_results: ...}, cwd: ...}``; the command runs in the step's output folder (unless
``cwd``, relative to the YAML file), its output goes to ``output_dir/<id>/log.txt``, and a non-zero exit stops
the pipeline. Its outputs are ``run_dir`` and ``log``.

Paths resolve relative to the YAML file (or to the referenced config file). Step outputs are
what each command's result object names in its ``paths(run_dir)`` (one place, also used for
steps skipped with ``--only``): ``run_dir``, ``checkpoint`` / ``best_checkpoint`` /
``last_checkpoint`` / ``metrics`` (training); ``results`` (``results.csv``), ``summary`` and
``report`` (evaluation); ``results`` = ``margins.csv`` (margins), ``comparison.csv`` (compare). A training step whose run folder already holds a finished run is
reused, and an unfinished one is resumed, so a pipeline can be re-run after an interruption. A
step whose config changed since its folder was written is refused with the changed keys (pass
``--overwrite`` to move the old outputs aside and run it again); outputs are never reused stale.

Before the first step runs, every train / eval / margins step that will run is validated (its
schema and its method, attack and model parameters, :mod:`medrobust.preflight`), so a typo in the
last step fails in the first second rather than after the first step's training.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import Field

from medrobust.config import (
    EvalConfig,
    MarginsConfig,
    Strict,
    TrainConfig,
    apply_overrides,
    load_yaml,
    parse_config,
    resolve_bases,
    resolve_config_paths,
)
from medrobust.errors import ConfigError
from medrobust.registry import did_you_mean

log = logging.getLogger(__name__)

_REF = re.compile(r"\$\{([A-Za-z_][\w-]*)\.([A-Za-z_]\w*)\}")


class StepSpec(Strict):
    id: str
    command: str
    config: Any = Field(default_factory=dict)
    set: list[str] = Field(default_factory=list)
    per_seed: Optional[bool] = Field(None, description="repeat over the pipeline's seeds; default: train, eval and margins steps")


class PipelineSpec(Strict):
    name: str = "pipeline"
    description: str = ""
    output_dir: Optional[str] = None
    seeds: Optional[list[int]] = Field(None, description="repeat training / evaluation / margins steps once per seed")
    steps: list[StepSpec]


COMMANDS = ("train-seg", "train-classify", "eval-seg", "eval-classify", "margins", "compare", "robustness-card", "shell")


def _interpolate(obj: Any, outputs: dict[str, dict[str, Any]], step_id: str) -> Any:
    if isinstance(obj, dict):
        return {k: _interpolate(v, outputs, step_id) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_interpolate(v, outputs, step_id) for v in obj]
    if isinstance(obj, str):
        whole = _REF.fullmatch(obj)
        if whole and isinstance(outputs.get(whole.group(1), {}).get(whole.group(2)), list):
            return list(outputs[whole.group(1)][whole.group(2)])  # a per-seed step's outputs, one per seed

        def sub(m: re.Match) -> str:
            sid, key = m.group(1), m.group(2)
            if sid not in outputs:
                done = ", ".join(outputs) or "none yet"
                raise ConfigError(f"step '{step_id}' refers to ${{{sid}.{key}}} but no earlier step has id '{sid}' (earlier steps: {done}); fix the reference or the step order.")
            if key not in outputs[sid]:
                raise ConfigError(f"step '{step_id}' refers to ${{{sid}.{key}}} but step '{sid}' has no output '{key}' (it has: {', '.join(outputs[sid])}).")
            if isinstance(outputs[sid][key], list):
                raise ConfigError(f"step '{step_id}' embeds ${{{sid}.{key}}} in a longer string, but step '{sid}' runs once per seed; "
                                  f"use the reference as a whole value (it becomes the list of the seeds' outputs) or make '{step_id}' per_seed.")
            return str(outputs[sid][key])

        return _REF.sub(sub, obj)
    return obj


def load_pipeline(path: str | Path) -> tuple[PipelineSpec, Path]:
    p = Path(path)
    raw = load_yaml(p)
    spec = parse_config(PipelineSpec, raw, str(p))
    ids = [s.id for s in spec.steps]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"pipeline '{p}' has duplicate step ids {sorted({i for i in ids if ids.count(i) > 1})}; give each step a unique id.")
    for s in spec.steps:
        if s.command not in COMMANDS:
            hint = did_you_mean(s.command, COMMANDS, f"use one of {', '.join(COMMANDS)}.")
            raise ConfigError(f"pipeline '{p}' step '{s.id}' has unknown command '{s.command}'; {hint}")
    return spec, p.resolve().parent


def _unref(obj: Any) -> Any:
    """References to other steps' outputs replaced by a placeholder path (to check a step before they exist)."""
    if isinstance(obj, dict):
        return {k: _unref(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unref(v) for v in obj]
    return _REF.sub(lambda m: f"{m.group(1)}-{m.group(2)}", obj) if isinstance(obj, str) else obj


def _step_config(step: StepSpec, base_dir: Path, outputs: Optional[dict[str, dict[str, Any]]]) -> tuple[dict[str, Any], Path]:
    """A step's config mapping (file, bases, references, ``set``) and the folder its paths are relative to.

    ``outputs`` None: references to earlier steps become placeholders (the check before any step runs).
    """
    cfg = step.config
    cfg_dir = base_dir
    if isinstance(cfg, str):
        cfg_path = (base_dir / cfg) if not Path(cfg).is_absolute() else Path(cfg)
        cfg = load_yaml(cfg_path)
        cfg_dir = cfg_path.resolve().parent
    cfg = resolve_bases(cfg, cfg_dir)
    if not isinstance(cfg, dict):
        raise ConfigError(f"step '{step.id}' config must be a mapping or a path to a YAML file, not {type(cfg).__name__}.")
    refs = _unref if outputs is None else (lambda obj: _interpolate(obj, outputs, step.id))
    cfg = refs(copy.deepcopy(cfg))
    cfg = apply_overrides(cfg, refs(step.set))
    return cfg, cfg_dir


def run_pipeline(path: str | Path, overrides: Optional[list[str]] = None, only: Optional[list[str]] = None,
                 echo: Callable[[str], None] = print) -> dict[str, dict[str, str]]:
    """Run every step of a pipeline in order; returns each step's outputs by id.

    ``overrides`` are ``stepid.key.sub=value`` strings applied to that step's config.
    """
    spec, base_dir = load_pipeline(path)
    ids = [s.id for s in spec.steps]
    for name in only or []:
        if name not in ids:
            hint = did_you_mean(name, ids, f"the steps are {', '.join(ids)}.")
            raise ConfigError(f"--only '{name}' is not a step of pipeline '{path}'; {hint}")
    out_root = Path(spec.output_dir) if spec.output_dir else Path("runs") / spec.name
    if not out_root.is_absolute():
        out_root = (base_dir / out_root) if spec.output_dir else (Path.cwd() / out_root)
    out_root = Path(os.path.normpath(out_root))  # printed and passed on without 'pipelines/../'
    per_step: dict[str, list[str]] = {}
    for item in overrides or []:
        sid, _, rest = item.partition(".")
        if sid not in {s.id for s in spec.steps} or not rest:
            raise ConfigError(f"pipeline override '{item}' must start with a step id ({', '.join(s.id for s in spec.steps)}), e.g. train.epochs=2.")
        per_step.setdefault(sid, []).append(rest)
    _check_steps(spec, base_dir, per_step, path, only)
    outputs: dict[str, dict[str, Any]] = {}
    seeded: dict[str, list[dict[str, str]]] = {}
    t0 = time.time()
    for i, step in enumerate(spec.steps):
        if spec.seeds and _per_seed(step):
            runs = []
            for k, seed in enumerate(spec.seeds):
                context = {**outputs, **{sid: outs[k] for sid, outs in seeded.items()}}
                cfg_dict, cfg_dir = _step_config(step, base_dir, context)
                cfg_dict = apply_overrides(cfg_dict, per_step.get(step.id))
                if step.command != "compare":
                    cfg_dict["seed"] = seed
                cfg_dict["output_dir"] = str(Path(cfg_dict.get("output_dir") or (out_root / step.id)) / f"seed{seed}")
                if only and step.id not in only:
                    runs.append(_predicted_outputs(step.command, cfg_dict, cfg_dir))
                    continue
                echo(f"[{i + 1}/{len(spec.steps)}] {step.id} (seed {seed}): medrobust {step.command}")
                runs.append(run_command(step.command, cfg_dict, cfg_dir, source=f"{path} step '{step.id}' seed {seed}", pipeline=True))
            seeded[step.id] = runs
            outputs[step.id] = {key: [r[key] for r in runs] for key in runs[0]}
            continue
        cfg_dict, cfg_dir = _step_config(step, base_dir, outputs)
        cfg_dict = apply_overrides(cfg_dict, per_step.get(step.id))
        cfg_dict.setdefault("output_dir", str(out_root / step.id))
        if only and step.id not in only:
            outputs[step.id] = _predicted_outputs(step.command, cfg_dict, cfg_dir)
            continue
        echo(f"[{i + 1}/{len(spec.steps)}] {step.id}: medrobust {step.command}")
        outputs[step.id] = run_command(step.command, cfg_dict, cfg_dir, source=f"{path} step '{step.id}'", pipeline=True)
    echo(f"pipeline '{spec.name}' finished in {time.time() - t0:.0f}s; results under {out_root}")
    return outputs


def _check_steps(spec: PipelineSpec, base_dir: Path, per_step: dict[str, list[str]], path: str | Path,
                 only: Optional[list[str]]) -> None:
    """Validate every train / eval / margins step that will run, before the first one does.

    References to earlier steps' outputs are placeholders here (the step itself resolves and
    checks them when it runs); a step whose config file or ``_base_`` cannot be read yet (an
    earlier step may write it) is left to its own run.

    Raises:
        ConfigError: the first step whose schema, method, attack or model parameters are wrong.
    """
    for step in spec.steps:
        if step.command not in CHECKED_COMMANDS or (only and step.id not in only):
            continue
        try:
            cfg_dict, cfg_dir = _step_config(step, base_dir, None)
        except ConfigError:
            continue
        parse_step(step.command, apply_overrides(cfg_dict, per_step.get(step.id)), cfg_dir, f"{path} step '{step.id}'")


def result_type(command: str) -> Any:
    """The result class of a command; its ``paths(run_dir)`` names the command's outputs."""
    if command in ("train-seg", "train-classify"):
        from medrobust.training.engine import TrainResult

        return TrainResult
    if command in ("eval-seg", "eval-classify"):
        from medrobust.evaluation.sweep import EvalResult

        return EvalResult
    if command == "margins":
        from medrobust.margins.run import MarginsResult

        return MarginsResult
    if command == "compare":
        from medrobust.evaluation.compare import CompareResult

        return CompareResult
    if command == "robustness-card":
        from medrobust.evaluation.card import CardResult

        return CardResult
    raise ConfigError(f"unknown command '{command}'; use one of {', '.join(COMMANDS)}.")


def _predicted_outputs(command: str, cfg: dict[str, Any], cfg_dir: Path) -> dict[str, str]:
    """Outputs of a step skipped by ``--only``: the paths its command would have written."""
    from medrobust.config import resolve_path

    if command == "shell":
        out = Path(resolve_path(cfg["output_dir"], cfg_dir))
        return {"run_dir": str(out), "log": str(out / "log.txt")}
    return result_type(command).paths(Path(resolve_path(cfg["output_dir"], cfg_dir)))


def _per_seed(step: StepSpec) -> bool:
    if step.per_seed is not None:
        return step.per_seed
    return step.command != "compare"


CHECKED_COMMANDS = ("train-seg", "train-classify", "eval-seg", "eval-classify", "margins")


def parse_step(command: str, cfg_dict: dict[str, Any], base_dir: Path, source: str = "config") -> Any:
    """Validate a train / eval / margins config: schema, paths, and the method, attack and model parameters.

    Args:
        command: one of :data:`CHECKED_COMMANDS`.
        cfg_dict: the step's config mapping.
        base_dir: the folder its relative paths start from.
        source: the step, named in error sentences.

    Returns:
        The validated config (:class:`TrainConfig`, :class:`EvalConfig` or :class:`MarginsConfig`).

    Raises:
        ConfigError: the first problem, as one sentence naming the step.
    """
    if command in ("train-seg", "train-classify"):
        task = "segmentation" if command == "train-seg" else "classification"
        if cfg_dict.get("task", task) != task:
            raise ConfigError(f"{source}: the config says task '{cfg_dict['task']}' but the command is {command}; use "
                              f"{'train-seg' if cfg_dict['task'] == 'segmentation' else 'train-classify'}.")
        if not set(cfg_dict) - {"output_dir", "task"}:
            raise ConfigError(f"{source}: the training config is empty, which would train a default model on phantoms; "
                              f"give its settings (see docs/config_reference.md).")
        cfg = resolve_config_paths(parse_config(TrainConfig, {**cfg_dict, "task": task}, source), base_dir)
    elif command in ("eval-seg", "eval-classify"):
        task = "segmentation" if command == "eval-seg" else "classification"
        if cfg_dict.get("task", task) != task:
            raise ConfigError(f"{source}: the config says task '{cfg_dict['task']}' but the command is {command}.")
        cfg = resolve_config_paths(parse_config(EvalConfig, {**cfg_dict, "task": task}, source), base_dir)
    elif command == "margins":
        cfg = resolve_config_paths(parse_config(MarginsConfig, cfg_dict, source), base_dir)
    else:
        raise ConfigError(f"{source}: command '{command}' has no train / eval / margins config; use one of "
                          f"{', '.join(CHECKED_COMMANDS)}.")
    _check(cfg, source)
    return cfg


def run_command(command: str, cfg_dict: dict[str, Any], base_dir: Path, source: str = "config",
                resume: bool = False, pipeline: bool = False) -> dict[str, str]:
    """Validate a command's config and run it; returns its outputs (paths as strings)."""
    if command in ("train-seg", "train-classify"):
        cfg = parse_step(command, cfg_dict, base_dir, source)
        from medrobust.training.engine import train

        if pipeline:
            run_dir = Path(cfg.output_dir)
            resume = (run_dir / "last.pt").is_file()
        return train(cfg, resume=resume).outputs()
    if command in ("eval-seg", "eval-classify"):
        cfg = parse_step(command, cfg_dict, base_dir, source)
        from medrobust.evaluation.sweep import evaluate

        return evaluate(cfg).outputs()
    if command == "margins":
        cfg = parse_step(command, cfg_dict, base_dir, source)
        from medrobust.margins.run import run_margins

        return run_margins(cfg).outputs()
    if command == "shell":
        return run_shell(cfg_dict, base_dir, source)
    if command == "compare":
        from medrobust.evaluation.compare import CompareConfig, run_compare

        cfg = parse_config(CompareConfig, cfg_dict, source)
        return run_compare(cfg, base_dir).outputs()
    if command == "robustness-card":
        from medrobust.evaluation.card import CardConfig, run_card

        return run_card(parse_config(CardConfig, cfg_dict, source), base_dir).outputs()
    raise ConfigError(f"unknown command '{command}'; use one of {', '.join(COMMANDS)}.")


def _check(cfg: Any, source: str) -> None:
    """:func:`medrobust.preflight.check_config`, its sentence prefixed with the step (before any work)."""
    from medrobust.preflight import check_config

    try:
        check_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


class ShellConfig(Strict):
    """A ``shell`` step: an outside command (nnU-Net's CLI, a conversion script)."""

    run: str
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Optional[str] = None
    output_dir: str
    timeout_s: Optional[float] = None


def run_shell(cfg_dict: dict[str, Any], base_dir: Path, source: str = "config") -> dict[str, str]:
    """Run a ``shell`` step; its stdout and stderr go to ``output_dir/log.txt``; non-zero exit -> ConfigError."""
    import os
    import subprocess

    cfg = parse_config(ShellConfig, cfg_dict, source)
    out = Path(cfg.output_dir)
    out = out if out.is_absolute() else base_dir / out
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: str(v) for k, v in cfg.env.items()}}
    cwd = Path(cfg.cwd) if cfg.cwd else out
    cwd = cwd if cwd.is_absolute() else base_dir / cwd
    log.info("shell: %s", cfg.run)
    with open(out / "log.txt", "w") as fh:
        try:
            rc = subprocess.run(cfg.run, shell=True, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                timeout=cfg.timeout_s).returncode
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{source}: the command ran past timeout_s={cfg.timeout_s}; raise timeout_s or shorten it (log: {out / 'log.txt'}).") from None
    if rc != 0:
        tail = (out / "log.txt").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise ConfigError(f"{source}: the command `{cfg.run[:120]}` failed with exit status {rc} ({tail[0][:200]}); see {out / 'log.txt'}.")
    return {"run_dir": str(out), "log": str(out / "log.txt")}
