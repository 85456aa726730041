"""Write medrobust phantoms as an nnU-Net v2 raw dataset (for the nnU-Net pipeline and tests).

The layout is nnU-Net's own: ``DatasetXXX_Name/imagesTr/CASE_0000.nii.gz`` (one file per
channel), ``labelsTr/CASE.nii.gz`` and ``dataset.json`` with ``channel_names``, ``labels``
(``{"background": 0, ...}``), ``numTraining`` and ``file_ending``. ``imagesTs/`` holds a few
extra cases for ``nnUNetv2_predict``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from medrobust.errors import ConfigError


def write_nnunet_phantoms(raw_dir: str | Path, dataset_id: int = 501, name: str = "Phantoms", n_cases: int = 12,
                          size: Optional[list[int]] = None, n_test: int = 2, n_structures: int = 2, seed: int = 0,
                          stacked_slices: bool = True) -> Path:
    """Write ``n_cases`` training and ``n_test`` test phantoms as ``raw_dir/DatasetXXX_Name``.

    Args:
        raw_dir: the ``nnUNet_raw`` folder (created if needed).
        dataset_id: nnU-Net dataset id (1-999).
        name: dataset name (letters, digits, underscores).
        n_cases, n_test: training cases (``imagesTr``/``labelsTr``) and test images (``imagesTs``).
        size: phantom size ``(x, y, z)`` in voxels (1 mm spacing); default ``[48, 40, 6]``.
        n_structures: labelled structures (1-5).
        seed: phantom seed.
        stacked_slices: build each volume from independent 2D phantoms stacked along z (larger
            structures per slice, as suits 2d configurations); ``False``: one 3D phantom per case.

    Returns:
        The dataset folder.

    Raises:
        ConfigError: for an id outside 1-999 or a size that is not 3 numbers.
    """
    from medrobust.data.phantoms import make_phantom, phantom_label_map
    from medrobust.data.readers import write_nifti
    from medrobust.utils import write_text_atomic

    if not 1 <= int(dataset_id) <= 999:
        raise ConfigError(f"nnU-Net dataset ids run from 1 to 999, got {dataset_id}; pick another id.")
    size = list(size or [48, 40, 6])
    if len(size) != 3:
        raise ConfigError(f"nnU-Net phantoms are volumes: give size as 3 numbers (x, y, z), got {size}.")
    out = Path(raw_dir) / f"Dataset{int(dataset_id):03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_cases + n_test):
        if stacked_slices:
            pairs = [make_phantom(i * size[2] + k, size[:2], n_structures, seed=seed) for k in range(size[2])]
            img, lab = np.stack([p[0] for p in pairs], -1), np.stack([p[1] for p in pairs], -1)
        else:
            img, lab = make_phantom(i, size, n_structures, seed=seed)
        cid = f"phantom_{i:03d}"
        split = "Tr" if i < n_cases else "Ts"
        write_nifti(img.astype(np.float32), np.eye(4), out / f"images{split}" / f"{cid}_0000.nii.gz")
        write_nifti(lab.astype(np.uint8), np.eye(4), out / f"labels{split}" / f"{cid}.nii.gz")
    labels = {v: k for k, v in phantom_label_map(n_structures).items()}
    spec = {"channel_names": {"0": "MR"}, "labels": labels, "numTraining": n_cases, "file_ending": ".nii.gz",
            "name": name, "description": "medrobust phantoms (synthetic, MR-like intensities)"}
    write_text_atomic(out / "dataset.json", json.dumps(spec, indent=1))
    return out


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m medrobust.models.sources.nnunet_dataset RAW_DIR [ID] [N_CASES]`` (used by the pipeline)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m medrobust.models.sources.nnunet_dataset RAW_DIR [DATASET_ID] [N_CASES]")
    ds = write_nnunet_phantoms(args[0], int(args[1]) if len(args) > 1 else 501, n_cases=int(args[2]) if len(args) > 2 else 12)
    print(ds)


if __name__ == "__main__":  # pragma: no cover
    main()
