"""Hostile NIfTI files, built small and fast, for tests and the refusal benchmark."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["gzip_bomb", "header_bomb"]


def header_bomb(path: Path, side: int = 4000) -> Path:
    """A ~4 KB ``.nii`` whose header declares ``side``³ float32 voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    data = header.binaryblock + b"\0" * 4 + b"\0" * 4096
    path.write_bytes(data)
    return path


def gzip_bomb(path: Path, extra_bytes: int = 2 << 30, side: int = 16) -> Path:
    """A ``.nii.gz`` declaring ``side``³ float32 voxels whose stream holds ``extra_bytes``
    more (zeros compress ~1000:1, so 2 GB of stream is ~2 MB on disk)."""
    img = nib.Nifti1Image(np.ones((side,) * 3, np.float32), np.eye(4))
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    chunk = b"\0" * (1 << 24)
    with open(path, "wb") as fh:
        fh.write(comp.compress(img.to_bytes()))
        for _ in range(extra_bytes // len(chunk)):
            fh.write(comp.compress(chunk))
        fh.write(comp.flush())
    assert gzip.open(path).read(4)  # a real gzip stream
    return path
