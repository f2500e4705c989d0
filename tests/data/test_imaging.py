from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mediad.data.imaging import ImagingConfig, build_transforms, inspect_volume, load_volume
from mediad.errors import ImageError

# the ingest steps alone (preprocessing has its own tests, on brain-like images)
CFG = ImagingConfig(spacing=(4.0, 4.0, 4.0), shape=(32, 32, 32), preprocess=None)


def reorient(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(codes))
    return (nib.orientations.apply_orientation(data, ornt),
            affine @ nib.orientations.inv_ornt_aff(ornt, data.shape))


def test_output_shape_range_and_dtype(brain: tuple, write_nifti: Callable[..., Path]) -> None:
    vol, aff = brain
    x = load_volume(write_nifti(vol, affine=aff), CFG)
    assert x.shape == (1, 32, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("codes", ["LPS", "PIR", "ASL"])
def test_any_orientation_gives_the_same_tensor(brain: tuple, write_nifti: Callable[..., Path],
                                               codes: str) -> None:
    vol, aff = brain
    ref = load_volume(write_nifti(vol, "ras.nii.gz", aff), CFG)
    data, affine = reorient(vol, aff, codes)
    assert nib.aff2axcodes(affine) == tuple(codes)
    got = load_volume(write_nifti(data, f"{codes}.nii.gz", affine), CFG)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_on_disk_dtype_does_not_matter(brain: tuple, write_nifti: Callable[..., Path],
                                       dtype: type) -> None:
    vol, aff = brain
    ref = load_volume(write_nifti(vol, "f.nii.gz", aff), CFG)
    scaled = vol / vol.max() * (250 if dtype is np.uint8 else 3000)
    got = load_volume(write_nifti(np.rint(scaled).astype(dtype), "d.nii", aff), CFG)
    assert float((got - ref).abs().mean()) < 0.01


def test_voxel_size_is_resampled(brain: tuple, write_nifti: Callable[..., Path]) -> None:
    """The same head stored at 2 mm (64^3) or 4 mm (32^3) ingests to nearly the same tensor."""
    vol, aff = brain
    fine = torch.nn.functional.interpolate(torch.from_numpy(vol)[None, None], scale_factor=2,
                                           mode="trilinear", align_corners=False)[0, 0].numpy()
    aff2 = aff.copy()
    aff2[:3, :3] /= 2
    aff2[:3, 3] -= 1.0  # keep the same field of view (voxel centres shift by half a voxel)
    a = load_volume(write_nifti(vol, "4mm.nii.gz", aff), CFG)
    b = load_volume(write_nifti(fine, "2mm.nii.gz", aff2), CFG)
    assert float((a - b).abs().mean()) < 0.05
    # the bright blob lands on the same voxels (a flip or shift would move it by many)
    assert np.abs(_blob_centre(a) - _blob_centre(b)).max() < 1.0


def _blob_centre(x: torch.Tensor) -> np.ndarray:
    return np.argwhere(x[0].numpy() > 0.9).mean(0)


def test_whole_head_and_brain_extracted(brain: tuple, write_nifti: Callable[..., Path]) -> None:
    vol, aff = brain
    stripped = np.where(vol > 50, vol, 0).astype(np.float32)
    for data in (vol, stripped):
        x = load_volume(write_nifti(data, affine=aff), CFG)
        assert x.shape == (1, 32, 32, 32) and 0.1 < float(x.mean()) < 0.9


def test_4d_single_volume_is_squeezed(brain: tuple, write_nifti: Callable[..., Path]) -> None:
    vol, aff = brain
    x = load_volume(write_nifti(vol[..., None], affine=aff), CFG)
    ref = load_volume(write_nifti(vol, "3d.nii.gz", aff), CFG)
    torch.testing.assert_close(x, ref)


def test_pipeline_is_reusable_in_dictionaries(brain: tuple,
                                              write_nifti: Callable[..., Path]) -> None:
    vol, aff = brain
    path = write_nifti(vol, affine=aff)
    out = build_transforms(CFG, keys=["t1"])({"t1": str(path), "subject": "S1"})
    assert out["t1"].shape == (1, 32, 32, 32) and out["subject"] == "S1"


def _bad_files(tmp: Path, vol: np.ndarray) -> dict[str, tuple[Path, str]]:
    def save(name: str, data: np.ndarray) -> Path:
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp / name))
        return tmp / name

    def save_as(src: Path, name: str) -> Path:  # a valid NIfTI under another name
        (tmp / name).write_bytes(src.read_bytes())
        return tmp / name

    good = save("good.nii.gz", vol)
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp / "corrupt.nii.gz"
    raw = bytearray(gzip.compress(nib.Nifti1Image(vol, np.eye(4)).to_bytes()))
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    corrupt.write_bytes(bytes(raw))
    text = tmp / "notes.nii"
    text.write_text("this is not an image\n" * 50)
    nan = vol.copy()
    nan[3, 3, 3] = np.nan
    inf = vol.copy()
    inf[1, 1, 1] = np.inf
    return {
        "truncated gzip": (truncated, "gzip data is truncated or corrupt"),
        "corrupt gzip": (corrupt, "gzip data is truncated or corrupt"),
        "not NIfTI": (text, "is not a readable NIfTI-1/2 file"),
        "wrong suffix": (save_as(good, "scan.mgz"), "unsupported file type .mgz"),
        "2D": (save("slice.nii.gz", vol[:, :, 0]), "is a 2D image (shape 32x32)"),
        "4D": (save("fmri.nii.gz", np.stack([vol, vol], -1)), "has 2 volumes"),
        "NaN": (save("nan.nii.gz", nan), "1 NaN or infinite voxel"),
        "Inf": (save("inf.nii.gz", inf), "1 NaN or infinite voxel"),
        "constant": (save("flat.nii.gz", np.full_like(vol, 7)), "is constant (every voxel = 7)"),
        "missing": (tmp / "absent.nii.gz", "file not found"),
    }


@pytest.mark.parametrize("case", ["truncated gzip", "corrupt gzip", "not NIfTI", "wrong suffix",
                                  "2D", "4D", "NaN", "Inf", "constant", "missing"])
@pytest.mark.parametrize("reader", ["load_volume", "inspect_volume"])
def test_bad_images_give_specific_errors(tmp_path: Path, brain: tuple, case: str,
                                         reader: str) -> None:
    path, expected = _bad_files(tmp_path, brain[0])[case]
    fn = {"load_volume": lambda p: load_volume(p, CFG), "inspect_volume": inspect_volume}[reader]
    with pytest.raises(ImageError) as info:
        fn(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_header_only_inspection(brain: tuple, write_nifti: Callable[..., Path]) -> None:
    vol, aff = brain
    data, affine = reorient(vol, aff, "LPS")
    info = inspect_volume(write_nifti(data.astype(np.int16), affine=affine), check_voxels=False)
    assert info.orientation == "LPS" and info.shape == (32, 32, 32) and info.dtype == "int16"
    assert info.zooms == (4.0, 4.0, 4.0)
