"""Image readers: NIfTI (nibabel), NRRD / MHA / MHD / DICOM series (SimpleITK), PNG / TIFF / JPEG / GIF.

All readers go through MONAI's ``LoadImage`` so every image comes back as a channel-first
``MetaTensor`` with its affine, spacing and original shape kept. MONAI has no SimpleITK reader,
so :class:`SimpleITKReader` adds one (LPS affines converted to RAS, like MONAI's ITKReader).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader, NibabelReader, PILReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImage

from medrobust.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
SUPPORTED = NIFTI_SUFFIXES + SITK_SUFFIXES + PIL_SUFFIXES + TIFF_SUFFIXES


def _lower_name(path: str | os.PathLike) -> str:
    return str(path).lower()


class SimpleITKReader(ImageReader):
    """MONAI reader backed by SimpleITK: NRRD, MetaImage (MHA/MHD), single DICOM files and DICOM series.

    A directory is read as a DICOM series (the first series found). Arrays come back in
    ``(x, y, z[, c])`` order, the same as nibabel, and the affine is converted from ITK's LPS
    convention to RAS so that orientation transforms treat all formats alike.
    """

    def __init__(self, affine_lps_to_ras: bool = True) -> None:
        super().__init__()
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).is_dir() or _lower_name(n).endswith(SITK_SUFFIXES + TIFF_SUFFIXES) for n in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any):
        import SimpleITK as sitk

        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        images = []
        for name in names:
            if Path(name).is_dir():
                reader = sitk.ImageSeriesReader()
                ids = reader.GetGDCMSeriesIDs(str(name))
                if not ids:
                    raise DataError(f"folder '{name}' holds no DICOM series; point the manifest at a DICOM folder or an image file.")
                reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(name), ids[0]))
                images.append(reader.Execute())
            else:
                images.append(sitk.ReadImage(str(name)))
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        import SimpleITK as sitk

        imgs = img if isinstance(img, list) else [img]
        arrays, meta = [], {}
        for im in imgs:
            arr = sitk.GetArrayFromImage(im)  # (z, y, x[, c])
            ncomp = im.GetNumberOfComponentsPerPixel()
            arr = arr.T if ncomp == 1 else np.moveaxis(arr.T, 0, -1)  # (x, y, z[, c])
            sr = im.GetDimension()
            direction = np.asarray(im.GetDirection()).reshape(sr, sr)
            spacing = np.asarray(im.GetSpacing())
            origin = np.asarray(im.GetOrigin())
            affine = np.eye(sr + 1)
            affine[:sr, :sr] = direction @ np.diag(spacing)
            affine[:sr, -1] = origin
            if self.affine_lps_to_ras and sr >= 2:
                affine = orientation_ras_lps(affine)
            meta = {
                "spacing": spacing,
                "original_affine": affine,
                "affine": affine.copy(),
                "spatial_shape": np.asarray(im.GetSize()),
                "original_channel_dim": float("nan") if ncomp == 1 else -1,
                "space": "RAS" if self.affine_lps_to_ras else "LPS",
            }
            arrays.append(arr)
        if len(arrays) > 1:
            return np.stack(arrays, axis=0), {**meta, "original_channel_dim": 0}
        return arrays[0], meta


def _pil_convert(im):
    """Palette (GIF) and 1-bit images -> their grey or RGB values, not palette indices."""
    if im.mode == "P":
        rgb = im.convert("RGB")
        arr = np.asarray(rgb)
        return rgb.convert("L") if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all() else rgb
    if im.mode == "1":
        return im.convert("L")
    return im


def pick_reader(path: str | os.PathLike) -> ImageReader:
    name = _lower_name(path)
    if Path(path).is_dir() or name.endswith(SITK_SUFFIXES):
        return SimpleITKReader()
    if name.endswith(NIFTI_SUFFIXES):
        return NibabelReader()
    if name.endswith(TIFF_SUFFIXES):
        # PIL reads 8-bit and RGB TIFFs; SimpleITK handles 16-bit / multi-page ones.
        return PILReader(converter=_pil_convert) if _pil_can_open(path) else SimpleITKReader()
    if name.endswith(PIL_SUFFIXES):
        return PILReader(converter=_pil_convert)
    raise DataError(
        f"file '{path}' has an unsupported format; use NIfTI, NRRD, MHA/MHD, DICOM, PNG, TIFF, JPEG or GIF "
        f"(a .npz array as 'file.npz#array'; MedMNIST .npz files go through data.source: medmnist)."
    )


def _pil_can_open(path: str | os.PathLike) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.mode in ("L", "RGB", "RGBA", "P", "1", "I;16", "I") and getattr(im, "n_frames", 1) == 1
    except Exception:
        return False


def split_npz_ref(path: str | os.PathLike) -> tuple[str, Optional[str]]:
    """``'scan.npz#vol'`` -> ``('scan.npz', 'vol')``; any other path -> ``(path, None)``."""
    text = str(path)
    if "#" in text:
        file, key = text.rsplit("#", 1)
        if file.lower().endswith(".npz"):
            return file, key
    return text, None


def read_npz_array(path: str | os.PathLike, key: Optional[str], as_label: bool = False) -> MetaTensor:
    """A named array of a ``.npz`` file (``scan.npz#vol``) as a channel-first ``MetaTensor``.

    A 2D or 3D array is one channel; a 4D array is channel-first ``(C, x, y, z)``. The spacing
    comes from an array ``<key>_spacing`` or ``spacing`` in the same file (else 1 mm).

    Raises:
        DataError: the file is missing or damaged, the key is absent (the message lists the
            arrays), or the array holds objects or has an unsupported number of dimensions.
    """
    from medrobust.data.medmnist import npz_array

    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file '{p}' does not exist; check the manifest entry and the data root.")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"file '{p}' could not be read as .npz ({first[:160]}); check that it is a complete file.") from None
    names = list(data.files)
    if key is None:
        raise DataError(f"'{p}' is a .npz file with arrays {names}; name the array in the manifest as '{p.name}#<array>' "
                        f"(e.g. '{p.name}#{names[0] if names else 'vol'}'), or use data.source: medmnist for MedMNIST files.")
    if key not in names:
        raise DataError(f"'{p}' has no array '{key}' (it has {names}); fix the name after '#' in the manifest.")
    arr = npz_array(data, key, p)
    if arr.ndim in (2, 3):
        arr = arr[None]
    elif arr.ndim != 4:
        raise DataError(f"array '{key}' in '{p}' has shape {arr.shape}; expected a 2D or 3D array, or (C, x, y, z).")
    nd = arr.ndim - 1
    spacing = np.ones(nd)
    for sk in (f"{key}_spacing", "spacing"):
        if sk in names:
            sp = np.asarray(npz_array(data, sk, p), dtype=np.float64).reshape(-1)
            if len(sp) < nd or not np.all(sp[:nd] > 0):
                raise DataError(f"array '{sk}' in '{p}' is {sp.tolist()}; give {nd} positive spacings in mm.")
            spacing = sp[:nd]
            break
    affine = np.eye(4)
    for i in range(min(nd, 3)):
        affine[i, i] = spacing[i]
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(arr)), affine=torch.as_tensor(affine))


def read_image(path: str | os.PathLike, as_label: bool = False) -> MetaTensor:
    """Read one image file (or DICOM folder, or ``file.npz#array``) as a channel-first ``MetaTensor`` with its affine.

    Raises a :class:`DataError` naming the file when it is missing or cannot be decoded.
    """
    file, key = split_npz_ref(path)
    if key is not None or str(path).lower().endswith(".npz"):
        return read_npz_array(file, key, as_label)
    p = Path(path)
    if not p.exists():
        raise DataError(f"image file '{p}' does not exist; check the manifest entry and the data root.")
    reader = pick_reader(p)
    try:
        img = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=None)(str(p))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - turn any decoder error into one sentence
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"file '{p}' could not be read ({first[:160]}); check that it is a valid, complete image.") from None
    if not isinstance(img, MetaTensor):
        img = MetaTensor(torch.as_tensor(np.asarray(img)))
    if isinstance(reader, PILReader) and img.shape[0] == 4 and not as_label:
        img = img[:3]  # drop the alpha channel of RGBA images
    if as_label and img.shape[0] > 1:
        # RGB-encoded masks: any channel non-zero is foreground only if channels agree.
        if bool((img == img[:1]).all()):
            img = img[:1]
        else:
            raise DataError(f"label file '{p}' has {img.shape[0]} differing colour channels; save masks as single-channel images of label values.")
    return img


def read_images(paths: Sequence[str | os.PathLike]) -> MetaTensor:
    """Read one or more files (one per modality / channel) and stack them on the channel axis."""
    imgs = [read_image(p) for p in paths]
    if len(imgs) == 1:
        return imgs[0]
    shapes = {tuple(i.shape[1:]) for i in imgs}
    if len(shapes) > 1:
        raise DataError(f"the channels of one case have different shapes {sorted(shapes)} ({', '.join(map(str, paths))}); register them to one grid first.")
    out = torch.cat([i.as_tensor() if isinstance(i, MetaTensor) else i for i in imgs], dim=0)
    return MetaTensor(out, meta=dict(imgs[0].meta))


def spacing_of(img: MetaTensor) -> tuple[float, ...]:
    """Voxel spacing (mm) of the spatial axes, from the affine."""
    aff = img.affine.detach().cpu().numpy() if isinstance(img.affine, torch.Tensor) else np.asarray(img.affine)
    nd = img.ndim - 1
    sr = min(nd, aff.shape[0] - 1)
    sp = np.sqrt((aff[:sr, :sr] ** 2).sum(axis=0))
    out = [float(s) if s > 0 else 1.0 for s in sp]
    while len(out) < nd:
        out.append(1.0)
    return tuple(out[:nd])


def write_nifti(array: np.ndarray, affine: np.ndarray | None, path: str | os.PathLike) -> None:
    """Write a spatial array (no channel axis) as NIfTI with the given affine, atomically."""
    import nibabel as nib

    from medrobust.utils import atomic_path

    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        full = np.eye(4)
        n = aff.shape[0] - 1
        full[:n, :n] = aff[:n, :n]
        full[:n, 3] = aff[:n, -1]
        aff = full
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    p = Path(path)
    suffix = ".nii.gz" if str(p).endswith(".nii.gz") else ".nii"
    with atomic_path(p) as tmp:
        tmp_n = tmp.with_name(tmp.name + suffix)
        nib.save(nib.Nifti1Image(arr, aff), str(tmp_n))
        os.replace(tmp_n, tmp)
