"""Readers: write small files in every supported format and read them back with their spacing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medrobust.data.readers import read_image, read_images, spacing_of
from medrobust.errors import DataError


def _vol(rng, shape=(12, 10, 6)):
    return rng.integers(0, 1000, size=shape).astype(np.int16)


def test_nifti_roundtrip_keeps_spacing_and_orientation(tmp_path: Path, rng):
    a = _vol(rng)
    aff = np.diag([0.8, 1.2, 3.0, 1.0])
    nib.save(nib.Nifti1Image(a, aff), str(tmp_path / "x.nii.gz"))
    img = read_image(tmp_path / "x.nii.gz")
    assert tuple(img.shape) == (1, *a.shape)
    np.testing.assert_allclose(spacing_of(img), (0.8, 1.2, 3.0), rtol=1e-6)
    np.testing.assert_array_equal(img[0].numpy(), a)


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".mhd"])
def test_simpleitk_formats_roundtrip(tmp_path: Path, rng, ext):
    a = _vol(rng)
    im = sitk.GetImageFromArray(a.T.copy())  # sitk wants (z, y, x)
    im.SetSpacing((0.7, 0.9, 2.5))
    sitk.WriteImage(im, str(tmp_path / f"x{ext}"))
    img = read_image(tmp_path / f"x{ext}")
    assert tuple(img.shape[1:]) == a.shape
    np.testing.assert_allclose(spacing_of(img), (0.7, 0.9, 2.5), rtol=1e-5)
    np.testing.assert_array_equal(img[0].numpy(), a)


def test_nifti_and_nrrd_agree_on_axis_order(tmp_path: Path, rng):
    a = _vol(rng)
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "x.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(a.T.copy()), str(tmp_path / "x.nrrd"))
    np.testing.assert_array_equal(read_image(tmp_path / "x.nii.gz")[0].numpy(), read_image(tmp_path / "x.nrrd")[0].numpy())


def test_dicom_series_folder(tmp_path: Path, rng):
    a = _vol(rng, (8, 9, 4))
    vol = sitk.GetImageFromArray(a.T.copy())
    vol.SetSpacing((0.5, 0.5, 2.0))
    d = tmp_path / "dicom"
    d.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        sl.SetMetaData("0020|0032", f"0\\0\\{2.0 * k}")  # image position (patient)
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0028|0030", "0.5\\0.5")
        sl.SetMetaData("0018|0050", "2.0")
        writer.SetFileName(str(d / f"s{k:03d}.dcm"))
        writer.Execute(sl)
    img = read_image(d)
    assert tuple(img.shape[1:]) == a.shape
    np.testing.assert_allclose(spacing_of(img)[:2], (0.5, 0.5), rtol=1e-5)
    np.testing.assert_allclose(spacing_of(img)[2], 2.0, rtol=1e-3)


@pytest.mark.parametrize("ext", [".png", ".tif", ".gif", ".jpg"])
def test_2d_grey_images(tmp_path: Path, rng, ext):
    a = rng.integers(0, 255, size=(20, 30)).astype(np.uint8)
    if ext == ".jpg":
        a = np.full((20, 30), 128, dtype=np.uint8)  # lossless for a flat image
    Image.fromarray(a).save(tmp_path / f"x{ext}")
    img = read_image(tmp_path / f"x{ext}")
    assert img.shape[0] == 1 and sorted(img.shape[1:]) == [20, 30]
    assert float(img.float().mean()) == pytest.approx(float(a.mean()), abs=0.5)


def test_rgb_image_has_three_channels_and_masks_match_grid(tmp_path: Path, rng):
    a = rng.integers(0, 255, size=(20, 30, 3)).astype(np.uint8)
    m = (rng.random((20, 30)) > 0.5).astype(np.uint8) * 255
    Image.fromarray(a).save(tmp_path / "x.png")
    Image.fromarray(m).save(tmp_path / "m.png")
    img, lab = read_image(tmp_path / "x.png"), read_image(tmp_path / "m.png", as_label=True)
    assert img.shape[0] == 3 and lab.shape[0] == 1
    assert img.shape[1:] == lab.shape[1:]
    # image and mask pixels stay aligned (same reader, same axis order)
    np.testing.assert_array_equal(img[0].numpy(), read_image(tmp_path / "x.png")[0].numpy())


def test_multichannel_stack_and_shape_mismatch(tmp_path: Path, rng):
    a, b = _vol(rng), _vol(rng)
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "a.nii.gz"))
    nib.save(nib.Nifti1Image(b, np.eye(4)), str(tmp_path / "b.nii.gz"))
    img = read_images([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
    assert img.shape[0] == 2
    nib.save(nib.Nifti1Image(_vol(rng, (5, 5, 5)), np.eye(4)), str(tmp_path / "c.nii.gz"))
    with pytest.raises(DataError, match="different shapes"):
        read_images([tmp_path / "a.nii.gz", tmp_path / "c.nii.gz"])


def test_missing_and_unreadable_files(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(DataError, match="could not be read"):
        read_image(tmp_path / "bad.nii.gz")
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(DataError, match="unsupported format"):
        read_image(tmp_path / "x.xyz")
