"""Hostile and broken NIfTI files are refused from the header, before any voxel is read."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import pytest

from mediad.data.imaging import ImagingConfig, build_transforms, inspect_volume, load_volume
from mediad.data.nifti import check_nifti_file
from mediad.errors import ImageError
from tests.hostile import gzip_bomb, header_bomb

# the ingest steps alone (preprocessing has its own tests, on brain-like images)
CFG = ImagingConfig(spacing=(4.0, 4.0, 4.0), shape=(32, 32, 32), preprocess=None)
READERS: dict[str, Callable[[Path], object]] = {
    "check": check_nifti_file,
    "load_volume": lambda p: load_volume(p, CFG),
    "inspect_volume": inspect_volume,
    "inspect_volume header only": lambda p: inspect_volume(p, check_voxels=False),
    "training pipeline": lambda p: _unwrapped(build_transforms(CFG), {"image": str(p)}),
}


def _unwrapped(pipeline: Callable[[dict], object], data: dict) -> object:
    """MONAI wraps a transform's error in RuntimeError; the ImageError is its cause."""
    try:
        return pipeline(data)
    except RuntimeError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ImageError):
            cause = cause.__cause__
        raise (cause or exc) from None


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("side", [4000, 1000])
def test_header_bomb_is_refused_before_allocation(tmp_path: Path, reader: str, side: int
                                                  ) -> None:
    path = header_bomb(tmp_path / "bomb.nii", side)
    before = _rss_mb()
    with pytest.raises(ImageError, match=rf"declares {side}x{side}x{side} voxels of float32"):
        READERS[reader](path)
    assert _rss_mb() - before < 200  # nothing near the declared gigabytes was allocated


def test_short_file_under_the_cap_is_refused(tmp_path: Path) -> None:
    path = header_bomb(tmp_path / "short.nii", 300)  # 108 MB declared, 4 KB on disk
    with pytest.raises(ImageError, match=r"holds 4\.4 KB but its header declares 300x300x300"):
        load_volume(path, CFG)


def test_cap_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             write_nifti: Callable[..., Path], brain: tuple) -> None:
    path = write_nifti(brain[0], affine=brain[1])
    load_volume(path, CFG)
    monkeypatch.setenv("MEDIAD_MAX_VOXELS", "1000")
    with pytest.raises(ImageError, match="over the limit of 1,000 voxels"):
        load_volume(path, CFG)


@pytest.mark.parametrize("reader", list(READERS))
def test_gzip_bomb_is_refused_without_decompressing_it(tmp_path: Path, reader: str) -> None:
    path = gzip_bomb(tmp_path / "bomb.nii.gz", extra_bytes=256 << 20)
    with pytest.raises(ImageError, match=r"gzip stream holds more than the 16\.7 KB its header"):
        READERS[reader](path)


def test_gzip_slack_accepts_trailing_padding(tmp_path: Path, brain: tuple) -> None:
    """Writers may pad after the voxels: a few bytes more than declared are fine."""
    import gzip

    raw = nib.Nifti1Image(brain[0], brain[1]).to_bytes() + b"\0" * 1000
    path = tmp_path / "padded.nii.gz"
    path.write_bytes(gzip.compress(raw))
    assert load_volume(path, CFG).shape == (1, 32, 32, 32)


def test_gzip_stream_shorter_than_declared(tmp_path: Path, brain: tuple) -> None:
    import gzip

    raw = nib.Nifti1Image(brain[0], brain[1]).to_bytes()
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # a complete stream, half the data
    with pytest.raises(ImageError, match="the file is truncated"):
        check_nifti_file(path)


def test_named_gz_but_plain(tmp_path: Path, brain: tuple) -> None:
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(nib.Nifti1Image(brain[0], brain[1]).to_bytes())
    with pytest.raises(ImageError, match=r"is named \.gz but is not gzip-compressed"):
        check_nifti_file(path)


def test_nifti2_and_big_endian_are_read(tmp_path: Path, brain: tuple) -> None:
    vol, aff = brain
    nib.save(nib.Nifti2Image(vol, aff), str(tmp_path / "n2.nii"))
    big = nib.Nifti1Image(vol, aff, header=nib.Nifti1Header(endianness=">"))
    nib.save(big, str(tmp_path / "be.nii.gz"))
    for name in ("n2.nii", "be.nii.gz"):
        assert check_nifti_file(tmp_path / name).shape == (32, 32, 32)
        assert float(load_volume(tmp_path / name, CFG).max()) == pytest.approx(1.0)
    assert check_nifti_file(tmp_path / "be.nii.gz").dtype.byteorder == ">"
