"""Every shipped pipeline's steps validate against their command's schema and refer only to real outputs.

A pipeline that only fails at its fifth step, an hour in, is a silent surprise: this parses
each step's config (bases, references to earlier steps' outputs) without running anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medrobust.config import EvalConfig, MarginsConfig, TrainConfig, parse_config
from medrobust.pipelines import _check_steps, _step_config, load_pipeline, result_type
from medrobust.preflight import check_config

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))
SCHEMAS = {"train-seg": TrainConfig, "train-classify": TrainConfig, "eval-seg": EvalConfig, "eval-classify": EvalConfig,
           "margins": MarginsConfig}


def _outputs_of(command: str, output_dir: str) -> dict[str, str]:
    if command == "shell":
        return {"run_dir": output_dir, "log": f"{output_dir}/log.txt"}
    return result_type(command).paths(Path(output_dir))


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_steps_validate(path):
    spec, base = load_pipeline(path)
    _check_steps(spec, base, {}, path, None)  # what `medrobust run` checks before its first step (references as placeholders)
    outputs: dict[str, dict[str, str]] = {}
    checked = 0
    for step in spec.steps:
        cfg, _ = _step_config(step, base, outputs)
        schema = SCHEMAS.get(step.command)
        if schema is not None:
            task = "segmentation" if step.command.endswith("seg") or step.command == "margins" else "classification"
            data = dict(cfg)
            if step.command != "margins":
                data.setdefault("task", task)
            cfg_obj = parse_config(schema, data, f"{path.name} step '{step.id}'")
            check_config(cfg_obj)  # the method's, attacks' and model's own parameters (names, ranges) too
            checked += 1
        outputs[step.id] = _outputs_of(step.command, str(cfg.get("output_dir", f"/tmp/{step.id}")))
    assert checked >= 1 or any(s.command == "compare" for s in spec.steps)
