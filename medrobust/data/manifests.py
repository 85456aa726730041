"""Manifests: the list of cases of a dataset.

Supported:

- CSV with columns ``image`` (several channel files joined by ``;``), optional ``label``,
  ``case_id``, ``split`` (train / val / test) and a class-label column (``data.class_column``);
- the Medical Segmentation Decathlon ``dataset.json`` and MONAI decathlon datalists
  (``training`` / ``validation`` / ``test`` lists of ``{"image", "label"}``);
- the nnU-Net raw layout: a folder with ``imagesTr/CASE_0000.ext`` (one file per channel),
  ``labelsTr/CASE.ext`` and optionally a ``dataset.json`` with the label names.

Paths in a manifest may start with ``${data_root}``; other relative paths resolve against the
manifest's folder. Every file is checked up front, so a missing file is reported before any
work starts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from medrobust.errors import DataError

_IMAGE_EXT = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd|\.png|\.jpe?g|\.gif|\.bmp|\.tiff?|\.dcm)$", re.I)


@dataclass
class CaseRecord:
    """One case: where its image channels and label live (or the arrays themselves)."""

    case_id: str
    image: Any  # list of paths, or an in-memory array (C, *spatial)
    label: Any = None  # a path, an in-memory array (spatial), or None
    class_label: Optional[int] = None
    split: Optional[str] = None
    spacing: Optional[tuple[float, ...]] = None  # in-memory cases only
    affine: Optional[np.ndarray] = None
    native_range: Optional[tuple[float, float]] = None  # e.g. (0, 255) for 8-bit sources
    source: str = ""  # manifest row or file it came from, for error messages
    extra: dict = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.image, np.ndarray)


@dataclass
class Manifest:
    cases: list[CaseRecord]
    label_map: Optional[dict[int, str]] = None
    path: Optional[str] = None
    kind: str = ""


def case_id_from_path(path: str) -> str:
    name = Path(str(path).split("#", 1)[0]).name
    if name.lower().endswith(".npz"):
        return name[:-4]
    stem = _IMAGE_EXT.sub("", name)
    return re.sub(r"_\d{4}$", "", stem)


def _resolve(entry: str, base: Path, data_root: Optional[str]) -> str:
    from medrobust.config import expand_data_root

    value = expand_data_root(str(entry).strip(), data_root)
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = (base / p)
    return str(p.resolve()) if p.exists() else str(p)


def _check_exists(path: str, what: str, where: str, check: bool = True) -> None:
    from medrobust.data.readers import split_npz_ref

    if check and not Path(split_npz_ref(path)[0]).exists():
        raise DataError(f"{what} file '{path}' listed in {where} does not exist; fix the path or set the data root (data.root or MEDROBUST_DATA_ROOT).")


def load_manifest(path: str, data_root: Optional[str] = None, class_column: Optional[str] = None,
                  check_files: bool = True) -> Manifest:
    """Read any supported manifest kind into a :class:`Manifest`.

    With ``check_files`` (the default) a missing image or label file is an error right away;
    ``medrobust data inspect`` turns it off to report every problem in one table.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"manifest '{p}' does not exist; check data.manifest (relative paths start at the config file's folder).")
    if p.is_dir():
        if (p / "imagesTr").is_dir():
            return load_nnunet_folder(p, data_root, check_files)
        js = p / "dataset.json"
        if js.is_file():
            return load_json_manifest(js, data_root, check_files)
        raise DataError(f"folder '{p}' is neither an nnU-Net raw dataset (imagesTr/, labelsTr/) nor has a dataset.json; point data.manifest at a CSV, JSON or such a folder.")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return load_csv_manifest(p, data_root, class_column, check_files)
    if suffix == ".json":
        return load_json_manifest(p, data_root, check_files)
    raise DataError(f"manifest '{p}' has an unsupported extension '{suffix}'; use .csv, .json (MSD / MONAI datalist) or an nnU-Net folder.")


def load_csv_manifest(p: Path, data_root: Optional[str], class_column: Optional[str], check: bool = True) -> Manifest:
    import pandas as pd

    try:
        import io

        text = "".join(line for line in p.read_text().splitlines(keepends=True) if not line.lstrip().startswith("#"))
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"manifest '{p}' is not a readable CSV ({str(exc).splitlines()[0]}); check its format.") from None
    cols = {c.strip().lower(): c for c in df.columns}
    if "image" not in cols:
        raise DataError(f"manifest '{p}' has no 'image' column (columns: {', '.join(df.columns)}); add one with the image paths.")
    label_col = cols.get("label") or cols.get("mask") or cols.get("segmentation")
    class_col = None
    if class_column is not None:
        if class_column not in df.columns:
            raise DataError(f"class column '{class_column}' is not in manifest '{p}' (columns: {', '.join(df.columns)}); set data.class_column to one of them.")
        class_col = class_column
    base = p.parent
    cases: list[CaseRecord] = []
    seen: set[str] = set()
    for i, row in df.iterrows():
        where = f"{p.name} row {i + 2}"
        images = [_resolve(s, base, data_root) for s in str(row[cols["image"]]).split(";") if s.strip()]
        if not images:
            raise DataError(f"{where} has an empty image entry; give a path in the 'image' column.")
        for im in images:
            _check_exists(im, "image", where, check)
        label = None
        if label_col is not None and str(row[label_col]).strip():
            label = _resolve(row[label_col], base, data_root)
            _check_exists(label, "label", where, check)
        cid = str(row[cols["case_id"]]).strip() if "case_id" in cols and str(row[cols["case_id"]]).strip() else case_id_from_path(images[0])
        if cid in seen:
            raise DataError(f"case id '{cid}' appears twice in manifest '{p}' ({where}); case ids must be unique (add a case_id column).")
        seen.add(cid)
        split = str(row[cols["split"]]).strip().lower() if "split" in cols and str(row[cols["split"]]).strip() else None
        if split is not None and split not in ("train", "val", "test"):
            raise DataError(f"{where} has split '{split}'; use train, val or test.")
        cls = None
        if class_col is not None:
            raw = str(row[class_col]).strip()
            try:
                cls = int(float(raw))
            except ValueError:
                raise DataError(f"{where} has class label '{raw}' in column '{class_col}', which is not an integer; encode classes as 0..K-1.") from None
        cases.append(CaseRecord(case_id=cid, image=images, label=label, class_label=cls, split=split, source=where))
    if not cases:
        raise DataError(f"manifest '{p}' lists no cases; add rows with an 'image' column.")
    blank = [c.source.rsplit(" ", 1)[-1] for c in cases if c.split is None]
    if "split" in cols and blank and len(blank) < len(cases):
        shown = ", ".join(blank[:10]) + (f" and {len(blank) - 10} more" if len(blank) > 10 else "")
        raise DataError(f"manifest '{p}' has a split column but row(s) {shown} leave it blank; give every row train, val "
                        f"or test (or remove the column to draw a seeded split).")
    return Manifest(cases=cases, path=str(p), kind="csv")


def _label_map_from_json(labels: Any) -> Optional[dict[int, str]]:
    if not isinstance(labels, dict) or not labels:
        return None
    out: dict[int, str] = {}
    for k, v in labels.items():
        try:  # MSD: {"0": "background"}
            out[int(k)] = str(v)
        except (TypeError, ValueError):
            try:  # nnU-Net v2: {"background": 0}
                out[int(v)] = str(k)
            except (TypeError, ValueError):
                return None
    return dict(sorted(out.items()))


def load_json_manifest(p: Path, data_root: Optional[str], check: bool = True) -> Manifest:
    try:
        spec = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"manifest '{p}' is not valid JSON (line {exc.lineno}: {exc.msg}); fix the syntax.") from None
    if not isinstance(spec, dict):
        raise DataError(f"manifest '{p}' must be a JSON object with a 'training' list (MSD / MONAI datalist).")
    lists = {"training": "train", "validation": "val", "test": "test"}
    if not any(k in spec for k in lists):
        raise DataError(f"manifest '{p}' has none of the keys training / validation / test; it is not an MSD dataset.json or MONAI datalist.")
    base = p.parent
    cases: list[CaseRecord] = []
    seen: set[str] = set()
    has_val = bool(spec.get("validation"))
    has_test = any(isinstance(i, dict) and i.get("label") for i in (spec.get("test") or []))
    split_given = has_val or has_test  # MSD puts every labelled case in 'training': no split then
    for key, split in lists.items():
        for i, item in enumerate(spec.get(key) or []):
            where = f"{p.name} {key}[{i}]"
            if isinstance(item, str):
                item = {"image": item}
            if not isinstance(item, dict) or "image" not in item:
                raise DataError(f"{where} has no 'image' entry; each item needs an image path.")
            if key == "test" and "label" not in item:
                continue  # unlabelled test images (MSD) are not usable for training or evaluation
            imgs = item["image"] if isinstance(item["image"], list) else [item["image"]]
            images = [_resolve(s, base, data_root) for s in imgs]
            for im in images:
                _check_exists(im, "image", where, check)
            label = None
            if item.get("label"):
                label = _resolve(item["label"], base, data_root)
                _check_exists(label, "label", where, check)
            cid = str(item.get("case_id") or case_id_from_path(images[0]))
            if cid in seen:
                raise DataError(f"case id '{cid}' appears twice in manifest '{p}' ({where}); case ids must be unique.")
            seen.add(cid)
            cls = item.get("class_label", item.get("class"))
            sp = split if split_given else None
            cases.append(CaseRecord(case_id=cid, image=images, label=label,
                                    class_label=int(cls) if cls is not None else None, split=sp, source=where))
    if not cases:
        raise DataError(f"manifest '{p}' lists no labelled cases; add items to its 'training' list.")
    return Manifest(cases=cases, label_map=_label_map_from_json(spec.get("labels")), path=str(p), kind="json")


def load_nnunet_folder(p: Path, data_root: Optional[str], check: bool = True) -> Manifest:
    """nnU-Net raw layout: imagesTr/CASE_XXXX.ext (channels), labelsTr/CASE.ext."""
    images_dir, labels_dir = p / "imagesTr", p / "labelsTr"
    files = sorted(f for f in images_dir.iterdir() if _IMAGE_EXT.search(f.name))
    if not files:
        raise DataError(f"folder '{images_dir}' holds no images; nnU-Net expects imagesTr/CASE_0000.nii.gz files.")
    groups: dict[str, list[Path]] = {}
    for f in files:
        stem = _IMAGE_EXT.sub("", f.name)
        m = re.match(r"^(.*)_(\d{4})$", stem)
        cid = m.group(1) if m else stem
        groups.setdefault(cid, []).append(f)
    label_map = None
    js = p / "dataset.json"
    file_ending = None
    if js.is_file():
        try:
            spec = json.loads(js.read_text())
            label_map = _label_map_from_json(spec.get("labels"))
            file_ending = spec.get("file_ending")
        except json.JSONDecodeError as exc:
            raise DataError(f"'{js}' is not valid JSON (line {exc.lineno}: {exc.msg}); fix the syntax.") from None
    cases = []
    for cid, chans in sorted(groups.items()):
        chans = sorted(chans)
        ext = file_ending or _IMAGE_EXT.search(chans[0].name).group(1)
        label = labels_dir / f"{cid}{ext}"
        if not label.exists() and check:
            raise DataError(f"case '{cid}' has images in '{images_dir}' but no label '{label}'; add it or remove the images.")
        cases.append(CaseRecord(case_id=cid, image=[str(c) for c in chans], label=str(label), source=f"{p.name}/imagesTr/{cid}"))
    return Manifest(cases=cases, label_map=label_map, path=str(p), kind="nnunet")
