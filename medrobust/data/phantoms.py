"""Synthetic phantoms: the embedded default data of medrobust (no files, no download).

Each case is a deterministic function of ``(seed, case index)``: a body outline holding up to
five organ-like structures (two organs of different contrast, a small hypo-intense lesion
inside the first organ, and optional extra blobs), warped by a smooth random deformation, with
a smooth multiplicative intensity inhomogeneity (bias field) and Rician scanner-like noise.
Intensities are in arbitrary "scanner units" (tissue ~300-900), so that the usual intensity
preprocessing (z-score, windowing) has something to do.

Labels: 0 background (body and air), 1 organ A, 2 organ B, 3 lesion, 4-5 extra structures.
For classification phantoms the lesion is present in about half of the cases and the class
label says whether it is there.
"""

from __future__ import annotations

import numpy as np

from medrobust.data.manifests import CaseRecord

STRUCTURE_NAMES = {0: "background", 1: "organ_a", 2: "organ_b", 3: "lesion", 4: "structure_4", 5: "structure_5"}
_INTENSITY = {"body": 300.0, 1: 620.0, 2: 880.0, 3: 160.0, 4: 450.0, 5: 1000.0}


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    if d == 2:
        a = rng.uniform(0, np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _ellipsoid(coords: np.ndarray, center: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """coords: (d, *shape). Inside-ness value (<1 inside)."""
    d = coords.shape[0]
    rel = coords - center.reshape(d, *([1] * d))
    rel = np.tensordot(rot.T, rel, axes=1)
    return sum((rel[i] / radii[i]) ** 2 for i in range(d))


def _smooth_field(coords: np.ndarray, rng: np.random.Generator, n_terms: int = 4, freq: float = 1.5) -> np.ndarray:
    d = coords.shape[0]
    field = np.zeros(coords.shape[1:])
    for _ in range(n_terms):
        w = rng.normal(size=d) * freq
        field += rng.uniform(0.3, 1.0) * np.sin(np.tensordot(w, coords, axes=1) + rng.uniform(0, 2 * np.pi))
    return field / n_terms


def make_phantom(index: int, size: list[int] | tuple[int, ...], n_structures: int = 3, noise: float = 0.04,
                 bias: float = 0.25, seed: int = 0, lesion: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One phantom case: ``(image, label)`` arrays of shape ``size`` (2D or 3D).

    ``lesion`` forces the lesion on or off (classification phantoms); ``None`` keeps it on.
    """
    size = tuple(int(s) for s in size)
    d = len(size)
    if d not in (2, 3):
        raise ValueError(f"phantom size must have 2 or 3 entries, got {size}")
    rng = np.random.default_rng([seed, index, d])
    axes = [np.linspace(-1, 1, s) for s in size]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    # smooth deformation shared by all structures
    warp = np.stack([0.06 * _smooth_field(coords, rng, 3, 2.0) for _ in range(d)])
    wc = coords + warp

    label = np.zeros(size, dtype=np.int64)
    image = np.zeros(size, dtype=np.float64)
    body = _ellipsoid(wc, rng.uniform(-0.05, 0.05, d), rng.uniform(0.8, 0.92, d), _rotation(rng, d)) < 1
    image[body] = _INTENSITY["body"]

    side = rng.choice([-1.0, 1.0])
    c1 = np.zeros(d)
    c1[0] = side * rng.uniform(0.2, 0.3)
    c1[1:] = rng.uniform(-0.15, 0.15, d - 1)
    r1 = rng.uniform(0.28, 0.4, d)
    rot1 = _rotation(rng, d)
    organ_a = _ellipsoid(wc, c1, r1, rot1) < 1
    c2 = -c1 * rng.uniform(1.2, 1.6)
    c2[1:] = rng.uniform(-0.25, 0.25, d - 1)
    r2 = rng.uniform(0.13, 0.22, d)
    organ_b = (_ellipsoid(wc, c2, r2, _rotation(rng, d)) < 1) & body & ~organ_a
    masks = {1: organ_a & body, 2: organ_b}
    if n_structures >= 3 and (lesion is None or lesion):
        cl = c1 + rng.uniform(-0.35, 0.35, d) * r1
        rl = np.full(d, rng.uniform(0.07, 0.12)) * rng.uniform(0.85, 1.15, d)
        masks[3] = (_ellipsoid(wc, cl, rl, _rotation(rng, d)) < 1) & organ_a
    else:
        rng.uniform(size=3 * d + 1)  # keep the RNG stream aligned
    for k in (4, 5):
        if n_structures >= k:
            ck = rng.uniform(-0.5, 0.5, d)
            rk = rng.uniform(0.08, 0.15, d)
            occupied = np.zeros(size, dtype=bool)
            for m in masks.values():
                occupied |= m
            masks[k] = (_ellipsoid(wc, ck, rk, _rotation(rng, d)) < 1) & body & ~occupied
    for k in sorted(masks):
        if k > n_structures:
            continue
        label[masks[k]] = k
        image[masks[k]] = _INTENSITY[k] * rng.uniform(0.92, 1.08)
    # fine texture, bias field and Rician noise
    image *= 1.0 + 0.05 * _smooth_field(coords, rng, 6, 9.0)
    image *= np.exp(bias * _smooth_field(coords, rng, 3, 1.2))
    sigma = noise * 1000.0
    n1, n2 = rng.normal(0, sigma, size), rng.normal(0, sigma, size)
    image = np.sqrt((image + n1) ** 2 + n2 ** 2)
    return image.astype(np.float32), label


def extra_channels(img: np.ndarray, channels: int, index: int, noise: float, seed: int) -> np.ndarray:
    """``(channels, *size)``: the phantom plus further "sequences" of the same anatomy.

    Channel 0 is the phantom; channel ``c`` >= 1 has its own contrast (odd channels inverted, as
    T2 against T1), its own gain and its own noise, like co-registered MR sequences.
    """
    out = [img.astype(np.float32)]
    for c in range(1, channels):
        rng = np.random.default_rng([seed, index, 7919, c])
        base = (1.0 - img) if c % 2 else img
        gain = 0.6 + 0.15 * c
        out.append((gain * base + 0.1 * c + rng.normal(0.0, noise, img.shape)).astype(np.float32))
    return np.stack(out)


def phantom_cases(n_cases: int, size: list[int], n_structures: int = 3, noise: float = 0.04, bias: float = 0.25,
                  seed: int = 0, task: str = "segmentation", channels: int = 1) -> list[CaseRecord]:
    """The phantom dataset as in-memory case records (ids ``phantom_000``, ...); ``channels`` image channels."""
    cases = []
    for i in range(n_cases):
        lesion = None
        cls = None
        if task == "classification":
            lesion = bool(np.random.default_rng([seed, i, 99]).integers(0, 2))
            cls = int(lesion)
        img, lab = make_phantom(i, size, n_structures, noise, bias, seed, lesion=lesion)
        image = img[None] if channels <= 1 else extra_channels(img, channels, i, noise, seed)
        cases.append(CaseRecord(case_id=f"phantom_{i:03d}", image=image, label=lab if task == "segmentation" else None,
                                class_label=cls, spacing=tuple(1.0 for _ in size), affine=np.eye(4),
                                source=f"phantom {i} (seed {seed})"))
    return cases


def phantom_label_map(n_structures: int, task: str = "segmentation") -> dict[int, str]:
    if task == "classification":
        return {0: "no_lesion", 1: "lesion"}
    return {k: STRUCTURE_NAMES[k] for k in range(n_structures + 1)}


def write_phantom_dataset(out_dir: str, n_cases: int = 8, size: list[int] | None = None, n_structures: int = 3,
                          seed: int = 0) -> str:
    """Write phantoms as an MSD-style NIfTI dataset (``imagesTr/``, ``labelsTr/``, ``dataset.json``)."""
    import json
    from pathlib import Path

    from medrobust.data.readers import write_nifti
    from medrobust.utils import write_text_atomic

    size = size or [48, 48, 32]
    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for c in phantom_cases(n_cases, size, n_structures, seed=seed):
        write_nifti(c.image[0], np.eye(4), out / "imagesTr" / f"{c.case_id}.nii.gz")
        write_nifti(c.label.astype(np.uint8), np.eye(4), out / "labelsTr" / f"{c.case_id}.nii.gz")
        training.append({"image": f"./imagesTr/{c.case_id}.nii.gz", "label": f"./labelsTr/{c.case_id}.nii.gz"})
    spec = {"name": "phantoms", "labels": {str(k): v for k, v in phantom_label_map(n_structures).items()},
            "modality": {"0": "synthetic"}, "numTraining": n_cases, "training": training}
    write_text_atomic(out / "dataset.json", json.dumps(spec, indent=1))
    return str(out / "dataset.json")
