"""The ``medrobust`` command line. Thin: parse, load the config, call the library.

Every user error (bad config key, missing file, label out of range, checkpoint of another
model, ...) is printed as one sentence on stderr and the command exits with status 2.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import click

from medrobust.errors import MedrobustError

log = logging.getLogger(__name__)


def _fail(msg: str, code: int = 2) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _interrupted_message(cmd: str) -> str:
    cmd = cmd or ""
    if cmd.startswith("train"):
        return "interrupted; the last finished epoch is saved (train again with --resume to continue)."
    if cmd == "run":
        return ("interrupted; finished steps are kept and an interrupted training step resumes from its last finished "
                "epoch when the pipeline is run again.")
    return "interrupted; this command's results are incomplete, run it again to produce them."


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        from medrobust.outputs import release_all

        try:
            return super().invoke(ctx)
        except MedrobustError as exc:
            _fail(str(exc))
        except FloatingPointError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail(_interrupted_message(ctx.invoked_subcommand), 130)
        except click.UsageError as exc:  # malformed command line: one sentence too, not click's usage block
            msg = " ".join(exc.format_message().split()).rstrip(".").replace(". Did you mean", "; did you mean")
            where = exc.ctx.command_path if exc.ctx is not None else "medrobust"
            msg = f"{msg[:1].lower()}{msg[1:]}"
            _fail(msg if msg.endswith("?") else f"{msg}; see `{where} --help`.")
        finally:
            release_all()


def _overwrite_scope(overwrite: bool):
    from medrobust.outputs import overwrite_mode

    return overwrite_mode(overwrite)


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="If output_dir holds other results, move them into output_dir/old-<time>/ (never deleted) instead of refusing.")


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config value, e.g. --set epochs=3 --set data.split.seed=1 (repeatable).")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="medrobust")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """medrobust: adversarial robustness of medical image segmentation and classification.

    Train with margin-based adversarial training (IMA, IAAT, ISEAT, average-margin, PGD-AT,
    TRADES, MART, AWP), evaluate Dice / accuracy under AutoAttack and white noise, estimate
    per-case and per-voxel margins, or run a whole pipeline YAML.
    """
    from medrobust.utils import setup_logging

    setup_logging(None, logging.DEBUG if verbose else logging.INFO)


def _load(kind: str, config: str, overrides: tuple[str, ...], task: Optional[str] = None):
    from medrobust.config import EvalConfig, MarginsConfig, TrainConfig, load_config, load_yaml
    from medrobust.preflight import check_config

    cls = {"train": TrainConfig, "eval": EvalConfig, "margins": MarginsConfig}[kind]
    extra = list(overrides)
    raw = load_yaml(config)
    if not raw and not overrides:
        raise MedrobustError(f"config file '{config}' is empty; write the settings into it (see docs/config_reference.md "
                             f"and the examples in configs/ and pipelines/).")
    if task is not None:
        if raw.get("task", task) != task:
            other = {"train": ("train-seg", "train-classify"), "eval": ("eval-seg", "eval-classify")}[kind]
            right = other[0] if raw["task"] == "segmentation" else other[1]
            raise MedrobustError(f"config '{config}' is for task '{raw['task']}' but this command is for {task}; use `medrobust {right}`.")
        extra = [f"task={task}"] + extra
    cfg = load_config(cls, config, extra)
    check_config(cfg)  # method / attack / model parameters, before any data is read
    return cfg


def _train(config: str, overrides: tuple[str, ...], resume: bool, stop_after: Optional[int], task: str,
           overwrite: bool = False) -> None:
    from medrobust.training.engine import train

    if resume and overwrite:
        raise MedrobustError("--resume and --overwrite contradict each other; pass --resume to continue the run, or "
                             "--overwrite to move it aside and train afresh.")
    cfg = _load("train", config, overrides, task)
    with _overwrite_scope(overwrite):
        res = train(cfg, resume=resume, stop_after=stop_after)
    click.echo(f"run folder: {res.run_dir}\nbest checkpoint: {res.best_checkpoint}")


train_options = [
    click.argument("config", type=click.Path()),
    set_option,
    click.option("--resume", is_flag=True, help="Continue the run in output_dir from its last.pt (exact)."),
    click.option("--stop-after", type=int, default=None, hidden=True, help="Stop after N epochs (testing)."),
    overwrite_option,
]


def _apply(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f

    return deco


@main.command("train-seg")
@_apply(train_options)
def train_seg(config: str, overrides: tuple[str, ...], resume: bool, stop_after: Optional[int], overwrite: bool) -> None:
    """Train a 2D/3D segmentation model from CONFIG (any method: standard, ima, iaat, ...)."""
    _train(config, overrides, resume, stop_after, "segmentation", overwrite)


@main.command("train-classify")
@_apply(train_options)
def train_classify(config: str, overrides: tuple[str, ...], resume: bool, stop_after: Optional[int], overwrite: bool) -> None:
    """Train a 2D/3D classifier from CONFIG (any method)."""
    _train(config, overrides, resume, stop_after, "classification", overwrite)


def _eval(config: str, overrides: tuple[str, ...], task: str, overwrite: bool = False, resume: bool = False) -> None:
    from medrobust.evaluation.sweep import evaluate

    cfg = _load("eval", config, overrides, task)
    with _overwrite_scope(overwrite):
        res = evaluate(cfg, resume=resume)
    _echo_results(res)


def _echo_results(res) -> None:
    """The summary and results folder of an evaluation or margins run (rank 0 of a sharded run only)."""
    if res.summary:
        click.echo(res.text_summary())
        click.echo(f"results: {res.run_dir}")


eval_resume_option = click.option("--resume", is_flag=True,
                                  help="Keep the finished work items in output_dir (same config) and compute the rest.")
eval_options = [click.argument("config", type=click.Path()), set_option, overwrite_option, eval_resume_option]


@main.command("eval-seg")
@_apply(eval_options)
def eval_seg(config: str, overrides: tuple[str, ...], overwrite: bool, resume: bool) -> None:
    """Evaluate a segmentation checkpoint: Dice per case under attacks x budgets (shards under torchrun)."""
    _eval(config, overrides, "segmentation", overwrite, resume)


@main.command("eval-classify")
@_apply(eval_options)
def eval_classify(config: str, overrides: tuple[str, ...], overwrite: bool, resume: bool) -> None:
    """Evaluate a classifier checkpoint: accuracy / AUC under AutoAttack, noise, ... x budgets (shards under torchrun)."""
    _eval(config, overrides, "classification", overwrite, resume)


@main.command("margins")
@_apply(eval_options)
def margins(config: str, overrides: tuple[str, ...], overwrite: bool, resume: bool) -> None:
    """Per-case smallest breaking budget (bisection) and per-voxel margin maps (shards under torchrun)."""
    from medrobust.margins.run import run_margins

    cfg = _load("margins", config, overrides)
    with _overwrite_scope(overwrite):
        res = run_margins(cfg, resume=resume)
    _echo_results(res)


@main.command("run")
@click.argument("pipeline", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="STEP.KEY=VALUE",
              help="Override a step's config value, e.g. --set train.epochs=2 (repeatable).")
@click.option("--only", multiple=True, metavar="STEP", help="Run only these steps (earlier outputs are assumed to exist).")
@overwrite_option
def run(pipeline: str, overrides: tuple[str, ...], only: tuple[str, ...], overwrite: bool) -> None:
    """Run a pipeline YAML: a list of train / eval / margins / compare steps."""
    from medrobust.pipelines import run_pipeline

    with _overwrite_scope(overwrite):
        outputs = run_pipeline(pipeline, list(overrides), list(only) or None, echo=click.echo)
    for sid, out in outputs.items():
        main_out = out.get("report") or out.get("summary") or out.get("best_checkpoint") or out.get("run_dir")
        click.echo(f"  {sid}: {main_out}")


@main.group("data")
def data() -> None:
    """Inspect datasets and write phantom data."""


@data.command("inspect")
@click.argument("source", type=click.Path())
@click.option("--root", default=None, help="Data root for ${data_root} in the manifest.")
@click.option("--label-remap", default=None, help="Label remapping as YAML, e.g. '{255: 1}'.")
@click.option("--labels", "label_values", default=None, help="Allowed label values, e.g. '0,1,2' (default: the manifest's label map).")
@click.option("--csv", "csv_out", default=None, type=click.Path(dir_okay=False), help="Also write the table as CSV.")
@click.option("--label-threshold", type=float, default=None,
              help="Binarise masks: values >= this become 1, others 0 (e.g. 128 for JPEG masks), as data.label_threshold.")
@click.option("--max-cases", type=int, default=None)
def data_inspect(source: str, root: Optional[str], label_remap: Optional[str], label_values: Optional[str],
                 csv_out: Optional[str], max_cases: Optional[int], label_threshold: Optional[float]) -> None:
    """Table of the cases of a manifest (CSV / JSON), nnU-Net folder or MedMNIST file, with problems."""
    from medrobust.data.inspect import inspect_source

    remap = parse_label_remap(label_remap) if label_remap else None
    allowed = parse_int_list(label_values, "--labels", "0,1,2") if label_values else None
    report = inspect_source(source, root=root, label_remap=remap, allowed_labels=allowed, max_cases=max_cases,
                            label_threshold=label_threshold)
    click.echo(report.to_text())
    if csv_out:
        report.to_csv(csv_out)
        click.echo(f"table written to {csv_out}")
    if report.n_problems:
        sys.exit(1)


@data.command("phantoms")
@click.argument("out_dir", type=click.Path())
@click.option("--cases", type=int, default=8)
@click.option("--size", default="48,48,32", help="Comma-separated size (2 or 3 values).")
@click.option("--seed", type=int, default=0)
@overwrite_option
def data_phantoms(out_dir: str, cases: int, size: str, seed: int, overwrite: bool) -> None:
    """Write synthetic phantoms as an MSD-style NIfTI dataset (imagesTr/, labelsTr/, dataset.json)."""
    from medrobust.data.phantoms import write_phantom_dataset
    from medrobust.outputs import claim_output_dir, release_output_dir

    if cases < 1:
        raise MedrobustError(f"--cases must be at least 1 (got {cases}); an empty dataset cannot be trained or evaluated.")
    dims = parse_int_list(size, "--size", "48,48,32 or 64,64")
    if len(dims) not in (2, 3) or any(d < 8 for d in dims):
        raise MedrobustError(f"--size must be 2 or 3 comma-separated sizes of at least 8 (got '{size}'), e.g. 48,48,32 or 64,64.")
    with _overwrite_scope(overwrite):
        claim_output_dir(out_dir, "data phantoms", {"cases": cases, "size": dims, "seed": seed})
    path = write_phantom_dataset(out_dir, cases, dims, seed=seed)
    release_output_dir(out_dir)
    click.echo(f"wrote {cases} phantom cases; manifest: {path}")


def parse_int_list(text: str, option: str, example: str) -> list[int]:
    """``'0,1,2'`` -> ``[0, 1, 2]``; one sentence naming the option for anything else."""
    try:
        return [int(v) for v in str(text).split(",")]
    except ValueError:
        raise MedrobustError(f"{option} must be comma-separated integers such as {example}, not '{text}'.") from None


def parse_label_remap(text: str) -> dict[int, int]:
    """``'{255: 1}'`` -> ``{255: 1}``; one sentence for malformed YAML or non-integer entries."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict) or not value:
        raise MedrobustError(f"--label-remap must be a YAML mapping of integer label values such as '{{255: 1}}', not '{text}'.")
    try:
        return {int(k): int(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise MedrobustError(f"--label-remap must map integers to integers such as '{{255: 1}}', not '{text}'.") from None


@main.command("list")
@click.argument("what", type=click.Choice(["models", "methods", "attacks", "sources"]))
def list_things(what: str) -> None:
    """List registered models, training methods, attacks or model sources."""
    if what == "sources":
        from medrobust.models.sources import list_sources

        for k, v in list_sources().items():
            click.echo(f"{k:14s} {v}")
    elif what == "models":
        from medrobust.models import MODELS

        for k, v in sorted(MODELS.items()):
            click.echo(f"{k:18s} {v.task:15s} {'/'.join(f'{d}D' for d in v.dims):6s} {v.description}")
    elif what == "methods":
        from medrobust.training import METHODS

        for k, v in sorted(METHODS.items()):
            click.echo(f"{k:12s} {v.description}")
    else:
        from medrobust.attacks import ATTACKS

        for k, v in sorted(ATTACKS.items()):
            click.echo(f"{k:18s} {v.description}")


if __name__ == "__main__":  # pragma: no cover
    main()
