"""MRI ingest: MONAI transform pipelines from a NIfTI file to a fixed-size, normalised tensor.

The pipeline is the same for training, evaluation and the app (identical normalisation, or
numbers mean nothing): check the file -> preprocess a raw T1 (brain extraction and
registration to MNI152, cached; :mod:`mediad.data.preprocess`; off for inputs already in
MNI space) -> load (nibabel) -> check -> channel first -> reorient to RAS ->
resample to ``spacing`` -> robust percentile scaling -> foreground crop -> resize the longest
side and pad to ``shape``. It accepts brain-extracted and whole-head T1s, any orientation,
voxel size and on-disk dtype. Unusable files raise :class:`~mediad.errors.ImageError` naming
the file and the reason.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Resized,
    Spacingd,
    SpatialPadd,
    Transform,
)
from pydantic import BaseModel, ConfigDict, Field

from mediad.data.nifti import CheckNiftiFiled, check_nifti_file, check_shape, check_voxels
from mediad.data.preprocess import PreprocessConfig, Preprocessd
from mediad.data.transforms import ScalePercentilesd
from mediad.errors import ImageError

__all__ = [
    "CheckVolume",
    "CheckVolumed",
    "ImagingConfig",
    "VolumeInfo",
    "build_transforms",
    "inspect_volume",
    "load_volume",
]

class ImagingConfig(BaseModel):
    """How every MRI is brought to the network's input grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spacing: tuple[float, float, float] = Field((3.0, 3.0, 3.0), description="Voxel size, mm.")
    shape: tuple[int, int, int] = Field((64, 64, 64), description="Network input shape.")
    lower_percentile: float = Field(0.5, ge=0, lt=50)
    upper_percentile: float = Field(99.5, gt=50, le=100)
    foreground_threshold: float = Field(
        0.05, ge=0, lt=1, description="Fraction of the robust range that counts as foreground."
    )
    preprocess: PreprocessConfig | None = Field(
        default_factory=PreprocessConfig, description="Raw T1 -> brain in MNI152 space; "
        "null for inputs already brain-extracted and registered to MNI152.")


class CheckVolume(Transform):
    """Refuse volumes a model cannot use; squeeze a 4D file that holds a single volume.

    Raises:
        ImageError: 2D image, 4D with more than one volume, NaN/Inf voxels, constant volume.
    """

    def __call__(self, img: torch.Tensor, source: object = None) -> torch.Tensor:
        if source is None and isinstance(img, MetaTensor):
            source = img.meta.get("filename_or_obj", "image")
        source = source or "image"
        img = img.reshape(check_shape(img.shape, source))
        check_voxels(img.detach().cpu().numpy(), source)
        return img


class CheckVolumed(MapTransform):
    """Dictionary version of :class:`CheckVolume`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckVolume()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.checker(d[key])
        return d


class _AboveThreshold:
    """Foreground selector for CropForeground (a class, so pipelines pickle for workers)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold


def build_transforms(config: ImagingConfig | None = None, keys: Sequence[str] = ("image",),
                     load: bool = True, check_file: bool = True,
                     cache_dir: str | Path | None = None, run_preprocess: bool = True
                     ) -> Compose:
    """The dictionary pipeline, file path -> ``(1, *config.shape)`` float32 tensor.

    Args:
        config: grid and normalisation settings (defaults when ``None``).
        keys: dictionary keys holding images.
        load: include the loader (``False`` when the dictionary already holds arrays).
        check_file: check each file's header and size before loading it (see
            :mod:`mediad.data.nifti`); off only where the caller has just checked it.
        cache_dir: where preprocessed volumes are cached (default: the data folder's).
        run_preprocess: off where the caller preprocesses itself (or the files already are
            in MNI space); the steps after it still follow ``config.preprocess``.

    Returns:
        A MONAI ``Compose`` usable with CacheDataset / PersistentDataset.
    """
    c = config or ImagingConfig()
    keys = list(keys)
    steps: list[Any] = []
    if load:
        if check_file:
            steps.append(CheckNiftiFiled(keys))
        if c.preprocess is not None and run_preprocess:
            steps.append(Preprocessd(keys, c.preprocess, _preprocess_cache(cache_dir)))
        steps.append(LoadImaged(keys, reader="NibabelReader", image_only=True,
                                dtype=np.float32))
    steps += [
        CheckVolumed(keys),
        EnsureChannelFirstd(keys, channel_dim="no_channel"),
        Orientationd(keys, axcodes="RAS", labels=None),
        Spacingd(keys, pixdim=c.spacing, mode="bilinear"),
        ScalePercentilesd(keys, lower=c.lower_percentile, upper=c.upper_percentile,
                          b_min=0.0, b_max=1.0, clip=True),
    ]
    if c.preprocess is None or not c.preprocess.registration:
        # inputs of any pose: crop to the head or brain; registered inputs all share the
        # template's grid already, and a crop would only add jitter to that geometry
        # (no crop coordinates kept: a subject without an MRI has none, and a batch that
        # mixes the two would not collate)
        steps.append(CropForegroundd(keys, source_key=keys[0], select_fn=_AboveThreshold(
            c.foreground_threshold), allow_smaller=True, start_coord_key=None,
            end_coord_key=None))
    steps += [
        Resized(keys, spatial_size=min(c.shape), size_mode="longest", mode="trilinear"),
        SpatialPadd(keys, spatial_size=c.shape),
        EnsureTyped(keys, dtype=torch.float32, track_meta=False),
    ]
    return Compose(steps)


def _preprocess_cache(cache_dir: str | Path | None) -> Path | None:
    return None if cache_dir is None else Path(cache_dir) / "preprocessed"


def _diagnose(path: Path, exc: BaseException) -> str:
    """Turn a low-level read failure into a reason a person can act on."""
    if path.stat().st_size == 0:
        return "the file is empty"
    head = path.read_bytes()[:4]
    if head[:2] == b"\x1f\x8b":
        if isinstance(exc, OSError | EOFError | zlib.error) or "compress" in str(exc):
            return "the gzip data is truncated or corrupt (was the download or copy complete?)"
    elif path.name.lower().endswith(".gz"):
        return "is named .gz but is not gzip-compressed"
    if isinstance(exc, EOFError | ValueError | OSError) and "NIfTI" not in str(exc):
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    else:
        detail = ""
    return "is not a readable NIfTI-1/2 file" + (f" ({detail})" if detail else "")


def load_volume(path: str | Path, config: ImagingConfig | None = None,
                transforms: Compose | None = None) -> torch.Tensor:
    """Load one MRI through the ingest pipeline.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        config: imaging settings (ignored when ``transforms`` is given).
        transforms: a pipeline from :func:`build_transforms`, to reuse across calls.

    Returns:
        A ``(1, *shape)`` float32 tensor in RAS orientation, intensities in [0, 1].

    Raises:
        ImageError: the file is missing, not NIfTI, damaged, or not a usable 3D volume.
    """
    p = Path(path)
    check_nifti_file(p)  # before any voxel is read
    pipeline = transforms or build_transforms(config, check_file=False)
    try:
        return pipeline({"image": str(p)})["image"]
    except ImageError:
        raise
    except Exception as exc:  # MONAI wraps reader errors; re-raise those that are ours
        cause = exc
        while cause.__cause__ is not None and not isinstance(cause, ImageError):
            cause = cause.__cause__
        if isinstance(cause, ImageError):
            raise cause from None
        if _is_read_failure(exc):
            raise ImageError(p, _diagnose(p, cause)) from None
        raise


def _is_read_failure(exc: BaseException) -> bool:
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return any(
        isinstance(e, EOFError | zlib.error | gzip.BadGzipFile | nib.filebasedimages.ImageFileError)
        or "cannot find a suitable reader" in str(e) or "Compressed file" in str(e)
        for e in chain
    )


class VolumeInfo(BaseModel):
    """Header facts of a NIfTI file (read without decoding the voxels unless asked)."""

    path: str
    shape: tuple[int, ...]
    zooms: tuple[float, ...]
    orientation: str
    dtype: str


def inspect_volume(path: str | Path, check_voxels: bool = True) -> VolumeInfo:
    """Read a NIfTI header and, unless ``check_voxels`` is off, verify the voxels too.

    Raises:
        ImageError: as :func:`load_volume`.
    """
    p = Path(path)
    check_nifti_file(p)
    try:
        img = nib.load(str(p))
        info = VolumeInfo(
            path=str(p), shape=tuple(int(s) for s in img.shape),
            zooms=tuple(round(float(z), 4) for z in img.header.get_zooms()),
            orientation="".join(nib.aff2axcodes(img.affine)),
            dtype=str(img.get_data_dtype()),
        )
        data = np.asanyarray(img.dataobj, dtype=np.float32) if check_voxels else None
    except Exception as exc:
        if _is_read_failure(exc) or isinstance(exc, OSError | ValueError):
            raise ImageError(p, _diagnose(p, exc)) from None
        raise
    if data is not None:
        CheckVolume()(torch.from_numpy(data), source=p)
    else:
        check_shape(info.shape, p)
    return info
