"""``medrobust data inspect``: a table of the cases of a dataset, and every problem found.

Problems reported: unreadable or missing files, image / label shape or spacing mismatch,
label values outside the label map, empty masks (no foreground), NaN / inf intensities, and for
MedMNIST files class labels outside the expected range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from medrobust.errors import DataError


@dataclass
class InspectReport:
    source: str
    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    label_map: Optional[dict[int, str]] = None
    training: str = ""  # what training would do with these labels

    @property
    def n_problems(self) -> int:
        return len(self.problems)

    def to_text(self) -> str:
        with pd.option_context("display.max_rows", 200, "display.max_columns", 20, "display.width", 160):
            lines = [f"{self.source}: {len(self.table)} cases", self.table.to_string(index=False)]
        if self.label_map:
            lines.append(f"label map: {self.label_map}")
        if self.training:
            lines.append(f"training: {self.training}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("no problems found")
        return "\n".join(lines)

    def to_csv(self, path: str) -> None:
        from medrobust.utils import write_text_atomic

        write_text_atomic(path, self.table.to_csv(index=False))


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "x".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)


def inspect_source(source: str, root: Optional[str] = None, label_remap: Optional[dict[int, int]] = None,
                   allowed_labels: Optional[list[int]] = None, max_cases: Optional[int] = None,
                   label_threshold: Optional[float] = None) -> InspectReport:
    """Inspect every case of a source; label checks are the ones training runs.

    Without ``allowed_labels`` and without a label map in the manifest, the label map is inferred
    the way training infers it (so 0/255 or JPEG masks, stray values and missing classes are
    reported here, not first by training), and the report says what training will do.
    """
    p = Path(source)
    if not p.exists():
        raise DataError(f"'{p}' does not exist; give a manifest (CSV / JSON), an nnU-Net folder or a MedMNIST .npz file.")
    if p.suffix.lower() == ".npz":
        return _inspect_medmnist(p)
    from medrobust.data.manifests import load_manifest

    man = load_manifest(str(p), root, check_files=False)
    label_map = {int(v): f"label_{v}" for v in allowed_labels} if allowed_labels else man.label_map
    rows, problems = [], []
    cases = man.cases[:max_cases] if max_cases else man.cases
    from medrobust.utils import progress

    per_value: dict[int, list[str]] = {}
    for c in progress(cases, total=len(cases), desc="inspecting"):
        row, probs = _inspect_case(c, label_map, label_remap, label_threshold)
        for v in row.pop("_values", []):
            per_value.setdefault(v, []).append(c.case_id)
        rows.append(row)
        problems.extend(probs)
    training = ""
    if any(c.label is not None for c in cases):
        training, extra = _training_verdict(per_value, label_map, label_remap, label_threshold)
        problems.extend(extra)
    return InspectReport(str(p), pd.DataFrame(rows), problems, label_map, training)


def _training_verdict(per_value: dict[int, list[str]], label_map: Optional[dict[int, str]],
                      label_remap: Optional[dict[int, int]], label_threshold: Optional[float]) -> tuple[str, list[str]]:
    from medrobust.data.labels import infer_label_map, label_hint

    settings = []
    if label_threshold is not None:
        settings.append(f"data.label_threshold: {label_threshold:g}")
    if label_remap:
        settings.append(f"data.label_remap: {label_remap}")
    how = f" with {', '.join(settings)}" if settings else ""
    if label_map is not None:
        keys = sorted(label_map)
        bad = sorted(v for v in per_value if v not in label_map)
        if bad:
            return (f"refuses these labels{how}: values {bad} are outside the label map{label_hint(sorted(per_value))}.",
                    [])  # each case was already listed
        absent = [k for k in keys if k not in per_value]
        note = f"; class(es) {absent} occur in no case" if absent else ""
        contiguous = "" if keys == list(range(len(keys))) else f" (ids {keys} mapped to channels 0..{len(keys) - 1})"
        return f"builds a {len(keys)}-class model from the label map{contiguous}{how}{note}.", []
    try:
        inferred = infer_label_map(per_value, "segmentation")
    except DataError as exc:
        return f"refuses these labels{how}: {exc}", [f"training would refuse these labels: {exc}"]
    counts = ", ".join(f"{k} ({len(per_value.get(k, []))} cases)" for k in inferred)
    return f"infers a {len(inferred)}-class label map{how}: {counts}.", []


def _inspect_case(c, label_map, label_remap, label_threshold=None) -> tuple[dict[str, Any], list[str]]:
    from medrobust.data.dataset import affine_spacing
    from medrobust.data.readers import read_image, read_images

    row: dict[str, Any] = {"case": c.case_id}
    problems: list[str] = []
    try:
        img = read_images(c.image)
    except DataError as exc:
        row["status"] = "unreadable image"
        return row, [f"{c.case_id}: {exc}"]
    arr = img.as_tensor().float()
    nd = img.ndim - 1
    sp = affine_spacing(img.affine.numpy(), nd)
    finite = torch_isfinite(arr)
    row.update({"channels": int(img.shape[0]), "shape": _fmt(tuple(img.shape[1:])), "spacing": _fmt(tuple(round(s, 3) for s in sp)),
                "min": float(arr[finite].min()) if finite.any() else float("nan"),
                "max": float(arr[finite].max()) if finite.any() else float("nan")})
    if not bool(finite.all()):
        problems.append(f"{c.case_id}: {int((~finite).sum())} NaN/inf image voxels")
    if c.label is not None:
        try:
            lab = read_image(c.label, as_label=True)
        except DataError as exc:
            row["status"] = "unreadable label"
            return row, problems + [f"{c.case_id}: {exc}"]
        lv = lab.as_tensor()
        if label_threshold is not None:
            lv = (lv.float() >= float(label_threshold)).long()
        if label_remap:
            lv2 = lv.clone()
            for s, d in label_remap.items():
                lv2[lv == int(s)] = int(d)
            lv = lv2
        vals = sorted(int(v) for v in np.unique(lv.numpy()))
        row["_values"] = vals
        row["labels"] = ",".join(map(str, vals)) if len(vals) <= 12 else ",".join(map(str, vals[:12])) + f",... ({len(vals)})"
        row["foreground_%"] = round(100.0 * float((lv > 0).float().mean()), 3)
        if tuple(lab.shape[1:]) != tuple(img.shape[1:]):
            problems.append(f"{c.case_id}: image shape {tuple(img.shape[1:])} != label shape {tuple(lab.shape[1:])}")
        else:
            spl = affine_spacing(lab.affine.numpy(), nd)
            if not np.allclose(sp, spl, rtol=1e-3, atol=1e-3):
                problems.append(f"{c.case_id}: image spacing {tuple(round(s, 4) for s in sp)} != label spacing {tuple(round(s, 4) for s in spl)}")
        if label_map is not None:
            bad = [v for v in vals if v not in label_map]
            if bad:
                from medrobust.data.labels import label_hint

                hint = label_hint(vals).replace("data.label_remap: {255: 1}", "--label-remap '{255: 1}'").replace(
                    "data.label_threshold: 128", "--label-threshold 128")
                problems.append(f"{c.case_id}: label values {bad} outside the label map {sorted(label_map)}{hint}")
        if vals == [0] or (label_remap is None and all(v == 0 for v in vals)):
            problems.append(f"{c.case_id}: empty mask (no foreground)")
    if c.class_label is not None:
        row["class"] = c.class_label
    row["status"] = "problem" if problems else "ok"
    return row, problems


def torch_isfinite(t):
    import torch

    return torch.isfinite(t)


def _inspect_medmnist(p: Path) -> InspectReport:
    from medrobust.data.medmnist import npz_array

    try:
        data = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"'{p}' could not be read as .npz ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                        f"is it a complete file?") from None
    rows, problems = [], []
    n_classes = None
    for split in ("train", "val", "test"):
        ki, kl = f"{split}_images", f"{split}_labels"
        if ki not in data.files or kl not in data.files:
            problems.append(f"missing arrays {ki} / {kl}")
            continue
        im, lb = npz_array(data, ki, p), npz_array(data, kl, p)
        vals, counts = np.unique(lb, return_counts=True)
        n_classes = max(n_classes or 0, int(vals.max()) + 1)
        rows.append({"split": split, "n": len(im), "image_shape": _fmt(im.shape[1:]), "dtype": str(im.dtype),
                     "min": float(im.min()), "max": float(im.max()),
                     "class_counts": " ".join(f"{int(v)}:{int(c)}" for v, c in zip(vals, counts))})
        if not np.isfinite(im.astype(np.float64)).all():
            problems.append(f"{split}: NaN/inf pixels")
        if len(im) != len(lb):
            problems.append(f"{split}: {len(im)} images but {len(lb)} labels")
        if (lb < 0).any():
            problems.append(f"{split}: negative class labels")
    return InspectReport(str(p), pd.DataFrame(rows), problems,
                         {k: f"class_{k}" for k in range(n_classes)} if n_classes else None)
