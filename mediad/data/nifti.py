"""Treat every NIfTI file as hostile until its header has been checked.

A 4 KB file can declare 4000³ float32 voxels (256 GB), and a small ``.nii.gz`` can inflate
to gigabytes. Both are refused here, from the header and a bounded read, before any voxel
array is allocated:

- the bytes the header declares (shape × data type) must fit a cap that holds any real T1
  (``MEDIAD_MAX_VOXELS``, default 512³ voxels: 0.5 mm isotropic over a whole head);
- an uncompressed file must hold the bytes its header declares;
- a gzip stream is decompressed at most up to what the header declares plus a small slack,
  in chunks, without keeping the data; more than that is refused, and a stream that ends
  there has had its CRC checked, so a corrupted (not only truncated) file is caught too.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from mediad.errors import ImageError

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "NIFTI_SUFFIXES",
    "CheckNiftiFile",
    "CheckNiftiFiled",
    "NiftiHeader",
    "check_nifti_file",
    "check_shape",
    "check_voxels",
    "max_voxels",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DEFAULT_MAX_VOXELS = 512**3
GZIP_SLACK_BYTES = 1 << 20  # extensions and padding a writer may add after the voxels
_CHUNK = 1 << 22
_HEADER_BYTES = 540 + (1 << 16)  # a NIfTI-2 header plus generous room for extensions


def max_voxels() -> int:
    """The voxel cap in force: ``$MEDIAD_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`."""
    raw = os.environ.get("MEDIAD_MAX_VOXELS", "")
    try:
        return int(float(raw)) if raw.strip() else DEFAULT_MAX_VOXELS
    except ValueError:
        return DEFAULT_MAX_VOXELS


class NiftiHeader:
    """What a header declares: shape, data type and where the voxels start."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
        self.shape = shape
        self.dtype = dtype
        self.offset = offset

    @property
    def n_voxels(self) -> int:
        return int(np.prod([int(s) for s in self.shape], dtype=object))

    @property
    def data_bytes(self) -> int:
        return self.n_voxels * int(self.dtype.itemsize)


def _fmt_bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _read_header(path: Path, gz: bool) -> NiftiHeader:
    try:
        if gz:
            with gzip.open(path, "rb") as fh:
                head = fh.read(_HEADER_BYTES)
        else:
            with open(path, "rb") as fh:
                head = fh.read(_HEADER_BYTES)
    except (OSError, EOFError, zlib.error):
        raise ImageError(path, "the gzip data is truncated or corrupt (was the download or "
                         "copy complete?)" if gz else "cannot be read") from None
    if not head:
        raise ImageError(path, "the file is empty")
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            header = klass.from_fileobj(io.BytesIO(head), check=False)
        except Exception:  # nibabel raises many types for foreign bytes
            continue
        if header.sizeof_hdr == klass.sizeof_hdr and bytes(header["magic"])[:3] in (
                b"n+1", b"ni1", b"n+2", b"ni2"):
            try:
                shape = tuple(int(s) for s in header.get_data_shape())
                dtype = np.dtype(header.get_data_dtype())
            except Exception:
                raise ImageError(path, "has a NIfTI header with an invalid shape or data "
                                 "type") from None
            if any(s < 0 for s in shape):
                raise ImageError(path, f"its header declares a negative size {shape}")
            return NiftiHeader(shape, dtype, int(header.get_data_offset()))
    if gz or path.name.lower().endswith(".nii"):
        raise ImageError(path, "is not a readable NIfTI-1/2 file (no NIfTI header)")
    raise ImageError(path, "is not a readable NIfTI-1/2 file")


def check_nifti_file(path: str | Path, cap_voxels: int | None = None) -> NiftiHeader:
    """Check a NIfTI file's name, header and size without reading its voxels into memory.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        cap_voxels: largest number of voxels accepted (default :func:`max_voxels`).

    Returns:
        The header's declared shape, data type and data offset.

    Raises:
        ImageError: missing file, wrong suffix, no NIfTI header, a declared size over the
            cap, a file shorter than its header declares, a gzip stream that holds more
            than its header declares, or a corrupt gzip stream.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(p, "file not found")
    if not p.name.lower().endswith(NIFTI_SUFFIXES):
        raise ImageError(p, f"unsupported file type {''.join(p.suffixes) or '(none)'}; "
                         "expected a NIfTI file (.nii or .nii.gz)")
    with open(p, "rb") as fh:
        magic = fh.read(2)
    gz = magic == b"\x1f\x8b"
    if p.name.lower().endswith(".gz") and not gz:
        raise ImageError(p, "is named .gz but is not gzip-compressed")
    header = _read_header(p, gz)
    cap = max_voxels() if cap_voxels is None else cap_voxels
    shape = "x".join(str(s) for s in header.shape)
    if header.n_voxels > cap:
        raise ImageError(p, f"its header declares {shape} voxels of {header.dtype} "
                         f"({_fmt_bytes(header.data_bytes)}), over the limit of {cap:,} "
                         "voxels that fits any real T1 (set MEDIAD_MAX_VOXELS to change it)")
    expected = header.offset + header.data_bytes
    if not gz:
        size = p.stat().st_size
        if size < expected:
            raise ImageError(p, f"holds {_fmt_bytes(size)} but its header declares "
                             f"{shape} voxels of {header.dtype} ({_fmt_bytes(expected)}): "
                             "the file is truncated or its header is wrong")
        return header
    limit = expected + GZIP_SLACK_BYTES
    total = 0
    try:
        with gzip.open(p, "rb") as fh:
            while chunk := fh.read(min(_CHUNK, limit + 1 - total)):
                total += len(chunk)
                if total > limit:
                    raise ImageError(p, f"its gzip stream holds more than the "
                                     f"{_fmt_bytes(expected)} its header declares ({shape} "
                                     f"voxels of {header.dtype}); refusing to decompress "
                                     "further (a damaged file or a decompression bomb)")
    except (OSError, EOFError, zlib.error):
        raise ImageError(p, "the gzip data is truncated or corrupt (was the download or copy "
                         "complete?)") from None
    if total < expected:
        raise ImageError(p, f"decompresses to {_fmt_bytes(total)} but its header declares "
                         f"{_fmt_bytes(expected)}: the file is truncated")
    return header


class CheckNiftiFile(Transform):
    """Array version: refuse a hostile or broken file path before any loader reads it."""

    def __init__(self, cap_voxels: int | None = None) -> None:
        self.cap_voxels = cap_voxels

    def __call__(self, path: Any) -> Any:
        check_nifti_file(path, self.cap_voxels)
        return path


class CheckNiftiFiled(MapTransform):
    """Dictionary version of :class:`CheckNiftiFile`, placed before ``LoadImaged``."""

    def __init__(self, keys: KeysCollection, cap_voxels: int | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckNiftiFile(cap_voxels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key])
        return d


def check_shape(shape: Sequence[int], source: object) -> tuple[int, int, int]:
    """The 3D shape of a volume, after squeezing trailing singleton dimensions.

    Raises:
        ImageError: fewer than 3 spatial dimensions, or more than one volume.
    """
    shape = tuple(int(s) for s in shape)
    squeezed = shape
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    if len(squeezed) > 3:
        raise ImageError(source, f"has {int(np.prod(squeezed[3:]))} volumes (shape "
                         f"{_fmt(shape)}); MediAD needs one 3D T1 volume - extract one "
                         "volume first (e.g. fslroi)")
    if len(squeezed) < 3 or min(squeezed) < 2:
        raise ImageError(source, f"is a 2D image (shape {_fmt(shape)}); MediAD needs a 3D "
                         "T1 volume")
    return squeezed  # type: ignore[return-value]


def check_voxels(data: np.ndarray, source: object) -> None:
    """Refuse NaN/Inf voxels and constant volumes (before any model sees them).

    Raises:
        ImageError: naming the file and the problem.
    """
    finite = np.isfinite(data)
    if not finite.all():
        raise ImageError(source, f"has {int((~finite).sum())} NaN or infinite voxel(s) of "
                         f"{data.size}; the file is damaged or was written wrongly")
    if float(data.max()) == float(data.min()):
        raise ImageError(source, f"is constant (every voxel = {float(data.min()):g}); "
                         "it holds no image")


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)
