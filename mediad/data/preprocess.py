"""From a raw T1 as a scanner writes it to a brain in template space, with pip alone.

Whole head, any pose, any size -> brain extraction (deepbet, whose weights ship in its
wheel) -> affine registration of the brain to the MNI152 2009 brain that nilearn ships
(SimpleITK) -> optional N4 bias-field correction -> a NIfTI on the template grid, which the
usual ingest (:mod:`mediad.data.imaging`) then scales and sizes. Nothing is downloaded.

Every run writes a QC record: which steps ran, the brain volume and whether it is
plausible, and the similarity to the template after registration; a failed registration
is a flag with a reason, never silent. Results are cached by file content and settings,
so a batch run resumes and a second run is free.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from pydantic import BaseModel, ConfigDict, Field

from mediad.data.nifti import check_nifti_file, check_shape, check_voxels
from mediad.errors import ImageError
from mediad.io import atomic_write_bytes, atomic_write_text, hash_file

__all__ = [
    "PREPROCESS_VERSION",
    "Preprocess",
    "PreprocessConfig",
    "PreprocessResult",
    "Preprocessd",
    "QCRecord",
    "extract_brain",
    "fit_registration",
    "looks_extracted",
    "preprocess_file",
    "preprocess_manifest",
    "preprocess_paths",
    "register_to_template",
    "template_brain",
]

#: Bumped whenever a change alters outputs, so cached results are recomputed.
PREPROCESS_VERSION = 7
#: Plausible intracranial volumes, mL: adults measure 1100-1900 natively; MNI152 space is
#: about 1.2 times larger, so template-sized heads reach about 2300.
BRAIN_VOLUME_ML = (800.0, 2600.0)
#: Registration QC. The Dice overlap of the registered brain's outline with the template's
#: mask is the reliable figure (0.90-0.95 measured on a real head, 0.98-0.99 simulated).
#: Correlation with the template is reported, but a real brain differs from the population
#: average in its folds and contrast (0.41 for ROBEX's real head, 0.72-0.91 for simulated
#: sites, measured), so only a value near zero says the registration failed.
MIN_SIMILARITY = 0.25
MIN_OVERLAP = 0.85
#: Fewer MRIs than this are preprocessed in-process (the first pool of a process waits
#: about 10 s for the fork server's imports, see mediad.workers).
MIN_POOL_TASKS = 24


class PreprocessConfig(BaseModel):
    """Which steps run and on which grids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skull_strip: bool = Field(True, description="Brain extraction (harmless on brains that "
                              "are already extracted).")
    registration: bool = Field(True, description="Affine registration to the MNI152 brain; off "
                           "for inputs already in MNI space.")
    n4: bool = Field(False, description="N4 bias-field correction (slower).")
    output_spacing: float = Field(2.0, ge=1.0, le=4.0, description="Grid of the written "
                                  "template-space volume, mm.")
    registration_spacing: float = Field(5.0, ge=1.0, le=8.0, description="Grid the "
                                        "registration metric is computed on, mm.")
    iterations: int = Field(80, ge=10, le=2000, description="Optimiser steps per level.")
    registration_highpass_mm: float = Field(
        6.0, ge=0.0, le=40.0, description="The registration compares local contrast: each "
        "brain divided by its own local mean (Gaussian of this sigma, mm), so that a "
        "scanner's bias field cannot pull the alignment; 0 compares raw intensities.")
    resample_smoothing: float = Field(
        0.75, ge=0.0, le=2.0, description="Gaussian sigma, in voxels of the coarser of the "
        "input and output grids, applied to the brain before its one resampling onto the "
        "template grid (anti-aliasing). With cubic B-spline interpolation it keeps the "
        "noise level nearly the same wherever the grid falls; 0: none.")
    interpolation: Literal["bspline", "linear"] = Field(
        "bspline", description="Interpolator of that resampling: cubic B-spline, or "
        "linear (which passes 12-100 % of white noise's variance depending on the "
        "sub-voxel offset, so the pose changes the texture of the input).")
    sampling: float = Field(0.25, gt=0.0, le=1.0, description="Share of the template "
                            "brain's voxels the registration metric samples (1: all of "
                            "them, no randomness).")
    seed: int = Field(0, ge=0, description="Seed of the metric's random samples.")


class QCRecord(BaseModel):
    """What happened to one input and whether its figures are plausible."""

    steps: list[str]
    brain_volume_ml: float | None = None
    similarity: float | None = Field(None, description="Normalised cross-correlation with "
                                     "the template brain, inside its mask.")
    overlap: float | None = Field(None, description="Dice overlap of the registered brain "
                                  "with the template's brain mask.")
    flags: list[str] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.flags


class PreprocessResult(BaseModel):
    image: str = Field(description="The brain on the template grid.")
    mask: str | None = Field(None, description="The brain mask on the input's own grid "
                             "(canonical orientation), for showing over the upload.")
    qc: QCRecord
    cached: bool = False


# ---------------------------------------------------------------------------------------
# Template and conversions


@lru_cache(maxsize=4)
def _template(spacing: float) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The MNI152 2009 brain (template × its brain mask) on a ``spacing`` mm grid."""
    from nilearn import datasets, image

    head = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    if spacing != 1.0:
        target = np.diag([spacing, spacing, spacing, 1.0])
        target[:3, 3] = head.affine[:3, 3]
        head = image.resample_img(head, target_affine=target, interpolation="continuous",
                                  force_resample=True, copy_header=True)
        mask = image.resample_img(mask, target_affine=target, target_shape=head.shape,
                                  interpolation="nearest", force_resample=True,
                                  copy_header=True)
    m = np.asarray(mask.dataobj) > 0.5
    brain = np.asarray(head.dataobj, dtype=np.float32) * m
    return nib.Nifti1Image(brain, head.affine), m


def _to_sitk(img: nib.Nifti1Image) -> Any:
    """nibabel (RAS world) -> SimpleITK (LPS world), same voxels."""
    import SimpleITK as sitk

    canonical = nib.as_closest_canonical(img)
    data = np.asarray(canonical.dataobj, dtype=np.float32)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    zooms = np.array(canonical.header.get_zooms()[:3], dtype=float)
    flip = np.diag([-1.0, -1.0, 1.0])
    out.SetSpacing(zooms.tolist())
    out.SetOrigin((flip @ canonical.affine[:3, 3]).tolist())
    out.SetDirection((flip @ canonical.affine[:3, :3] / zooms).flatten().tolist())
    return out


def _from_sitk(image: Any) -> np.ndarray:
    """SimpleITK voxels -> a nibabel-ordered (x, y, z) array on the same grid."""
    import SimpleITK as sitk

    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Steps


@lru_cache(maxsize=1)
def _deepbet() -> Any:
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def extract_brain(img: nib.Nifti1Image, source: object = None
                  ) -> tuple[nib.Nifti1Image, np.ndarray, float]:
    """Brain extraction with deepbet: ``(brain image, mask, brain volume in mL)``.

    Raises:
        ImageError: no brain-like foreground was found.
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    img = nib.Nifti1Image(data, img.affine)
    try:
        brain, mask, tiv = _deepbet().run(img)
    except (AssertionError, ValueError) as exc:
        raise ImageError(source or img.get_filename() or "image", "brain extraction found "
                         f"no brain ({exc})") from None
    return brain, np.asarray(mask.dataobj) > 0, float(tiv)


def looks_extracted(img: nib.Nifti1Image) -> float | None:
    """The brain volume (mL) when an image is already brain-extracted, else ``None``.

    Extraction leaves a background of one exact value (zero) around a brain-sized object;
    a whole head has noisy air and a head of 3-5 L. Such inputs skip deepbet (3-4 s).
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    background = data <= data.min()
    if background.mean() < 0.3:
        return None
    volume = float((~background).sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0)
    lo, hi = BRAIN_VOLUME_ML
    return volume if lo <= volume <= hi else None


def _n4(img: nib.Nifti1Image, mask: np.ndarray | None) -> nib.Nifti1Image:
    import SimpleITK as sitk

    moving = _to_sitk(img)
    shrink = sitk.Shrink(moving, [2, 2, 2])
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([20, 20])
    if mask is not None:
        m = _to_sitk(nib.Nifti1Image(mask.astype(np.float32), img.affine))
        corrector.Execute(shrink, sitk.Cast(sitk.Shrink(m, [2, 2, 2]) > 0.5, sitk.sitkUInt8))
    else:
        corrector.Execute(shrink)
    log_field = corrector.GetLogBiasFieldAsImage(moving)
    corrected = moving / sitk.Exp(log_field)
    canonical = nib.as_closest_canonical(img)
    return nib.Nifti1Image(_from_sitk(corrected), canonical.affine)


def _coarse(image: Any, spacing: float) -> Any:
    """Smooth (against aliasing) and resample an image onto an isotropic ``spacing`` grid."""
    import SimpleITK as sitk

    old_spacing = np.array(image.GetSpacing())
    if (old_spacing >= spacing).all():
        return image
    size = np.ceil(np.array(image.GetSize()) * old_spacing / spacing).astype(int)
    smooth = sitk.SmoothingRecursiveGaussian(image, spacing / 2.0)
    return sitk.Resample(smooth, [int(x) for x in size], sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), [spacing] * 3, image.GetDirection(), 0.0,
                         sitk.sitkFloat32)


def template_brain(spacing: float) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The MNI152 brain every input is registered to, and its mask, on a ``spacing`` grid."""
    return _template(spacing)


def _local_contrast(image: Any, sigma: float) -> Any:
    """A brain divided by its own local mean inside the brain (normalised convolution, so
    the brain's edge does not darken it): the slow bias field of a scanner's receive coil
    divides out, the tissue contrast stays."""
    import SimpleITK as sitk

    inside = sitk.Cast(image > 0, sitk.sitkFloat32)
    data = sitk.GetArrayFromImage(image)  # copies: a view dies with a temporary image
    mean = (sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma))
            / np.maximum(sitk.GetArrayFromImage(
                sitk.SmoothingRecursiveGaussian(inside, sigma)), 1e-3))
    out = sitk.GetImageFromArray(np.where(data > 0, data / np.maximum(mean, 1e-6), 0.0)
                                 .astype(np.float32))
    out.CopyInformation(image)
    return out


@lru_cache(maxsize=4)
def _fixed(spacing: float, highpass: float = 0.0) -> tuple[Any, Any]:
    """The template brain as the registration metric sees it (smoothed, on its grid), and
    where the metric looks: the brain, one voxel wider. Samples drawn from the empty box
    around it carry no information; with them, the coarse grid's metric was so noisy that a
    posed brain's registration could fail (correlation with the unposed result down to 0.5
    at the demo's old settings, docs/design.md)."""
    import SimpleITK as sitk

    fixed = _coarse(_to_sitk(_template(spacing)[0]), spacing)
    inside = sitk.Cast(fixed > 1e-3 * float(sitk.GetArrayViewFromImage(fixed).max()),
                       sitk.sitkUInt8)
    if highpass > 0:  # the same contrast as the moving brain's, from the 2 mm template
        fixed = _coarse(_local_contrast(_to_sitk(_template(2.0)[0]), highpass), spacing)
    return fixed, sitk.BinaryDilate(inside, [1, 1, 1])


@contextmanager
def _one_itk_thread() -> Iterator[Any]:
    """SimpleITK on one thread for the duration, then the caller's setting again.

    The metric, its sampling and the pyramid add up sums in the order threads finish: with
    ITK's default threads, one file registered twice in one process differed by up to 0.68
    (brain intensities about 1800; 0.017 with every voxel sampled). Tiny, but the app
    (in-process) and `mediad preprocess --workers` (one-thread workers) gave one T1
    different inputs, and the tests' MRI-only model trained differently from run to run (a
    full test run in about six failed its pose test). On one thread the result is bit for
    bit the same: 0.19 s a volume against 0.13-0.20 s (10 simulated brains, 2 cores,
    in-process; workers already ran on one thread).
    """
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield sitk
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def fit_registration(brain: nib.Nifti1Image, config: PreprocessConfig | None = None) -> Any:
    """The affine map from the MNI152 brain to a brain (mutual information on local
    contrast, two levels, one ITK thread).

    Returns:
        A SimpleITK transform from template to brain, in SimpleITK's LPS millimetres.
    """
    with _one_itk_thread() as sitk:
        return _fit(sitk, _to_sitk(brain), config or PreprocessConfig())


def register_to_template(brain: nib.Nifti1Image, config: PreprocessConfig | None = None
                         ) -> tuple[nib.Nifti1Image, float, float]:
    """Affine registration of a brain to the MNI152 brain (:func:`fit_registration`), and
    the brain resampled once, from full resolution, onto the template's grid.

    Returns:
        ``(the brain resampled on the template grid, similarity to the template, Dice
        overlap with the template's brain mask)``.
    """
    c = config or PreprocessConfig()
    template, template_mask = _template(c.output_spacing)
    with _one_itk_thread() as sitk:
        full = _to_sitk(brain)
        transform = _fit(sitk, full, c)
        # only the box around the template's brain: what lies outside is masked anyway,
        # and a B-spline costs 64 taps a voxel (half the box: 0.03 s a brain)
        reference = _to_sitk(template)
        lo, hi = _brain_box(c.output_spacing)
        grid = sitk.RegionOfInterest(reference, (hi - lo).tolist(), lo.tolist())
        warped = sitk.Resample(_antialias(sitk, full, c), grid, transform,
                               sitk.sitkBSpline if c.interpolation == "bspline"
                               else sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        # the brain's outline (all but the background), moved as the brain: smoothing
        # spreads intensities past it, so a threshold on them would misplace the edge
        voxels = np.asarray(brain.dataobj, dtype=np.float32)
        support = sitk.Resample(_to_sitk(nib.Nifti1Image(
            (voxels > voxels.min()).astype(np.float32), brain.affine)), reference, transform,
            sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    data = np.zeros(template.shape, np.float32)
    # clipped: the spline's overshoot at the brain's edge
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    data[box] = np.maximum(_from_sitk(warped), 0.0)
    a, b = data[template_mask], np.asarray(template.dataobj)[template_mask]
    similarity = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else 0.0
    brain_mask = _from_sitk(support) > 0.5
    overlap = float(2 * (brain_mask & template_mask).sum()
                    / max(1, brain_mask.sum() + template_mask.sum()))
    # One outline for every brain: the template's. Extraction masks differ at the edge from
    # tool to tool and pose to pose (and a site's own mask is a site signature); inside the
    # template's brain, what remains is the subject's anatomy.
    return nib.Nifti1Image(data * template_mask, template.affine), similarity, overlap


@lru_cache(maxsize=4)
def _brain_box(spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """The template brain's bounding box on a ``spacing`` grid, as voxel index bounds."""
    where = np.argwhere(_template(spacing)[1])
    return where.min(0), where.max(0) + 1


def _antialias(sitk: Any, full: Any, c: PreprocessConfig) -> Any:
    """Smooth before resampling, so that where the template grid falls between the input's
    voxels no longer decides how much of the noise reaches the network.

    Linear interpolation of white noise keeps all its variance on a voxel and 12 % half a
    voxel off (per axis: 1 - 2t(1 - t)); rotated, the share varies across the brain. The
    network read that texture: the same scan moved changed its MRI-only answer. Smoothed by
    0.75 voxel and resampled with a cubic B-spline, 91-100 % at any offset or rotation
    (docs/design.md, "Resampling"; a windowed sinc, 98-100 %, took 3 s a brain in ITK).
    """
    if c.resample_smoothing <= 0:
        return full
    voxel = np.maximum(np.array(full.GetSpacing()), c.output_spacing)
    return sitk.SmoothingRecursiveGaussian(full, (c.resample_smoothing * voxel).tolist())


def _fit(sitk: Any, full: Any, c: PreprocessConfig) -> Any:
    # the metric is computed on a coarse grid (both images smoothed and shrunk to it); only
    # the final resampling uses the full-resolution brain
    fixed, fixed_mask = _fixed(c.registration_spacing, c.registration_highpass_mm)
    # Raw intensities let a bias field pull the alignment: rescans of one unmoved brain
    # (new noise, bias and contrast draws) landed 1.3 mm RMS apart (up to 3.2 mm) at the
    # demo's settings; compared on local contrast (sigma 6 mm) 0.10 mm (up to 0.22), and
    # moved copies 0.28 mm from where they should be against 0.63 (5 simulated subjects x
    # 4, same cost; docs/design.md).
    moving = _coarse(_local_contrast(full, c.registration_highpass_mm)
                     if c.registration_highpass_mm > 0 else full, c.registration_spacing)
    initializer = sitk.CenteredTransformInitializerFilter()
    initializer.MomentsOn()
    initializer.SetNumberOfThreads(1)
    initial = initializer.Execute(fixed, moving, sitk.AffineTransform(3))
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(1)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricFixedMask(fixed_mask)
    if c.sampling < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        # SimpleITK reads seed 0 as "the wall clock": with it, one file registered twice
        # gave similarities 0.896-0.930 (version 5 and earlier did exactly that)
        reg.SetMetricSamplingPercentage(c.sampling, c.seed + 1)
    else:  # every voxel: deterministic, and cheap on a coarse grid
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=c.iterations,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0 * c.registration_spacing, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(fixed, moving)


# ---------------------------------------------------------------------------------------
# One file, cached


def _cache_key(path: Path, config: PreprocessConfig) -> str:
    h = hash_file(hashlib.sha256(), path)  # the same key as before hash_file existed
    h.update(config.model_dump_json().encode())
    h.update(f"v{PREPROCESS_VERSION}".encode())
    return h.hexdigest()[:24]


def _cache_dir(cache_dir: str | Path | None) -> Path:
    from mediad.paths import data_dir

    return Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "preprocessed"


def _cached(cache: Path, key: str) -> PreprocessResult | None:
    image, qc, mask = (cache / f"{key}{end}" for end in (".nii.gz", ".json", "_mask.nii.gz"))
    if not (image.is_file() and qc.is_file()):
        return None
    return PreprocessResult(image=str(image), mask=str(mask) if mask.is_file() else None,
                            qc=QCRecord.model_validate_json(qc.read_text(encoding="utf-8")),
                            cached=True)


def preprocess_file(path: str | Path, config: PreprocessConfig | None = None,
                    cache_dir: str | Path | None = None) -> PreprocessResult:
    """Preprocess one T1 (or reuse the cached result for the same bytes and settings).

    Args:
        path: a NIfTI file (checked as hostile first, see :mod:`mediad.data.nifti`).
        config: the steps and grids.
        cache_dir: where results live (``<key>.nii.gz`` and ``<key>.json``); default: a
            ``preprocessed`` folder in the data folder's cache.

    Returns:
        The template-space image's path and its QC record.

    Raises:
        ImageError: the file is unusable, or no brain was found.
    """
    c = config or PreprocessConfig()
    source = Path(path)
    check_nifti_file(source)
    cache = _cache_dir(cache_dir)
    key = _cache_key(source, c)
    out_image, out_qc = cache / f"{key}.nii.gz", cache / f"{key}.json"
    if (done := _cached(cache, key)) is not None:
        return done
    out_mask = cache / f"{key}_mask.nii.gz"
    img = nib.load(str(source))
    shape = check_shape(img.shape, source)  # a 2D image or a 4D series goes no further
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(img.dataobj).reshape(shape),
                                                   img.affine))
    native_affine = img.affine
    check_voxels(np.asarray(img.dataobj, dtype=np.float32), source)
    qc = QCRecord(steps=[])
    mask = None
    if c.skull_strip:
        t = time.perf_counter()
        volume = looks_extracted(img)
        if volume is not None:
            mask = np.asarray(img.dataobj) > np.asarray(img.dataobj).min()
            qc.steps.append("already_brain_extracted")
        else:
            img, mask, volume = extract_brain(img, source)
            qc.steps.append("brain_extraction")
        qc.seconds["brain_extraction"] = round(time.perf_counter() - t, 2)
        qc.brain_volume_ml = round(volume, 1)
        lo, hi = BRAIN_VOLUME_ML
        if not lo <= volume <= hi:
            qc.flags.append(f"brain volume {volume:.0f} mL is outside {lo:.0f}-{hi:.0f} mL: "
                            "extraction failed, or this is not an adult head")
    if c.n4:
        t = time.perf_counter()
        img = _n4(img, mask)
        qc.seconds["n4"] = round(time.perf_counter() - t, 2)
        qc.steps.append("n4")
    if c.registration:
        t = time.perf_counter()
        try:
            img, similarity, overlap = register_to_template(img, c)
        except RuntimeError as exc:  # SimpleITK: e.g. no overlap left with the template
            raise ImageError(source, "registration to the MNI152 template failed ("
                             f"{str(exc).strip().splitlines()[-1][:160]}); is this a T1 "
                             "brain?") from None
        qc.seconds["registration"] = round(time.perf_counter() - t, 2)
        qc.steps.append("registration")
        qc.similarity = round(similarity, 4)
        qc.overlap = round(overlap, 4)
        if overlap < MIN_OVERLAP:
            qc.flags.append(f"the registered brain overlaps the template's brain with Dice "
                            f"{overlap:.2f} (below {MIN_OVERLAP}): registration failed or "
                            "this is not a whole brain")
        if similarity < MIN_SIMILARITY:
            qc.flags.append(f"similarity to the template after registration is "
                            f"{similarity:.2f} (below {MIN_SIMILARITY}): registration "
                            "failed or this is not a T1 brain")
    result = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    if mask is not None:
        native = nib.Nifti1Image(mask.astype(np.uint8), native_affine)
        atomic_write_bytes(out_mask, gzip.compress(native.to_bytes(), compresslevel=1))
    atomic_write_bytes(out_image, gzip.compress(result.to_bytes(), compresslevel=1))
    atomic_write_text(out_qc, qc.model_dump_json(indent=2))
    return PreprocessResult(image=str(out_image), mask=str(out_mask) if mask is not None
                            else None, qc=qc)


class Preprocess(Transform):
    """Array version: a raw T1 path in, the cached template-space path out (the QC record
    is kept in :attr:`last_qc`)."""

    def __init__(self, config: PreprocessConfig | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.config = config or PreprocessConfig()
        self.cache_dir = cache_dir
        self.last_qc: QCRecord | None = None

    def __call__(self, path: Any) -> str:
        result = preprocess_file(path, self.config, self.cache_dir)
        self.last_qc = result.qc
        return result.image


class Preprocessd(MapTransform):
    """Dictionary version, placed before the loader; with ``qc`` on, the QC record goes to
    ``<key>_qc`` (off in datasets, whose batches cannot collate it)."""

    def __init__(self, keys: KeysCollection, config: PreprocessConfig | None = None,
                 cache_dir: str | Path | None = None, qc: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.config = config or PreprocessConfig()
        self.cache_dir = cache_dir
        self.qc = qc

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            result = preprocess_file(d[key], self.config, self.cache_dir)
            d[key] = result.image
            if self.qc:
                d[f"{key}_qc"] = json.loads(result.qc.model_dump_json())
        return d


def _worker_task(args: tuple[str, str, str | None]) -> str:
    """In a worker process: one thread each, or workers x threads oversubscribe the cores."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    return _preprocess_task(args)


def _preprocess_task(args: tuple[str, str, str | None]) -> str:
    path, config_json, cache_dir = args
    try:
        result = preprocess_file(path, PreprocessConfig.model_validate_json(config_json),
                                 cache_dir)
    except ImageError as exc:
        return json.dumps({"error": exc.reason})
    return result.model_dump_json()


def preprocess_paths(paths: list[str], config: PreprocessConfig | None = None,
                     cache_dir: str | Path | None = None, workers: int = 1,
                     progress: Callable[[int, int], None] | None = None
                     ) -> dict[str, PreprocessResult | str]:
    """Preprocess many files (cached ones cost nothing), in worker processes if asked.

    Returns:
        For each path, its result, or the reason it is unusable (a string).
    """
    c = config or PreprocessConfig()
    todo = list(dict.fromkeys(paths))
    results: dict[str, PreprocessResult | str] = {}

    def record(path: str, raw: str) -> None:
        got = json.loads(raw)
        results[path] = got["error"] if "error" in got else PreprocessResult.model_validate(got)
        if progress:
            progress(len(results), len(todo))

    cache = _cache_dir(cache_dir)
    for p in todo:  # what is cached costs a hash, not a worker
        try:
            done = _cached(cache, _cache_key(Path(p), c)) if Path(p).is_file() else None
        except OSError:
            done = None
        if done is not None:
            record(p, done.model_dump_json())
    tasks = [(p, c.model_dump_json(), str(cache)) for p in todo if p not in results]
    # the first pool waits ~10 s for the fork server's imports: worth it for a few dozen
    if workers > 1 and len(tasks) >= MIN_POOL_TASKS:
        from mediad.workers import process_pool

        with process_pool(workers) as pool:
            for task, raw in zip(tasks, pool.map(_worker_task, tasks), strict=True):
                record(task[0], raw)
    else:
        for task in tasks:
            record(task[0], _preprocess_task(task))
    return results


def preprocess_manifest(manifest: str | Path, out_dir: str | Path,
                        config: PreprocessConfig | None = None, workers: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> Path:
    """Preprocess every MRI of a manifest; write ``manifest.csv`` (MRI paths pointing at the
    template-space volumes), ``qc.csv`` and the volumes under ``out_dir/cache``.

    Resumable: results are cached by content, so a rerun redoes only what is missing. An
    unusable MRI is recorded in ``qc.csv`` (``error``) and its row keeps no MRI.

    Returns:
        The new manifest.
    """
    import csv
    import io

    from mediad.data.records import load_manifest

    out = Path(out_dir)
    table = load_manifest(manifest)
    results = preprocess_paths([r.mri_path for r in table.rows if r.mri_path], config,
                               out / "cache", workers, progress)
    rows, qc_rows = [], []
    for r in table.rows:
        got = results.get(r.mri_path) if r.mri_path else None
        image = got.image if isinstance(got, PreprocessResult) else None
        rows.append({**r.model_dump(mode="json"),
                     "mri_path": str(Path(image).relative_to(out)) if image else ""})
        if r.mri_path:
            qc = got.qc if isinstance(got, PreprocessResult) else None
            qc_rows.append({"subject_id": r.subject_id, "visit": r.visit,
                            "steps": "+".join(qc.steps) if qc else "",
                            "brain_volume_ml": qc.brain_volume_ml if qc else "",
                            "similarity": qc.similarity if qc else "",
                            "overlap": qc.overlap if qc else "",
                            "flags": " | ".join(qc.flags) if qc else "",
                            "error": got if isinstance(got, str) else ""})
    for name, data in (("manifest.csv", rows), ("qc.csv", qc_rows)):
        buf = io.StringIO()
        if data:
            writer = csv.DictWriter(buf, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
        atomic_write_text(out / name, buf.getvalue())
    return out / "manifest.csv"
