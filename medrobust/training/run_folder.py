"""The folder of a training run: the resume / overwrite rules, the run's log file, its result files.

A run folder holds ``config.yaml``, ``status.json``, ``last.pt`` / ``best.pt`` (``best_clean.pt``
when selecting by another metric), ``metrics.csv`` / ``metrics.jsonl``, ``summary.json``,
``training_curves.png`` and ``log.txt``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from medrobust.checkpoint import load_checkpoint
from medrobust.config import TrainConfig
from medrobust.errors import CheckpointError
from medrobust.utils import attach_run_log, write_text_atomic

log = logging.getLogger(__name__)


def _status(run_dir: Path) -> Optional[dict[str, Any]]:
    p = run_dir / "status.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return {"state": "unknown"}


#: config keys that may differ on --resume without changing what was trained (epochs may grow)
RESUME_FREE_KEYS = ("output_dir", "device", "num_workers", "distributed", "epochs")


def prepare_run_dir(run_dir: Path, resume: bool, cfg: Optional[TrainConfig] = None) -> bool:
    """Check, lock and mark a training run folder; returns whether to resume.

    - ``--resume`` needs ``last.pt`` and the same config as that run (only ``epochs`` may change,
      and the change is recorded); a folder whose run never finished an epoch starts again.
    - A fresh run refuses a folder holding a run with a finished epoch, another command's
      output or other files, unless ``--overwrite`` (see :mod:`medrobust.outputs`).
    """
    from medrobust import outputs

    command = "train-seg" if cfg is None or cfg.task == "segmentation" else "train-classify"
    config = cfg.model_dump(mode="json") if cfg is not None else {}
    outputs.check_writable_dir(run_dir)
    outputs.acquire_lock(run_dir, command)
    try:
        return _check_run_dir(run_dir, resume, cfg, command, config)
    except BaseException:
        outputs.release_output_dir(run_dir)
        raise


def _check_run_dir(run_dir: Path, resume: bool, cfg: Optional[TrainConfig], command: str, config: dict[str, Any]) -> bool:
    from medrobust import outputs

    marker = outputs.read_marker(run_dir)
    status = _status(run_dir)
    has_last = (run_dir / "last.pt").is_file()
    is_train = (marker or {}).get("command", "").startswith("train") or (marker is None and (status is not None or has_last))
    entries = outputs.result_entries(run_dir)
    overwrite = outputs.overwrite_enabled()

    def conflict(reason: str) -> bool:
        if not overwrite:
            raise outputs._refusal(run_dir, reason)
        outputs.move_aside(run_dir)
        outputs.write_marker(run_dir, command, config, "started (old files moved aside by --overwrite)")
        return False

    if entries and not is_train:
        other = outputs.conflict_reason(run_dir, command, config, compatible=("train-seg", "train-classify"))
        return conflict(other or "already holds other files")
    if resume:
        if not has_last:
            if status is not None or marker is not None:
                log.warning("no epoch of the run in '%s' finished, so there is nothing to resume; starting from epoch 0", run_dir)
                outputs.write_marker(run_dir, command, config, "restarted (no finished epoch to resume)", marker)
                return False
            raise CheckpointError(f"cannot resume: '{run_dir / 'last.pt'}' does not exist; train without --resume first (or fix output_dir).")
        if cfg is not None:
            old_cfg = load_checkpoint(run_dir / "last.pt").get("config", {})
            try:  # fill keys added to the schema since that run with their defaults
                old_cfg = TrainConfig.model_validate(old_cfg).model_dump(mode="json")
            except Exception:  # noqa: BLE001 - a key removed since: compare the raw config
                pass
            changed = [k for k in outputs.config_diff(old_cfg, config, ignore=RESUME_FREE_KEYS)]
            if changed:
                return conflict(f"was trained with a different config, so it cannot be resumed with this one "
                                f"(changed: {outputs.describe_diff(old_cfg, config, changed)}; only epochs may change on --resume)")
            event = "resumed"
            if old_cfg.get("epochs") != config.get("epochs"):
                event = f"resumed with epochs changed from {old_cfg.get('epochs')} to {config.get('epochs')}"
                log.info("--resume: %s", event)
            outputs.write_marker(run_dir, command, config, event, marker)
        return True
    if has_last:
        state = (status or {}).get("state", "unfinished")
        if state == "finished":
            return conflict("already holds a finished run (pass --resume instead to continue it with more epochs)")
        return conflict(f"holds an unfinished run (state: {state}; pass --resume instead to continue it)")
    if status is not None:
        log.info("the earlier run in '%s' finished no epoch; starting it again", run_dir)
    outputs.write_marker(run_dir, command, config, "started", marker if is_train else None)
    return False


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    best_metric: float
    exported: Optional[Path] = None  # a fine-tuned nnU-Net folder / MONAI bundle (model sources)

    @staticmethod
    def paths(run_dir: Path) -> dict[str, str]:
        """The outputs a training run in ``run_dir`` writes (the one place pipelines read them from)."""
        run_dir = Path(run_dir)
        return {"run_dir": str(run_dir), "best_checkpoint": str(run_dir / "best.pt"),
                "last_checkpoint": str(run_dir / "last.pt"), "checkpoint": str(run_dir / "best.pt"),
                "best_clean_checkpoint": str(_best_clean(run_dir)), "metrics": str(run_dir / "metrics.csv")}

    def outputs(self) -> dict[str, str]:
        out = self.paths(self.run_dir)
        if self.exported is not None:
            out["exported"] = str(self.exported)
        return out


def _best_clean(run_dir: Path) -> Path:
    """``best_clean.pt`` when the run selected by another metric (robust validation), else ``best.pt``."""
    p = Path(run_dir) / "best_clean.pt"
    return p if p.exists() else Path(run_dir) / "best.pt"


def release(run_dir: Path, main: bool) -> None:
    """Release the run folder's lock (rank 0 holds it)."""
    if main:
        from medrobust.outputs import release_output_dir

        release_output_dir(run_dir)


@contextlib.contextmanager
def run_log(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Copy medrobust's log records to ``run_dir/log.txt`` for the duration of the block.

    The file handler added here is removed (and the ``medrobust`` logger's level restored) on
    exit, so a library call leaves the caller's logging as it found it; console handlers are the
    CLI's (:func:`medrobust.utils.setup_logging`).

    Args:
        run_dir: the run folder.
        enabled: False on ranks other than 0 (no file).
    """
    if not enabled:
        yield
        return
    root = logging.getLogger("medrobust")
    before, level = list(root.handlers), root.level
    attach_run_log(run_dir)
    added = [h for h in root.handlers if h not in before]
    try:
        yield
    finally:
        for h in added:
            root.removeHandler(h)
            h.close()
        if added:
            root.setLevel(level)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write the history as ``metrics.csv`` (columns in order of first appearance, missing: empty) and ``metrics.jsonl``."""
    import pandas as pd  # here, not at import: `import medrobust.training.engine` stays light

    # dtype=object keeps ints as ints in columns with missing entries (csv.DictWriter's output, byte for byte)
    write_text_atomic(run_dir / "metrics.csv", pd.DataFrame(history, dtype=object).to_csv(index=False, lineterminator="\r\n"))
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def plot_history(run_dir: Path, history: list[dict[str, Any]], task: str) -> None:
    """``training_curves.png`` (a failure to draw is logged, never raised)."""
    if not history:
        return
    from medrobust.plotting import plot_training_curves

    try:
        plot_training_curves(history, run_dir / "training_curves.png", task)
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished training run
        log.warning("could not draw training curves: %s", exc)
