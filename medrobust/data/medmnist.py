"""MedMNIST ``.npz`` files (2D grey / RGB and 3D), with their official train / val / test splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrobust.data.manifests import CaseRecord
from medrobust.errors import DataError

_SPLITS = {"train": "train", "val": "val", "test": "test"}


def npz_array(data, key: str, p: Path) -> np.ndarray:
    """One array of an opened ``.npz`` (loaded without pickle); one sentence for object arrays or damage."""
    try:
        arr = data[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(f"array '{key}' in '{p}' holds Python objects, which medrobust does not unpickle (unsafe); "
                            f"save it as a numeric array (np.savez with numbers only).") from None
        raise DataError(f"array '{key}' in '{p}' could not be read ({str(exc).splitlines()[0]}); re-create the file.") from None
    except Exception as exc:  # noqa: BLE001 - zip / CRC errors of a damaged file
        raise DataError(f"array '{key}' in '{p}' could not be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                        f"the file is damaged, re-create it.") from None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise DataError(f"array '{key}' in '{p}' has dtype {arr.dtype}, not numbers; save it as a numeric array.")
    return arr


def medmnist_cases(path: str) -> list[CaseRecord]:
    """Every image of a MedMNIST file as an in-memory case (ids ``train_00000``, ...).

    Images become channel-first float arrays in the file's native range ``[0, 255]``; labels
    (shape ``(N, 1)``) become integer class labels. Multi-label files are rejected.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"MedMNIST file '{p}' does not exist; set data.medmnist.path (or the data root).")
    try:
        data = np.load(p)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"MedMNIST file '{p}' could not be read ({str(exc).splitlines()[0]}); is it a complete .npz download?") from None
    missing = [f"{s}_{k}" for s in _SPLITS for k in ("images", "labels") if f"{s}_{k}" not in data.files]
    if missing:
        raise DataError(f"MedMNIST file '{p}' lacks the arrays {', '.join(missing)}; it is not a MedMNIST .npz.")
    cases: list[CaseRecord] = []
    for split in _SPLITS:
        images, labels = npz_array(data, f"{split}_images", p), npz_array(data, f"{split}_labels", p)
        if labels.ndim == 2 and labels.shape[1] > 1:
            raise DataError(f"MedMNIST file '{p}' is multi-label ({labels.shape[1]} labels per image); medrobust supports single-label classification.")
        labels = labels.reshape(-1)
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] == images.shape[2]:  # N, H, W, C (2D RGB)
            chw = np.moveaxis(images, -1, 1)
        elif images.ndim in (3, 4):  # N, H, W grey or N, D, H, W 3D grey
            chw = images[:, None]
        else:
            raise DataError(f"MedMNIST array '{split}_images' in '{p}' has shape {images.shape}; expected (N, H, W[, 3]) or (N, D, H, W).")
        spacing = tuple(1.0 for _ in chw.shape[2:])
        for i in range(len(chw)):
            cases.append(CaseRecord(case_id=f"{split}_{i:05d}", image=chw[i].astype(np.float32), label=None,
                                    class_label=int(labels[i]), split=split, spacing=spacing, affine=np.eye(4),
                                    native_range=(0.0, 255.0), source=f"{p.name} {split}[{i}]"))
    return cases
