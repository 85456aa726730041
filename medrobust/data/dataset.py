"""The dataset: case preparation (read, check, the deterministic case chain), caching, samples, the data module.

Every sample is a dict with

- ``image``: float tensor ``(C, *spatial)`` in model-input units;
- ``label``: ``(1, *spatial)`` int64 mask (segmentation) or a scalar int64 class (classification);
- ``id``: a stable string id (``case`` for whole cases, ``case:slice`` for slices of a volume);
- ``case``, ``case_index``, ``slice`` (-1 for whole cases), ``spacing`` (mm per spatial axis);
- ``intensity_scale`` / ``intensity_offset``: the per-channel affine ``x_in = scale * x + offset``.

Where cases come from is :mod:`medrobust.data.sources`; which samples are drawn (slices,
shuffled shards, shape buckets) is :mod:`medrobust.data.samplers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from medrobust.config import DataConfig
from medrobust.data.labels import check_labels, infer_label_map, short_list
from medrobust.data.manifests import CaseRecord
from medrobust.data.samplers import SliceLayout
from medrobust.data.sources import list_cases
from medrobust.data.splits import check_no_leakage, split_cases
from medrobust.data.transforms import case_transforms, intensity_bounds, sample_transforms
from medrobust.errors import DataError
from medrobust.utils import derive_seed, progress

log = logging.getLogger(__name__)


@dataclass
class PreparedCase:
    """A case after loading and the deterministic case chain (kept in memory when cached)."""

    case_id: str
    image: torch.Tensor  # (C, *spatial) float32
    label: Optional[torch.Tensor]  # (1, *spatial) int64
    class_label: Optional[int]
    spacing: tuple[float, ...]
    affine: np.ndarray
    intensity_scale: np.ndarray
    intensity_offset: np.ndarray
    native_range: Optional[tuple[float, float]] = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


# ============================================================================ preparation
def affine_spacing(affine: np.ndarray, nd: int) -> tuple[float, ...]:
    """Voxel spacing (mm) of the first ``nd`` spatial axes from an affine (1.0 where it has none).

    Args:
        affine: a ``(4, 4)`` (or smaller) voxel-to-world matrix.
        nd: the number of spatial dims of the image.

    Returns:
        ``nd`` spacings: the column norms of the affine's linear part.
    """
    aff = np.asarray(affine, dtype=np.float64)
    sr = min(nd, aff.shape[0] - 1)
    sp = np.sqrt((aff[:sr, :sr] ** 2).sum(axis=0))
    out = [float(s) if s > 0 else 1.0 for s in sp] + [1.0] * (nd - sr)
    return tuple(out[:nd])


def _plain(x: Any) -> torch.Tensor:
    from monai.data import MetaTensor

    return torch.as_tensor(x.as_tensor() if isinstance(x, MetaTensor) else x)


def _affine_of(x: Any) -> np.ndarray:
    from monai.data import MetaTensor

    return x.affine.detach().cpu().numpy() if isinstance(x, MetaTensor) else np.eye(4)


def _read_case(rec: CaseRecord, seg: bool) -> tuple[Any, Any, Optional[tuple[float, float]]]:
    """Image, label (None for classification) and native intensity range of one case record."""
    from monai.data import MetaTensor

    from medrobust.data.readers import read_image, read_images

    if rec.in_memory:
        img = MetaTensor(torch.as_tensor(np.asarray(rec.image, dtype=np.float32)))
        if rec.spacing is not None:
            aff = np.eye(4)
            for i, s in enumerate(rec.spacing[:3]):
                aff[i, i] = s
            img.affine = torch.as_tensor(aff)
        lab = MetaTensor(torch.as_tensor(np.asarray(rec.label))[None], affine=img.affine) if seg else None
        return img, lab, rec.native_range
    img = read_images(rec.image)
    lab = read_image(rec.label, as_label=True) if seg else None
    return img, lab, ((0.0, 255.0) if img.dtype == torch.uint8 else None)


def _checked_label(lab: Any, img: Any, rec: CaseRecord, cfg: DataConfig, where: str) -> Any:
    """The label on the image grid as integers, thresholded and remapped as configured."""
    from monai.data import MetaTensor

    nd = img.ndim - 1
    if tuple(lab.shape[1:]) != tuple(img.shape[1:]):
        raise DataError(f"{where}: image shape {tuple(img.shape[1:])} and label shape {tuple(lab.shape[1:])} differ; resample the label onto the image grid.")
    if not rec.in_memory:
        sp_i = affine_spacing(img.affine.numpy(), nd)
        sp_l = affine_spacing(lab.affine.numpy(), nd)
        if not np.allclose(sp_i, sp_l, rtol=1e-3, atol=1e-3):
            raise DataError(f"{where}: image spacing {tuple(round(s, 4) for s in sp_i)} and label spacing {tuple(round(s, 4) for s in sp_l)} differ; resample the label onto the image grid.")
    lab_vals = lab.as_tensor() if isinstance(lab, MetaTensor) else lab
    if cfg.label_threshold is not None:
        lab_vals = (lab_vals.float() >= float(cfg.label_threshold)).long()
        lab = MetaTensor(lab_vals, meta=dict(lab.meta)) if isinstance(lab, MetaTensor) else lab_vals
    if not torch.isfinite(lab_vals.float()).all():
        raise DataError(f"{where} has NaN/inf label values; labels must be integers.")
    if (lab_vals.float() != lab_vals.float().round()).any():
        raise DataError(f"{where} has non-integer label values; save labels as integer masks (nearest-neighbour resampling).")
    lab = lab.long() if not isinstance(lab, MetaTensor) else MetaTensor(lab_vals.long(), meta=dict(lab.meta))
    if cfg.label_remap:
        remapped = lab.clone()
        for src, dst in cfg.label_remap.items():
            remapped[lab == int(src)] = int(dst)
        lab = remapped
    return lab


def _case_chain(data: dict[str, Any], cfg: DataConfig, nd: int, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The deterministic case chain; with ``preprocess.resize`` also the label and spacing before the resize."""
    orig: dict[str, Any] = {}
    has_label = "label" in data
    try:
        if cfg.preprocess.resize and has_label:
            # metrics are computed on the grid before the resize (the prediction is resampled back)
            data = case_transforms(cfg.preprocess, True, nd, stage="before_resize")(data)
            orig["orig_label"] = _plain(data["label"]).long().clone()
            orig["orig_spacing"] = affine_spacing(_affine_of(data["image"]), nd)
            data = case_transforms(cfg.preprocess, True, nd, stage="from_resize")(data)
        else:
            data = case_transforms(cfg.preprocess, has_label, nd)(data)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{where} failed in preprocessing ({msg[:200]}); check data.preprocess for this image size and dimension.") from None
    return data, orig


def prepare_case(rec: CaseRecord, cfg: DataConfig, task: str) -> PreparedCase:
    """Load one case, check it, and run the deterministic case chain.

    Args:
        rec: the case record (files or in-memory arrays).
        cfg: the data config (preprocessing, label threshold / remap).
        task: ``segmentation`` or ``classification`` (classification reads no label mask).

    Returns:
        The prepared case (with ``extra["orig_label"]`` / ``["orig_spacing"]`` under ``preprocess.resize``).

    Raises:
        DataError: NaN/inf voxels, an image and label on different grids, non-integer labels, or
            a failure in the preprocessing chain, naming the case and the fix.
    """
    img, lab, native_range = _read_case(rec, task == "segmentation")
    img = img.float()
    nd = img.ndim - 1
    where = f"case '{rec.case_id}' ({rec.source})"
    if not torch.isfinite(img).all():
        n_bad = int((~torch.isfinite(img)).sum())
        raise DataError(f"{where} has {n_bad} NaN/inf image voxels; clean the image (or exclude the case).")
    data: dict[str, Any] = {"image": img}
    if lab is not None:
        data["label"] = _checked_label(lab, img, rec, cfg, where)
    data, orig = _case_chain(data, cfg, nd, where)
    affine = _affine_of(data["image"])
    label = data.get("label")
    if label is not None:
        label = _plain(label).long()
    image = _plain(data["image"]).float().contiguous()
    return PreparedCase(case_id=rec.case_id, image=image, label=label, class_label=rec.class_label,
                        spacing=affine_spacing(affine, image.ndim - 1), affine=affine,
                        intensity_scale=np.asarray(data["intensity_scale"]),
                        intensity_offset=np.asarray(data["intensity_offset"]), native_range=native_range,
                        source=rec.source, extra=orig)


# ============================================================================ dataset
class MedDataset(Dataset):
    """Samples (whole cases, or slices of volumes) from prepared cases, with seeded augmentation.

    Args:
        cases: prepared cases of one split.
        cfg: the data config (input size, augmentation, slicing).
        task: ``segmentation`` or ``classification``.
        train: random crop + augmentation (seeded from ``seed``, the epoch and the sample index).
        dims: spatial dims of model inputs (2 with 3D volumes: slices along ``cfg.slice_axis``).
        foreground_only: keep only slices whose label has foreground (segmentation).
        pad: pad samples to ``cfg.preprocess.size`` (evaluation passes False: the whole-case
            predictor pads and cuts the padding off, so inputs and metrics stay on the case's grid).
    """

    def __init__(self, cases: list[PreparedCase], cfg: DataConfig, task: str, train: bool, dims: int,
                 seed: int = 0, foreground_only: Optional[bool] = None, pad: bool = True) -> None:
        self.cases, self.cfg, self.task, self.train, self.seed = cases, cfg, task, train, seed
        self.layout = SliceLayout(dims, cfg.slice_axis, tuple(cfg.preprocess.size) if cfg.preprocess.size else None)
        self.epoch = 0
        self.seg = task == "segmentation"
        fg = cfg.foreground_slices_only if foreground_only is None else foreground_only
        self.samples: list[tuple[int, int]] = []
        for ci, c in enumerate(cases):
            if not self.layout.sliced(c.case_id, c.image.ndim - 1):
                self.samples.append((ci, -1))
                continue
            n = c.image.shape[1 + cfg.slice_axis]
            slices = self.layout.slice_indices(c.label if self.seg else None, n, bool(fg))
            self.samples.extend((ci, s) for s in slices)
        self.has_label = self.seg
        self.sample_chain = sample_transforms(cfg.preprocess.size if (pad or train) else None, train, cfg.augment, self.seg, dims)

    @property
    def dims(self) -> int:
        """The spatial dims of the samples (the model's)."""
        return self.layout.dims

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, i: int) -> str:
        ci, s = self.samples[i]
        cid = self.cases[ci].case_id
        return cid if s < 0 else f"{cid}:{s}"

    def ids(self) -> list[str]:
        return [self.sample_id(i) for i in range(len(self))]

    def raw_sample(self, i: int) -> dict[str, Any]:
        ci, s = self.samples[i]
        c = self.cases[ci]
        img, lab, spacing = c.image, c.label, c.spacing
        if s >= 0:
            img, lab, spacing = self.layout.take(img, s), self.layout.take(lab, s), self.layout.slice_spacing(spacing)
        d: dict[str, Any] = {"image": img}
        if self.seg:
            d["label"] = lab
        return d | {"_spacing": spacing}

    def __getitem__(self, i: int) -> dict[str, Any]:
        ci, s = self.samples[i]
        c = self.cases[ci]
        d = self.raw_sample(i)
        spacing = d.pop("_spacing")
        if self.train:
            self.sample_chain.set_random_state(seed=derive_seed(self.seed, self.epoch, i))
        d = self.sample_chain(d)
        if isinstance(d, list):
            d = d[0]
        image = torch.as_tensor(d["image"]).float().contiguous()
        out: dict[str, Any] = {
            "image": image,
            "id": self.sample_id(i),
            "case": c.case_id,
            "case_index": ci,
            "index": i,
            "slice": s,
            "spacing": torch.tensor(spacing, dtype=torch.float64),
            "intensity_scale": torch.as_tensor(c.intensity_scale, dtype=torch.float64),
            "intensity_offset": torch.as_tensor(c.intensity_offset, dtype=torch.float64),
        }
        if self.seg:
            out["label"] = torch.as_tensor(d["label"]).long().contiguous()
        else:
            out["label"] = torch.tensor(int(c.class_label), dtype=torch.long)
        return out


def meta_tensor_free(x: Any) -> Any:
    """A MONAI ``MetaTensor`` as a plain tensor (anything else unchanged)."""
    from monai.data import MetaTensor

    return x.as_tensor() if isinstance(x, MetaTensor) else x


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings and ints as lists / tensors (MetaTensors become plain tensors)."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        vals = [b[key] for b in batch]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack([meta_tensor_free(v) for v in vals])
        elif isinstance(vals[0], (int, np.integer)):
            out[key] = torch.tensor([int(v) for v in vals], dtype=torch.long)
        else:
            out[key] = list(vals)
    return out


# ============================================================================ data module
@dataclass
class DataInfo:
    """What a model and a threat model need to know about the data (saved in checkpoints)."""

    task: str
    label_map: dict[int, str]
    in_channels: int
    spatial_dims: int
    input_size: Optional[list[int]]
    preprocess: dict[str, Any]
    bounds: Optional[tuple[float, float]]
    intensity_kind: str
    label_values: Optional[list[int]] = None  # original label id of each channel when not 0..K-1

    @property
    def num_classes(self) -> int:
        return max(self.label_map) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "label_map": {int(k): v for k, v in self.label_map.items()},
                "in_channels": self.in_channels, "spatial_dims": self.spatial_dims,
                "input_size": self.input_size, "preprocess": self.preprocess,
                "bounds": list(self.bounds) if self.bounds is not None else None, "intensity_kind": self.intensity_kind,
                **({"label_values": list(self.label_values)} if self.label_values else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataInfo":
        b = d.get("bounds")
        return cls(task=d["task"], label_map={int(k): v for k, v in d["label_map"].items()}, in_channels=int(d["in_channels"]),
                   spatial_dims=int(d["spatial_dims"]), input_size=d.get("input_size"), preprocess=d.get("preprocess", {}),
                   bounds=tuple(b) if b is not None else None, intensity_kind=d.get("intensity_kind", "none"),
                   label_values=[int(v) for v in d["label_values"]] if d.get("label_values") else None)


class DataModule:
    """Case lists, splits, prepared cases and datasets for one data config and task."""

    def __init__(self, cfg: DataConfig, task: str, label_map: Optional[dict[int, str]] = None,
                 label_values: Optional[list[int]] = None) -> None:
        self.cfg = cfg
        self.task = task
        records, man_map = list_cases(cfg, task)
        if not records:
            raise DataError("the data source yields no cases; check data.manifest / data.source.")
        self.records = records
        self.splits = split_cases(records, cfg.split)
        check_no_leakage(self.splits)
        self.label_map = label_map or man_map
        # non-contiguous label ids (e.g. FreeSurfer 0, 2, 3, ..., 255) -> contiguous channels 0..K-1
        self.value_map: Optional[dict[int, int]] = None
        if label_values is not None:
            if [int(v) for v in label_values] != list(range(len(label_values))):
                self.value_map = {int(v): i for i, v in enumerate(label_values)}
        elif label_map is None and self.label_map is not None and task == "segmentation":
            keys = sorted(int(k) for k in self.label_map)
            if keys != list(range(len(keys))):
                self.value_map = {v: i for i, v in enumerate(keys)}
                self.label_map = {i: str(self.label_map[v]) for i, v in enumerate(keys)}
                log.info("label ids %s are mapped to contiguous channels 0..%d (and back in saved predictions)",
                         short_list(keys), len(keys) - 1)
        self.label_values = sorted(self.value_map, key=self.value_map.get) if self.value_map else None
        self._prepared: dict[str, PreparedCase] = {}
        self._native_range: Optional[tuple[float, float]] = None

    def _map_values(self, pc: PreparedCase) -> PreparedCase:
        if self.value_map is None or pc.label is None:
            return pc
        vals = sorted(int(v) for v in torch.unique(pc.label).tolist())
        bad = [v for v in vals if v not in self.value_map]
        if bad:
            raise DataError(f"case '{pc.case_id}' has label values {short_list(bad)} outside the label map "
                            f"{short_list(sorted(self.value_map))}; fix the labels or extend data.label_map.")
        lut = torch.zeros(max(vals) + 1, dtype=torch.long)
        for v in vals:
            lut[v] = self.value_map[v]
        pc.label = lut[pc.label]
        return pc

    def prepared(self, split: str, desc: str | None = None) -> list[PreparedCase]:
        recs = self.records if split == "all" else self.splits[split]
        out = []
        for r in progress(recs, total=len(recs), desc=desc or f"loading {split} cases"):
            pc = self._prepared.get(r.case_id)
            if pc is None:
                pc = self._map_values(prepare_case(r, self.cfg, self.task))
                if self.cfg.cache:
                    self._prepared[r.case_id] = pc
            out.append(pc)
        explicit = self.label_map is not None
        if self.label_map is None:
            self.label_map = self._infer_label_map(out)
        for pc in out:
            check_labels(pc, self.label_map, self.task)
        if explicit and split == "train" and self.task == "segmentation" and out:
            present = set().union(*(set(torch.unique(pc.label).tolist()) for pc in out if pc.label is not None))
            absent = [f"{k} ({v})" for k, v in self.label_map.items() if k not in present]
            if absent:
                log.warning("class(es) %s of the label map occur in no training case; the model cannot learn them",
                            ", ".join(absent))
        if out and self._native_range is None:
            self._native_range = out[0].native_range
        return out

    def _infer_label_map(self, cases: list[PreparedCase]) -> dict[int, str]:
        per_value: dict[int, list[str]] = {}
        for c in cases:
            vals = [int(c.class_label)] if self.task == "classification" else [int(v) for v in torch.unique(c.label).tolist()]
            for v in vals:
                per_value.setdefault(v, []).append(c.case_id)
        label_map = infer_label_map(per_value, self.task)
        log.info("label map inferred from %d case(s): %s", len(cases),
                 ", ".join(f"{k} {v} ({len(per_value.get(k, []))} cases)" for k, v in label_map.items()))
        return label_map

    def dims(self, cases: list[PreparedCase]) -> int:
        if self.cfg.dims is not None:
            return int(self.cfg.dims)
        return cases[0].image.ndim - 1 if cases else 2

    def dataset(self, split: str, train: bool, seed: int = 0, foreground_only: Optional[bool] = None,
                pad: bool = True) -> MedDataset:
        cases = self.prepared(split)
        if not cases:
            raise DataError(f"the {split} split is empty; adjust data.split fractions (or the manifest's split column).")
        return MedDataset(cases, self.cfg, self.task, train, self.dims(cases), seed, foreground_only, pad)

    def info(self, cases: list[PreparedCase]) -> DataInfo:
        assert self.label_map is not None
        in_ch = int(cases[0].image.shape[0])
        for c in cases:
            if c.image.shape[0] != in_ch:
                raise DataError(f"case '{c.case_id}' has {c.image.shape[0]} channels but '{cases[0].case_id}' has {in_ch}; all cases need the same channels.")
        return DataInfo(task=self.task, label_map=dict(self.label_map), in_channels=in_ch, spatial_dims=self.dims(cases),
                        input_size=list(self.cfg.preprocess.size) if self.cfg.preprocess.size else None,
                        preprocess=self.cfg.preprocess.model_dump(),
                        bounds=intensity_bounds(self.cfg.preprocess.intensity, cases[0].native_range),
                        intensity_kind=self.cfg.preprocess.intensity.kind, label_values=self.label_values)
