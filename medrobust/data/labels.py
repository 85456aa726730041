"""Label checks shared by the dataset and ``medrobust inspect``: label maps, hints for raw mask encodings."""

from __future__ import annotations

from typing import Any

import torch

from medrobust.errors import DataError


def short_list(vals: list[int], n: int = 12) -> str:
    """``vals`` as text, cut after ``n`` values (for error messages)."""
    return str(vals) if len(vals) <= n else "[" + ", ".join(map(str, vals[:n])) + f", ... ({len(vals)} values)]"


def label_hint(values: list[int]) -> str:
    """A fix for common raw-mask encodings: 0/255 masks, and JPEG masks (values near 0 and 255)."""
    vals = set(int(v) for v in values)
    if vals == {0, 255}:
        return " (0/255 masks need data.label_remap: {255: 1}, or data.label_threshold: 128)"
    if 255 in vals and 0 in vals and len(vals) > 2 and all(v <= 20 or v >= 235 for v in vals):
        return " (values near 0 and 255 are a JPEG-compressed binary mask: set data.label_threshold: 128 to binarise it)"
    if max(vals, default=0) > 50:
        return (" (non-contiguous label ids such as FreeSurfer's: list them in data.label_map, e.g. {0: background, 2: wm, ...};"
                " they are mapped to contiguous channels)")
    return ""


def infer_label_map(cases_per_value: dict[int, list[str]], task: str) -> dict[int, str]:
    """The label map training builds from the label values found in the training cases.

    Args:
        cases_per_value: each label value found, with the ids of the cases holding it.
        task: ``segmentation`` or ``classification``.

    Returns:
        ``{0: "background", 1: "class_1", ...}`` (segmentation) or ``{k: "class_k"}``.

    Raises:
        DataError: no labels, a negative value, more than 50 classes implied, or a class in
            ``0..max`` that no case holds (a stray value such as 7 in one case, or a remap to 3
            when 1 and 2 never occur), naming the values and the cases.
    """
    vals = sorted(cases_per_value)
    if not vals:
        raise DataError("no labels found to build a label map; give data.label_map.")
    if vals[0] < 0:
        raise DataError(f"negative label value {vals[0]} found; labels must be 0..K-1 (use data.label_remap).")
    if vals[-1] > 50:
        raise DataError(f"label value {vals[-1]} found, which implies over 50 classes{label_hint(vals)}; give data.label_map "
                        f"or remap the labels.")
    missing = [k for k in range(vals[-1] + 1) if k not in cases_per_value]
    if missing:
        top = vals[-1]
        holders = cases_per_value[top]
        shown = ", ".join(f"'{c}'" for c in holders[:3]) + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")
        raise DataError(f"class(es) {missing} occur in no training case while label {top} occurs in {len(holders)} case(s) "
                        f"({shown}), so the inferred label map would have classes that never occur; fix the stray values, "
                        f"remap them with data.label_remap, or list the real ids in data.label_map{label_hint(vals)}.")
    n = vals[-1] + 1
    if task == "segmentation":
        return {k: ("background" if k == 0 else f"class_{k}") for k in range(n)}
    return {k: f"class_{k}" for k in range(n)}


def check_labels(case: Any, label_map: dict[int, str], task: str) -> None:
    """Refuse a prepared case whose label values (or class) lie outside ``label_map``.

    Raises:
        DataError: naming the case, the values and the fix (with a hint for raw mask encodings).
    """
    valid = set(int(k) for k in label_map)
    if task == "segmentation" and case.label is not None:
        vals = set(torch.unique(case.label).tolist())
        bad = sorted(vals - valid)
        if bad:
            hint = label_hint(sorted(vals))
            raise DataError(f"case '{case.case_id}' has label values {short_list(bad)} outside the label map {short_list(sorted(valid))}{hint}; "
                            f"fix the labels or extend data.label_map.")
    if task == "classification":
        if case.class_label is None or case.class_label not in valid:
            raise DataError(f"case '{case.case_id}' has class label {case.class_label}, outside the classes {sorted(valid)}; "
                            f"fix the label or extend data.label_map.")
