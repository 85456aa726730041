"""Where cases come from: the case records of the configured source (phantoms, MedMNIST, manifests).

A source says *what* is read (ids, file paths or in-memory arrays, splits, label maps); the
reading and preparation of each case is :mod:`medrobust.data.dataset`.
"""

from __future__ import annotations

from typing import Optional

from medrobust.config import DataConfig
from medrobust.data.manifests import CaseRecord, load_manifest
from medrobust.errors import DataError


def _phantom_source(cfg: DataConfig, task: str) -> tuple[list[CaseRecord], Optional[dict[int, str]]]:
    from medrobust.data.phantoms import phantom_cases, phantom_label_map

    ph = cfg.phantom
    if ph.task != task:
        ph = ph.model_copy(update={"task": task})
    cases = phantom_cases(ph.n_cases, ph.size, ph.n_structures, ph.noise, ph.bias, ph.seed, ph.task,
                          getattr(ph, "channels", 1))
    return cases, phantom_label_map(ph.n_structures, ph.task)


def _medmnist_source(cfg: DataConfig, task: str) -> tuple[list[CaseRecord], Optional[dict[int, str]]]:
    from medrobust.data.medmnist import medmnist_cases

    if task != "classification":
        raise DataError("MedMNIST files hold classification labels only; use train-classify / eval-classify with them.")
    return medmnist_cases(cfg.medmnist.path), None


def _manifest_source(cfg: DataConfig, task: str) -> tuple[list[CaseRecord], Optional[dict[int, str]]]:
    man = load_manifest(cfg.manifest, cfg.root, cfg.class_column)
    cases, label_map = man.cases, man.label_map
    if task == "classification":
        label_map = None  # a segmentation label map says nothing about classes
        if any(c.class_label is None for c in cases):
            raise DataError(f"classification needs a class label for every case, but manifest '{cfg.manifest}' has none for "
                            f"'{next(c.case_id for c in cases if c.class_label is None)}'; set data.class_column to the CSV column with the classes.")
    elif any(c.label is None for c in cases):
        raise DataError(f"segmentation needs a label file for every case, but case '{next(c.case_id for c in cases if c.label is None)}' "
                        f"in '{cfg.manifest}' has none; add a 'label' column / entry.")
    return cases, label_map


def _first_cases(cases: list[CaseRecord], n: int) -> list[CaseRecord]:
    """The first ``n`` cases by id (``n`` per given split when every case has one: MedMNIST, CSV splits)."""
    cases = sorted(cases, key=lambda c: c.case_id)
    if cases and all(c.split is not None for c in cases):  # keep every given split
        return [c for sp in ("train", "val", "test") for c in [c for c in cases if c.split == sp][:n]]
    return cases[:n]


def list_cases(cfg: DataConfig, task: str) -> tuple[list[CaseRecord], Optional[dict[int, str]]]:
    """All case records of the configured source, plus a label map when the source has one.

    Args:
        cfg: the data config (``source``, ``manifest`` / ``phantom`` / ``medmnist``, ``max_cases``, ``label_map``).
        task: ``segmentation`` or ``classification``.

    Returns:
        The case records and the label map (None when the source has none).

    Raises:
        DataError: a source that cannot serve the task (MedMNIST for segmentation, a manifest
            without labels or classes).
    """
    if cfg.source == "phantom":
        cases, label_map = _phantom_source(cfg, task)
    elif cfg.source == "medmnist":
        cases, label_map = _medmnist_source(cfg, task)
    else:
        cases, label_map = _manifest_source(cfg, task)
    if cfg.max_cases is not None:
        cases = _first_cases(cases, cfg.max_cases)
    if cfg.label_map is not None:
        label_map = {int(k): str(v) for k, v in cfg.label_map.items()}
    return cases, label_map
